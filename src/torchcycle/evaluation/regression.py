"""Regression metrics and plot tables computed from targets and predictions.

Pure like `metrics.py`: arrays in, plain Python / pandas out, so the same numbers can be written to DVC
metrics, logged to MLflow and asserted on in tests without any I/O in between. The error metrics come
from scikit-learn so they match what anyone recomputing them elsewhere would get.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)

MAX_SCATTER_POINTS = 2000
HISTOGRAM_BINS = 30
# Below this a target is effectively zero, so a percentage error of it is meaningless (scikit-learn would
# divide by its float epsilon instead and report an astronomically large MAPE).
MAPE_ZERO_TOLERANCE = 1e-12


def regression_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    coverage: float | None = None,
) -> dict[str, Any]:
    """Headline error metrics, plus interval quality when prediction bounds are given, as plain floats.

    `mape` is a fraction (0.1 = 10 %) and None when a target is ~0; `r2` is None for a single sample.
    Both stay None rather than NaN/inf because those are not valid JSON and would break DVC metrics.
    """
    y, p = validate_targets(y_true, y_pred)
    result: dict[str, Any] = {
        "rmse": float(root_mean_squared_error(y, p)),
        "mae": float(mean_absolute_error(y, p)),
        "r2": float(r2_score(y, p)) if y.size >= 2 else None,
        "mape": _mape(y, p),
        "n_samples": int(y.size),
    }
    if lower is not None or upper is not None or coverage is not None:
        result.update(_interval_metrics(y, lower, upper, coverage))
    return result


def regression_tables(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    max_points: int = MAX_SCATTER_POINTS,
    bins: int = HISTOGRAM_BINS,
) -> dict[str, pd.DataFrame]:
    """Plot data for DVC plots: predicted-vs-actual and residual scatters, and a residual histogram.

    The scatters are thinned to `max_points` rows so the plot files stay small for large eval sets; the
    histogram is built from every sample, so its counts sum to n.
    """
    y, p = validate_targets(y_true, y_pred)
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    keep = _thin(np.argsort(y, kind="stable"), max_points)
    residual = y - p
    by_predicted = keep[np.argsort(p[keep], kind="stable")]
    return {
        "predicted_vs_actual": pd.DataFrame({"actual": y[keep], "predicted": p[keep]}),
        "residuals": pd.DataFrame({"predicted": p[by_predicted], "residual": residual[by_predicted]}),
        "residual_histogram": _histogram(residual, bins),
    }


def validate_targets(
    y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, str] = ("y_true", "y_pred")
) -> tuple[np.ndarray, np.ndarray]:
    """Fail loudly on shape/NaN mistakes: scikit-learn would broadcast a column against a row or report
    a NaN deep inside a metric. `names` lets callers (e.g. conformal calibration) name their own inputs."""
    y = _finite_vector(y_true, names[0])
    p = _finite_vector(y_pred, names[1])
    if p.size != y.size:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {y.size} and {p.size}")
    return y, p


def _finite_vector(values: np.ndarray, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold numbers: {error}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} must be finite; {int(bad.sum())} of {array.size} values are NaN or inf")
    return array


def _mape(y: np.ndarray, p: np.ndarray) -> float | None:
    """MAPE as a fraction, or None when a target is ~0 and the percentage error is undefined."""
    if np.any(np.abs(y) < MAPE_ZERO_TOLERANCE):
        return None
    return float(mean_absolute_percentage_error(y, p))


def _interval_metrics(
    y: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None, coverage: float | None
) -> dict[str, float | None]:
    """Empirical coverage next to the nominal one, and mean width: an interval method is only good if it
    covers what it promises *and* is no wider than it needs to be, so both are reported together."""
    if lower is None or upper is None:
        raise ValueError("lower and upper must be given together (coverage alone has nothing to measure)")
    lo, hi = validate_targets(lower, upper, names=("lower", "upper"))
    if lo.size != y.size:
        raise ValueError(f"lower/upper must have one bound per sample ({y.size}), got {lo.size}")
    if np.any(lo > hi):
        raise ValueError(f"lower must not exceed upper; {int(np.sum(lo > hi))} intervals are inverted")
    if coverage is not None and not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
    return {
        "interval_coverage": float(np.mean((y >= lo) & (y <= hi))),
        "interval_mean_width": float(np.mean(hi - lo)),
        "interval_nominal_coverage": None if coverage is None else float(coverage),
    }


def _thin(order: np.ndarray, max_points: int) -> np.ndarray:
    """Evenly spaced picks along `order`, keeping both ends so the scatter still spans the full range."""
    if order.size <= max_points:
        return order
    picks = np.unique(np.linspace(0, order.size - 1, max_points).round().astype(int))
    return order[picks]


def _histogram(residual: np.ndarray, bins: int) -> pd.DataFrame:
    """Counts per bin keyed by bin centre, the one x value DVC's bar template can draw."""
    counts, edges = np.histogram(residual, bins=bins)
    return pd.DataFrame({"residual": (edges[:-1] + edges[1:]) / 2, "count": counts.astype(np.int64)})
