"""Prediction for real workloads, without Prefect or MLflow: which files to classify, which frames of each, and a
stream of results in input order.

* **Inputs** are files, folders (searched recursively for video suffixes), globs and list files (``.txt``: one path a
  line; ``.csv``: a ``path`` column, else the first column). Each expands in place, so results keep the order
  the user gave.
* **The filter stage's checks first.** A file the filter stage would quarantine (a PNG renamed ``.mp4``, a
  one-frame video, a truncated download) gets an error result naming the filter's reason instead of a
  prediction. The check also yields the decoded frame count, which fixes the indices of every segment.
* **Frames exactly as in training**: the same segment-centre indices over the decoded frames and the same
  :class:`~tasks.lib.sampling.FrameConverter` as :func:`~tasks.lib.sampling.sample_clip`; a test checks the
  arrays are identical.
* **Bounded memory.** One sequential decode per video; only the frames a pending segment needs are converted
  and kept, and they are dropped once no pending segment needs them. Segments go to the model in batches of
  ``batch_size`` across videos, and a video's result is emitted as soon as its last segment is classified.
  Peak memory therefore depends on the batch size and the window overlap, not on the number or length of videos.
* **Long videos**: ``window``/``stride`` in seconds cut a video into segments (the last one is aligned to the end so
  the tail is covered); each segment is classified and the video's result is the mean of the segment
  probabilities, as mmaction2's long-video demo averages clip scores.
"""
from __future__ import annotations

import csv
import glob
import io
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from model.atomic import atomic_path
from .filtering import VIDEO_SUFFIXES, check_video
from .paths import is_partial
from .sampling import (
    DECODER_FAILURES,
    DecodeStats,
    FrameConverter,
    PacketScan,
    SamplingError,
    configure_decoder,
    decode_frames,
    iter_packets,
    open_video,
    segment_centres,
)

LIST_SUFFIXES = {".txt", ".csv", ".lst"}
GLOB_CHARS = set("*?[")


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One thing to classify: a path, or a reason it cannot be (``error``), e.g. an empty folder."""

    path: str
    error: str | None = None


def _videos_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith(".") and not is_partial(p))


def read_list(path: Path) -> list[str]:
    """Paths listed in a ``.txt``/``.lst`` (one a line, ``#`` comments) or ``.csv`` (``path`` column, else the first
    column) file. Relative entries are relative to the list's own folder, so a list travels with its videos."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(k) for k in ("path", "video", "file", "filename") if k in header), None)
        entries = [r[col if col is not None else 0] for r in rows[1 if col is not None else 0 :] if r]
    else:
        entries = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    out = []
    for e in (e.strip() for e in entries):
        if e:
            out.append(e if Path(e).is_absolute() else str(path.parent / e))
    return out


def expand_inputs(args: Iterable[str], *, _in_list: bool = False) -> Iterator[Item]:
    """Every video the arguments name, in argument order (sorted within a folder or glob)."""
    for arg in args:
        p = Path(arg)
        if not str(arg).strip():
            yield Item(str(arg), "empty path")
        elif p.is_dir():
            found = _videos_under(p)
            if not found:
                yield Item(arg, f"no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) under this folder")
            yield from (Item(str(f)) for f in found)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not _in_list:
            yield from expand_inputs(read_list(p), _in_list=True)
        elif p.is_file():
            yield Item(arg)
        elif GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                yield Item(arg, "no file matches this pattern")
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    yield from (Item(str(f)) for f in _videos_under(mp))
                elif mp.suffix.lower() in VIDEO_SUFFIXES:
                    yield Item(m)
        else:
            yield Item(arg, "file not found")


# -- paths a client names (the served video model) --------------------------------------------------------------
SERVE_ROOT_ENV = "VIVIT_SERVE_ROOT"


