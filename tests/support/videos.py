"""Videos the tests make themselves, so the suite never depends on ../shared.

A *counter video* carries its own frame index as a row of 10 black/white blocks (binary, most significant bit
first) across the top of each frame, big enough to survive H.264 at any sane quality, so a test can check
exactly which source frames a sampler returned.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.lib.media import encode_video

BITS = 10


def counter_frame(i: int, width: int = 320, height: int = 240, *, rng: np.random.Generator | None = None) -> np.ndarray:
    frame = np.full((height, width, 3), 96, np.uint8)
    if rng is not None:  # some texture below the counter so the encoder has real work
        frame[height // 3 :] = rng.integers(0, 255, (height - height // 3, width, 3), dtype=np.uint8)
    bw = width // BITS
    bh = max(8, height // 4)
    for b in range(BITS):
        bit = (i >> (BITS - 1 - b)) & 1
        frame[:bh, b * bw : (b + 1) * bw] = 255 if bit else 0
    return frame


def read_counter(frame: np.ndarray) -> int:
    """Inverse of :func:`counter_frame` on a decoded frame of any size (reads the centre of each block)."""
    h, w = frame.shape[:2]
    bw = w / BITS
    bh = max(8 * h / 240, h / 4)
    y = int(bh / 2)
    value = 0
    for b in range(BITS):
        x = int((b + 0.5) * bw)
        value = (value << 1) | int(frame[y, x].mean() > 128)
    return value


def make_counter_video(
    path: str | Path,
    n_frames: int = 250,
    *,
    fps: float = 25.0,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
    gop: int | None = None,
    seed: int = 0,
    extra: list[str] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    frames = (counter_frame(i, width, height, rng=rng) for i in range(n_frames))
    return encode_video(frames, path, fps=fps, codec=codec, gop=gop, extra=extra)


def demo_source(root: Path, *, per_class: int | tuple[int, int], seed: int, width: int = 96, height: int = 72,
                duration: float = 4.0, clip_len: float = 3.0) -> tuple[Path, Path]:
    """A small Kinetics-format source (``annotations.csv`` + ``videos/``), by default of 4 s 96x72 clips with 3 s
    annotated spans, served to yt-dlp as ``file://`` URLs: ``(root, csv)``. ``per_class``: clips of each class, or
    (dribbling, dunking)."""
    from tasks.lib.demo import generate_demo_dataset

    dribbling, dunking = per_class if isinstance(per_class, tuple) else (per_class, per_class)
    csv = generate_demo_dataset(root, n_dribbling=dribbling, n_dunking=dunking, seed=seed, width=width, height=height,
                                duration=duration, clip_len=clip_len)
    return root, csv


def demo_source_fixture(**kw):
    """A module-scoped ``demo_source`` fixture: ``(root, csv)`` of :func:`demo_source` with these arguments, made
    once per test module (``demo_source = demo_source_fixture(per_class=3, seed=2)`` in the module)."""
    import pytest

    @pytest.fixture(scope="module", name="demo_source")
    def _demo_source(tmp_path_factory):
        return demo_source(tmp_path_factory.mktemp("src"), **kw)

    return _demo_source
