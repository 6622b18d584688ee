"""How far the leakage check's threshold (``tasks/lib/leakage.py`` ``THRESHOLD``) is from both kinds of mistake,
measured on datasets the frames stage wrote:

* different clips must not be flagged: per clip, the distance (mean per-frame Hamming distance of the 64-bit
  frame hashes) to its nearest clip in *another split*, and to its nearest clip in the *same split* (where clips
  cut from one source video sit when the set is split by source);
* copies must be flagged: for ``--copies`` clips per dataset, the raw source is rewritten with ffmpeg as a
  re-upload would be (low-quality re-encode, half size, another frame rate, brighter, a 5 % and a 10 % centre
  crop; pillarboxed and mirrored as the cases the check is documented not to promise), sampled again by the frames
  stage's sampler at the dataset's frames and size, hashed, and compared with the stored clip.

Also the check's own time (hash every stored clip + all pairs). Run after the frames stage, e.g.

    .venv/bin/python benchmarks/leakage.py data/surv_fight/dataset data/hmdb5/dataset --copies 12

Prints one table per dataset and writes ``--out`` (JSON) when given. ffmpeg runs single-threaded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.dataset import load_dataset  # noqa: E402
from tasks.lib import leakage  # noqa: E402
from tasks.lib.media import ffmpeg_command  # noqa: E402
from tasks.lib.sampling import sample_clip  # noqa: E402

# name -> ffmpeg output options (video only, single-threaded)
VARIANTS: dict[str, dict[str, object]] = {
    "re-encoded crf 40": {"vcodec": "libx264", "crf": 40},
    "half size": {"vf": "scale=trunc(iw/4)*2:trunc(ih/4)*2", "vcodec": "libx264", "crf": 28},
    "15 fps": {"r": 15, "vcodec": "libx264", "crf": 28},
    "brighter": {"vf": "eq=brightness=0.08:contrast=1.1", "vcodec": "libx264", "crf": 28},
    "5% centre crop": {"vf": "crop=trunc(iw*0.95/2)*2:trunc(ih*0.95/2)*2", "vcodec": "libx264", "crf": 28},
    "10% centre crop": {"vf": "crop=trunc(iw*0.9/2)*2:trunc(ih*0.9/2)*2", "vcodec": "libx264", "crf": 28},
    "pillarboxed (not promised)": {"vf": "pad=iw+trunc(iw/6)*2:ih:trunc(iw/6):0", "vcodec": "libx264", "crf": 28},
    "mirrored (not promised)": {"vf": "hflip", "vcodec": "libx264", "crf": 28},
}


def quantiles(values: np.ndarray) -> dict[str, float]:
    v = np.sort(values[np.isfinite(values)])
    if not len(v):
        return {}
    return {"n": int(len(v)), "min": float(v[0]), "p1": float(np.quantile(v, 0.01)),
            "p5": float(np.quantile(v, 0.05)), "median": float(np.median(v)), "max": float(v[-1]),
            f"<= {leakage.THRESHOLD:g}": int((v <= leakage.THRESHOLD).sum())}


def same_split_nearest(splits: list[str], hashes: list[np.ndarray | None]) -> np.ndarray:
    """Per clip, the distance to its nearest *other* clip of its own split (relabel each clip's split-mates as
    another split, one split at a time)."""
    out = np.full(len(hashes), np.inf)
    for s in sorted(set(splits)):
        idx = [i for i, x in enumerate(splits) if x == s]
        if len(idx) < 2:
            continue
        sub = [hashes[i] for i in idx]
        # every clip its own "split": the nearest other clip of this split
        out[idx] = leakage.nearest_cross_split([str(k) for k in range(len(idx))], sub)
    return out


def copy_distances(info, hashes: dict[str, np.ndarray | None], copies: int, tmp: Path) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    rows = info.manifest.iloc[sorted(rng.choice(len(info.manifest), min(copies, len(info.manifest)), replace=False))]
    out: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in rows.itertuples():
        original = hashes[r.clip_id]
        if original is None:
            continue
        src = (info.path / r.source_path).resolve()
        for k, (name, options) in enumerate(VARIANTS.items()):
            dst = tmp / f"{r.clip_id}-{k}.mp4"
            cmd = ffmpeg_command(str(src), str(dst), output_options={**options, "an": None, "threads": 1})
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            copy = leakage.frame_hashes(sample_clip(dst, info.num_frames, info.image_size, threads=1))
            out[name].append(np.inf if copy is None else float(np.bitwise_count(original ^ copy).mean()))
            dst.unlink()
    return out


def measure(dataset_dir: Path, copies: int) -> dict[str, object]:
    info = load_dataset(dataset_dir)
    man = info.manifest
    started = time.perf_counter()
    hash_list = [leakage.npy_hashes(info.path / p) for p in man.frames_path]
    clips = [leakage.LeakClip(r.clip_id, r.split, r.label, str(r.youtube_id or ""), float(r.time_start),
                              float(r.time_end)) for r in man.itertuples()]
    pairs = leakage.find_leaks(clips, hash_list)
    seconds = time.perf_counter() - started
    splits = list(man.split)
    cross = leakage.nearest_cross_split(splits, hash_list)
    within = same_split_nearest(splits, hash_list)
    with tempfile.TemporaryDirectory() as tmp:
        copied = copy_distances(info, dict(zip(man.clip_id, hash_list)), copies, Path(tmp))
    return {
        "dataset": str(dataset_dir), "clips": len(man), "frames": info.num_frames, "size": info.image_size,
        "unhashed": sum(h is None for h in hash_list), "check_seconds": round(seconds, 3),
        "pairs": [{"a": p.a.clip_id, "split_a": p.a.split, "b": p.b.clip_id, "split_b": p.b.split,
                   "reason": p.reason, "distance": p.distance} for p in pairs],
        "nearest_other_split": quantiles(cross), "nearest_same_split": quantiles(within),
        "copies": {name: quantiles(np.array(v)) for name, v in copied.items()},
    }


def print_result(res: dict[str, object]) -> None:
    print(f"\n{res['dataset']}: {res['clips']} clips ({res['frames']} frames at {res['size']}), "
          f"{res['unhashed']} unhashed, check {res['check_seconds']} s, {len(res['pairs'])} pair(s) across splits")
    for p in res["pairs"]:
        print(f"  {p['reason']}: {p['a']} ({p['split_a']}) ~ {p['b']} ({p['split_b']}), distance {p['distance']:.2f}")
    print(f"| distances (bits of 64; threshold {leakage.THRESHOLD:g}) | n | min | p1 | p5 | median | max | "
          f"<= threshold |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {"nearest clip, other split": res["nearest_other_split"], "nearest clip, same split":
            res["nearest_same_split"], **{f"copy: {k}": v for k, v in res["copies"].items()}}
    for name, q in rows.items():
        if q:
            print(f"| {name} | {q['n']} | {q['min']:.2f} | {q['p1']:.2f} | {q['p5']:.2f} | {q['median']:.2f} | "
                  f"{q['max']:.2f} | {q[f'<= {leakage.THRESHOLD:g}']} |")


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="dataset folders the frames stage wrote")
    ap.add_argument("--copies", type=int, default=12, help="clips per dataset rewritten with ffmpeg")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    results = [measure(d, args.copies) for d in args.datasets]
    for res in results:
        print_result(res)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
