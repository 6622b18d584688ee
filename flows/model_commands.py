"""``vivit evaluate``, ``vivit runs``, ``vivit models``, ``vivit export``: the registered models from a terminal.

The parser registers these with :func:`add_parsers` and hands them to :func:`run`; the work is in ``tasks/``
(:mod:`tasks.evaluate`, :mod:`tasks.export`, :mod:`tasks.tracking`'s catalog), this module only reads the arguments
and prints. A user error (no store, an unknown model, a missing CSV, a bad format) raises
:class:`tasks.lib.errors.UserError`, which ``vivit`` turns into one line and exit 2. None of these start Prefect.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("evaluate", "runs", "models", "export")
EXIT_OK, EXIT_FAILED = 0, 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: config, env, ./mlruns)")
    p.add_argument("--config", "-c", type=Path, help="YAML config (its mlflow section: store, experiment)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (errors are one line otherwise)")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_parsers(sub) -> None:  # noqa: ANN001 - argparse's private _SubParsersAction
    p = sub.add_parser("evaluate", help="score a registered model on labelled local videos (CSV of path,label or a "
                                        "folder per class) and log it as an evaluation run of that version")
    p.add_argument("model", metavar="MODEL_URI", help="models:/NAME@champion, models:/NAME/VERSION or runs:/RUN/model")
    p.add_argument("--annotations", "-a", required=True, type=Path, metavar="CSV_OR_FOLDER",
                   help="CSV with a path and a label column (paths relative to the CSV), or ROOT/<class>/<videos>")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="for a Kinetics CSV (label,youtube_id,time_start,time_end): where the download stage stored "
                        "the clips (default: --config's data_dir)")
    p.add_argument("--split", default=None, help="for a Kinetics CSV: only this split's rows (e.g. test)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="clips per forward pass (bounds memory)")
    p.add_argument("--show", type=int, default=10, metavar="N", help="misclassified clips to print (all are logged)")
    p.add_argument("--no-log", dest="log", action="store_false", help="print only; log no MLflow run")
    _common(p)
    p = sub.add_parser("runs", help="recent training runs: key params, val/test scores, the baseline, the decision")
    p.add_argument("--experiment", "-e", default=None, help="one experiment (default: --config's, else all)")
    p.add_argument("--limit", "-n", type=_positive_int, default=20, help="runs to show (newest first)")
    _common(p)
    p = sub.add_parser("models", help="registered models with their versions, aliases and card scores")
    p.add_argument("name", nargs="?", default=None, help="one registered model (default: all)")
    p.add_argument("--versions", type=_positive_int, default=5, help="newest versions to show per model")
    _common(p)
    p = sub.add_parser("export", help="write a registered model as TorchScript or ONNX (+ a JSON sidecar with its "
                                      "sampling parameters), checked against the registered model")
    p.add_argument("model", metavar="MODEL_URI", help="models:/NAME@champion, models:/NAME/VERSION or runs:/RUN/model")
    p.add_argument("--format", "-f", dest="fmt", required=True, metavar="torchscript|onnx")
    p.add_argument("--out", "-o", required=True, type=Path, help="the file to write (its sidecar: FILE.json)")
    _common(p)


def _store(cfg, args) -> str:
    from tasks import tracking

    uri = args.tracking_uri or tracking.resolve_tracking_uri(cfg.mlflow, create=False)
    tracking.require_existing_store(uri)  # a missing SQLite file would be created, empty
    tracking.use_store(cfg.mlflow.model_copy(update={"tracking_uri": uri}))
    return uri


def run(cfg, args) -> int:
    """Run one of :data:`COMMANDS` with the loaded config; returns the exit code."""
    uri = _store(cfg, args)
    return {"evaluate": _evaluate, "runs": _runs, "models": _models, "export": _export}[args.command](cfg, args, uri)


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\revaluate {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _evaluate(cfg, args, uri: str) -> int:
    from tasks.evaluate import evaluate
    from tasks.lib.tables import matrix, table

    data_dir = args.data_dir or (cfg.data_dir if args.config or args.overrides else None)
    ev = evaluate(args.model, args.annotations, tracking_uri=uri, batch_size=args.batch_size, log=args.log,
                  experiment=cfg.mlflow.experiment, data_dir=data_dir, split=args.split, on_progress=_progress)
    r = ev.report
    what = f"{ev.name} v{ev.version}" if ev.name else ev.model_uri
    print(f"{what} on {ev.source}: {r['num_samples']} clips scored, {len(ev.unreadable)} unreadable")
    print(f"   accuracy  {r['accuracy']:.3f}  [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]  (95% Wilson)")
    print(f"   macro F1  {r['f1']:.3f}  [{r['f1_ci'][0]:.3f}, {r['f1_ci'][1]:.3f}]  (95% bootstrap)")
    print("\nper class:")
    print(table([{"class": c, **m} for c, m in r["per_class"].items()],
                ["class", "precision", "recall", "f1", "support"], indent="   "))
    print("\nconfusion matrix:")
    print(matrix(r["confusion_matrix"], ev.classes, indent="   "))
    if ev.misclassified:
        shown = ev.misclassified[: max(args.show, 0)]
        print(f"\nmisclassified: {len(ev.misclassified)} (most confident first{', all in the run' if ev.run_id else ''})")
        if shown:
            print(table(shown, ["path", "label", "predicted", "confidence"], indent="   "))
    else:
        print("\nmisclassified: none")
    if ev.unreadable:
        print(f"\nunreadable (left out of the scores): {len(ev.unreadable)}")
        print(table(ev.unreadable[: max(args.show, 0)], ["path", "error"], indent="   "))
    if ev.run_id:
        print(f"\nlogged evaluation run {ev.run_id} (tags model.name={ev.name} model.version={ev.version}) in {uri}")
    return EXIT_OK


def _runs(cfg, args, uri: str) -> int:
    from tasks.lib.tables import table
    from tasks.tracking import recent_runs

    experiment = args.experiment or (cfg.mlflow.experiment if args.config else None)
    rows = recent_runs(experiment, args.limit)
    if not rows:
        print(f"no training runs in {uri}" + (f" (experiment {experiment})" if experiment else ""))
        return EXIT_OK
    print(f"{len(rows)} most recent training runs in {uri}" + (f", experiment {experiment}" if experiment else "")
          + " (val: the smoothed val macro F1 that decides the champion; base_*: the baseline's macro F1)")
    print(table(rows, ["started", "run", "status", "preset", "input", "epochs", "clips", "val", "val_f1", "test_f1",
                       "test_acc", "base_val", "base_test", "decision", "version"]))
    return EXIT_OK


def _models(cfg, args, uri: str) -> int:
    from tasks.lib.tables import table
    from tasks.tracking import registered_models

    models = registered_models(args.name, args.versions)
    if not models:
        print(f"no registered models in {uri}: train one first (vivit run)")
        return EXIT_OK
    for i, m in enumerate(models):
        print(("\n" if i else "") + m.name)
        print(table(m.versions, ["version", "aliases", "registered", "val", "test_f1", "base_val", "decision", "run"],
                    indent="   "))
    print(f"\n(val: smoothed val macro F1, the champion score; base_val: the baseline's val macro F1; each version's "
          f"description in MLflow is its model card)")
    return EXIT_OK


def _export(cfg, args, uri: str) -> int:
    from tasks.export import export_model, sidecar_path

    record = export_model(args.model, args.fmt, args.out, tracking_uri=uri)
    check = record["check"]
    said = (f"matches the registered model to {check['max_abs_diff']:.1e} on {check['batch']} random clips"
            if isinstance(check, dict) else check)
    shape = ", ".join(map(str, record["input"]["shape"]))
    print(f"wrote {args.out} ({args.fmt}; uint8 frames ({shape}) -> probabilities of "
          f"{len(record['classes'])} classes): {said}")
    print(f"wrote {sidecar_path(Path(args.out))} (classes, frames, size, view, mean/std)")
    return EXIT_OK
