"""``vivit evaluate``, ``vivit runs``, ``vivit models`` and ``vivit export`` on a real MLflow SQLite store with tiny
registered models (tests/support/registry.py) and real video files: what they print, what they log, the files they
write, and one line with exit 2 for each user error."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flows.cli import EXIT_OK, EXIT_USAGE, main
from tests.support.registry import CLASSES, S, register_trained, store_config, tiny_classifier
from tests.support.videos import make_counter_video

F = 6  # stored frames: a diff view of 2 positions x 2 views fits


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Model ``clf`` v1 (champion; a frame-MLP on diff views) and v2 (below its baseline), three labelled videos."""
    from model.views import ViewSpec

    d = tmp_path_factory.mktemp("models")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = store_config(d / "mlruns")
    view = ViewSpec(num_frames=2, input="diff", test_views=2, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    clf = tiny_classifier(num_frames=F, view=view)
    register_trained(cfg, clf, score=0.8, baseline=0.6)
    register_trained(cfg, tiny_classifier(num_frames=F, view=view, seed=1), score=0.5, baseline=0.6)
    videos = {}
    for i, label in enumerate(CLASSES):
        (d / "set" / label).mkdir(parents=True)
        videos[label] = make_counter_video(d / "set" / label / f"v{i}.mp4", 20 + 5 * i, width=48, height=40, seed=i)
    return {"cfg": cfg, "uri": cfg.tracking_uri, "clf": clf, "dir": d, "videos": videos}


def _cli(args: list[str], store) -> int:
    return main([*args, "--tracking-uri", store["uri"]])


def test_evaluate_prints_and_logs_an_evaluation_run_of_the_version(store, tmp_path, capsys):
    from mlflow import MlflowClient

    d = store["dir"]
    bad = d / "bad.mp4"
    bad.write_text("<html>not a video</html>")
    csv = d / "labelled.csv"  # relative paths: relative to the CSV; one clip labelled wrong on purpose
    rows = [(f"set/{label}/{v.name}", label) for label, v in store["videos"].items()]
    rows += [(f"set/{CLASSES[0]}/v0.mp4", CLASSES[1]), ("bad.mp4", CLASSES[2])]
    csv.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    assert _cli(["evaluate", "models:/clf@champion", "--annotations", str(csv)], store) == EXIT_OK
    out = capsys.readouterr().out
    assert "clf v1 on" in out and "4 clips scored, 1 unreadable" in out
    assert "accuracy" in out and "(95% Wilson)" in out and "macro F1" in out and "(95% bootstrap)" in out
    assert all(c in out for c in CLASSES) and "true \\ predicted" in out and "misclassified:" in out
    assert "bad.mp4" in out and "logged evaluation run" in out

    client = MlflowClient()
    run_id = client.get_model_version("clf", "1").tags["eval.last_run"]
    run = client.get_run(run_id)
    t, m = run.data.tags, run.data.metrics
    assert (t["vivit.evaluation"], t["model.name"], t["model.version"]) == ("true", "clf", "1")
    assert t["model.run_id"] == client.get_model_version("clf", "1").run_id
    assert m["eval/clips"] == 4 and m["eval/unreadable"] == 1
    assert 0 <= m["eval/accuracy_ci_low"] <= m["eval/accuracy"] <= m["eval/accuracy_ci_high"] <= 1
    assert {f"eval/f1_{c.replace(' ', '_')}" for c in CLASSES} <= set(m)
    arts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.json", "evaluation/report.json",
            "evaluation/predictions.csv", "evaluation/misclassified.json"} <= arts
    cm = json.loads(Path(client.download_artifacts(run_id, "evaluation/confusion_matrix.json", str(tmp_path))).read_text())
    assert cm["classes"] == CLASSES and np.asarray(cm["confusion_matrix"]).sum() == 4
    # the same model on a folder per class, without logging: the scores agree with the classifier itself
    assert _cli(["evaluate", "models:/clf/1", "--annotations", str(d / "set"), "--no-log"], store) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 clips scored, 0 unreadable" in out and "logged evaluation run" not in out


