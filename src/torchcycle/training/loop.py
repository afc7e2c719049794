"""The training loop: in-memory mini-batches (no per-sample DataLoader overhead), an optimiser and
schedule from params, early stopping with best-weights restore, and callbacks for tracking/progress.

It knows nothing about files or MLflow: callers pass callbacks for that.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torchcycle.errors import TrainingError


@dataclass
class TensorData:
    """Model inputs (one or more tensors) and integer labels, all with the same first dimension."""

    inputs: tuple[torch.Tensor, ...]
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple]:
        """Slices of the tensors; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                yield tuple(t[sl] for t in self.inputs), self.y[sl]
            else:
                idx = order[start : start + batch_size]
                yield tuple(t[idx] for t in self.inputs), self.y[idx]

    def take(self, n: int) -> "TensorData":
        return TensorData(tuple(t[:n] for t in self.inputs), self.y[:n])


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    stopped_early: bool
    monitor: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pieces from params
def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """Optimiser with weight decay on weights only: biases and normalisation parameters are exempt."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


# --------------------------------------------------------------------------- evaluation helpers
@torch.no_grad()
def predict_proba(model: nn.Module, data: TensorData | tuple[torch.Tensor, ...], batch_size: int = 2048) -> np.ndarray:
    """Class probabilities (N, K) in eval mode."""
    was_training = model.training
    model.eval()
    inputs = data.inputs if isinstance(data, TensorData) else data
    n = inputs[0].shape[0]
    out = [
        F.softmax(model(*(t[s : s + batch_size] for t in inputs)), dim=1)
        for s in range(0, n, batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def validation_logs(model: nn.Module, val: TensorData, n_classes: int) -> dict[str, float]:
    proba = predict_proba(model, val)
    y = val.y.numpy()
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))
    logs = {"val_loss": loss, "val_accuracy": float((proba.argmax(1) == y).mean())}
    logs["val_roc_auc"] = _roc_auc(y, proba, n_classes)
    return logs


def _roc_auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    if len(np.unique(y)) < n_classes:
        return float("nan")
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=list(range(n_classes))))


# --------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData,
    cfg,
    *,
    n_classes: int,
    seed: int,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> FitResult:
    """Train `model` in place; on return it holds the best weights seen on the validation split."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    monitor = cfg.monitor
    sign = -1.0 if monitor.endswith("loss") else 1.0  # maximise sign * value
    best_score, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    stale, history, notes, stopped = 0, [], [], False
    steps = math.ceil(len(train) / cfg.batch_size)

    bar = _Progress(cfg.epochs, steps, enabled=progress)
    with bar:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            total, count = 0.0, 0
            for step, (inputs, y) in enumerate(train.batches(cfg.batch_size, generator)):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(*inputs), y)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"training diverged: the loss became {loss.item()} at epoch {epoch}, batch {step}. "
                        f"Lower the learning rate (train.lr is {cfg.lr:g}) or check the inputs for extreme values."
                    )
                loss.backward()
                optimizer.step()
                total += loss.item() * y.shape[0]
                count += y.shape[0]
                bar.step(total / count)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            logs = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": lr}
            logs.update(validation_logs(model, val, n_classes))
            history.append(logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
            score = sign * logs[monitor]
            if math.isnan(score):
                score = -math.inf
            improved = score > best_score + cfg.early_stopping.min_delta
            if improved or best_epoch == 0:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.epoch_done(epoch, logs, monitor)
            if cfg.early_stopping.enabled and stale >= cfg.early_stopping.patience:
                stopped = True
                notes.append(
                    f"early stopping at epoch {epoch}: {monitor} did not improve for {stale} epochs; "
                    f"restored the weights of epoch {best_epoch}"
                )
                break
    model.load_state_dict(best_state)
    return FitResult(history, best_epoch, sign * best_score, stopped, monitor, notes)


class _Progress:
    """A rich progress bar: one bar per epoch with loss, validation metric and learning rate."""

    def __init__(self, epochs: int, steps: int, enabled: bool) -> None:
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self._progress: Any = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            )  # fmt: skip
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.steps, epoch=1, epochs=self.epochs, info="")
        return self

    def step(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=f"loss {loss:.4f}")

    def epoch_done(self, epoch: int, logs: dict[str, float], monitor: str) -> None:
        if self._progress is not None:
            self._progress.console.print(
                f"epoch {epoch:>3}  train_loss {logs['train_loss']:.4f}  val_loss {logs['val_loss']:.4f}  "
                f"val_accuracy {logs['val_accuracy']:.4f}  {monitor} {logs[monitor]:.4f}  lr {logs['lr']:.2e}"
            )
            if epoch < self.epochs:
                self._progress.reset(self._task, total=self.steps, epoch=epoch + 1, info="")

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
