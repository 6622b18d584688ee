"""Peak memory of ``vivit predict`` on real workloads: does it stay bounded as the input grows?

Registers an (untrained) classifier of the default recipe (the config's defaults: ``vivit-fe-conv-tiny`` on frame
differences, 32 stored frames at 64x64, 2 views averaged) in a temporary MLflow store, generates the inputs
with ffmpeg, and runs ``vivit predict`` once per workload in its own process; the peak RSS is that process's
``ru_maxrss`` (``os.wait4``), time is wall-clock. Workloads:

* ``one clip``: a 10 s 320x240 clip: the fixed cost (Python, torch, MLflow, the model);
* ``folder``: ``--clips`` such clips in a folder, ``--top-k 2``;
* ``10-minute video``: 320x240 at 25 fps, ``--window 2 --stride 1`` (599 windows);
* ``4K clip``: 3840x2160, 3 s.

The figures that matter are the ratios to ``one clip``: about 1 means memory does not grow with the workload.
``python benchmarks/predict_memory.py [--clips 40] [--minutes 10]`` (a few minutes on 2 cores, mostly encoding).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def frames(n: int, width: int, height: int, seed: int):
    """Moving bars over noise: cheap to draw, not trivial to encode."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (height, width, 3), dtype=np.uint8)
    for i in range(n):
        f = np.roll(base, 3 * i, axis=1)
        y = (5 * i) % max(1, height - 20)
        f[y : y + 20] = 255
        yield f


def make_inputs(d: Path, clips: int, minutes: float) -> dict[str, list[str]]:
    from tasks.lib.media import encode_video

    folder = d / "clips"
    folder.mkdir()
    for i in range(clips):
        encode_video(frames(250, 320, 240, i), folder / f"c{i:03d}.mp4")
    long = encode_video(frames(int(minutes * 60 * 25), 320, 240, 99), d / "long.mp4", gop=250)
    big = encode_video(frames(75, 3840, 2160, 7), d / "4k.mp4", crf=30)
    return {"one clip": [str(folder / "c000.mp4")], f"folder of {clips} clips, --top-k 2": [str(folder), "--top-k", "2"],
            f"{minutes:g}-minute video, --window 2 --stride 1": [str(long), "--window", "2", "--stride", "1"],
            "4K clip (3840x2160, 3 s)": [str(big)]}


def register_model(uri: str) -> None:
    import torch

    from model.predict import VideoClassifier
    from model.presets import build_model
    from tasks import tracking
    from tasks.lib.config import MlflowConfig

    from tasks.lib.config import load_config

    cfg = MlflowConfig(tracking_uri=uri, experiment="bench", model_name="bench")
    tracking.use_store(cfg)
    torch.manual_seed(0)
    recipe = load_config()  # what `vivit train` packages with no train.* / frames.* overrides
    view, frames, size = recipe.train.view, recipe.frames.num_frames, recipe.frames.size
    net = build_model(recipe.train.model, num_classes=2, num_frames=view.num_frames, image_size=size,
                      in_channels=view.channels)
    clf = VideoClassifier(net, classes=["a", "b"], num_frames=frames, image_size=size, view=view)
    with tracking.training_run(cfg.experiment, "bench", {}) as run_id:
        model_uri = tracking.log_classifier(clf, metadata={"classes": ["a", "b"], "num_frames": frames, "image_size": size})
        tracking.register_and_promote(model_uri, cfg.model_name, run_id, 0.5)


def measure(args: list[str], uri: str, out: Path) -> tuple[float, float, int]:
    """(peak RSS MiB, seconds, result lines) of one ``vivit predict`` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.cli", "predict", *args, "--model", "models:/bench@champion",
           "--tracking-uri", uri]
    started = time.perf_counter()
    with out.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, seconds, len(out.read_text().splitlines())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--minutes", type=float, default=10.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        uri = f"sqlite:///{d / 'mlflow.db'}"
        register_model(uri)
        t0 = time.perf_counter()
        workloads = make_inputs(d, a.clips, a.minutes)
        print(f"inputs generated in {time.perf_counter() - t0:.0f} s")
        rows = []
        for name, args in workloads.items():
            rss, secs, lines = measure(args, uri, d / "out.jsonl")
            if name.startswith("10") or "minute" in name:
                segments = len(json.loads((d / "out.jsonl").read_text().splitlines()[0])["segments"])
                name += f" ({segments} windows)"
            rows.append((name, rss, secs, lines))
        base = rows[0][1]
        print("\n| workload | results | peak RSS (MiB) | vs one clip | wall (s) |\n|---|---:|---:|---:|---:|")
        for name, rss, secs, lines in rows:
            print(f"| {name} | {lines} | {rss:.0f} | {rss / base:.2f} | {secs:.1f} |")
        print("\n" + " ".join(f"ratio_{i}={r[1] / base:.2f}" for i, r in enumerate(rows[1:], 1)))


if __name__ == "__main__":
    main()
