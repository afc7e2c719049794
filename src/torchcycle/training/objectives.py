"""What the training loop optimises and reports, by kind of target: the loss of a batch and the
validation metrics. The loop itself knows nothing about classes or continuous targets.

- `ClassificationObjective`: logits (N, K) against int64 labels; cross-entropy with label smoothing;
  val_loss, val_accuracy, val_roc_auc.
- `RegressionObjective`: one output per row, (N, 1) or (N,), against a float target the caller has
  already standardised; MSE or Huber; val_loss, val_rmse, val_mae, val_r2 on the standardised scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from torchcycle.errors import ConfigError

LOWER_IS_BETTER = ("loss", "rmse", "mse", "mae")
HIGHER_IS_BETTER = ("r2", "accuracy", "auc")


class Objective(Protocol):
    monitors: tuple[str, ...]  # the validation metrics `validation_logs` reports, val_loss among them

    def loss(self, outputs: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """The loss SUMMED over the batch (the loop scales it for the batch size, accumulation and DDP)."""
        ...

    def validation_logs(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Validation metrics of the raw model outputs against the targets; includes "val_loss"."""
        ...

    def higher_is_better(self, metric: str) -> bool: ...


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` is better: False for losses and errors (…loss, …rmse, …mae),
    True for scores (…accuracy, …roc_auc, …r2)."""
    if metric.endswith(LOWER_IS_BETTER):
        return False
    if metric.endswith(HIGHER_IS_BETTER):
        return True
    raise ConfigError(f"unknown metric {metric!r}: cannot tell whether higher or lower is better")


def softmax(outputs: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits (N, K), float32 (computed by torch, as the loop always has)."""
    if len(outputs) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return F.softmax(torch.from_numpy(np.asarray(outputs, dtype=np.float32)), dim=1).numpy()


# --------------------------------------------------------------------------- classification
@dataclass
class ClassificationObjective:
    """Cross-entropy on logits (N, n_classes) against int64 labels (N,)."""

    n_classes: int
    monitors: tuple[str, ...] = field(default=("val_loss", "val_accuracy", "val_roc_auc"), init=False)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), y, reduction="sum", label_smoothing=label_smoothing)

    def validation_logs(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """val_loss: mean negative log-likelihood of the softmax probabilities (clipped at 1e-7)."""
        proba = softmax(outputs)
        eps = 1e-7
        loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))
        logs = {"val_loss": loss, "val_accuracy": float((proba.argmax(1) == y).mean())}
        logs["val_roc_auc"] = roc_auc(y, proba, self.n_classes)
        return logs

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric)


def roc_auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """ROC AUC (one-vs-rest for more than two classes); nan when a class it needs is absent from y."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    if len(np.unique(y)) < n_classes:
        return float("nan")
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=list(range(n_classes))))


# --------------------------------------------------------------------------- regression
class RegressionObjective:
    """MSE or Huber loss of one output per row against a float target (already standardised by the
    caller, so the metrics are on the standardised scale). Label smoothing does not apply."""

    def __init__(self, loss: Literal["mse", "huber"] = "mse", huber_delta: float = 1.0) -> None:
        if loss not in ("mse", "huber"):
            raise ConfigError(f"unknown regression loss {loss!r}: use 'mse' or 'huber'")
        if not huber_delta > 0:
            raise ConfigError(f"huber_delta must be positive, got {huber_delta}")
        self.loss_name, self.huber_delta = loss, float(huber_delta)
        self.monitors: tuple[str, ...] = ("val_loss", "val_rmse", "val_mae", "val_r2")

    def __repr__(self) -> str:
        return f"RegressionObjective(loss={self.loss_name!r}, huber_delta={self.huber_delta})"

    def loss(self, outputs: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return self._loss_sum(_one_per_row(outputs).float(), y.float())

    def _loss_sum(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "huber":
            return F.huber_loss(pred, y, reduction="sum", delta=self.huber_delta)
        return F.mse_loss(pred, y, reduction="sum")

    def validation_logs(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """val_loss: mean of the training loss; val_r2: nan when y is constant (or empty)."""
        pred = _one_per_row(torch.from_numpy(np.asarray(outputs, dtype=np.float64)))
        target = torch.from_numpy(np.asarray(y, dtype=np.float64))
        n = len(target)
        if n == 0:
            return dict.fromkeys(self.monitors, float("nan"))
        err = pred - target
        ss_tot = float(((target - target.mean()) ** 2).sum())
        return {
            "val_loss": float(self._loss_sum(pred, target)) / n,
            "val_rmse": float(err.pow(2).mean().sqrt()),
            "val_mae": float(err.abs().mean()),
            "val_r2": 1.0 - float(err.pow(2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        }

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric)


def _one_per_row(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.ndim != 1:
        raise ValueError(
            f"a regression model must output one value per row, (N, 1) or (N,); got shape {tuple(outputs.shape)}"
        )
    return outputs