def test_evaluate_a_kinetics_split_the_pipeline_downloaded(store, tmp_path, capsys):
    """A Kinetics CSV names YouTube clips: with --data-dir they are the download stage's files
    (raw/<label_slug>/<id>_<start>_<end>.mp4); --split keeps one split; a clip not there is reported unreadable."""
    import shutil

    data = tmp_path / "data"
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, (label, video) in enumerate(store["videos"].items()):
        dest = data / "raw" / label.replace(" ", "_") / f"yt{i:09d}_000010_000020.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, dest)
        rows.append(f"{label},yt{i:09d},10,20,test")
    rows += [f"{CLASSES[0]},gone0000000,0,10,test", f"{CLASSES[1]},trainonly00,0,10,train"]
    csv = tmp_path / "k.csv"
    csv.write_text("\n".join(rows) + "\n")
    args = ["evaluate", "models:/clf/1", "--annotations", str(csv), "--data-dir", str(data), "--split", "test",
            "--no-log"]
    assert _cli(args, store) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 clips scored, 1 unreadable" in out and "gone0000000_000000_000010.mp4" in out and "trainonly" not in out


@pytest.mark.parametrize("args, said", [
    (["evaluate", "models:/nope@champion", "--annotations", "{dir}/labelled.csv"], "no registered model 'nope'"),
    (["evaluate", "models:/clf/9", "--annotations", "{dir}/set"], "clf has no version 9: versions 1, 2"),
    (["evaluate", "models:/clf@champion", "--annotations", "{dir}/missing.csv"], "no such file or folder"),
    (["evaluate", "models:/clf@champion", "--annotations", "{dir}/kinetics.csv"], "pass --data-dir"),
    (["evaluate", "models:/clf@champion", "--annotations", "{dir}/set", "--split", "test"], "--split applies to"),
    (["evaluate", "models:/clf@champion", "--annotations", "{dir}/unknown.csv"], "'jumping' are not classes"),
    (["export", "models:/clf@champion", "--format", "tflite", "--out", "{dir}/m.x"], "--format must be one of"),
    (["export", "models:/clf@nobody", "--format", "onnx", "--out", "{dir}/m.onnx"], "clf has no alias @nobody"),
    (["models", "nope"], "no registered model 'nope'"),
    (["runs", "--experiment", "nope"], "no experiment 'nope'"),
])
def test_user_errors_exit_2_with_one_line(store, capsys, args, said):
    d = store["dir"]
    (d / "kinetics.csv").write_text("label,youtube_id,time_start,time_end,split\nx,abc,0,10,train\n")
    (d / "unknown.csv").write_text(f"path,label\nset/{CLASSES[0]}/v0.mp4,jumping\n")
    assert _cli([a.format(dir=d) for a in args], store) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and said in err, err


def test_a_missing_store_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert main(["models", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == EXIT_USAGE
    assert "no MLflow store at" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_runs_and_models_tables(store, capsys):
    assert _cli(["runs"], store) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("started"))
    assert out[head].split()[:9] == ["started", "run", "status", "preset", "input", "epochs", "clips", "val", "val_f1"]
    rows = [line for line in out[head + 1:] if line.strip()]
    assert len(rows) == 2 and "below_baseline" in rows[0] and "first_champion" in rows[1]  # newest first
    assert "frame-mlp" in rows[1] and "30/12/12" in rows[1] and "0.800" in rows[1] and "0.600" in rows[1]

    assert _cli(["models"], store) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("clf\n") and "\nclf-video\n" in out
    lines = out.splitlines()
    v2, v1 = lines[2], lines[3]  # newest version first
    assert v2.split()[:2] == ["2", "challenger"] and "below_baseline" in v2
    assert v1.split()[:2] == ["1", "champion"] and "0.800" in v1 and "first_champion" in v1
    assert _cli(["models", "clf-video", "--versions", "1"], store) == EXIT_OK
    out = capsys.readouterr().out
    rows = [x.split() for x in out.splitlines()[2:] if x.startswith("   ")]
    assert out.startswith("clf-video\n") and [r[:2] for r in rows] == [["2", "challenger"]]


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, F, S, S, 3), dtype=np.uint8)


