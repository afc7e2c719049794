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

from torchcycle.errors import ConfigError, TrainingError
from torchcycle.training.distributed import DistContext, all_reduce_sum
from torchcycle.training.objectives import Objective, softmax

PER_STEP_SCHEDULES = ("cosine", "onecycle")


@dataclass
class TensorData:
    """Model inputs (one or more tensors) and targets, all with the same first dimension: int64 class
    labels for classification, float values (float32, standardised by the caller) for regression."""

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


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int = 1, *, higher_is_better: bool | None = None
) -> Any:
    """The learning-rate schedule; cosine (with linear warm-up) and one-cycle advance every optimiser
    step (see PER_STEP_SCHEDULES), step and plateau once per epoch (plateau on the monitored metric,
    whose direction is `higher_is_better`; by default, lower is better for a monitored loss only)."""
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
        if higher_is_better is None:
            higher_is_better = not cfg.monitor.endswith("loss")
        mode = "max" if higher_is_better else "min"
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
def predict_outputs(
    model: nn.Module, data: TensorData | tuple[torch.Tensor, ...], batch_size: int = 2048
) -> np.ndarray:
    """Raw model outputs (logits for a classifier, values for a regressor) in eval mode, float32."""
    was_training = model.training
    model.eval()
    inputs = data.inputs if isinstance(data, TensorData) else data
    device = next(model.parameters()).device
    n = inputs[0].shape[0]
    try:
        out = [
            model(*(t[s : s + batch_size].to(device) for t in inputs)).float().cpu()
            for s in range(0, n, batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def predict_proba(model: nn.Module, data: TensorData | tuple[torch.Tensor, ...], batch_size: int = 2048) -> np.ndarray:
    """Class probabilities (N, K) in eval mode: the softmax of `predict_outputs`."""
    return softmax(predict_outputs(model, data, batch_size))


def validation_logs(model: nn.Module, val: TensorData, objective: Objective) -> dict[str, float]:
    """The objective's validation metrics (val_loss among them) of `model` on `val`."""
    return objective.validation_logs(predict_outputs(model, val), val.y.cpu().numpy())


def check_monitor(monitor: str, objective: Objective) -> None:
    """Raise a ConfigError unless `objective` reports the metric `monitor`."""
    if monitor not in objective.monitors:
        raise ConfigError(
            f"train.monitor is {monitor!r}, which {type(objective).__name__} does not report; "
            f"use one of: {', '.join(objective.monitors)}"
        )


# --------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData,
    cfg,
    *,
    objective: Objective,
    seed: int,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    checkpointer: Any = None,
    dist: DistContext | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the best weights seen on the validation split (or the
    last ones, with `restore_best` off; the moving average of the weights, with `ema_decay` on).

    The `objective` gives the loss and the validation metrics (see torchcycle.training.objectives);
    `cfg.monitor` must be one of its `monitors` (else ConfigError), and its direction comes from
    `objective.higher_is_better`.

    With a `checkpointer` the full state is saved at every epoch end (and every
    `checkpointer.every_steps` optimiser steps) and a matching checkpoint is resumed, so an
    interrupted run ends with exactly the weights of an uninterrupted one. Under torchrun (`dist`)
    every rank sees the same shuffled global batch and trains on its slice of it; losses are scaled
    so the averaged gradient equals the single-process one.
    """
    check_monitor(cfg.monitor, objective)
    r = _setup(model, train, val, cfg, objective, seed, dist)
    r.callbacks, r.checkpointer = tuple(callbacks), checkpointer
    s, resumed = _start_state(r)
    r.train_model = _wrap(r)
    bar = _Progress(cfg.epochs, r.steps, enabled=progress and r.ctx.is_main)
    with bar:
        if resumed is not None:
            bar.note(f"resumed from checkpoint: epoch {s.epoch}, step {s.step}")
        while s.epoch <= cfg.epochs and not s.stopped:
            epoch = s.epoch
            grads = _train_epoch(r, s, bar)
            _end_epoch(r, s, epoch, grads, bar)
            _save(r, s, epoch + 1, 0, None)
    kept_epoch = _final_weights(r, s)
    return FitResult(s.history, s.best_epoch, r.sign * s.best_score, s.stopped, cfg.monitor, kept_epoch, s.notes,
                     resumed, s.inspections)  # fmt: skip


@dataclass
class _Run:
    """What one `fit` call trains with, built once from the params; `_State` holds what changes."""

    cfg: Any
    objective: Objective
    ctx: DistContext
    device: torch.device
    model: nn.Module  # the bare model: the one optimised, checkpointed and returned
    data: TensorData  # the training data, on the device
    val: TensorData
    steps: int  # micro-batches per epoch
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype
    shuffle_gen: torch.Generator
    augment_gen: torch.Generator
    ema: nn.Module | None
    augment: bool
    shuffle: bool
    channels_last: bool
    sign: float  # +1 when a higher monitored value is better, else -1: the loop maximises sign * value
    train_model: nn.Module  # the model as trained: wrapped in DDP and/or compiled by `_wrap`
    callbacks: tuple[Callback, ...] = ()
    checkpointer: Any = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and kept: the moving average with EMA on."""
        return self.ema.module if self.ema is not None else self.model


def _setup(model: nn.Module, train: TensorData, val: TensorData, cfg, objective: Objective, seed: int,
           dist: DistContext | None) -> _Run:  # fmt: skip
    """Device, data, optimiser, schedule, scaler, generators and EMA from the params."""
    ctx = dist or DistContext()
    device = resolve_device(cfg.device, ctx)
    model.to(device)
    is_image = train.inputs[0].ndim == 4
    if cfg.channels_last and is_image:
        model.to(memory_format=torch.channels_last)
    data = train.take(cfg.overfit_batches * cfg.batch_size) if cfg.overfit_batches else train
    data = data.to(device)
    steps = math.ceil(len(data) / cfg.batch_size)
    higher = objective.higher_is_better(cfg.monitor)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(steps / cfg.grad_accumulation), higher_is_better=higher)
    return _Run(
        cfg=cfg, objective=objective, ctx=ctx, device=device, model=model, data=data, val=val, steps=steps,
        optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if cfg.mixed_precision and device.type == "cuda" else None,
        amp_dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
        shuffle_gen=torch.Generator().manual_seed(seed), augment_gen=torch.Generator().manual_seed(seed + 1),
        ema=_ema_of(model, cfg.ema_decay) if cfg.ema_decay and not cfg.overfit_batches else None,
        augment=cfg.augment.enabled and is_image and not cfg.overfit_batches,
        shuffle=not cfg.overfit_batches, channels_last=cfg.channels_last and is_image,
        sign=1.0 if higher else -1.0, train_model=model,
    )  # fmt: skip


def _start_state(r: _Run) -> tuple[_State, dict[str, int] | None]:
    """A fresh state, or the one of a matching checkpoint (which also restores the model, optimiser,
    schedule, scaler, EMA and RNG states) with the position it resumes from."""
    fresh = _State(best_state=copy.deepcopy(r.evaluated.state_dict()))
    saved = r.checkpointer.load() if r.checkpointer is not None else None
    if saved is None:
        return fresh, None
    s = _restore(saved, r.model, r.optimizer, r.scheduler, r.scaler, r.shuffle_gen, r.augment_gen, r.ema)
    return s, {"epoch": s.epoch, "step": s.step}


def _wrap(r: _Run) -> nn.Module:
    """The model as trained: in DistributedDataParallel under torchrun, compiled with `compile` on."""
    train_model: nn.Module = r.model
    if r.ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [r.device.index] if r.device.type == "cuda" else None
        train_model = DistributedDataParallel(r.model, device_ids=device_ids)
    if r.cfg.compile:
        train_model = torch.compile(train_model)
    return train_model


def _save(r: _Run, s: _State, next_epoch: int, next_step: int, order: torch.Tensor | None) -> None:
    """Record the position to continue from and, with a checkpointer (on the main rank), save it all."""
    s.epoch, s.step = next_epoch, next_step
    if r.checkpointer is not None and r.ctx.is_main:
        checkpoint = _snapshot(s, r.model, r.optimizer, r.scheduler, r.scaler, r.shuffle_gen, r.augment_gen,
                               order, r.ema)  # fmt: skip
        r.checkpointer.save(checkpoint)


def _inspects(cfg, epoch: int) -> bool:
    return cfg.inspect.every_epochs > 0 and epoch % cfg.inspect.every_epochs == 0


def _train_epoch(r: _Run, s: _State, bar: _Progress) -> dict[str, float]:
    """One epoch's micro-batches from `s.step` on (a resumed epoch continues where it stopped), with an
    optimiser step every `grad_accumulation` of them and mid-epoch checkpoints every
    `checkpointer.every_steps` optimiser steps. Returns the gradient statistics when inspecting."""
    epoch, cfg = s.epoch, r.cfg
    r.model.train()
    if s.step == 0:
        s.order = torch.randperm(len(r.data), generator=r.shuffle_gen) if r.shuffle else torch.arange(len(r.data))
        s.total, s.count, s.seconds = 0.0, 0, 0.0
    order = s.order.to(r.device)
    bar.start_epoch(epoch, s.step)
    grads: dict[str, float] = {}
    every = getattr(r.checkpointer, "every_steps", 0)
    t0 = time.perf_counter()
    for step in range(s.step, r.steps):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        boundary = (step + 1) % cfg.grad_accumulation == 0 or step == r.steps - 1
        _forward_backward(r, s, idx, epoch, step, boundary)
        if boundary:
            grads = _optimizer_step(r, s, inspect=_inspects(cfg, epoch) and step == r.steps - 1) or grads
            if every and s.opt_step % every == 0 and step < r.steps - 1:
                s.seconds += time.perf_counter() - t0
                _save(r, s, epoch, step + 1, s.order)
                s.step = 0
                t0 = time.perf_counter()
        bar.step(s.total / max(s.count, 1))
    s.seconds += time.perf_counter() - t0
    return grads


def _batch(r: _Run, local: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The inputs and targets at `local`, augmented and in channels-last format as configured."""
    inputs = tuple(t[local] for t in r.data.inputs)
    if r.augment:
        inputs = (random_affine_on(inputs[0], r.augment_gen, r.cfg.augment), *inputs[1:])
    if r.channels_last:
        inputs = (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
    return inputs, r.data.y[local]


def _forward_backward(r: _Run, s: _State, idx: torch.Tensor, epoch: int, step: int, boundary: bool) -> None:
    """Forward and backward pass of this rank's slice of the global batch `idx`; gradients are
    synchronised across ranks only at an accumulation boundary. The loss is scaled so that the
    accumulated, rank-averaged gradient is that of the mean loss over the global batch."""
    ctx, train_model = r.ctx, r.train_model
    local = idx.tensor_split(ctx.world)[ctx.rank] if ctx.enabled else idx
    inputs, y = _batch(r, local)
    sync = train_model.no_sync() if ctx.enabled and not boundary else contextlib.nullcontext()
    with sync:
        with torch.autocast(r.device.type, dtype=r.amp_dtype, enabled=r.cfg.mixed_precision):
            outputs = train_model(*inputs)
        loss_sum = r.objective.loss(outputs, y, r.cfg.label_smoothing)
        loss_value = loss_sum.item()
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"training diverged: the loss became {loss_value} at epoch {epoch}, batch {step}. "
                f"Lower the learning rate (train.lr is {r.cfg.lr:g}) or check the inputs for extreme values."
            )
        loss = loss_sum * (ctx.world / max(1, len(idx)) / r.cfg.grad_accumulation)
        (r.scaler.scale(loss) if r.scaler is not None else loss).backward()
    s.total += loss_value
    s.count += int(y.shape[0])


def _optimizer_step(r: _Run, s: _State, inspect: bool) -> dict[str, float] | None:
    """Clip, step (through the GradScaler on CUDA AMP), update the EMA and a per-step schedule. Returns
    the gradient statistics (taken before the gradients are cleared) when `inspect`, else None."""
    cfg, scaler, optimizer = r.cfg, r.scaler, r.optimizer
    if cfg.grad_clip_norm:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(r.model.parameters(), cfg.grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    grads = None
    if inspect:
        from torchcycle.training.inspection import gradient_stats

        grads = gradient_stats(r.model)
    optimizer.zero_grad(set_to_none=True)
    if r.ema is not None:
        r.ema.update_parameters(r.model)
    s.opt_step += 1
    if r.scheduler is not None and cfg.scheduler in PER_STEP_SCHEDULES:
        r.scheduler.step()
    return grads


def _end_epoch(r: _Run, s: _State, epoch: int, grads: dict[str, float], bar: _Progress) -> None:
    """Training loss and validation metrics into the history, epoch-level schedules, inspection,
    callbacks, best-weights tracking and early stopping."""
    total, count = all_reduce_sum([s.total, float(s.count)], r.ctx, r.device)
    logs: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1.0),
                              "lr": r.optimizer.param_groups[0]["lr"], "train_seconds": s.seconds}  # fmt: skip
    logs.update(validation_logs(r.evaluated, r.val, r.objective))
    if r.scheduler is not None and r.cfg.scheduler == "step":
        r.scheduler.step()
    elif r.scheduler is not None and r.cfg.scheduler == "plateau":
        r.scheduler.step(logs[r.cfg.monitor])
    s.history.append(logs)
    extra: dict[str, float] = {}
    if _inspects(r.cfg, epoch):
        from torchcycle.training.inspection import activation_stats

        extra = {**activation_stats(r.model, tuple(t[:256] for t in r.val.inputs)), **grads}
        s.inspections[epoch] = extra
    if r.ctx.is_main:
        for cb in r.callbacks:
            cb.on_epoch_end(epoch, {**logs, **extra})
    _track_best(r, s, epoch, logs[r.cfg.monitor])
    bar.epoch_done(epoch, logs, r.cfg.monitor)
    _early_stop(r, s, epoch, bar)


def _track_best(r: _Run, s: _State, epoch: int, value: float) -> None:
    """Keep a copy of the evaluated weights when the monitored value improves by more than min_delta."""
    score = r.sign * value
    if math.isnan(score):
        score = -math.inf
    if score > s.best_score + r.cfg.early_stopping.min_delta or s.best_epoch == 0:
        s.best_score, s.best_epoch, s.stale = score, epoch, 0
        s.best_state = copy.deepcopy(r.evaluated.state_dict())
    else:
        s.stale += 1


def _early_stop(r: _Run, s: _State, epoch: int, bar: _Progress) -> None:
    cfg = r.cfg
    if cfg.early_stopping.enabled and not cfg.overfit_batches and s.stale >= cfg.early_stopping.patience:
        s.stopped = True
        kept = f"restored the weights of epoch {s.best_epoch}" if cfg.restore_best else "kept the last weights"
        s.notes.append(f"early stopping at epoch {epoch}: {cfg.monitor} did not improve for {s.stale} epochs; {kept}")
        bar.note(s.notes[-1])


def _final_weights(r: _Run, s: _State) -> int:
    """Load the weights the model ends with and return the epoch they are from: the best epoch's (with
    `restore_best`, outside overfit mode), else the last epoch's (their moving average with EMA on)."""
    if r.cfg.restore_best and not r.cfg.overfit_batches:
        r.model.load_state_dict(s.best_state)
        return s.best_epoch
    if r.ema is not None:
        r.model.load_state_dict(r.ema.module.state_dict())
    return int(s.history[-1]["epoch"]) if s.history else 0


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
            # reset replaces all the task's fields, so epochs goes in again
            self._progress.reset(self._task, total=self.steps, completed=done, epoch=epoch, epochs=self.epochs,
                                 info="")  # fmt: skip

    def step(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=f"loss {loss:.4f}")

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[bold]{message}")

    def epoch_done(self, epoch: int, logs: dict[str, float], monitor: str) -> None:
        """One line per epoch: the training loss, every validation metric (the monitored one in bold)
        and the learning rate."""
        if self._progress is not None:
            metrics = "  ".join(
                f"[bold]{k} {v:.4f}[/bold]" if k == monitor else f"{k} {v:.4f}"
                for k, v in logs.items() if k.startswith("val_")
            )  # fmt: skip
            self._progress.console.print(
                f"epoch {epoch:>3}  train_loss {logs['train_loss']:.4f}  {metrics}  lr {logs['lr']:.2e}"
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
