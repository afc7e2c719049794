"""evaluate@<task>: score the trained model on the held-out test split; write reports/<task>/metrics.json
(DVC metrics), plot data under reports/<task>/evaluation/ (DVC plots), figures, the test predictions,
and log all of it to the run. Which metrics and plots depends on the target type (torchcycle.targets):
its `metrics` of the head's outputs, its `diagnostics` of the raw and head outputs (e.g. calibration
before and after), and percentile-bootstrap confidence intervals of its `headline_metrics`
(`evaluate.bootstrap_samples` resamples of the test rows, metrics.json `confidence_intervals`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from torchcycle.artifacts import load_model, load_split
from torchcycle.atomic import atomic_dir, atomic_path, write_json
from torchcycle.config import Params
from torchcycle.evaluation import plots as P
from torchcycle.evaluation.bootstrap import bootstrap_intervals
from torchcycle.paths import TaskPaths
from torchcycle.targets import target_of
from torchcycle.tracking import mlflow_run
from torchcycle.training.loop import predict_outputs


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow

    paths = TaskPaths(task, root)
    model, config = load_model(paths.models)
    state = config["target"]
    target = target_of(state)
    test = load_split(paths, "test")
    ev = params.evaluate
    options = {"ece_bins": ev.ece_bins, "bootstrap_samples": ev.bootstrap_samples, "confidence": ev.confidence,
               "seed": params.seed}
    raw = predict_outputs(model, test)
    with torch.inference_mode():
        outputs = target.head(state)(torch.from_numpy(raw)).numpy()
    y = test.y.numpy()
    metrics = target.metrics(y, outputs, state, options)
    extra, extra_tables, extra_figures = target.diagnostics(y, raw, outputs, state, options)
    metrics.update(extra)
    headline = set(target.headline_metrics)
    metrics["confidence_intervals"] = bootstrap_intervals(
        lambda yy, oo: {k: v for k, v in target.headline(yy, oo, state, options).items() if k in headline},
        y, outputs, ev.bootstrap_samples, ev.confidence, params.seed)
    tables = {**target.tables(y, outputs, state, options), **extra_tables}
    figures = {**target.figures(metrics, tables, state), **extra_figures,
               "learning_curves.png": P.learning_curves(pd.read_csv(paths.learning_curve))}
    predictions = target.predictions(outputs, state)
    predictions.insert(0, "actual", target.decode(y, state))

    # everything is computed before the first write; each file is replaced atomically
    with atomic_dir(paths.figures) as tmp:
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=120, bbox_inches="tight")
    with atomic_dir(paths.evaluation) as tmp:
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
    with atomic_path(paths.predictions) as tmp:
        predictions.to_csv(tmp, index=False)
    write_json(paths.metrics, metrics)

    with mlflow_run.reopen_run(params, paths, root):
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        scalars |= {f"{k}_ci_{end}": ci[end] for k, ci in metrics["confidence_intervals"].items()
                    for end in ("low", "high")}
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in scalars.items()})
        mlflow.log_artifact(str(paths.metrics), artifact_path="evaluation")
        if params.tracking.log_figures:
            mlflow.log_artifacts(str(paths.figures), artifact_path="figures")
        mlflow.log_artifacts(str(paths.evaluation), artifact_path="evaluation")
    return metrics
