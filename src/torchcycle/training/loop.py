"""The training loop: in-memory mini-batches (no per-sample DataLoader overhead), an optimiser and
schedule from params, early stopping with best-weights restore, label smoothing, augmentation,
gradient clipping and accumulation, mixed precision, resumable checkpoints, inspection statistics and
DistributedDataParallel sharding, plus callbacks for tracking/progress.

It knows nothing about MLflow or the project layout: callers pass callbacks and a checkpointer.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torchcycle.errors import TrainingError
from torchcycle.training.distributed import DistContext, all_reduce_sum

PER_STEP_SCHEDULES = ("cosine", "onecycle")


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

    def take(self, n: int) -> TensorData:
        return TensorData(tuple(t[:n] for t in self.inputs), self.y[:n])

    def to(self, device: torch.device) -> TensorData:
        return TensorData(tuple(t.to(device) for t in self.inputs), self.y.to(device))


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    stopped_early: bool
    monitor: str
    kept_epoch: int  # the epoch whose weights the model ends with (best_epoch unless restore_best is off)
    notes: list[str] = field(default_factory=list)
    resumed_from: dict[str, int] | None = None
    inspections: dict[int, dict[str, float]] = field(default_factory=dict)


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
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int = 1) -> Any:
    """The learning-rate schedule; cosine (with linear warm-up) and one-cycle advance every optimiser
    step (see PER_STEP_SCHEDULES), step and plateau once per epoch (plateau on the monitored metric)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "cosine":
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=cfg.onecycle_pct_start,
            cycle_momentum=cfg.optimizer in ("sgd", "rmsprop") and cfg.momentum > 0,
        )  # fmt: skip
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.monitor.endswith("loss") else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.gamma, patience=cfg.plateau_patience
        )
    return None


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", ctx.local_rank if ctx else 0)
    return torch.device("cpu")