def serve_root(configured: str | os.PathLike | None = None) -> Path | None:
    """The one folder whose files a served video model may read when a client names a ``path``: ``configured`` (the
    model config's ``serve_root``), else ``$VIVIT_SERVE_ROOT``; None (the default) when neither is set: the server
    then reads request ``content`` only."""
    value = configured if configured not in (None, "") else os.environ.get(SERVE_ROOT_ENV, "")
    return Path(value).expanduser().resolve() if str(value).strip() else None


def confined_item(path: str, root: Path | None) -> Item:
    """A client-named ``path`` as an :class:`Item`: refused (``error`` set, nothing read or probed) unless reading
    paths is switched on and the path, relative to ``root`` or absolute, resolves (symlinks followed) to a file inside
    ``root``. ``..`` is refused outright, so no answer tells whether something outside exists."""
    if root is None:
        return Item(path, f"path_refused: this server reads request content only; send the file's bytes as "
                          f"`content`, or start it with {SERVE_ROOT_ENV}=DIR to allow paths under DIR")
    given = Path(path)
    if not str(path).strip() or ".." in given.parts:
        return Item(path, f"path_refused: a path must name a file under {SERVE_ROOT_ENV} without '..'")
    resolved = (given if given.is_absolute() else root / given).resolve()
    if not resolved.is_relative_to(root):
        return Item(path, f"path_refused: not under {SERVE_ROOT_ENV}")
    return Item(str(resolved))


# -- which frames -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    indices: tuple[int, ...]  # decoded-frame indices, sorted


def plan_segments(n_frames: int, fps: float, num_frames: int, window: float | None = None,
                  stride: float | None = None) -> list[Segment]:
    """The whole video as one segment (training's sampling), or windows of ``window`` seconds every ``stride``
    seconds, each sampled like a training clip (centres of ``num_frames`` equal parts of its frames). A video
    shorter than one window is one segment; when the strides do not end on the last frame, one more window
    aligned to the end covers the tail."""
    duration = n_frames / fps if fps > 0 else 0.0
    if window is None:
        return [Segment(0.0, duration, tuple(segment_centres(n_frames, num_frames)))]
    if window <= 0 or (stride is not None and stride <= 0):
        raise ValueError(f"window and stride must be > 0 seconds, got {window}, {stride}")
    if fps <= 0:
        raise SamplingError("zero_duration", "the video has no frame rate to cut windows by")
    win = max(1, int(round(window * fps)))
    step = max(1, int(round((stride or window) * fps)))
    if n_frames <= win:
        return [Segment(0.0, duration, tuple(segment_centres(n_frames, num_frames)))]
    starts = list(range(0, n_frames - win + 1, step))
    if starts[-1] + win < n_frames:
        starts.append(n_frames - win)
    centres = segment_centres(win, num_frames)
    return [Segment(round(s / fps, 3), round((s + win) / fps, 3), tuple(s + c for c in centres)) for s in starts]


