"""Regression targets: a number to predict (a price, a duration, a count).

The model trains on the target standardised on the training split (after an optional log transform
for positive, skewed targets); everything outside the model sees target units, because the head that
undoes the scaling, and adds split-conformal prediction intervals calibrated on the validation split,
is part of the model graph (and of the ONNX file). Outputs are (N, 3): prediction, lower, upper.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

MIN_DISTINCT = 3
OUTPUTS = ["prediction", "lower", "upper"]


class TargetUnits(nn.Module):
    """Scaled model output -> (prediction, lower, upper) in target units."""

    def __init__(self, mean: float, std: float, halfwidth: float, log: bool) -> None:
        super().__init__()
        self.mean, self.std, self.halfwidth, self.log = float(mean), float(std), float(halfwidth), bool(log)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        t = out[:, :1] * self.std + self.mean
        bounds = torch.cat([t, t - self.halfwidth, t + self.halfwidth], dim=1)
        return torch.exp(bounds) if self.log else bounds


def unscale(mean: float, std: float) -> nn.Module:
    """The readout explanations attribute: the prediction in (log-)target units, linear in the output
    (a Linear layer, so SHAP's DeepLIFT rules apply to it)."""
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(std)
        layer.bias.fill_(mean)
    return layer.requires_grad_(False)


class Regression:
    name = "regression"
    default_metric = "rmse"
    metric_names = ("rmse", "mae", "r2", "mape")
    headline_metrics = ("rmse", "mae", "r2")  # with bootstrap confidence intervals in metrics.json

    def check(self, values: pd.Series, source: Any, batch: bool = False) -> list[str]:
        target = getattr(source, "target", "target")
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numbers.isna()
        if bad.any():
            example = values[bad].iloc[0]
            return [(f"target '{target}' must be a number for regression; {int(bad.sum())} value(s) are not, e.g. "
                    f"{example!r}. Fix the values, or set `source.target_type: classification`.")]
        if not np.isfinite(numbers.dropna()).all():
            return [(f"target '{target}' holds infinite values; remove those rows.")]
        if numbers.nunique() < MIN_DISTINCT and not batch:
            return [(f"target '{target}' has only {numbers.nunique()} distinct value(s); regression needs a "
                    "spread of numbers. If these are classes, set `source.target_type: classification`.")]
        if getattr(source, "target_transform", "none") == "log" and (numbers <= 0).any():
            return [(f"target '{target}' has {int((numbers <= 0).sum())} value(s) <= 0, so "
                    "`source.target_transform: log` cannot apply. Use `none`, or drop those rows.")]
        return []

    stratified = False

    def clean(self, values: pd.Series) -> pd.Series:
        return pd.to_numeric(values, errors="coerce")

    def unseen(self, values: pd.Series, known: pd.Series) -> list[str]:
        return []

    def describe(self, values: pd.Series) -> dict[str, Any]:
        numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(np.float64)
        counts, edges = np.histogram(numbers, bins=30) if len(numbers) else (np.zeros(0), np.zeros(0))
        stats = pd.Series(numbers).describe().round(4).to_dict()
        return {"target_stats": stats, "target_histogram": {"edges": edges.round(6).tolist(), "counts": counts.tolist()}}

    def fit(self, values: pd.Series, source: Any) -> dict[str, Any]:
        log = getattr(source, "target_transform", "none") == "log"
        t = _forward(pd.to_numeric(values).to_numpy(np.float64), log)
        std = float(t.std())
        return {"type": self.name, "name": getattr(source, "target", None),
                "transform": "log" if log else "none", "mean": float(t.mean()), "std": std if std > 0 else 1.0,
                "coverage": float(getattr(source, "interval_coverage", 0.9)), "halfwidth": 0.0,
                "min": float(np.min(values.astype(float))), "max": float(np.max(values.astype(float)))}

    def encode(self, values: pd.Series, state: dict[str, Any]) -> np.ndarray:
        t = _forward(pd.to_numeric(values).to_numpy(np.float64), state["transform"] == "log")
        return ((t - state["mean"]) / state["std"]).astype(np.float32)

    def stratify(self, encoded: np.ndarray) -> np.ndarray | None:
        return None

    def n_outputs(self, state: dict[str, Any]) -> int:
        return 1

    def objective(self, state: dict[str, Any], train_cfg: Any) -> Any:
        from torchcycle.training.objectives import RegressionObjective

        return RegressionObjective(train_cfg.regression_loss, train_cfg.huber_delta)

    def calibrate(self, state: dict[str, Any], val_outputs: np.ndarray, val_y: np.ndarray,
                  train_cfg: Any = None) -> dict[str, Any]:
        """Split-conformal half-width on the validation split, in the (log-)target units the head adds it in
        (`train_cfg` is not needed: the coverage is in the state, from `source.interval_coverage`)."""
        from torchcycle.errors import ConfigError
        from torchcycle.evaluation.conformal import conformal_halfwidth, min_calibration_points

        needed = min_calibration_points(state["coverage"])
        if len(val_y) < needed:
            raise ConfigError(
                f"prediction intervals at {state['coverage']:.0%} coverage need at least {needed} validation rows; "
                f"the validation split has {len(val_y)}. Raise `split.val_size`, add rows, or lower "
                "`source.interval_coverage`.")
        scale = state["std"]
        predicted = np.asarray(val_outputs, np.float64).reshape(len(val_y), -1)[:, 0] * scale + state["mean"]
        actual = np.asarray(val_y, np.float64) * scale + state["mean"]
        return {**state, "halfwidth": float(conformal_halfwidth(actual, predicted, state["coverage"]))}

    def head(self, state: dict[str, Any]) -> nn.Module:
        return TargetUnits(state["mean"], state["std"], state.get("halfwidth", 0.0), state["transform"] == "log")

    def output_columns(self, state: dict[str, Any]) -> list[str]:
        return list(OUTPUTS)

    def readout(self, state: dict[str, Any]) -> tuple[nn.Module, str]:
        name = state.get("name") or "target"
        return unscale(state["mean"], state["std"]), (f"predicted log({name})" if state["transform"] == "log"
                                                      else f"predicted {name}")

    def metrics(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        from torchcycle.evaluation.regression import regression_metrics

        out = np.asarray(outputs, np.float64)
        return regression_metrics(self.decode(y, state), out[:, 0], out[:, 1], out[:, 2], state["coverage"])

    def headline(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                 options: dict[str, Any] | None = None) -> dict[str, float | None]:
        """`headline_metrics` in target units, as `metrics` computes them, in numpy (for the bootstrap)."""
        actual = self.decode(y, state)
        error = np.asarray(outputs, np.float64)[:, 0] - actual
        spread, residual = float(((actual - actual.mean()) ** 2).sum()), float((error**2).sum())
        r2 = None if len(actual) < 2 else 1.0 - residual / spread if spread > 0 else float(residual == 0)
        return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error))), "r2": r2}

    def diagnostics(self, y: np.ndarray, raw_outputs: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                    options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict]:
        """Nothing beyond `metrics`, which already reports the intervals' coverage and width."""
        return {}, {}, {}

    def tables(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
               options: dict[str, Any] | None = None) -> dict[str, pd.DataFrame]:
        from torchcycle.evaluation.regression import regression_tables

        return regression_tables(self.decode(y, state), np.asarray(outputs, np.float64)[:, 0])

    def figures(self, metrics: dict, tables: dict[str, pd.DataFrame], state: dict[str, Any]) -> dict[str, Any]:
        from torchcycle.evaluation import regression_plots as R

        return {
            "predicted_vs_actual.png": R.predicted_vs_actual_figure(tables["predicted_vs_actual"], metrics),
            "residuals.png": R.residuals_figure(tables["residuals"]),
            "residual_histogram.png": R.residual_histogram_figure(tables["residual_histogram"]),
        }

    def predictions(self, outputs: np.ndarray, state: dict[str, Any]) -> pd.DataFrame:
        out = np.asarray(outputs, np.float64)
        return pd.DataFrame({"predicted": out[:, 0], "lower": out[:, 1], "upper": out[:, 2]})

    def outputs_of(self, predictions: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
        """The graph outputs behind a `predictions` table (e.g. reports/<task>/predictions.csv): (N, 3)."""
        return predictions[["predicted", "lower", "upper"]].to_numpy(np.float64)

    def summarise(self, y: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        """What a split's encoded targets look like, for splits.json (the mean of the scaled target)."""
        return {"target_mean": float(np.mean(y)) if len(y) else None}

    def decode(self, y: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        t = np.asarray(y, np.float64) * state["std"] + state["mean"]
        return np.exp(t) if state["transform"] == "log" else t

    def mistakes(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """The absolute error in target units (every prediction is a little wrong)."""
        return np.abs(self.decode(y, state) - np.asarray(outputs, np.float64)[:, 0])

    def parity(self, reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> dict[str, Any]:
        """Max relative difference |Δ| / max(|reference|, 1) over prediction and bounds."""
        ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
        rel = np.abs(ref - cand) / np.maximum(np.abs(ref), 1.0)
        diff = float(rel.max()) if len(ref) else 0.0
        return {"rows": len(ref), "max_abs_diff": float(np.abs(ref - cand).max()) if len(ref) else 0.0,
                "max_rel_diff": diff, "tolerance": tolerance, "tolerance_is": "relative: |Δ| / max(|value|, 1)",
                "passed": bool(diff <= tolerance)}

    def higher_is_better(self, metric: str) -> bool:
        return metric == "r2"

    def same_task(self, state: dict[str, Any], other: dict[str, Any]) -> bool:
        return other.get("type") == self.name and other.get("name") == state.get("name")


def _forward(values: np.ndarray, log: bool) -> np.ndarray:
    return np.log(values) if log else values


REGRESSION = Regression()
