"""Serving for real: the registered pyfunc models through ``mlflow.pyfunc`` and through ``mlflow models serve`` on
loopback answering real HTTP requests, and ``vivit predict`` on folders, windows and result files."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import tracking
from tasks.lib.config import MlflowConfig
from tasks.lib.sampling import sample_clip
from tests.support.ports import free_port
from tests.support.registry import CLASSES, S, T, tiny_classifier
from tests.support.videos import make_counter_video

ROOT = Path(__file__).resolve().parents[1]


def _classifier(seed: int = 0):
    return tiny_classifier(CLASSES, seed=seed, num_frames=T, size=S)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A store with model ``clf`` (and ``clf-video``) v1 as champion, and some videos."""
    d = tmp_path_factory.mktemp("serving")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    (d / "mlruns").mkdir()  # where `vivit` looks by default, as after `make run` in that folder
    cfg = MlflowConfig(tracking_uri=f"sqlite:///{d / 'mlruns' / 'mlflow.db'}", experiment="serve", model_name="clf")
    tracking.use_store(cfg)
    clf = _classifier()
    with tracking.training_run(cfg.experiment, "r", {}) as run_id:
        uri = tracking.log_classifier(clf, metadata={"classes": CLASSES, "num_frames": T, "image_size": S})
        reg = tracking.register_and_promote(uri, cfg.model_name, run_id, 0.5)
    assert reg.decision == "first_champion"
    (d / "clips").mkdir()
    videos = [make_counter_video(d / "clips" / f"v{i}.mp4", 30 + 15 * i, width=64, height=48, seed=i) for i in range(3)]
    return {"cfg": cfg, "clf": clf, "dir": d, "videos": videos}


def _expected(clf, frames: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return clf(torch.from_numpy(frames)).numpy()


def test_packaged_classifier_file_rebuilds_the_same_classifier(tmp_path):
    """The registered models carry the classifier as a weights-only file (best.pt's format), not a pickle: a
    single-frame ViViT with a frame-difference view and its own normalisation comes back computing the same."""
    import torch

    from model.checkpoint import load_classifier, save_classifier
    from model.predict import SingleFrame, VideoClassifier
    from model.presets import build_model
    from model.views import ViewSpec

    torch.manual_seed(1)
    view = ViewSpec(num_frames=4, input="diff", test_views=2, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    net = SingleFrame(build_model("vivit-fe-conv-tiny", num_classes=3, num_frames=4, image_size=32))
    clf = VideoClassifier(net, classes=CLASSES, num_frames=8, image_size=32, view=view)
    save_classifier(clf, tmp_path / "classifier.pt")
    assert not list(tmp_path.glob("*.tmp*"))
    again = load_classifier(tmp_path / "classifier.pt")
    assert isinstance(again.network, SingleFrame) and again.view == view and again.classes == CLASSES
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8))
    with torch.inference_mode():
        torch.testing.assert_close(again(frames), clf.eval()(frames))


def test_pyfunc_takes_uint8_batches_and_names_the_classes(registered, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # models from code: nothing is unpickled
    model = mlflow.pyfunc.load_model("models:/clf@champion")
    frames = np.random.default_rng(0).integers(0, 256, (5, T, S, S, 3), dtype=np.uint8)
    out = model.predict(frames)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == CLASSES and len(out) == 5
    np.testing.assert_allclose(out.to_numpy(), _expected(registered["clf"], frames), atol=1e-6)
    with pytest.raises(Exception):
        model.predict(np.zeros((1, T + 1, S, S, 3), np.uint8))  # the signature's shape is enforced
    # PyTorch users still get the module, for any batch size
    net = tracking.load_classifier("models:/clf@champion")
    assert net.classes == CLASSES and (net.num_frames, net.image_size) == (T, S)


def test_a_model_registered_pickled_before_still_loads(registered, monkeypatch):
    """Models logged before the classifier became a weights-only artifact carry a pickled ClassifierPyfunc: they
    still load (where MLflow allows pickles, its default) and compute the same."""
    import mlflow
    import mlflow.pyfunc

    from tasks.tracking.models import ClassifierPyfunc

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    clf = registered["clf"]
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="old", python_model=ClassifierPyfunc(clf),
                                       signature=tracking.classifier_signature(T, S, CLASSES))
    frames = np.random.default_rng(3).integers(0, 256, (2, T, S, S, 3), dtype=np.uint8)
    out = mlflow.pyfunc.load_model(info.model_uri).predict(frames)
    np.testing.assert_allclose(out.to_numpy(), _expected(clf, frames), atol=1e-6)
    assert tracking.load_classifier(info.model_uri).classes == CLASSES


