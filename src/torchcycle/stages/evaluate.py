"""evaluate@<task>: score the trained model on the held-out test split; write reports/<task>/metrics.json
(DVC metrics), plot data and figures under reports/<task>/evaluation/, and log all of it to the run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from torchcycle.atomic import atomic_dir, atomic_path, write_json
from torchcycle.config import Params
from torchcycle.evaluation import metrics as M
from torchcycle.evaluation import plots as P
from torchcycle.paths import TaskPaths
from torchcycle.stages.common import load_model, load_split
from torchcycle.tracking import mlflow_run
from torchcycle.training.loop import predict_proba


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow

    paths = TaskPaths(task, root)
    model, config = load_model(paths.models)
    classes = config["classes"]
    test = load_split(paths, "test")
    proba = predict_proba(model, test)
    y = test.y.numpy()
    metrics = M.classification_metrics(y, proba, classes)
    tables = M.curve_tables(y, proba, classes)
    history = pd.read_csv(paths.training / "learning_curve.csv")
    figures = {
        "confusion_matrix.png": P.confusion_matrix_figure(metrics["confusion_matrix"], classes),
        "roc.png": P.roc_figure(tables["roc"], metrics["roc_auc"]),
        "precision_recall.png": P.precision_recall_figure(tables["precision_recall"]),
        "calibration.png": P.calibration_figure(tables["calibration"]),
        "learning_curves.png": P.learning_curves(history),
    }
    predictions = pd.DataFrame(proba, columns=[f"proba_{c}" for c in classes])
    predictions.insert(0, "predicted", [classes[i] for i in proba.argmax(1)])
    predictions.insert(0, "actual", [classes[i] for i in y])

    # everything is computed before the first write; each file is replaced atomically
    with atomic_dir(paths.figures) as tmp:
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=120, bbox_inches="tight")
    for name, table in tables.items():
        with atomic_path(paths.evaluation / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    with atomic_path(paths.predictions) as tmp:
        predictions.to_csv(tmp, index=False)
    write_json(paths.metrics, metrics)

    with mlflow_run.reopen_run(params, paths, root):
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in scalars.items()})
        mlflow.log_artifact(str(paths.metrics), artifact_path="evaluation")
        if params.tracking.log_figures:
            mlflow.log_artifacts(str(paths.figures), artifact_path="figures")
        mlflow.log_artifacts(str(paths.evaluation), artifact_path="evaluation")
    return metrics
