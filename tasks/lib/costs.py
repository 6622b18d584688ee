"""What the config's networks cost on its clips: parameters and forward GFLOPs per view. ``vivit presets`` lists it
for every preset, the train stage sizes its checkpoints by it; flows reach ``model/presets.py`` through here."""
from __future__ import annotations

from model.options import PRESET_NAMES, TrainOptions
from model.presets import describe


def view_cost(train: TrainOptions, image_size: int, preset: str | None = None) -> dict:
    """``{"params", "gflops"}`` of ``preset`` (``train.model`` by default) on views of ``train.view_frames``
    positions at ``image_size``; ValueError for a tubelet or patch that
    does not divide these clips."""
    view = train.view
    return describe(preset or train.model, num_frames=view.num_frames, image_size=image_size, in_channels=view.channels)


def preset_costs(train: TrainOptions, image_size: int) -> dict[str, dict | str]:
    """Every preset's :func:`view_cost`, or why it does not fit these clips."""
    out: dict[str, dict | str] = {}
    for name in PRESET_NAMES:
        try:
            out[name] = view_cost(train, image_size, name)
        except ValueError as e:
            out[name] = str(e)
    return out
