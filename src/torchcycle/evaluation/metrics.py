"""Classification metrics and curve tables computed from labels and predicted probabilities.

Everything here is pure: arrays in, plain Python / pandas out, so the same numbers can be written
to DVC metrics, logged to MLflow and asserted on in tests without any I/O in between.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

MAX_CURVE_POINTS = 500
CALIBRATION_BINS = 10
_ROW_SUM_TOLERANCE = 1e-3


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Headline, per-class and confusion metrics as a JSON-serialisable dict (plain floats/ints/lists)."""
    y, p = _validate(y_true, proba, class_names)
    labels = list(range(len(class_names)))
    pred = p.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
    matrix = confusion_matrix(y, pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(matrix),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "f1_macro": float(macro[2]),
        "roc_auc": _roc_auc(y, p),
        "log_loss": float(log_loss(y, p, labels=labels)),
        "n_samples": int(y.size),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.astype(int).tolist(),
    }


def curve_tables(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, pd.DataFrame]:
    """Plot data for DVC plots: ROC, precision-recall, per-sample confusion and calibration tables."""
    y, p = _validate(y_true, proba, class_names)
    truth, score = _binary_view(y, p)
    return {
        "roc": _roc_table(truth, score),
        "precision_recall": _pr_table(truth, score),
        "confusion": _confusion_table(y, p, class_names),
        "calibration": _calibration_table(y, p),
    }


def _validate(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Fail loudly on shape/range mistakes that scikit-learn would otherwise report cryptically or not at all.

    Rows are renormalised after the tolerance check because float32 softmax outputs drift from 1 by
    more than scikit-learn's strict sum-to-one checks allow.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    if k < 2:
        raise ValueError(f"need at least 2 class names, got {list(class_names)!r}")
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of labels, got shape {y.shape}")
    if p.shape != (y.size, k):
        raise ValueError(f"proba must have shape (n_samples, n_classes) = {(y.size, k)}, got {p.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true labels must lie in 0..{k - 1}, got range {y.min()}..{y.max()}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("proba must hold finite probabilities in [0, 1]")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=_ROW_SUM_TOLERANCE):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(f"proba rows must sum to 1 (apply softmax first); worst row sums to {worst:.6f}")
    return y, p / sums[:, None]


def _balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over classes present in y_true (scikit-learn's definition), taken from the full-label
    confusion matrix so that a class missing from a small eval set neither warns nor changes the shape."""
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """AUC, or None when a class is missing from y_true so that AUC is mathematically undefined."""
    k = p.shape[1]
    if np.unique(y).size < k:
        return None
    if k == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))


def _binary_view(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: class 1 vs rest. K>2: micro-average, i.e. every (sample, class) pair is one binary decision."""
    k = p.shape[1]
    if k == 2:
        return (y == 1).astype(np.int64), p[:, 1]
    onehot = np.eye(k, dtype=np.int64)[y]
    return onehot.ravel(), p.ravel()


def _downsample(frame: pd.DataFrame, max_points: int = MAX_CURVE_POINTS) -> pd.DataFrame:
    """Thin a curve evenly but keep both end points, so the plotted curve still spans its full range."""
    if len(frame) <= max_points:
        return frame.reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(frame) - 1, max_points).round().astype(int))
    return frame.iloc[idx].reset_index(drop=True)


def _has_both_classes(truth: np.ndarray) -> bool:
    return 0 < int(truth.sum()) < truth.size


def _roc_table(truth: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """ROC points; empty when one class is missing, since scikit-learn would fill the curve with NaN."""
    if not _has_both_classes(truth):
        return pd.DataFrame({"fpr": pd.Series(dtype=float), "tpr": pd.Series(dtype=float)})
    fpr, tpr, _ = roc_curve(truth, score)
    return _downsample(pd.DataFrame({"fpr": fpr, "tpr": tpr}))


def _pr_table(truth: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Precision-recall points ordered by increasing recall, which is how the curve is read and drawn."""
    if not _has_both_classes(truth):
        return pd.DataFrame({"recall": pd.Series(dtype=float), "precision": pd.Series(dtype=float)})
    precision, recall, _ = precision_recall_curve(truth, score, drop_intermediate=True)
    return _downsample(pd.DataFrame({"recall": recall[::-1], "precision": precision[::-1]}))


def _confusion_table(y: np.ndarray, p: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per sample with class names, because DVC's confusion template counts rows itself."""
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({"actual": names[y], "predicted": names[p.argmax(axis=1)]})


def _calibration_table(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Reliability curve. K>2 uses top-label confidence vs correctness, the usual multi-class reading."""
    if p.shape[1] == 2:
        hit, confidence = (y == 1).astype(np.int64), p[:, 1]
    else:
        hit, confidence = (p.argmax(axis=1) == y).astype(np.int64), p.max(axis=1)
    fraction_positive, mean_predicted = calibration_curve(hit, confidence, n_bins=CALIBRATION_BINS)
    return pd.DataFrame({"mean_predicted": mean_predicted, "fraction_positive": fraction_positive})
