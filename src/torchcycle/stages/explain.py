"""explain@<task>: SHAP (tabular) or Grad-CAM (image) explanations of the trained model on the test
split, written to reports/<task>/explain/ in one atomic swap and logged to the training run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import Params, TabularTask
from torchcycle.paths import TaskPaths
from torchcycle.stages.common import load_model, load_split
from torchcycle.stages.raw_split import raw_records
from torchcycle.tracking import mlflow_run


def run(params: Params, task: str, root: Path) -> dict:
    import mlflow

    cfg = params.task(task)
    paths = TaskPaths(task, root)
    model, config = load_model(paths.models)
    classes = config["classes"]
    if isinstance(cfg, TabularTask):
        summary, write = _tabular(params, paths, model, classes)
    else:
        summary, write = _images(params, paths, model, classes)
    with atomic_dir(paths.explain) as tmp:
        write(tmp)
        write_json(tmp / "summary.json", summary)
    with mlflow_run.reopen_run(params, paths, root):
        mlflow.log_metrics({f"explain_{k}": float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.log_artifacts(str(paths.explain), artifact_path="explain")
    return summary


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(k, n), replace=False))


# --------------------------------------------------------------------------- tabular: SHAP
def _tabular(params: Params, paths: TaskPaths, model, classes: list[str]) -> tuple[dict, Any]:
    from torchcycle.explain import plots as XP
    from torchcycle.explain.tabular import explain_tabular, global_importance, pick_local_rows

    ex = params.explain
    state = read_json(paths.preprocessor)
    columns = [c["name"] for c in state["numeric"]] + [c["name"] for c in state["categorical"]]
    train, test = load_split(paths, "train"), load_split(paths, "test")
    raw, y_all = raw_records(paths, "test")
    bg = _sample(len(train), ex.background_rows, params.seed)
    idx = _sample(len(test), ex.max_rows, params.seed + 1)
    rows = tuple(t[idx] for t in test.inputs)
    start = time.perf_counter()
    result = explain_tabular(model, tuple(t[bg] for t in train.inputs), rows, columns, len(classes),
                             ex.shap_method)
    seconds = time.perf_counter() - start
    proba = _proba(model, rows)
    pred, y = proba.argmax(1), y_all[idx]
    # binary: log-odds of the positive class; multiclass: the predicted class's logit
    k = np.zeros(len(idx), dtype=int) if result.values.shape[2] == 1 else pred
    values = result.values[np.arange(len(idx)), :, k]
    expected = result.expected[k]
    output_name = f"log-odds of '{classes[-1]}'" if len(classes) == 2 else "logit of the predicted class"
    features = raw.iloc[idx][columns].reset_index(drop=True)

    table = pd.DataFrame({"test_index": idx, "actual": [classes[i] for i in y],
                          "predicted": [classes[i] for i in pred]})
    for c, name in enumerate(classes):
        table[f"proba.{name}"] = proba[:, c]
    table["expected_value"] = expected
    table["model_output"] = result.output[np.arange(len(idx)), k]
    for name in columns:
        table[f"value.{name}"] = features[name].to_numpy()
    for j, name in enumerate(columns):
        table[f"shap.{name}"] = values[:, j]
    importance = global_importance(values, columns)

    local = pick_local_rows(y, pred, ex.local_examples, params.seed)
    figures = {
        "importance.png": XP.importance_bar(importance, output_name=output_name),
        "beeswarm.png": XP.beeswarm(values, features, importance, output_name=output_name),
    }
    for i in local:
        status = "correct" if y[i] == pred[i] else "misclassified"
        title = (f"Test row {idx[i]} ({status}): actual {classes[y[i]]}, predicted {classes[pred[i]]} "
                 f"({proba[i, pred[i]]:.0%})")
        figures[f"local/waterfall_row{idx[i]}_{status}.png"] = XP.waterfall(
            values[i], float(expected[i]), features.iloc[i], title, output_name=output_name)

    summary = {
        "kind": "tabular", "method": result.method, "explained_output": output_name,
        "rows": len(idx), "background_rows": len(bg), "seconds": round(seconds, 3),
        "additivity_error": result.additivity_error,
        "local_rows": [int(idx[i]) for i in local],
        "top_features": importance.head(10).to_dict(orient="records"),
    }  # fmt: skip

    def write(tmp: Path) -> None:
        table.to_parquet(tmp / "shap_values.parquet", index=False)
        importance.to_csv(tmp / "importance.csv", index=False)
        _save_figures(tmp, figures)

    return summary, write


def _proba(model, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(*inputs), dim=1).numpy()


# --------------------------------------------------------------------------- images: Grad-CAM
def _images(params: Params, paths: TaskPaths, model, classes: list[str]) -> tuple[dict, Any]:
    from torchcycle.explain import plots as XP
    from torchcycle.explain.gradcam import class_average_maps, grad_cam, pick_examples, resolve_layer

    ex = params.explain
    state = read_json(paths.preprocessor)
    test = load_split(paths, "test")
    idx = _sample(len(test), ex.max_rows, params.seed + 1)
    x, y = test.inputs[0][idx], test.y.numpy()[idx]
    layer, _ = resolve_layer(model, ex.gradcam_layer)
    start = time.perf_counter()
    proba = _proba(model, (x,))
    pred = proba.argmax(1)
    maps = grad_cam(model, x, pred, layer, ex.cam_method)
    seconds = time.perf_counter() - start
    average = class_average_maps(maps, y, len(classes))
    chosen = pick_examples(y, pred, ex.examples_per_class, params.seed)
    mean = np.asarray(state["mean"], np.float32)[:, None, None]
    std = np.asarray(state["std"], np.float32)[:, None, None]
    pixels = np.clip(x.numpy() * std + mean, 0, 1)  # back to [0, 1] for display

    figures = {"class_average.png": XP.class_maps(average, classes)}
    for kind in ("correct", "misclassified"):
        picked = [i for i, k in chosen if k == kind]
        if picked:
            titles = [f"#{idx[i]} true {classes[y[i]]} → {classes[pred[i]]} ({proba[i, pred[i]]:.0%})"
                      for i in picked]
            figures[f"overlays_{kind}.png"] = XP.cam_overlays(pixels[picked], maps[picked], titles)
    ex_idx = np.asarray([i for i, _ in chosen], dtype=np.int64)
    summary = {
        "kind": "image", "method": ex.cam_method, "layer": layer, "images": len(idx),
        "examples": len(ex_idx), "seconds": round(seconds, 3),
        "misclassified_examples": int(sum(1 for _, k in chosen if k == "misclassified")),
    }  # fmt: skip

    def write(tmp: Path) -> None:
        np.savez_compressed(
            tmp / "gradcam.npz", test_index=idx[ex_idx] if len(ex_idx) else ex_idx,
            maps=maps[ex_idx], actual=y[ex_idx], predicted=pred[ex_idx], class_average=average,
            classes=np.asarray(classes, dtype=str), layer=np.asarray(layer),
        )  # fmt: skip
        _save_figures(tmp, figures)

    return summary, write


def _save_figures(tmp: Path, figures: dict) -> None:
    for name, fig in figures.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp / name, dpi=110, bbox_inches="tight")
