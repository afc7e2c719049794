"""SHAP explanations of a tabular model on the test split: per-row values per column, global
importance, beeswarm and waterfall plots. The explained quantity comes from the target type (log-odds
of the positive class, a class logit, or the predicted value in target units)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from torchcycle.artifacts import load_split
from torchcycle.atomic import read_json
from torchcycle.data.splits import sample
from torchcycle.kinds.tabular.preprocess import feature_names
from torchcycle.targets import target_of


def explain(params: Any, paths: Any, model: torch.nn.Module, target_state: dict[str, Any]) -> tuple[dict, Any]:
    from torchcycle.explain import plots as XP
    from torchcycle.kinds.tabular import TABULAR
    from torchcycle.kinds.tabular.shap import explain_tabular, global_importance, pick_local_rows

    ex = params.explain
    target = target_of(target_state)
    state = read_json(paths.preprocessor)
    columns = feature_names(state)
    train, test = load_split(paths, "train"), load_split(paths, "test")
    raw, y_all = TABULAR.raw_inputs(paths, "test")
    bg = sample(len(train), ex.background_rows, params.seed)
    idx = sample(len(test), ex.max_rows, params.seed + 1)
    rows = tuple(t[idx] for t in test.inputs)
    readout, output_name = target.readout(target_state)
    start = time.perf_counter()
    result = explain_tabular(model, tuple(t[bg] for t in train.inputs), rows, columns, readout, ex.shap_method)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        outputs = target.head(target_state)(model(*rows)).numpy()
    shown = target.predictions(outputs, target_state)
    actual = target.decode(y_all[idx], target_state)
    # one explained output per row: the only one, or (multiclass) the predicted class's logit
    k = np.zeros(len(idx), dtype=int) if result.values.shape[2] == 1 else outputs.argmax(1)
    values = result.values[np.arange(len(idx)), :, k]
    expected = result.expected[k]
    features = _feature_values(raw.iloc[idx].reset_index(drop=True), state, columns)

    table = pd.DataFrame({"test_index": idx, "actual": actual, "predicted": shown["predicted"].to_numpy()})
    for col in shown.columns[1:]:
        table[f"output.{col}"] = shown[col].to_numpy()
    table["expected_value"] = expected
    table["model_output"] = result.output[np.arange(len(idx)), k]
    for name in columns:
        table[f"value.{name}"] = features[name].to_numpy()
    for j, name in enumerate(columns):
        table[f"shap.{name}"] = values[:, j]
    importance = global_importance(values, columns)

    error = _errors(actual, shown["predicted"].to_numpy())
    local = pick_local_rows(error, ex.local_examples, params.seed)
    figures = {
        "importance.png": XP.importance_bar(importance, output_name=output_name),
        "beeswarm.png": XP.beeswarm(values, features, importance, output_name=output_name),
    }
    for i in local:
        status = "misclassified" if error[i] else "correct"
        title = f"Test row {idx[i]} ({status}): actual {actual[i]}, predicted {_fmt(shown['predicted'].iloc[i])}"
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
        from torchcycle.explain.plots import save_figures

        table.to_parquet(tmp / "shap_values.parquet", index=False)
        importance.to_csv(tmp / "importance.csv", index=False)
        save_figures(tmp, figures)

    return summary, write


def _feature_values(raw: pd.DataFrame, state: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """What a person recognises for each model feature: the raw value, or a date's derived number."""
    from torchcycle.kinds.tabular.columns import date_feature_names, date_features

    out = pd.DataFrame(index=raw.index)
    derived = {}
    for spec in state.get("dates", []):
        values = date_features(raw[spec["name"]], spec)
        derived.update({n: values[:, j] for j, n in enumerate(date_feature_names(spec))})
    for name in columns:
        out[name] = derived[name] if name in derived else raw[name].to_numpy()
    return out


def _errors(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows worth a local look: misclassified rows, or (numbers) the largest quarter of absolute errors."""
    if np.issubdtype(np.asarray(predicted).dtype, np.number):
        err = np.abs(np.asarray(actual, np.float64) - np.asarray(predicted, np.float64))
        return err >= np.quantile(err, 0.75) if len(err) else err.astype(bool)
    return np.asarray(actual) != np.asarray(predicted)


def _fmt(value: Any) -> str:
    return f"{value:,.4g}" if isinstance(value, (float, np.floating)) else str(value)