def test_export_torchscript_reproduces_the_pyfunc(store, tmp_path, capsys):
    import mlflow.pyfunc
    import torch

    out = tmp_path / "clf.pt"
    assert _cli(["export", "models:/clf@champion", "--format", "torchscript", "--out", str(out)], store) == EXIT_OK
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "matches the registered model" in said
    side = json.loads((tmp_path / "clf.pt.json").read_text())
    assert side["classes"] == CLASSES and side["sampling"]["frames"] == F and side["sampling"]["size"] == S
    assert side["view"]["input"] == "diff" and side["mean"] == [0.4, 0.5, 0.6] and side["std"] == [0.2, 0.25, 0.3]
    assert side["input"]["shape"] == ["batch", F, S, S, 3] and side["check"]["max_abs_diff"] <= 1e-4
    assert (side["model_name"], side["model_version"]) == ("clf", 1)
    loaded = torch.jit.load(str(out))
    pyfunc = mlflow.pyfunc.load_model("models:/clf@champion")
    for b in (1, 5):  # any batch size, not only the traced one
        frames = _frames(b, b)
        with torch.inference_mode():
            got = loaded(torch.from_numpy(frames)).numpy()
        np.testing.assert_allclose(got, pyfunc.predict(frames).to_numpy(), atol=1e-4)


def test_export_onnx_reproduces_the_pyfunc(store, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import mlflow.pyfunc

    out = tmp_path / "sub" / "clf.onnx"
    assert _cli(["export", "models:/clf-video/1", "--format", "onnx", "--out", str(out)], store) == EXIT_OK
    assert "matches the registered model" in capsys.readouterr().out
    side = json.loads((tmp_path / "sub" / "clf.onnx.json").read_text())
    assert side["format"] == "onnx" and side["classes"] == CLASSES and side["check"]["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pyfunc = mlflow.pyfunc.load_model("models:/clf/1")
    for b in (1, 4):
        frames = _frames(b, 10 + b)
        np.testing.assert_allclose(session.run(None, {"frames": frames})[0], pyfunc.predict(frames).to_numpy(),
                                   atol=1e-4)


def test_the_onnx_pooling_is_pytorchs_adaptive_pooling():
    import torch
    import torch.nn.functional as tf

    from model.export import static_adaptive_avg_pool3d

    x = torch.randn(2, 5, 4, 7, 9)
    for grid in ((2, 7, 3), (3, 2, 4), (1, 1, 1)):  # divisible, uneven windows, global
        torch.testing.assert_close(static_adaptive_avg_pool3d(x, grid), tf.adaptive_avg_pool3d(x, grid))


def test_the_i3d_stem_transformer_exports_to_onnx(tmp_path):
    """``train.init: i3d-kinetics400``'s network (a random I3D stem here) exports too: its adaptive 3D pooling, which
    ONNX lacks, becomes fixed average pools of the same numbers."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from model.i3d_vivit import build_i3d_vivit
    from model.predict import VideoClassifier
    from model.views import ViewSpec
    from tasks.export import export_classifier, run_exported

    torch.manual_seed(0)
    view = ViewSpec(num_frames=16, input="rgb", test_views=1, mean=(0.5,) * 3, std=(0.5,) * 3)
    clf = VideoClassifier(build_i3d_vivit(3, None, grid=(2, 2, 2), depth=1), classes=CLASSES, num_frames=16,
                          image_size=32, view=view)
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 32, 32, 3), dtype=np.uint8)
    with torch.inference_mode():
        want = clf(torch.from_numpy(frames)).numpy()
    export_classifier(clf, "onnx", tmp_path / "i3d.onnx")
    np.testing.assert_allclose(run_exported(tmp_path / "i3d.onnx", "onnx", frames), want, atol=1e-4)
