"""Where ffmpeg comes from, how we probe a file, and how we write one from numpy frames.

ffmpeg: the system's binary when there is one (``$VIVIT_FFMPEG``, then ``PATH``), else the static binary that
the ``imageio-ffmpeg`` wheel ships, so no root install is ever needed. There is no ffprobe in that wheel, so
probing goes through PyAV, which bundles its own FFmpeg libraries.

Command lines are built with ``ffmpeg-python`` (:func:`ffmpeg_command`) and run by us as an argv list (never a
shell), so process lifetime and error handling stay ours. Decoding stays on PyAV, measured fastest
(``../shared/stack-notes.md``).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    env = os.environ.get("VIVIT_FFMPEG")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"VIVIT_FFMPEG={env} does not exist")
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise FileNotFoundError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What the container says. ``frames`` is the header's frame count (0 when unknown) and may lie."""

    has_video: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    duration: float = 0.0  # seconds; 0.0 when the container does not know
    frames: int = 0
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise, 0/90/180/270
    codec: str = ""


class ProbeError(RuntimeError):
    """The file cannot be opened as a media container at all."""


def probe(path: str | os.PathLike) -> VideoInfo:
    import av

    path = str(path)
    try:
        with av.open(path, metadata_errors="ignore") as c:
            vs = [s for s in c.streams if s.type == "video"]
            if not vs:
                return VideoInfo(has_video=False)
            s = vs[0]
            cc = s.codec_context
            fps = float(s.average_rate or s.guessed_rate or 0) if (s.average_rate or s.guessed_rate) else 0.0
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif c.duration is not None:
                duration = c.duration / 1_000_000
            else:
                duration = 0.0
            rotation = _rotation(c)
            return VideoInfo(
                has_video=True,
                width=int(cc.width or 0),
                height=int(cc.height or 0),
                fps=fps,
                duration=max(duration, 0.0),
                frames=int(s.frames or 0),
                rotation=rotation,
                codec=cc.name or "",
            )
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise ProbeError(f"{Path(path).name}: {e}") from e


def _rotation(container) -> int:
    """Display-matrix rotation in degrees as FFmpeg reports it (``frame.rotation``: -90 means the picture must
    be turned 90 degrees clockwise to display upright), normalised to 0/90/180/270 counter-clockwise."""
    try:
        frame = next(container.decode(video=0))
    except Exception:
        return 0
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


def options_from_argv(argv: Sequence[str] | None) -> dict[str, Any]:
    """``["-movflags", "+faststart", "-an"]`` -> ``{"movflags": "+faststart", "an": None}``: extra output options
    given as ffmpeg tokens, in the keyword form ffmpeg-python takes (``None`` is a bare flag)."""
    out: dict[str, Any] = {}
    tokens = list(argv or [])
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if not key.startswith("-") or len(key) < 2:
            raise ValueError(f"expected an ffmpeg option such as -vf, got {key!r} in {tokens}")
        has_value = i + 1 < len(tokens) and not (tokens[i + 1].startswith("-") and len(tokens[i + 1]) > 1
                                                 and not tokens[i + 1][1:2].isdigit())
        out[key[1:]] = tokens[i + 1] if has_value else None
        i += 2 if has_value else 1
    return out


def ffmpeg_command(src: str, dst: str, *, input_options: dict[str, Any] | None = None,
                   output_options: dict[str, Any] | None = None, exe: str | None = None) -> list[str]:
    """The argv of one ffmpeg run (quiet, overwriting ``dst``), built by ffmpeg-python: ``input_options`` go before
    ``-i src`` (``ss`` there is an accurate input seek), ``output_options`` before ``dst``."""
    import ffmpeg

    stream = ffmpeg.input(src, **(input_options or {})).output(dst, **(output_options or {}))
    return stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error").overwrite_output().compile(
        cmd=exe or ffmpeg_exe())


def encode_command(path: str | os.PathLike, width: int, height: int, *, fps: float = 25.0, codec: str = "libx264",
                   crf: int = 23, gop: int | None = None, pix_fmt: str = "yuv420p",
                   extra: Sequence[str] | None = None, exe: str | None = None) -> list[str]:
    """Encode raw RGB24 frames read from stdin into ``path``."""
    out: dict[str, Any] = {"an": None, "c:v": codec, "pix_fmt": pix_fmt}
    if codec == "libx264":
        out.update(crf=crf, preset="veryfast")
    if gop:
        out["g"] = gop
    out.update(options_from_argv(extra))
    cmd = ffmpeg_command("pipe:", str(path), input_options={"f": "rawvideo", "pix_fmt": "rgb24",
                                                            "s": f"{width}x{height}", "r": f"{fps}"},
                         output_options=out, exe=exe)
    cmd.remove("-nostdin")  # the frames arrive on stdin
    return cmd


def encode_video(
    frames: Iterable[np.ndarray],
    path: str | os.PathLike,
    *,
    fps: float = 25.0,
    codec: str = "libx264",
    crf: int = 23,
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
    extra: list[str] | None = None,
) -> Path:
    """Encode ``(H, W, 3)`` uint8 RGB frames with the ffmpeg binary (raw frames on stdin, no shell)."""
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    path = Path(path)
    cmd = encode_command(path, w, h, fps=fps, codec=codec, crf=crf, gop=gop, pix_fmt=pix_fmt, extra=extra)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(np.ascontiguousarray(first, dtype=np.uint8).tobytes())
        for f in it:
            proc.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path.name}: {err.strip()[-500:]}")
    return path
