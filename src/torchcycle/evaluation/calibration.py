"""Probability calibration: how far predicted probabilities are from observed frequencies, the post-hoc
maps that close the gap (temperature, vector and matrix scaling, fitted on validation logits), and the
decision threshold of a binary task chosen for an objective.

Conventions (every number in metrics.json and the reliability plots follows them):
- **ECE** is the *top-label* expected calibration error for every task, binary included: the confidence
  of a row is its largest probability, a row is a hit when that class is the true one, and the rows are
  grouped in `bins` equal-width confidence bins over [0, 1], each bin the interval (lo, hi] (the first
  one also holds 0). ECE = Σ_b n_b / N · |accuracy_b − mean confidence_b|. For a binary task every
  confidence is ≥ 0.5, so the lower half of the bins stays empty.
- **Brier** is the multi-class Brier score: the mean over rows of Σ_k (p_k − 1[y = k])². It ranges over
  [0, 2]; for a binary task it is twice scikit-learn's `brier_score_loss` of the positive class.

Pure functions: numpy arrays in, numbers, tables and small torch optimisations out (figures are drawn
on request by `reliability_figure`, which imports matplotlib only then).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

OBJECTIVES = ("f1", "balanced_accuracy", "cost", "min_precision")
MATRIX_L2 = 1e-3  # matrix scaling: L2 penalty on the off-diagonal weights (per row of data), for stability
# Every map is pulled towards "no change" (T = 1, W = I, b = 0) by a Gaussian prior worth this many rows:
# negligible on a validation split of hundreds of rows, but it keeps the fit finite when the split is
# separable (every row right with a margin), where the NLL alone falls forever as T -> 0 or W grows.
PRIOR_ROWS = 5.0
_MAX_ITER = 200
_EPS = 1e-12


# --------------------------------------------------------------------------- measures
def _as_arrays(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(proba, np.float64)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"proba must have shape (n_samples, n_classes) = ({len(y)}, K), got {p.shape}")
    return y, p


def _bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin index of each confidence, bins (lo, hi] and 0 in the first bin."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def _binned(y: np.ndarray, proba: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, summed confidence, summed hits) per equal-width top-label confidence bin."""
    confidence = proba.max(axis=1)
    hit = (proba.argmax(axis=1) == y).astype(np.float64)
    index = _bin_of(confidence, bins)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    return count, np.bincount(index, confidence, minlength=bins), np.bincount(index, hit, minlength=bins)


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with `bins` equal-width confidence bins (see the module docstring), in [0, 1]."""
    y, p = _as_arrays(y, proba)
    if not len(y):
        return 0.0
    _, confidence, hits = _binned(y, p, bins)
    return float(np.abs(hits - confidence).sum() / len(y))


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of Σ_k (p_k − 1[y = k])², in [0, 2]; for a binary task
    twice scikit-learn's `brier_score_loss` of the positive class."""
    y, p = _as_arrays(y, proba)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean()) if len(y) else 0.0


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, rows renormalised and probabilities clipped to
    [eps, 1 − eps] of float64 (what scikit-learn's `log_loss` computes)."""
    y, p = _as_arrays(y, proba)
    p = p / p.sum(axis=1, keepdims=True)
    eps = np.finfo(np.float64).eps
    return float(-np.log(np.clip(p[np.arange(len(y)), y], eps, 1 - eps)).mean()) if len(y) else 0.0


def reliability_table(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """One row per equal-width top-label confidence bin: `confidence` (the bin centre), `mean_confidence`,
    `accuracy` (share of hits; NaN for an empty bin) and `count`."""
    y, p = _as_arrays(y, proba)
    count, confidence, hits = _binned(y, p, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, confidence / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return pd.DataFrame({"confidence": (np.arange(bins) + 0.5) / bins, "mean_confidence": mean_confidence,
                         "accuracy": accuracy, "count": count.astype(np.int64)})


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- calibration maps
def _tensors(logits: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(np.asarray(logits, np.float64)),
            torch.as_tensor(np.asarray(y).astype(np.int64).ravel()))


def _minimise(params: list[torch.Tensor], loss_fn) -> None:
    optimiser = torch.optim.LBFGS(params, lr=1.0, max_iter=_MAX_ITER, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) plus the prior (PRIOR_ROWS / N ·
    (log T)²), by LBFGS on log T in float64. T > 1 softens an over-confident model; the ranking of the
    classes, hence ROC AUC, is unchanged."""
    z, t = _tensors(logits, y)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    prior = PRIOR_ROWS / max(len(t), 1)
    _minimise([log_t], lambda: torch.nn.functional.cross_entropy(z / log_t.exp(), t) + prior * (log_t**2).sum())
    value = float(log_t.detach().exp())
    return value if np.isfinite(value) else 1.0


def fit_vector_scaling(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with W diagonal minimising the NLL of softmax(logits @ W.T + b): a scale and a bias per class
    (plus the prior PRIOR_ROWS / N · (Σ (w_k − 1)² + Σ b_k²))."""
    z, t = _tensors(logits, y)
    k = z.shape[1]
    scale = torch.ones(k, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    prior = PRIOR_ROWS / max(len(t), 1)

    def loss() -> torch.Tensor:
        return (torch.nn.functional.cross_entropy(z * scale + bias, t)
                + prior * (((scale - 1) ** 2).sum() + (bias**2).sum()))

    _minimise([scale, bias], loss)
    return np.diag(scale.detach().numpy()), bias.detach().numpy()


def fit_matrix_scaling(logits: np.ndarray, y: np.ndarray, l2: float = MATRIX_L2) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising the NLL of softmax(logits @ W.T + b) + l2 · Σ_{i≠j} W_ij² (the off-diagonal
    penalty keeps the K² weights stable on a small validation split) + the prior PRIOR_ROWS / N ·
    (‖W − I‖² + ‖b‖²), starting from the identity."""
    z, t = _tensors(logits, y)
    k = z.shape[1]
    eye = torch.eye(k, dtype=torch.float64)
    weight = eye.clone().requires_grad_(True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    prior = PRIOR_ROWS / max(len(t), 1)

    def loss() -> torch.Tensor:
        return (torch.nn.functional.cross_entropy(z @ weight.T + bias, t) + l2 * ((weight * (1 - eye)) ** 2).sum()
                + prior * (((weight - eye) ** 2).sum() + (bias**2).sum()))

    _minimise([weight, bias], loss)
    return weight.detach().numpy(), bias.detach().numpy()


# --------------------------------------------------------------------------- decision threshold
def threshold_scan(y_binary: np.ndarray, p_positive: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts for every candidate threshold: each distinct positive-class probability t,
    predicting positive when p >= t (highest threshold first)."""
    truth = np.asarray(y_binary).astype(np.int64).ravel()
    p = np.asarray(p_positive, np.float64).ravel()
    order = np.argsort(-p, kind="stable")
    p_sorted, truth_sorted = p[order], truth[order]
    tp = np.cumsum(truth_sorted)
    fp = np.cumsum(1 - truth_sorted)
    last = np.r_[np.flatnonzero(np.diff(p_sorted) != 0), len(p) - 1] if len(p) else np.zeros(0, np.int64)
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    positives, negatives = float(truth.sum()), float(len(truth) - truth.sum())
    return {"threshold": p_sorted[last], "tp": tp, "fp": fp, "fn": positives - tp, "tn": negatives - fp}


def _scores(scan: dict[str, np.ndarray], objective: str, cost_fp: float) -> tuple[np.ndarray, np.ndarray]:
    """(score to maximise, the value reported) per candidate."""
    tp, fp, fn, tn = scan["tp"], scan["fp"], scan["fn"], scan["tn"]
    with np.errstate(invalid="ignore", divide="ignore"):
        if objective == "f1":
            value = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        elif objective == "balanced_accuracy":
            tpr = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            tnr = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
            value = (tpr + tnr) / 2
        elif objective == "cost":
            n = tp + fp + fn + tn
            value = (cost_fp * fp + fn) / np.maximum(n, 1)
            return -value, value
        elif objective == "min_precision":
            value = np.where(tp + fn > 0, tp / (tp + fn), 0.0)  # recall
        else:
            raise ValueError(f"unknown threshold objective '{objective}'; choose one of {OBJECTIVES}")
    return value, value


def choose_threshold(y_binary: np.ndarray, p_positive: np.ndarray, objective: str, cost_fp: float = 1.0,
                     min_precision: float = 0.8) -> tuple[float, float | None]:
    """(threshold, achieved objective value) over the distinct values of `p_positive`, predicting the
    positive class when p >= threshold:
    - `f1` (of the positive class) and `balanced_accuracy`: the maximum;
    - `cost`: the minimum of the cost per row, (cost_fp · FP + FN) / N; for calibrated probabilities the
      optimum is near cost_fp / (1 + cost_fp);
    - `min_precision`: the highest recall among thresholds whose precision is at least `min_precision`
      (the value is that recall). When none reaches it the answer is (0.5, None): 0.5 applies, and the
      caller says why.
    Ties go to the highest threshold."""
    scan = threshold_scan(y_binary, p_positive)
    if not len(scan["threshold"]):
        return 0.5, None
    score, value = _scores(scan, objective, cost_fp)
    if objective == "min_precision":
        predicted = scan["tp"] + scan["fp"]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(predicted > 0, scan["tp"] / np.maximum(predicted, 1), 0.0)
        allowed = precision >= min_precision - 1e-12
        if not allowed.any():
            return 0.5, None
        score = np.where(allowed, score, -np.inf)
    best = int(np.argmax(score))
    return float(scan["threshold"][best]), float(value[best])


def binary_scores(y_binary: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 of the positive class and balanced accuracy of 0/1 decisions."""
    truth = np.asarray(y_binary).astype(np.int64).ravel()
    pred = np.asarray(predicted).astype(np.int64).ravel()
    tp = float(((pred == 1) & (truth == 1)).sum())
    fp = float(((pred == 1) & (truth == 0)).sum())
    fn = float(((pred == 0) & (truth == 1)).sum())
    tn = float(((pred == 0) & (truth == 0)).sum())
    n = max(tp + fp + fn + tn, 1.0)
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    present = [r for r, s in ((tpr, tp + fn), (tnr, tn + fp)) if s]
    return {"accuracy": (tp + tn) / n, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "balanced_accuracy": float(np.mean(present)) if present else 0.0}


# --------------------------------------------------------------------------- figure
def reliability_figure(table: pd.DataFrame, bins: int, before: dict[str, Any] | None = None,
                       after: dict[str, Any] | None = None) -> Any:
    """Reliability diagram of a `reliability.csv` table (`bins` equal-width bins): accuracy per confidence
    bin before and after calibration against the diagonal, with the rows per bin below."""
    from matplotlib.figure import Figure

    from torchcycle.evaluation.plots import _REFERENCE, PALETTE, style

    with style():
        fig = Figure(figsize=(6.0, 6.4))
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], label="Perfectly calibrated", **_REFERENCE)
        width = 1.0 / bins
        for i, (column, label, summary) in enumerate((("before", "Before calibration", before),
                                                      ("after", "After calibration", after))):
            rows = table[table[f"count_{column}"] > 0]
            ece = f" (ECE {summary['ece']:.3f})" if summary and summary.get("ece") is not None else ""
            top.plot(rows["confidence"], rows[f"accuracy_{column}"], marker="o", color=PALETTE[i],
                     label=label + ece)
            bottom.bar(table["confidence"] + (i - 0.5) * width * 0.45, table[f"count_{column}"],
                       width=width * 0.45, color=PALETTE[i])
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("Accuracy (top-label)")
        top.set_title("Reliability before and after calibration")
        top.legend(loc="upper left")
        bottom.set_xlabel("Confidence (equal-width bins)")
        bottom.set_ylabel("Rows")
        fig.tight_layout()
    return fig
