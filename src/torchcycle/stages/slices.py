"""slices@<task>: the trained model's metrics on each group of the test split (the kind of data decides the
groups: a table's categorical columns, an image's class and brightness, a text's class and length) and,
for a binary target, fairlearn's group-fairness measures; reports/<task>/slices.json (DVC metrics),
figures, a table and the test inputs the model got most confidently wrong (`mistakes.csv`, with the
text or image path that identifies them) under reports/<task>/slices/, all logged to the training run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from torchcycle.artifacts import load_model, load_split
from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import Params
from torchcycle.evaluation import slices as S
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths
from torchcycle.targets import target_of
from torchcycle.tracking import mlflow_run
from torchcycle.training.loop import predict_outputs

MISTAKES = 25


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow

    cfg, paths = params.task(task), TaskPaths(task, root)
    kind = kind_of(cfg)
    model, config = load_model(paths.models)
    state = config["target"]
    target = target_of(state)
    with torch.inference_mode():
        outputs = target.head(state)(torch.from_numpy(predict_outputs(model, load_split(paths, "test")))).numpy()
    raw, y = kind.raw_inputs(paths, "test")
    groups = kind.slice_frame(raw, y, read_json(paths.preprocessor), state, params.evaluate.slice_columns.get(task))
    report = S.slice_report(groups, y, outputs, target, state, params.evaluate.min_slice_rows)
    figures = {f"{target.default_metric}.png": S.slices_figure(report, target.default_metric)}
    if report["fairness"]:
        figures["fairness.png"] = S.fairness_figure(report)

    with atomic_dir(paths.slices) as tmp:
        S.slice_table(report).to_csv(tmp / "slices.csv", index=False)
        mistakes_table(kind.row_labels(raw), y, outputs, target, state).to_csv(tmp / "mistakes.csv", index=False)
        for name, fig in figures.items():
            fig.savefig(tmp / name, dpi=120, bbox_inches="tight")
    write_json(paths.slices_report, report)

    metrics = {"slice_largest_gap": (report["largest_gap"] or {}).get("gap")}
    for column, f in report["fairness"].items():
        name = re.sub(r"[^\w\-. /]", "_", column)
        metrics[f"fairness_dp_difference_{name}"] = f["demographic_parity_difference"]
        metrics[f"fairness_eo_difference_{name}"] = f["equalized_odds_difference"]
    with mlflow_run.reopen_run(params, paths, root):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_artifact(str(paths.slices_report), artifact_path="slices")
        mlflow.log_artifact(str(paths.slices / "slices.csv"), artifact_path="slices")
        mlflow.log_artifact(str(paths.slices / "mistakes.csv"), artifact_path="slices")
        if params.tracking.log_figures:
            for name in figures:
                mlflow.log_artifact(str(paths.slices / name), artifact_path="slices")
    return {"columns": report["columns"], "slices": len(report["slices"]), "largest_gap": report["largest_gap"],
            "report": report}


def mistakes_table(labels: pd.DataFrame, y: np.ndarray, outputs: np.ndarray, target, state: dict,
                   rows: int = MISTAKES) -> pd.DataFrame:
    """The worst predictions of the test split, worst first: what identifies the input (its text, its
    path), the actual and predicted answer, and how bad it is."""
    badness = target.mistakes(y, outputs, state)
    order = [i for i in np.argsort(-np.nan_to_num(badness, nan=-np.inf), kind="stable") if not np.isnan(badness[i])]
    order = order[:rows]
    table = pd.concat([labels.iloc[order].reset_index(drop=True),
                       target.predictions(outputs[order], state).reset_index(drop=True)], axis=1)
    table.insert(len(labels.columns), "actual", target.decode(np.asarray(y)[order], state))
    table.insert(0, "test_row", order)
    table["error"] = badness[order]
    return table