def test_video_pyfunc_samples_like_training(registered, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("VIVIT_SERVE_ROOT", str(registered["dir"]))  # paths are read only under a configured root
    assert tracking.aliases("clf-video") == {"champion": 1, "challenger": 1}
    model = mlflow.pyfunc.load_model("models:/clf-video@champion")
    v0, v1 = registered["videos"][:2]
    bad = registered["dir"] / "bad.mp4"
    bad.write_text("<html>not a video</html>")
    out = model.predict(pd.DataFrame({"path": [str(v0), None, str(bad)],
                                      "content": [None, v1.read_bytes(), None]}))
    assert list(out.columns) == ["label", "error", *CLASSES] and len(out) == 3
    frames = np.stack([sample_clip(v, T, S) for v in (v0, v1)])
    np.testing.assert_allclose(out.loc[:1, CLASSES].to_numpy(float), _expected(registered["clf"], frames), atol=1e-5)
    assert list(out.loc[:1, "error"]) == ["", ""] and out.loc[2, "error"].startswith("unreadable")
    assert list(out.loc[2, CLASSES]) == [None] * len(CLASSES)  # null in JSON, not NaN
    assert list(out.loc[:1, "label"]) == [CLASSES[i] for i in out.loc[:1, CLASSES].to_numpy(float).argmax(1)]
    only_paths = model.predict(pd.DataFrame({"path": [str(v0)]}))
    np.testing.assert_allclose(only_paths[CLASSES].to_numpy(), out.loc[:0, CLASSES].to_numpy(float), atol=1e-6)


def test_the_video_model_reads_request_content_only_by_default(registered, monkeypatch, tmp_path):
    """Closed by default: without VIVIT_SERVE_ROOT a row naming a server path is refused without touching the
    file; with it, only files that resolve inside the root are read (no '..', no absolute path outside, no
    symlink out), and every refused or failed row serialises to strict JSON (null probabilities, not NaN)."""
    import mlflow.pyfunc

    monkeypatch.delenv("VIVIT_SERVE_ROOT", raising=False)
    model = mlflow.pyfunc.load_model("models:/clf-video@champion")
    v0 = registered["videos"][0]
    out = model.predict(pd.DataFrame({"path": [str(v0), "/etc/passwd"]}))
    assert all(e.startswith("path_refused: this server reads request content only") for e in out["error"])
    assert out[CLASSES].isna().all().all() and list(out["label"]) == ["", ""]
    rows = _strict_json(json.dumps(out.to_dict(orient="records")))  # what the REST server sends
    assert all(r[c] is None for r in rows for c in CLASSES)
    ok = model.predict(pd.DataFrame({"content": [v0.read_bytes()]}))
    assert ok.loc[0, "error"] == "" and ok[CLASSES].dtypes.eq(np.float64).all()  # all good: plain float columns

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    inside = root / "sub" / "in.mp4"
    inside.write_bytes(v0.read_bytes())
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(v0.read_bytes())
    (root / "escape.mp4").symlink_to(outside)
    (root / "escape_dir").symlink_to(tmp_path)
    monkeypatch.setenv("VIVIT_SERVE_ROOT", str(root))
    model = mlflow.pyfunc.load_model("models:/clf-video@champion")
    asked = ["sub/in.mp4", str(inside), "../outside.mp4", "sub/../../outside.mp4", str(outside), "escape.mp4",
             "escape_dir/outside.mp4", str(root / ".." / "outside.mp4"), ""]
    out = model.predict(pd.DataFrame({"path": asked}))
    assert list(out.loc[:1, "error"]) == ["", ""]
    np.testing.assert_allclose(out.loc[0, CLASSES].to_numpy(float), out.loc[1, CLASSES].to_numpy(float))
    assert all(e.startswith("path_refused") for e in out.loc[2:7, "error"]), list(out["error"])
    assert out.loc[8, "error"].startswith("no input")
    _strict_json(json.dumps(out.to_dict(orient="records")))
    # the model config at load time configures the root too (Python users: mlflow.pyfunc.load_model(model_config=))
    monkeypatch.delenv("VIVIT_SERVE_ROOT")
    model = mlflow.pyfunc.load_model("models:/clf-video@champion", model_config={"serve_root": str(root)})
    assert model.predict(pd.DataFrame({"path": ["sub/in.mp4"]})).loc[0, "error"] == ""


# Loads both registered models and predicts, as a container would: the project is not installed (the editable
# install's finder is dropped, the working directory is elsewhere) and Prefect, Dask and prefect-dask raise on import.
_CONTAINER = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
import mlflow.pyfunc, numpy as np, pandas as pd
frames = mlflow.pyfunc.load_model("models:/clf@champion").predict(np.load(sys.argv[1]))
video = mlflow.pyfunc.load_model("models:/clf-video@champion").predict(pd.DataFrame({"path": [sys.argv[2]]}))
print(json.dumps({"frames": frames.to_numpy().tolist(), "video": video.to_dict("records"),
                  "project": {m: getattr(x, "__file__", None) for m, x in sys.modules.items()
                              if m.split(".")[0] in ("model", "tasks", "flows")}}))
"""


def test_a_registered_model_serves_without_prefect(registered, tmp_path):
    """The served models carry ``model/`` and of ``tasks/`` only the served package and the decoding it imports, and
    list no orchestrator among their requirements: they load and predict where Prefect cannot be imported."""
    import mlflow
    import mlflow.pyfunc

    from tasks.serving import CODE

    for name in ("clf", "clf-video"):
        reqs = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{name}@champion")).read_text().split()
        assert not [r for r in reqs if r.split("=")[0].split("[")[0] in ("prefect", "prefect-dask", "dask", "distributed")], reqs
    shipped = Path(mlflow.artifacts.download_artifacts("models:/clf-video@champion", dst_path=str(tmp_path / "dl")))
    tasks_files = {p.relative_to(shipped / "code").as_posix() for p in (shipped / "code" / "tasks").rglob("*.py")}
    assert tasks_files == {rel for rel in (p.relative_to(ROOT).as_posix() for c in CODE if c.startswith("tasks")
                                          for p in ([ROOT / c] if c.endswith(".py") else (ROOT / c).rglob("*.py")))}
    assert not [f for f in tasks_files if f.startswith("tasks/tracking/") or f.count("/") == 1 and f != "tasks/__init__.py"]

    blocked = tmp_path / "blocked"
    for pkg in ("prefect", "prefect_dask", "dask", "distributed"):
        (blocked / pkg).mkdir(parents=True)
        (blocked / pkg / "__init__.py").write_text(f"raise ImportError('{pkg} is not installed in this container')\n")
    frames = np.random.default_rng(5).integers(0, 256, (3, T, S, S, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    video = registered["videos"][1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env |= {"PYTHONPATH": str(blocked), "MLFLOW_TRACKING_URI": registered["cfg"].tracking_uri,
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "VIVIT_SERVE_ROOT": str(video.parent)}
    proc = subprocess.run([sys.executable, "-c", _CONTAINER, str(tmp_path / "frames.npy"), str(video)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["frames"], _expected(registered["clf"], frames), atol=1e-5)
    [row] = got["video"]
    want = _expected(registered["clf"], sample_clip(video, T, S)[None])[0]
    assert row["error"] == "" and row["label"] == CLASSES[int(want.argmax())]
    np.testing.assert_allclose([row[c] for c in CLASSES], want, atol=1e-5)
    # every project module came from the models' own code, none from this checkout
    assert got["project"] and all(f and "/code/" in f and not f.startswith(str(ROOT)) for f in got["project"].values()), \
        got["project"]
    assert "tasks.lib.predicting" in got["project"] and "tasks.tracking" not in got["project"]


def _strict_json(text: str | bytes):
    """JSON as a browser parses it: ``NaN`` / ``Infinity`` are not JSON."""
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return _strict_json(resp.read())


def _serve(model_uri: str, tracking_uri: str, log: Path):
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH: the venv's, as when activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}  # a server that refuses pickled models serves ours
    proc = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri,
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300  # a loaded shared machine can take minutes
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"mlflow models serve did not come up: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_real_requests(registered):
    d, uri = registered["dir"], registered["cfg"].tracking_uri
    frames = np.random.default_rng(1).integers(0, 256, (2, T, S, S, 3), dtype=np.uint8)
    proc, base = _serve("models:/clf@champion", uri, d / "serve.log")
    try:
        got = _post(f"{base}/invocations", {"inputs": frames.tolist()})["predictions"]
    finally:
        proc.terminate()
        proc.wait(30)
    assert [list(r) for r in got] == [CLASSES, CLASSES]
    np.testing.assert_allclose([[r[c] for c in CLASSES] for r in got], _expected(registered["clf"], frames), atol=1e-5)

    video = registered["videos"][2]
    proc, base = _serve("models:/clf-video@champion", uri, d / "serve-video.log")
    try:
        body = {"dataframe_split": {"columns": ["content"], "data": [
            [base64.b64encode(video.read_bytes()).decode()], [base64.b64encode(b"<html>not a video</html>").decode()]]}}
        row, bad = _post(f"{base}/invocations", body)["predictions"]  # strict JSON: NaN would raise
        # no VIVIT_SERVE_ROOT: a server path is refused, whatever it names
        body = {"dataframe_split": {"columns": ["path"], "data": [[str(video)]]}}
        [path] = _post(f"{base}/invocations", body)["predictions"]
    finally:
        proc.terminate()
        proc.wait(30)
    want = _expected(registered["clf"], sample_clip(video, T, S)[None])[0]
    assert row["error"] == "" and row["label"] == CLASSES[int(want.argmax())]
    np.testing.assert_allclose([row[c] for c in CLASSES], want, atol=1e-5)
    assert bad["error"].startswith("unreadable") and all(bad[c] is None for c in CLASSES)
    assert path["error"].startswith("path_refused") and all(path[c] is None for c in CLASSES)


def _vivit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flows.cli", "predict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_predicts_a_folder_with_top_k_and_the_default_model(registered, tmp_path):
    """No --model, --config or --tracking-uri: ``./mlruns`` and its only champion (``clf``) are used, as after
    ``make run`` (which registers ``vivit-demo`` there)."""
    d = registered["dir"]
    proc = _vivit(["clips", "--top-k", "2", "--batch-size", "2"], d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [r["path"] for r in lines] == [f"clips/{v.name}" for v in registered["videos"]]
    for r in lines:
        assert len(r["top_k"]) == 2 and r["top_k"][0]["label"] == r["label"]
        assert r["top_k"][0]["p"] >= r["top_k"][1]["p"] and "p_positive" not in r
    # the same through a .csv written atomically, with windows
    out = tmp_path / "res.csv"
    proc = _vivit([str(d / "clips" / "v*.mp4"), "--window", "1", "--stride", "0.5", "--output", str(out),
                   "--tracking-uri", registered["cfg"].tracking_uri], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(out, keep_default_na=False)
    assert set(rows["path"]) == {str(v) for v in registered["videos"]}
    assert (rows["segment"] == "all").sum() == 3 and (rows["segment"] != "all").sum() > 3
    assert {f"p_{c}" for c in CLASSES} <= set(rows.columns) and "wrote" in proc.stderr


def test_cli_errors_for_an_unknown_model_and_bad_options(registered, tmp_path):
    uri = registered["cfg"].tracking_uri
    proc = _vivit([str(registered["videos"][0]), "--model", "models:/nope@champion", "--tracking-uri", uri], tmp_path)
    assert proc.returncode == 2 and "cannot load model" in proc.stderr
    proc = _vivit([str(registered["videos"][0]), "--stride", "1", "--tracking-uri", uri], tmp_path)
    assert proc.returncode == 2 and "--stride needs --window" in proc.stderr


@pytest.mark.slow
def test_predict_flow_has_the_same_options(prefect_harness, registered, tmp_path):
    from flows.predict import predict_flow

    out = tmp_path / "res.jsonl"
    clips = registered["dir"] / "clips"
    results = predict_flow(videos=[str(clips), str(tmp_path / "missing.mp4")], model_uri=None,
                           tracking_uri=registered["cfg"].tracking_uri, top_k=2, window=1.0, stride=1.0,
                           batch_size=2, output=str(out))
    assert [r["path"] for r in results] == [*(str(v) for v in registered["videos"]), str(tmp_path / "missing.mp4")]
    assert all(len(r["top_k"]) == 2 and r["segments"] for r in results[:3]) and results[3]["error"] == "file not found"
    assert [json.loads(line) for line in out.read_text().splitlines()] == results


def test_a_non_finite_probability_is_null_not_nan():
    """The frames model too: whatever the network gives, what MLflow's server serialises is strict JSON."""
    import torch

    from tasks.serving.pyfunc import ClassifierPyfunc

    class Broken(torch.nn.Module):
        classes = CLASSES

        def forward(self, frames):
            out = torch.full((len(frames), len(CLASSES)), 0.5)
            out[0, 1] = float("nan")
            return out

    out = ClassifierPyfunc(Broken()).predict(None, np.zeros((2, T, S, S, 3), np.uint8))
    rows = _strict_json(json.dumps(out.to_dict(orient="records")))
    assert rows[0][CLASSES[1]] is None and rows[1] == dict.fromkeys(CLASSES, 0.5)