def iter_segment_frames(path: str | os.PathLike, segments: Sequence[Segment], size: int, *,
                        threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """``(segment number, (T, size, size, 3) uint8)`` in segment order, from one sequential decode that converts
    only the wanted frames and keeps only those a pending segment still needs."""
    wanted = {i for s in segments for i in s.indices}
    cache: dict[int, np.ndarray] = {}
    pending = deque(enumerate(segments))
    with open_video(path) as (container, stream):
        configure_decoder(stream, threads)
        convert = FrameConverter(size, stream.codec_context.sample_aspect_ratio)
        frames = decode_frames(stream, iter_packets(container, stream, PacketScan()), DecodeStats())
        for i, frame in enumerate(frames):
            if i in wanted:
                cache[i] = convert(frame)
            while pending and pending[0][1].indices[-1] <= i:
                k, seg = pending.popleft()
                yield k, np.stack([cache[j] for j in seg.indices])
                keep_from = pending[0][1].indices[0] if pending else i + 1
                for j in [j for j in cache if j < keep_from]:
                    del cache[j]
            if not pending:
                return
    if not cache:  # the decoder gave fewer frames than the check counted, and none that was wanted
        raise SamplingError("undecodable", "the wanted frames could not be decoded")
    for k, seg in pending:  # as sample_clip does: the nearest decoded frame stands in for a missing one
        yield k, np.stack([cache[j] if j in cache else cache[min(cache, key=lambda c: abs(c - j))] for j in seg.indices])


# -- the stream of results --------------------------------------------------------------------------------------
@dataclass
class _Job:
    path: str
    error: str | None = None
    segments: list[Segment] = field(default_factory=list)
    probs: dict[int, np.ndarray] = field(default_factory=dict)
    closed: bool = False  # every segment has been handed to a batch (or the video failed)

    def ready(self) -> bool:
        return self.closed and (self.error is not None or len(self.probs) == len(self.segments))


def _round(x: float) -> float:
    return round(float(x), 6)


def _scores(classes: Sequence[str], p: np.ndarray, top_k: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"label": classes[int(p.argmax())],
                           "probabilities": {c: _round(x) for c, x in zip(classes, p)}}
    if top_k:
        order = np.argsort(-p, kind="stable")[:top_k]
        out["top_k"] = [{"label": classes[int(i)], "p": _round(p[i])} for i in order]
    if len(classes) == 2:  # binary: the positive class is the second, as in training
        out |= {"positive_class": classes[1], "p_positive": _round(p[1])}
    return out


def _result(job: _Job, classes: Sequence[str], top_k: int | None, windowed: bool) -> dict[str, Any]:
    if job.error is not None:
        return {"path": job.path, "error": job.error}
    probs = np.stack([job.probs[k] for k in range(len(job.segments))])
    out = {"path": job.path, **_scores(classes, probs.mean(axis=0), top_k)}
    if windowed:
        out["segments"] = [{"start": s.start, "end": s.end, **_scores(classes, p, top_k)}
                           for s, p in zip(job.segments, probs)]
    return out


def _open_job(item: Item, num_frames: int, window: float | None, stride: float | None) -> _Job:
    job = _Job(item.path, item.error)
    if job.error is None:
        check = check_video(item.path, threads=0)
        if not check.ok:
            job.error = f"{check.reason}: {check.message}"
        else:
            try:
                job.segments = plan_segments(check.frames, check.fps, num_frames, window, stride)
            except SamplingError as e:
                job.error = str(e)
    return job


def predict_stream(
    classify: Callable[[np.ndarray], np.ndarray],
    classes: Sequence[str],
    inputs: Iterable[str] | Iterable[Item],
    *,
    num_frames: int,
    image_size: int,
    batch_size: int = 8,
    window: float | None = None,
    stride: float | None = None,
    top_k: int | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """One result per video, in input order, each yielded as soon as its last segment is classified.

    ``classify`` maps uint8 ``(B, T, S, S, 3)`` to probabilities ``(B, K)``. A bad input is an ``{"path",
    "error"}`` result, never an exception."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = (x if isinstance(x, Item) else Item(str(x)) for x in inputs)
    jobs: deque[_Job] = deque()
    batch: list[tuple[_Job, int, np.ndarray]] = []

    def run_batch() -> None:
        if batch:
            probs = np.asarray(classify(np.stack([f for _, _, f in batch])), dtype=np.float64)
            for (job, k, _), p in zip(batch, probs):
                job.probs[k] = p
            batch.clear()

    def ready() -> Iterator[dict[str, Any]]:
        while jobs and jobs[0].ready():
            res = _result(jobs.popleft(), classes, top_k, window is not None)
            if on_done:
                on_done(res)
            yield res

    for item in items:
        job = _open_job(item, num_frames, window, stride)
        jobs.append(job)
        if job.error is None:
            try:
                for k, frames in iter_segment_frames(job.path, job.segments, image_size):
                    batch.append((job, k, frames))
                    if len(batch) >= batch_size:
                        run_batch()
                        yield from ready()
            except SamplingError as e:
                job.error = str(e)
            except DECODER_FAILURES as e:
                job.error = f"decode_error: {type(e).__name__}: {e}"
        job.closed = True
        yield from ready()
    run_batch()
    yield from ready()


def classify_fn(classifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A packaged classifier (:class:`model.predict.VideoClassifier`) as ``classify``: uint8 ``(B, T, S, S, 3)``
    numpy -> probabilities ``(B, K)`` numpy, without autograd."""
    import torch

    def classify(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return classifier(torch.from_numpy(np.ascontiguousarray(frames))).float().cpu().numpy()

    return classify


def stream_predictions(classifier: Any, inputs: Iterable[str], **options: Any) -> Iterator[dict[str, Any]]:
    """:func:`predict_stream` with the classifier's own classes and sampling parameters, never the caller's: they
    travel with the logged model."""
    return predict_stream(classify_fn(classifier), classifier.classes, inputs, num_frames=classifier.num_frames,
                          image_size=classifier.image_size, **options)


def classify_videos(classifier: Any, paths: list[str], batch_size: int = 8, **options: Any) -> list[dict[str, Any]]:
    """One result per video, in order: ``{"path", "label", "probabilities", ...}`` or ``{"path", "error"}``.
    An unreadable video is a result, never an exception, so one bad file does not sink a batch."""
    return list(stream_predictions(classifier, paths, batch_size=batch_size, **options))


# -- writing results --------------------------------------------------------------------------------------------
def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def json_line(res: dict[str, Any]) -> str:
    """One result as strict JSON: a non-finite number (a network that output NaN) is ``null``, never the bare
    ``NaN`` that ``json.dumps`` writes by default and JavaScript's ``JSON.parse`` rejects."""
    import json

    return json.dumps(_finite(res), allow_nan=False)


class ResultWriter:
    """``.jsonl`` (one result a line, as printed) or ``.csv`` (one row per video, plus one per segment for windowed
    predictions, with a ``p_<class>`` column per class). Rows are flushed as results arrive into a hidden
    temporary file that replaces ``path`` when :meth:`close` is called: a crash never leaves a half-written file
    under the final name."""

    SUFFIXES = (".jsonl", ".csv")

    def __init__(self, path: str | os.PathLike, classes: Sequence[str], top_k: int | None = None) -> None:
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in self.SUFFIXES:
            raise ValueError(f"--output must end in .jsonl or .csv, got {self.path.name!r}")
        self.classes = list(classes)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "w", newline="", encoding="utf-8")
        if self.kind == ".csv":
            cols = ["path", "segment", "start", "end", "label", *(f"p_{c}" for c in self.classes)]
            cols += ["top_k"] if top_k else []
            self._csv = csv.DictWriter(self._f, [*cols, "error"], extrasaction="ignore")
            self._csv.writeheader()

    def write(self, res: dict[str, Any]) -> None:
        if self.kind == ".jsonl":
            self._f.write(json_line(res) + "\n")
        else:
            for row in self._rows(res):
                self._csv.writerow(row)
        self._f.flush()

    def _rows(self, res: dict[str, Any]) -> list[dict[str, Any]]:
        def row(r: dict[str, Any], segment: str, start: Any = "", end: Any = "") -> dict[str, Any]:
            out = {"path": res["path"], "segment": segment, "start": start, "end": end, "label": r.get("label", ""),
                   "error": r.get("error", "")}
            out |= {f"p_{c}": r["probabilities"][c] for c in self.classes if "probabilities" in r}
            if "top_k" in r:
                out["top_k"] = " ".join(f"{t['label']}:{t['p']}" for t in r["top_k"])
            return out

        segs = res.get("segments")
        if not segs:
            return [row(res, "")]
        return [row(s, str(i), s["start"], s["end"]) for i, s in enumerate(segs)] + [row(res, "all")]

    def close(self, ok: bool = True) -> None:
        self._f.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