# --------------------------------------------------------------------------- evaluation helpers
@torch.no_grad()
def predict_proba(model: nn.Module, data: TensorData | tuple[torch.Tensor, ...], batch_size: int = 2048) -> np.ndarray:
    """Class probabilities (N, K) in eval mode."""
    was_training = model.training
    model.eval()
    inputs = data.inputs if isinstance(data, TensorData) else data
    device = next(model.parameters()).device
    n = inputs[0].shape[0]
    out = [
        F.softmax(model(*(t[s : s + batch_size].to(device) for t in inputs)).float(), dim=1).cpu()
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
    checkpointer: Any = None,
    dist: DistContext | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the best weights seen on the validation split (or the
    last ones, with `restore_best` off; the moving average of the weights, with `ema_decay` on).

    With a `checkpointer` the full state is saved at every epoch end (and every
    `checkpointer.every_steps` optimiser steps) and a matching checkpoint is resumed, so an
    interrupted run ends with exactly the weights of an uninterrupted one. Under torchrun (`dist`)
    every rank sees the same shuffled global batch and trains on its slice of it; losses are scaled
    so the averaged gradient equals the single-process one.
    """
    ctx = dist or DistContext()
    device = resolve_device(cfg.device, ctx)
    model.to(device)
    is_image = train.inputs[0].ndim == 4
    if cfg.channels_last and is_image:
        model.to(memory_format=torch.channels_last)
    data = train.take(cfg.overfit_batches * cfg.batch_size) if cfg.overfit_batches else train
    data = data.to(device)
    accum = cfg.grad_accumulation
    steps = math.ceil(len(data) / cfg.batch_size)
    opt_steps_per_epoch = math.ceil(steps / accum)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, opt_steps_per_epoch)
    use_amp = cfg.mixed_precision
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    shuffle_gen = torch.Generator().manual_seed(seed)
    augment_gen = torch.Generator().manual_seed(seed + 1)
    augment = cfg.augment.enabled and is_image and not cfg.overfit_batches
    shuffle = not cfg.overfit_batches

    ema = _ema_of(model, cfg.ema_decay) if cfg.ema_decay and not cfg.overfit_batches else None
    evaluated = ema.module if ema is not None else model  # the weights that are validated and kept

    monitor = cfg.monitor
    sign = -1.0 if monitor.endswith("loss") else 1.0  # maximise sign * value
    s = _State(best_state=copy.deepcopy(evaluated.state_dict()))
    resumed = None
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        s = _restore(saved, model, optimizer, scheduler, scaler, shuffle_gen, augment_gen, ema)
        resumed = {"epoch": s.epoch, "step": s.step}

    train_model: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    def save(next_epoch: int, next_step: int, order: torch.Tensor | None) -> None:
        if checkpointer is not None and ctx.is_main:
            s.epoch, s.step = next_epoch, next_step
            checkpointer.save(_snapshot(s, model, optimizer, scheduler, scaler, shuffle_gen, augment_gen, order, ema))

    bar = _Progress(cfg.epochs, steps, enabled=progress and ctx.is_main)
    with bar:
        if resumed is not None:
            bar.note(f"resumed from checkpoint: epoch {s.epoch}, step {s.step}")
        while s.epoch <= cfg.epochs and not s.stopped:
            epoch = s.epoch
            model.train()
            if s.step == 0:
                s.order = torch.randperm(len(data), generator=shuffle_gen) if shuffle else torch.arange(len(data))
                s.total, s.count, s.seconds = 0.0, 0, 0.0
            order = s.order.to(device)
            bar.start_epoch(epoch, s.step)
            grads: dict[str, float] = {}
            inspect_now = cfg.inspect.every_epochs > 0 and epoch % cfg.inspect.every_epochs == 0
            t0 = time.perf_counter()
            for step in range(s.step, steps):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                local = idx.tensor_split(ctx.world)[ctx.rank] if ctx.enabled else idx
                inputs = tuple(t[local] for t in data.inputs)
                y = data.y[local]
                if augment:
                    mx = inputs[0]
                    inputs = (random_affine_on(mx, augment_gen, cfg.augment), *inputs[1:])
                if cfg.channels_last and is_image:
                    inputs = (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
                boundary = (step + 1) % accum == 0 or step == steps - 1
                sync = train_model.no_sync() if ctx.enabled and not boundary else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        logits = train_model(*inputs)
                    loss_sum = F.cross_entropy(
                        logits.float(), y, reduction="sum", label_smoothing=cfg.label_smoothing
                    )
                    loss_value = loss_sum.item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(
                            f"training diverged: the loss became {loss_value} at epoch {epoch}, batch {step}. "
                            f"Lower the learning rate (train.lr is {cfg.lr:g}) or check the inputs for "
                            "extreme values."
                        )
                    loss = loss_sum * (ctx.world / max(1, len(idx)) / accum)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                s.total += loss_value
                s.count += int(y.shape[0])
                if boundary:
                    if cfg.grad_clip_norm:
                        if scaler is not None:
                            scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if inspect_now and step == steps - 1:
                        from torchcycle.training.inspection import gradient_stats

                        grads = gradient_stats(model)
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update_parameters(model)
                    s.opt_step += 1
                    if scheduler is not None and cfg.scheduler in PER_STEP_SCHEDULES:
                        scheduler.step()
                    every = getattr(checkpointer, "every_steps", 0)
                    if every and s.opt_step % every == 0 and step < steps - 1:
                        s.seconds += time.perf_counter() - t0
                        save(epoch, step + 1, s.order)
                        s.step = 0
                        t0 = time.perf_counter()
                bar.step(s.total / max(s.count, 1))
            s.seconds += time.perf_counter() - t0
            total, count = all_reduce_sum([s.total, float(s.count)], ctx, device)
            lr = optimizer.param_groups[0]["lr"]
            logs: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1.0), "lr": lr,
                                      "train_seconds": s.seconds}  # fmt: skip
            logs.update(validation_logs(evaluated, val, n_classes))
            if scheduler is not None and cfg.scheduler == "step":
                scheduler.step()
            elif scheduler is not None and cfg.scheduler == "plateau":
                scheduler.step(logs[monitor])
            s.history.append(logs)
            extra: dict[str, float] = {}
            if inspect_now:
                from torchcycle.training.inspection import activation_stats

                extra = {**activation_stats(model, tuple(t[:256] for t in val.inputs)), **grads}
                s.inspections[epoch] = extra
            if ctx.is_main:
                for cb in callbacks:
                    cb.on_epoch_end(epoch, {**logs, **extra})
            score = sign * logs[monitor]
            if math.isnan(score):
                score = -math.inf
            if score > s.best_score + cfg.early_stopping.min_delta or s.best_epoch == 0:
                s.best_score, s.best_epoch, s.stale = score, epoch, 0
                s.best_state = copy.deepcopy(evaluated.state_dict())
            else:
                s.stale += 1
            bar.epoch_done(epoch, logs, monitor)
            if cfg.early_stopping.enabled and not cfg.overfit_batches and s.stale >= cfg.early_stopping.patience:
                s.stopped = True
                kept = f"restored the weights of epoch {s.best_epoch}" if cfg.restore_best else "kept the last weights"
                s.notes.append(f"early stopping at epoch {epoch}: {monitor} did not improve for {s.stale} epochs; {kept}")
                bar.note(s.notes[-1])
            s.epoch, s.step = epoch + 1, 0
            save(epoch + 1, 0, None)
    if cfg.restore_best and not cfg.overfit_batches:
        model.load_state_dict(s.best_state)
        kept_epoch = s.best_epoch
    else:
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())
        kept_epoch = int(s.history[-1]["epoch"]) if s.history else 0
    return FitResult(s.history, s.best_epoch, sign * s.best_score, s.stopped, monitor, kept_epoch, s.notes, resumed,
                     s.inspections)


def random_affine_on(x: torch.Tensor, generator: torch.Generator, aug) -> torch.Tensor:
    from torchcycle.training.augment import random_affine

    return random_affine(x, generator, aug.max_shift, aug.max_rotation, aug.max_scale, aug.elastic_alpha,
                         aug.elastic_sigma)


# --------------------------------------------------------------------------- resumable state
@dataclass
class _State:
    """Everything that, with the model/optimiser/scheduler/RNG states, determines the rest of a run."""

    best_state: dict[str, torch.Tensor]
    epoch: int = 1
    step: int = 0
    opt_step: int = 0
    total: float = 0.0
    count: int = 0
    seconds: float = 0.0
    order: torch.Tensor | None = None
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inspections: dict[int, dict[str, float]] = field(default_factory=dict)


def _ema_of(model: nn.Module, decay: float) -> nn.Module:
    """An exponential moving average of the weights and batch-norm statistics: a cheap ensemble over
    the last few hundred steps, which usually generalises a little better than the raw weights.

    Until 1 / (1 - decay) steps have been averaged it is the plain mean of the steps so far, so a short
    run (few steps per epoch, few epochs) is not dragged back towards its initial weights."""
    from torch.optim.swa_utils import AveragedModel

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        weight = 1 - min(decay, n / (n + 1))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # counters such as num_batches_tracked follow the model
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _snapshot(s: _State, model, optimizer, scheduler, scaler, shuffle_gen, augment_gen, order, ema=None) -> dict:
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_gen.get_state(), "augment": augment_gen.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "position": {"epoch": s.epoch, "step": s.step, "opt_step": s.opt_step},
        "running": {"total": s.total, "count": s.count, "seconds": s.seconds},
        "order": order.cpu() if order is not None else None,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "ema": {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()} if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "early_stopping": {"best_score": s.best_score, "best_epoch": s.best_epoch, "stale": s.stale,
                           "stopped": s.stopped, "best_state": s.best_state},
        "history": s.history,
        "notes": s.notes,
        "inspections": s.inspections,
    }


def _restore(saved: dict, model, optimizer, scheduler, scaler, shuffle_gen, augment_gen, ema=None) -> _State:
    model.load_state_dict(saved["model"])
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    shuffle_gen.set_state(rng["shuffle"])
    augment_gen.set_state(rng["augment"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    pos, run, es = saved["position"], saved["running"], saved["early_stopping"]
    device = next(model.parameters()).device
    return _State(
        best_state={k: v.to(device) for k, v in es["best_state"].items()},
        epoch=pos["epoch"], step=pos["step"], opt_step=pos["opt_step"],
        total=run["total"], count=run["count"], seconds=run["seconds"], order=saved["order"],
        best_score=es["best_score"], best_epoch=es["best_epoch"], stale=es["stale"], stopped=es["stopped"],
        history=list(saved["history"]), notes=list(saved["notes"]), inspections=dict(saved["inspections"]),
    )  # fmt: skip


class _Progress:
    """A rich progress bar: one bar per epoch with loss, validation metric and learning rate."""

    def __init__(self, epochs: int, steps: int, enabled: bool) -> None:
        self.epochs, self.steps, self.enabled = epochs, steps, enabled
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            )  # fmt: skip
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.steps, epoch=1, epochs=self.epochs, info="")
        return self

    def start_epoch(self, epoch: int, done: int) -> None:
        if self._progress is not None:
            self._progress.reset(self._task, total=self.steps, completed=done, epoch=epoch, info="")

    def step(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=f"loss {loss:.4f}")

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[bold]{message}")

    def epoch_done(self, epoch: int, logs: dict[str, float], monitor: str) -> None:
        if self._progress is not None:
            self._progress.console.print(
                f"epoch {epoch:>3}  train_loss {logs['train_loss']:.4f}  val_loss {logs['val_loss']:.4f}  "
                f"val_accuracy {logs['val_accuracy']:.4f}  {monitor} {logs[monitor]:.4f}  lr {logs['lr']:.2e}"
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
