"""Views: which of a clip's stored frames one forward pass sees, and in which form.

The frames stage stores ``F`` frames per clip, uniformly spread over it. A model sees ``T`` positions per *view*:
one position in each of ``T`` equal segments of the clip (TSN's segment sampling, Wang et al. 2016).

* **Training** draws each position at random inside its segment, a new draw every epoch: the network never sees the
  same frames of a clip twice, which is temporal augmentation the stored dataset would otherwise not have.
* **Evaluation and prediction** average the softmax of ``test_views`` fixed views; view ``v`` of ``V`` takes the
  point ``(v + 0.5) / V`` of every segment, so the views together cover the clip evenly (multi-view testing, as
  ViViT and mmaction2 do). One view is the segment centres.

The *input* is what the network sees at each position:

* ``rgb``: the frame itself.
* ``diff``: the difference between that stored frame and the next one (TSN's RGB-diff). Static appearance (the
  scene, the camera, the resolution a clip came in) cancels and motion is left. On real surveillance clips split by
  source video this generalised where RGB input memorised the scenes (docs/quality.md, "Which input").

The ``diff`` input takes frames ``(p, p + 1)`` for each position ``p`` of ``F - 1`` candidates, so a view is ``2T`` stored
frames in the order ``a0, b0, a1, b1, ...``; :func:`to_network_input` turns them into ``T`` network frames. (A wider
gap between the two frames, the removed ``train.diff_gap``, gained nothing on real clips: docs/quality.md.)

RGB is normalised with the spec's ``mean``/``std``: ImageNet's for a model trained from scratch (and for every
checkpoint written before the fields existed), the pretrained checkpoint's own processor statistics after a
``train.init`` start (:mod:`model.pretrained`). The spec travels with the weights, so evaluation, ``vivit predict``
and the served models normalise exactly as training did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

InputMode = Literal["rgb", "diff"]
INPUT_MODES: tuple[str, ...] = ("rgb", "diff")
# Frame differences of [0, 1] pixels are small and mostly zero: dividing by this puts moving edges near unit scale.
DIFF_SCALE = 0.1
# ImageNet statistics: what image-pretrained patch embeddings expect, and the from-scratch default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """How a network looks at a stored clip: ``num_frames`` positions per view, the ``input`` form and how many
    views are averaged at evaluation and prediction time, and the RGB normalisation. Travels with every checkpoint
    and packaged model."""

    num_frames: int = 16
    input: InputMode = "diff"
    test_views: int = 2
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per RGB channel, of [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # checkpoints store lists (JSON-like): keep the spec hashable and comparable
            v = tuple(float(c) for c in getattr(self, name))
            if len(v) != 3 or (name == "std" and min(v) <= 0):
                raise ValueError(f"{name} must be 3 per-channel values{' > 0' if name == 'std' else ''}, got {v}")
            object.__setattr__(self, name, v)
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"view num_frames must be a positive integer, got {self.num_frames!r}")
        if self.input not in INPUT_MODES:
            raise ValueError(f"input must be one of {INPUT_MODES}, got {self.input!r}")
        if not isinstance(self.test_views, int) or self.test_views < 1:
            raise ValueError(f"test_views must be a positive integer, got {self.test_views!r}")

    @classmethod
    def from_record(cls, record: dict) -> "ViewSpec":
        """The spec a checkpoint or packaged model stored (``asdict``). Files written while ``train.diff_gap``
        existed carry it: a gap of 1 (its default, and what every view now does) is accepted and dropped; another
        gap is refused, since these views would pair other frames than the ones the network learnt on."""
        record = dict(record)
        if record.get("input") == "rgb_diff":
            raise ValueError("this model was trained on input rgb_diff (frames and differences, 6 channels), which "
                             "was removed: retrain it with train.input rgb, diff or auto, or load it with a version "
                             "from before the removal")
        gap = record.pop("diff_gap", 1)
        if gap != 1:
            raise ValueError(f"this model was trained with train.diff_gap={gap!r} (differences of frames {gap} apart); "
                             "diff_gap was removed and only 1 can be read: retrain it, or load it with a version "
                             "from before the removal")
        return cls(**record)

    @property
    def paired(self) -> bool:
        return self.input != "rgb"

    @property
    def channels(self) -> int:
        return 3  # RGB, or differences of RGB

    @property
    def frames_per_view(self) -> int:
        """Stored frames one view reads (``2T`` for differences)."""
        return self.num_frames * (2 if self.paired else 1)

    def min_stored_frames(self) -> int:
        return self.num_frames + 1 if self.paired else self.num_frames

    def check_stored(self, stored_frames: int) -> None:
        if stored_frames < self.min_stored_frames():
            raise ValueError(
                f"the dataset stores {stored_frames} frames per clip, but a view of {self.num_frames} "
                f"'{self.input}' positions needs at least {self.min_stored_frames()}: raise frames.num_frames "
                f"or lower train.view_frames"
            )


def segment_positions(n: int, t: int, *, rng: np.random.Generator | None = None, view: int = 0,
                      num_views: int = 1) -> np.ndarray:
    """``t`` positions in ``range(n)``, one per equal segment: ``floor((i + u_i) * n / t)``, with ``u_i`` uniform
    random when ``rng`` is given (training), else ``(view + 0.5) / num_views`` (evaluation). With ``n < t`` some
    positions repeat, as the frame sampler does."""
    if n < 1 or t < 1:
        raise ValueError(f"need n >= 1 and t >= 1, got n={n}, t={t}")
    if not 0 <= view < num_views:
        raise ValueError(f"view {view} outside [0, {num_views})")
    u = rng.random(t) if rng is not None else np.full(t, (view + 0.5) / num_views)
    return np.minimum(np.floor((np.arange(t) + u) * n / t).astype(np.int64), n - 1)


def view_indices(stored_frames: int, spec: ViewSpec, *, rng: np.random.Generator | None = None, view: int = 0) -> np.ndarray:
    """Indices into the stored frames for one view (``spec.frames_per_view`` of them, pairs interleaved)."""
    spec.check_stored(stored_frames)
    if not spec.paired:
        return segment_positions(stored_frames, spec.num_frames, rng=rng, view=view, num_views=spec.test_views)
    p = segment_positions(stored_frames - 1, spec.num_frames, rng=rng, view=view, num_views=spec.test_views)
    return np.stack([p, p + 1], axis=1).reshape(-1)  # a0, b0, a1, b1, ...


def eval_views(frames: np.ndarray | torch.Tensor, spec: ViewSpec) -> np.ndarray | torch.Tensor:
    """``(..., F, H, W, C)`` stored frames -> ``(..., V, frames_per_view, H, W, C)``: the fixed evaluation views."""
    f = frames.shape[-4]
    idx = np.stack([view_indices(f, spec, view=v) for v in range(spec.test_views)])  # (V, frames_per_view)
    if isinstance(frames, torch.Tensor):
        return frames[..., torch.from_numpy(idx), :, :, :]
    return frames[..., idx, :, :, :]


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(B, T, 3, H, W)`` float RGB in ``[0, 1]``, per-channel ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
    return (x - m) / s


def to_network_input(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """``(B, frames_per_view, 3, H, W)`` float frames in ``[0, 1]`` -> ``(B, T, channels, H, W)``: RGB normalised
    with the spec's ``mean``/``std``, differences divided by :data:`DIFF_SCALE`."""
    if spec.input == "rgb":
        return normalise(x, spec.mean, spec.std)
    a, b = x[:, 0::2], x[:, 1::2]  # (B, T, 3, H, W) each
    return (b - a) / DIFF_SCALE
