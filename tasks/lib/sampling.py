"""Uniform frame sampling: N frames at the centres of N equal segments of a clip, short-side resized and
centre-cropped to a square, RGB uint8, upright.

How, and why this way (numbers in .notes/readme_frames.md and benchmarks/sampling.py):

* **Frame indices, not timestamps.** "Frame i" is the i-th frame the decoder outputs (presentation order), the
  same definition as ffmpeg's ``select=eq(n,i)``. Timestamp seeking picks other frames on VFR files and AVIs, and
  the ``fps`` filter returns the wrong frames, so neither is used.
* **The true frame count comes from the file, not the header.** Header counts lie (a Cinepak AVI claims 444 frames
  and has 68; WebM/MKV/MPEG-PS have none), so one demux-only pass counts the video packets (a few ms: no
  decoding). One packet is one frame for every codec we met, except packets flagged "discard" (hidden by an MP4
  edit list, e.g. the frames from a keyframe up to where a stream-copied cut starts), which are decoded as
  references but never shown and so not counted. Where the decoder still outputs a different number (a packet it
  rejects, a cut-off last frame, field-coded video) the decoded count is authoritative: the frames for it are
  taken from the spare frames kept for this case or decoded again, so the indices are always exact.
* **One sequential decode, convert only what is kept.** PyAV decodes every packet in order (needed anyway for
  P/B frames; per-frame seeking was ~20x slower) and only the N wanted frames are scaled and converted to RGB,
  with one reused swscale context. Decode errors in single packets are counted and skipped, as ffmpeg does,
  instead of aborting the clip.
* **Memory stays bounded.** The demux pass keeps the compressed packets (a 10 s clip is ~1 MB) so the file is read
  once; above ``PACKET_BUFFER_BYTES`` it drops them and the decode pass reads the file again.
* **Rotation** comes from the display matrix FFmpeg attaches to each decoded frame (what ``probe()`` reports):
  the output equals the ffmpeg CLI's autorotated picture (checked against ``ffmpeg -i rot90.mov`` in the tests).
  Non-square pixels (sample aspect ratio) are stretched to display geometry before the square crop.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import av.video.reformatter
import numpy as np

from model.atomic import atomic_path

SAMPLING_METHOD = (
    "uniform: centre frame of each of N equal segments of the decoded frames (PyAV sequential decode, "
    "true frame count), short-side resize (swscale area) + centre crop, display rotation applied, RGB uint8"
)
PACKET_BUFFER_BYTES = 64 * 1024 * 1024
# swscale's area averaging: the right filter for the large downscales we do (360p -> 128), and as fast as bilinear.
INTERPOLATION = "AREA"


class SamplingError(RuntimeError):
    """A clip that cannot be sampled. ``reason`` is a short category (the frames report's ``reason`` column)."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}" if message else reason)


def segment_centres(n_frames_total: int, num_frames: int) -> list[int]:
    """Index of the frame at the centre of each of ``num_frames`` equal segments of ``n_frames_total`` frames.

    Segment ``i`` spans ``[i*n/N, (i+1)*n/N)`` in frame units; its centre ``(i+0.5)*n/N`` falls inside frame
    ``floor((2i+1)*n / 2N)``. Integer arithmetic keeps it exact. With fewer frames than ``N`` the same formula
    repeats the nearest frame (3 frames, N=8 -> 0,0,0,1,1,2,2,2), so every clip yields exactly N frames."""
    if n_frames_total < 1:
        raise ValueError(f"n_frames_total must be >= 1, got {n_frames_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return [((2 * i + 1) * n_frames_total) // (2 * num_frames) for i in range(num_frames)]


@dataclass
class ClipInfo:
    """What sampling learnt about a clip: the true (decoded) frame count and the geometry it was shown in."""

    n_frames: int
    n_packets: int
    fps: float
    duration: float
    width: int  # displayed width (after rotation and sample aspect ratio)
    height: int
    rotation: int  # degrees counter-clockwise applied to the stored pixels (0/90/180/270)
    codec: str
    decode_errors: int
    corrupt_frames: int
    indices: list[int] = field(default_factory=list)
    decode_passes: int = 1


# -- opening and demuxing -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_video(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open a file and yield (container, first video stream), mapping every failure to a SamplingError reason."""
    p = Path(path)
    if not p.is_file():
        raise SamplingError("missing", f"{p} does not exist")
    if p.stat().st_size == 0:
        raise SamplingError("empty_file", "the file has 0 bytes")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        reason = _open_failure_reason(p)
        what = ("an MP4/MOV header without its index (moov): an interrupted download or copy" if reason == "truncated"
                else "not a media container FFmpeg can open")
        detail = getattr(e, "strerror", None) or str(e)  # without the file name: reports carry the path already
        raise SamplingError(reason, f"{what} ({detail})") from e
    try:
        video = [s for s in container.streams if s.type == "video"]
        # cover art (an audio file's attached picture) is a one-frame "video" stream: prefer real ones
        moving = [s for s in video if not _is_attached_picture(s)]
        if not video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise SamplingError("no_video_stream", f"streams: {', '.join(kinds)}")
        yield container, (moving or video)[0]
    finally:
        container.close()


def _is_attached_picture(stream) -> bool:
    try:
        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except (AttributeError, TypeError):  # pragma: no cover - older PyAV
        return False


def _open_failure_reason(path: Path) -> str:
    """An MP4/MOV that starts with a valid ``ftyp`` box but cannot be opened lacks its index (``moov``), which
    is what an interrupted download or copy leaves behind: call it truncated rather than unreadable."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return "unreadable"
    return "truncated" if len(head) >= 8 and head[4:8] == b"ftyp" else "unreadable"


@dataclass
class PacketScan:
    """The demux-only pass: how many video packets, their time extent, and (if small) the packets themselves."""

    count: int = 0
    packets: list | None = None  # None when the clip was too big to keep
    first_pts: int | None = None
    end_pts: int | None = None  # max(pts + duration)
    demux_error: str | None = None
    nbytes: int = 0
    pts: list[int] = field(default_factory=list)  # filled only on request (the filter's edge checks)


def iter_packets(container, stream, scan: PacketScan, *, keep_pts: bool = False) -> Iterator:
    """The video stream's packets, counting them into ``scan``. A container that breaks off mid-file ends the
    iteration (noted in ``scan.demux_error``) instead of raising: what was readable is still usable."""
    try:
        for pk in container.demux(stream):
            if not pk.size:  # the flush packet at the end, and empty "dropped frame" chunks of AVIs
                continue
            if pk.is_discard:
                # Before an edit list's start (a stream-copied cut that began between keyframes, as yt-dlp writes
                # them): decoded as a reference, never shown, so not a frame of the clip.
                yield pk
                continue
            scan.count += 1
            scan.nbytes += pk.size
            if pk.pts is not None:
                end = pk.pts + (pk.duration or 0)
                scan.first_pts = pk.pts if scan.first_pts is None else min(scan.first_pts, pk.pts)
                scan.end_pts = end if scan.end_pts is None else max(scan.end_pts, end)
                if keep_pts:
                    scan.pts.append(pk.pts)
            yield pk
    except (av.error.FFmpegError, OSError) as e:
        scan.demux_error = str(e) or type(e).__name__


def scan_packets(container, stream, keep_bytes: int | None = None) -> PacketScan:
    keep_bytes = PACKET_BUFFER_BYTES if keep_bytes is None else keep_bytes
    scan = PacketScan(packets=[])
    for pk in iter_packets(container, stream, scan):
        if scan.packets is not None:
            scan.packets.append(pk)
            if scan.nbytes > keep_bytes:
                scan.packets = None
    return scan


def configure_decoder(stream, threads: int) -> None:
    """``threads=1``: one thread per clip (the frames stage runs several clips at once); ``0``: FFmpeg picks."""
    cc = stream.codec_context
    if threads == 1:
        cc.thread_type = "SLICE"
        cc.thread_count = 1
    else:
        cc.thread_type = "AUTO"
        cc.thread_count = max(0, threads)


@dataclass
class DecodeStats:
    decoded: int = 0
    errors: int = 0  # packets the decoder rejected
    corrupt: int = 0  # frames the decoder output but flagged as concealed/corrupt


def decode_frames(stream, packets: Iterable, stats: DecodeStats) -> Iterator:
    """Decode packets in order, skipping (and counting) the ones the decoder rejects, then drain the decoder.
    This is ffmpeg's own behaviour: one broken NAL unit costs one frame, not the clip."""
    cc = stream.codec_context
    for pk in packets:
        if not pk.size:
            continue
        try:
            frames = cc.decode(pk)
        except av.error.EOFError:
            break
        except av.error.FFmpegError:
            stats.errors += 1
            continue
        for f in frames:
            stats.decoded += 1
            stats.corrupt += bool(f.is_corrupt)
            yield f
    try:
        for f in cc.decode(None):
            stats.decoded += 1
            stats.corrupt += bool(f.is_corrupt)
            yield f
    except av.error.EOFError:
        pass
    except av.error.FFmpegError:
        stats.errors += 1


# -- geometry -------------------------------------------------------------------------------------------------------
def frame_rotation(frame) -> int:
    """Display-matrix rotation, degrees counter-clockwise, snapped to 0/90/180/270 (np.rot90's k = value // 90)."""
    r = float(getattr(frame, "rotation", 0) or 0)
    return int(round(r / 90.0)) % 4 * 90


def display_size(width: int, height: int, sar: Fraction | None, rotation: int) -> tuple[int, int]:
    """The (width, height) a player shows: pixels stretched by the sample aspect ratio, then rotated."""
    dw = int(round(width * float(sar))) if sar and sar > 0 and sar != 1 else width
    return (height, dw) if rotation in (90, 270) else (dw, height)


def resized_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """Short side -> ``size``, long side scaled to keep the aspect ratio (never below ``size``)."""
    if width <= height:
        return size, max(size, int(round(height * size / width)))
    return max(size, int(round(width * size / height))), size


class FrameConverter:
    """Scale + RGB conversion of the kept frames with one reused swscale context, then rotate and centre-crop.

    Rotating after scaling the stored (unrotated) picture and cropping last is exactly "autorotate, short-side
    resize, centre crop": the short side is the same length either way."""

    def __init__(self, size: int, sar: Fraction | None) -> None:
        self.size = size
        self.sar = sar if sar and sar > 0 else None
        self._sws = av.video.reformatter.VideoReformatter()  # one swscale context, reused (single-threaded)

    def __call__(self, frame) -> np.ndarray:
        w = frame.width
        if self.sar is not None and self.sar != 1:
            w = max(1, int(round(frame.width * float(self.sar))))
        nw, nh = resized_dims(w, frame.height, self.size)
        rgb = self._sws.reformat(
            frame, width=nw, height=nh, format="rgb24", interpolation=INTERPOLATION, threads=1
        ).to_ndarray()  # (nh, nw, 3)
        k = frame_rotation(frame) // 90
        if k:
            rgb = np.rot90(rgb, k)  # counter-clockwise, as the display matrix asks
        h2, w2 = rgb.shape[:2]
        y0, x0 = (h2 - self.size) // 2, (w2 - self.size) // 2
        return np.ascontiguousarray(rgb[y0 : y0 + self.size, x0 : x0 + self.size])


# -- the sampler ----------------------------------------------------------------------------------------------------
def _time_extent(scan: PacketScan, stream) -> float:
    """Duration from the packets themselves; the header's value only when packets carry no timestamps."""
    if scan.first_pts is not None and scan.end_pts is not None and stream.time_base:
        d = float((scan.end_pts - scan.first_pts) * stream.time_base)
        if d > 0:
            return d
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


LOST_FRAMES_COVERED = 2
# Exceptions PyAV raises from inside FFmpeg for odd files (besides the ones handled where they occur).
DECODER_FAILURES: tuple[type[BaseException], ...] = (
    av.error.FFmpegError, OSError, ValueError, RuntimeError, MemoryError,
)


def _decode_wanted(stream, packets: Iterable, wanted: list[int], convert: FrameConverter, stats: DecodeStats,
                   spare: Iterable[int] = ()):
    """One sequential pass. Wanted frames are converted as they come; ``spare`` frames (the ones that would be
    wanted if the decoder outputs a frame or two fewer than there are packets) are only held, unconverted, and
    converted at the end if they turn out to be needed. Returns ({index: rgb}, {index: frame}, first-frame geometry)."""
    want, hold = set(wanted), set(spare) - set(wanted)
    kept: dict[int, np.ndarray] = {}
    held: dict[int, object] = {}
    first = None
    for i, frame in enumerate(decode_frames(stream, packets, stats)):
        if first is None:
            first = (frame.width, frame.height, frame_rotation(frame))
        if i in want:
            kept[i] = convert(frame)
        elif i in hold:
            held[i] = frame
    return kept, held, first


def _spare_indices(n_packets: int, num_frames: int) -> set[int]:
    """Centres for a frame count 1..LOST_FRAMES_COVERED below the packet count, so that a packet the decoder
    rejects (corrupted__decord_corrupted.mp4 in ../shared) or a cut-off last frame costs no second decode pass."""
    out: set[int] = set()
    for m in range(max(1, n_packets - LOST_FRAMES_COVERED), n_packets):
        out.update(segment_centres(m, num_frames))
    return out


def sample_clip_info(
    path: str | os.PathLike, num_frames: int, size: int, *, threads: int = 0
) -> tuple[np.ndarray, ClipInfo]:
    """:func:`sample_clip` plus what was learnt about the clip (true frame count, fps, duration, geometry)."""
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be >= 1, got {num_frames}, {size}")
    try:
        return _sample(path, num_frames, size, threads)
    except SamplingError:
        raise
    except DECODER_FAILURES as e:  # anything else FFmpeg/PyAV can throw at an odd file is still about the file
        raise SamplingError("decode_error", f"{type(e).__name__}: {e}") from e


def _sample(path: str | os.PathLike, num_frames: int, size: int, threads: int) -> tuple[np.ndarray, ClipInfo]:
    with open_video(path) as (container, stream):
        scan = scan_packets(container, stream)
        if scan.count == 0:
            raise SamplingError("no_frames", "the video stream has no packets")
        configure_decoder(stream, threads)
        sar = stream.codec_context.sample_aspect_ratio
        convert = FrameConverter(size, sar)
        stats = DecodeStats()
        wanted = segment_centres(scan.count, num_frames)
        spare = _spare_indices(scan.count, num_frames)
        if scan.packets is not None:
            kept, held, first = _decode_wanted(stream, scan.packets, wanted, convert, stats, spare)
        else:  # too big to have kept the packets: read the file again
            kept, held, first = _reopened_pass(path, wanted, convert, threads, stats, spare)
        duration = _time_extent(scan, stream)
        codec = stream.codec_context.name or ""
        fps_header = float(stream.average_rate or stream.guessed_rate or 0)
        n = stats.decoded
        if n == 0 or first is None:
            raise SamplingError("undecodable", f"no frame could be decoded ({stats.errors} decode errors)")
        passes = 1
        if n != scan.count:
            wanted = segment_centres(n, num_frames)
            for i in set(wanted) - kept.keys():
                if i in held:
                    kept[i] = convert(held[i])
            held.clear()
            if not set(wanted) <= kept.keys():
                kept2, _, _ = _reopened_pass(path, sorted(set(wanted) - kept.keys()), convert, threads, DecodeStats())
                kept.update(kept2)
                passes = 2
    if not kept:
        raise SamplingError("undecodable", "the wanted frames could not be decoded")
    # a second pass that decoded fewer frames than the first (never seen) falls back to the nearest kept frame
    frames = [kept[i] if i in kept else kept[min(kept, key=lambda k: abs(k - i))] for i in wanted]
    w, h, rot = first
    dw, dh = display_size(w, h, sar, rot)
    fps = n / duration if duration > 0 else fps_header
    info = ClipInfo(
        n_frames=n, n_packets=scan.count, fps=fps, duration=duration if duration > 0 else (n / fps if fps else 0.0),
        width=dw, height=dh, rotation=rot, codec=codec, decode_errors=stats.errors, corrupt_frames=stats.corrupt,
        indices=wanted, decode_passes=passes,
    )
    return np.stack(frames), info  # (T, S, S, 3) uint8


def _reopened_pass(path, wanted: list[int], convert: FrameConverter, threads: int, stats: DecodeStats,
                   spare: Iterable[int] = ()):
    with open_video(path) as (container, stream):
        configure_decoder(stream, threads)
        return _decode_wanted(stream, iter_packets(container, stream, PacketScan()), wanted, convert, stats, spare)


def sample_clip(path: str | os.PathLike, num_frames: int, size: int, *, threads: int = 0) -> np.ndarray:
    """``num_frames`` frames, uniformly spread (segment centres), as a ``(T, size, size, 3)`` uint8 RGB array.

    Raises :class:`SamplingError` (with a ``reason``) for anything that is not a decodable video. ``threads``:
    decoder threads for this clip: 0 lets FFmpeg use every core (one clip at a time, e.g.
    prediction); the frames stage passes ``cpus // frames.workers`` since it runs several clips at once."""
    return sample_clip_info(path, num_frames, size, threads=threads)[0]


# -- what the sampler's output depends on (the stored layout itself: model/dataset.py) -------------------------------
# Bump when the sampler's output for the same clip and parameters changes (filter, crop or index policy), so that
# existing .npy files are not mixed with new ones: a different version in dataset.json redoes every clip.
SAMPLER_VERSION = 1


def sampling_params(num_frames: int, size: int) -> dict[str, int]:
    """What determines every .npy's content besides its source file; stored in dataset.json and compared."""
    return {"num_frames": int(num_frames), "size": int(size), "sampler_version": SAMPLER_VERSION}


def array_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def npy_matches(path: str | os.PathLike, shape: tuple[int, ...], newer_than_ns: int) -> bool:
    """A finished clip: the .npy exists, is uint8 of the expected shape (read from the header only, via mmap) and
    was written after its source file last changed."""
    p = Path(path)
    try:
        if p.stat().st_mtime_ns < newer_than_ns:
            return False
        arr = np.load(p, mmap_mode="r")
        return arr.dtype == np.uint8 and tuple(arr.shape) == tuple(shape)
    except (OSError, ValueError):
        return False


def save_npy(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """``np.save`` under a temporary name, then rename: a crash never leaves a half-written clip behind."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(frames, dtype=np.uint8))
    return Path(path)
