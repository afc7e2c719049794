"""Percentile-bootstrap confidence intervals of a model's headline metrics on its test split.

The rows of the test split are resampled with replacement `samples` times (one set of row indices per
resample, shared by every metric, from a seeded generator); each metric's interval is the
((1 − confidence) / 2, (1 + confidence) / 2) quantiles of its resampled values. A resample on which a
metric is undefined (None or NaN, e.g. ROC AUC with a class missing) is left out of that metric's
interval, and `samples` says how many counted. It measures the uncertainty due to the finite test split,
not that of training.

A statistic biased on resamples shows it: the expected calibration error of a well-calibrated model is
small, and a resample's binned ECE is larger (sampling noise only adds to |accuracy − confidence|), so
its interval can lie wholly above the point estimate. Read it as the spread of ECE on test sets of this
size, not as a bound around the estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def bootstrap_intervals(
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    y: np.ndarray,
    outputs: np.ndarray,
    samples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | int]]:
    """{metric: {"low", "high", "level", "samples"}} for every scalar metric `metric_fn(y, outputs)`
    returns (non-numbers and metrics that are None on the whole split are skipped); {} for no samples."""
    y, outputs = np.asarray(y), np.asarray(outputs)
    n = len(y)
    if samples <= 0 or n == 0:
        return {}
    names = [k for k, v in metric_fn(y, outputs).items() if _scalar(v)]
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(samples):
        rows = rng.integers(0, n, n)
        result = metric_fn(y[rows], outputs[rows])
        for k in names:
            v = result.get(k)
            if _scalar(v) and np.isfinite(float(v)):
                values[k].append(float(v))
    tail = (1.0 - confidence) / 2
    out: dict[str, dict[str, float | int]] = {}
    for k, vs in values.items():
        if not vs:
            continue
        low, high = np.quantile(np.asarray(vs), [tail, 1.0 - tail])
        out[k] = {"low": float(low), "high": float(high), "level": float(confidence), "samples": len(vs)}
    return out


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
