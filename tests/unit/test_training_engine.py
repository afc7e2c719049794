"""The training toolbox selected by params: optimisers, schedules, smoothing, augmentation, clipping,
accumulation, mixed precision, checkpoint/resume, inspection, overfit mode and the search helpers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from torchcycle.config import (
    Augment,
    Checkpointing,
    CNNConfig,
    EarlyStopping,
    Inspection,
    SearchDim,
    TrainConfig,
)
from torchcycle.models.cnn import ImageCNN
from torchcycle.models.mlp import TabularMLP
from torchcycle.training.augment import elastic_field, random_affine
from torchcycle.training.checkpoint import Checkpointer, params_key
from torchcycle.training.inspection import activation_stats
from torchcycle.training.loop import TensorData, fit, make_optimizer, make_scheduler, validation_logs
from torchcycle.training.objectives import ClassificationObjective
from torchcycle.training.reproducibility import seed_everything

pytestmark = pytest.mark.usefixtures("torch_globals")
BINARY = ClassificationObjective(2)


def cfg(**kw) -> TrainConfig:
    kw.setdefault("scheduler", "none")
    kw.setdefault("early_stopping", EarlyStopping(enabled=False))
    return TrainConfig(**kw)


def tabular(n: int = 64, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorData((x, torch.randint(0, 3, (n, 1), generator=g)), y)


def images(n: int = 32, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.1
    x[y == 1, :, 2:6, 2:6] += 1.0
    return TensorData((x,), y)


def mlp(dropout: float = 0.2) -> TabularMLP:
    return TabularMLP(4, [4], 2, [16], dropout=dropout, batch_norm=False, embedding_dim=2)


def cnn(residual: bool = True) -> ImageCNN:
    return ImageCNN(1, (8, 8), 2, [4, 8], hidden=8, dropout=0.1, batch_norm=True, residual=residual)


def run(model, data, c, seed=0, **kw):
    return fit(model, data, data, c, objective=BINARY, seed=seed, progress=False, **kw)


# --------------------------------------------------------------------------- optimisers and schedules
@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_sgd_with_nesterov_and_rmsprop_are_selectable(name, cls):
    opt = make_optimizer(mlp(), cfg(optimizer=name, momentum=0.8, nesterov=name == "sgd"))
    assert type(opt) is cls
    assert opt.param_groups[0]["momentum"] == 0.8
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True


def _lrs(c: TrainConfig, steps_per_epoch: int, plateau_values=None) -> list[float]:
    opt = make_optimizer(mlp(), c)
    sched = make_scheduler(opt, c, steps_per_epoch)
    out = []
    for epoch in range(c.epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if c.scheduler in ("cosine", "onecycle"):
                sched.step()
        if c.scheduler == "step":
            sched.step()
        if c.scheduler == "plateau":
            sched.step(plateau_values[epoch])
    return out


def test_cosine_warms_up_linearly_then_decays_per_step():
    lrs = _lrs(cfg(scheduler="cosine", lr=0.1, epochs=4, warmup_epochs=1), steps_per_epoch=5)
    peak = lrs.index(max(lrs))
    assert peak == 5 and lrs[0] < lrs[1] < lrs[4] < lrs[5] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[5:]))
    assert lrs[-1] < 0.01


def test_onecycle_rises_to_max_lr_then_anneals_below_start():
    lrs = _lrs(cfg(scheduler="onecycle", lr=0.1, epochs=3, onecycle_pct_start=0.3), steps_per_epoch=10)
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert 5 <= lrs.index(max(lrs)) <= 10
    assert lrs[-1] < lrs[0] < 0.1


def test_step_and_plateau_decay_by_gamma():
    assert _lrs(cfg(scheduler="step", lr=1.0, epochs=4, step_size=2, gamma=0.5), 1) == [1.0, 1.0, 0.5, 0.5]
    lrs = _lrs(cfg(scheduler="plateau", lr=1.0, epochs=5, plateau_patience=1, gamma=0.1), 1, [1, 1, 1, 1, 1])
    assert lrs[:3] == [1.0, 1.0, 1.0] and lrs[3] == pytest.approx(0.1)


# --------------------------------------------------------------------------- regularisation and gradients
def test_label_smoothing_keeps_the_training_loss_away_from_zero():
    data = tabular()
    losses = {}
    for ls in (0.0, 0.2):
        seed_everything(0)
        r = run(mlp(0.0), data, cfg(epochs=40, batch_size=64, optimizer="adam", lr=0.05, label_smoothing=ls))
        losses[ls] = r.history[-1]["train_loss"]
    assert losses[0.0] < 0.1 < losses[0.2]  # with smoothing the optimum has entropy left


def test_random_affine_is_identity_without_jitter_and_moves_pixels_with_it():
    x = images(4).inputs[0]
    same = random_affine(x, torch.Generator().manual_seed(0), max_shift=0.0, max_rotation=0.0)
    moved = random_affine(x, torch.Generator().manual_seed(0), max_shift=0.25, max_rotation=20.0)
    again = random_affine(x, torch.Generator().manual_seed(0), max_shift=0.25, max_rotation=20.0)
    assert torch.allclose(same, x, atol=1e-5)
    assert (moved - x).abs().max() > 0.3
    assert torch.equal(moved, again)  # replayable from the generator state


def test_random_zoom_scales_content_about_the_centre_and_is_off_by_default():
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0  # an 8x8 square in the middle
    area = lambda t: (t > 0.5).float().sum(dim=(1, 2, 3))  # noqa: E731
    plain = random_affine(x, torch.Generator().manual_seed(0), max_shift=0.0, max_rotation=0.0)
    zoomed = random_affine(x, torch.Generator().manual_seed(0), max_shift=0.0, max_rotation=0.0, max_scale=0.3)
    assert torch.allclose(plain, x, atol=1e-5)
    ratio = area(zoomed) / 64
    assert ratio.min() < 0.8 and ratio.max() > 1.2  # both smaller and larger squares
    assert (ratio > 0.7**2 - 0.15).all() and (ratio < 1.3**2 + 0.15).all()  # within 1 ± max_scale
    rows = zoomed[:, 0].gt(0.5).any(dim=2).float()
    centre = (rows * torch.arange(32)).sum(1) / rows.sum(1)
    assert torch.allclose(centre, torch.full_like(centre, 15.5), atol=0.6)  # zoom about the centre
    shift_only = random_affine(x, torch.Generator().manual_seed(1), max_shift=0.2, max_rotation=5.0)
    same_draws = random_affine(x, torch.Generator().manual_seed(1), max_shift=0.2, max_rotation=5.0, max_scale=0.0)
    assert torch.equal(shift_only, same_draws)  # runs without zoom replay the draws they always had


def test_elastic_warp_is_a_smooth_field_scaled_by_alpha():
    shape = torch.Size([16, 1, 28, 28])
    field = lambda alpha, sigma: elastic_field(shape, torch.Generator().manual_seed(0), alpha, sigma) * 14  # noqa: E731 (pixels)
    smooth, rough = field(30.0, 4.0), field(30.0, 0.5)
    assert torch.allclose(field(60.0, 4.0), 2 * smooth)  # alpha scales the same draw
    assert 0.3 < smooth.std() < 3.0 and smooth.abs().max() < 8  # a few pixels, not a scramble
    step = lambda f: (f[:, 1:] - f[:, :-1]).abs().mean() / f.std()  # noqa: E731 (neighbour difference)
    assert step(smooth) < 0.3 < step(rough)  # neighbours move together: a warp, not pixel noise
    x = torch.zeros(shape)
    x[:, :, 8:20, 12:16] = 1.0
    warped = random_affine(x, torch.Generator().manual_seed(0), 0.0, 0.0, elastic_alpha=30.0)
    assert (warped - x).abs().max() > 0.5
    mass = warped.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ((mass > 0.5) & (mass < 1.6)).all()  # strokes stretch and thin locally but survive


def test_gradient_clipping_bounds_each_update():
    seed_everything(0)
    model = mlp(0.0)
    before = [p.detach().clone() for p in model.parameters()]
    run(model, tabular(), cfg(epochs=1, batch_size=64, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip_norm=1e-3))
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert 0 < float(step) <= 1e-3 + 1e-7


def test_gradient_accumulation_equals_one_big_batch():
    data, results = tabular(32), []
    for batch, accum in ((32, 1), (8, 4)):
        seed_everything(0)
        model = mlp(0.0)
        run(model, data, cfg(epochs=1, batch_size=batch, grad_accumulation=accum, optimizer="sgd", lr=0.5, momentum=0.0))
        results.append(model.state_dict())
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-6) for k in results[0])


def test_mixed_precision_runs_in_bfloat16_on_cpu_and_still_learns():
    seed_everything(0)
    model, dtypes = mlp(0.0), set()
    model.head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
    r = run(model, tabular(), cfg(epochs=15, batch_size=16, optimizer="adam", lr=0.01, mixed_precision=True))
    assert dtypes == {torch.bfloat16}
    assert r.history[-1]["train_loss"] < 0.7 * r.history[0]["train_loss"]


def test_augmented_residual_cnn_trains():
    seed_everything(0)
    model = cnn()
    r = run(model, images(), cfg(epochs=6, batch_size=8, optimizer="adam", lr=0.01, augment=Augment(enabled=True)))
    assert r.history[-1]["val_accuracy"] >= 0.9


def test_channels_last_trains_the_cnn_in_that_layout_with_the_same_result():
    """`train.channels_last` feeds NHWC batches to NHWC conv weights: the same optimisation as the
    default layout (equal up to float rounding), not a silently different one."""
    results = {}
    for channels_last in (False, True):
        seed_everything(0)
        model, layouts = cnn(residual=False), set()
        conv = model.features[1][0]  # 4 -> 8 channels (with one channel both layouts are the same)
        conv.register_forward_pre_hook(lambda m, args, seen=layouts: seen.add(
            args[0].is_contiguous(memory_format=torch.channels_last)) if m.training else None)
        r = run(model, images(), cfg(epochs=2, batch_size=8, optimizer="adam", lr=0.01, channels_last=channels_last))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
        assert layouts == {channels_last}
        results[channels_last] = (model.state_dict(), r.history)
    (plain, plain_history), (nhwc, nhwc_history) = results[False], results[True]
    assert all(torch.allclose(plain[k].float(), nhwc[k].float(), atol=1e-4) for k in plain)
    assert [h["val_loss"] for h in nhwc_history] == pytest.approx([h["val_loss"] for h in plain_history], abs=1e-4)


def test_ema_keeps_and_validates_the_moving_average_of_the_weights():
    data, val = tabular(), tabular(32, seed=1)
    runs = {}
    for decay in (0.0, 1e-12, 0.9):
        seed_everything(0)
        model = mlp()
        c = cfg(epochs=5, batch_size=16, optimizer="adam", lr=0.05, ema_decay=decay, restore_best=False)
        r = fit(model, data, val, c, objective=BINARY, seed=0, progress=False)
        runs[decay] = (model.state_dict(), r, model)
    raw, tiny, ema = runs[0.0], runs[1e-12], runs[0.9]
    assert all(torch.allclose(raw[0][k].float(), tiny[0][k].float(), atol=1e-6) for k in raw[0])  # decay→0: raw
    assert any(not torch.allclose(raw[0][k].float(), ema[0][k].float(), atol=1e-3) for k in raw[0])
    assert [h["train_loss"] for h in raw[1].history] == [h["train_loss"] for h in ema[1].history]  # same steps
    assert validation_logs(ema[2], val, BINARY)["val_loss"] == pytest.approx(ema[1].history[-1]["val_loss"], abs=1e-6)


def test_ema_is_the_plain_mean_until_its_horizon_then_an_exponential_average():
    from torchcycle.training.loop import _ema_of

    model = torch.nn.Linear(1, 1, bias=False)
    ema = _ema_of(model, decay=0.75)  # horizon: 1 / (1 - 0.75) = 4 steps
    seen = []
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        model.weight.data.fill_(value)
        ema.update_parameters(model)
        seen.append(float(ema.module.weight))
    assert seen[:4] == pytest.approx([1.0, 1.5, 2.0, 2.5])  # running means
    assert seen[4] == pytest.approx(0.75 * 2.5 + 0.25 * 5.0)
    assert seen[5] == pytest.approx(0.75 * seen[4] + 0.25 * 6.0)


# --------------------------------------------------------------------------- determinism, checkpoints
FULL = {"epochs": 4, "batch_size": 8, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01,
        "scheduler": "onecycle", "label_smoothing": 0.1, "grad_clip_norm": 1.0, "grad_accumulation": 2,
        "augment": Augment(enabled=True, max_scale=0.1, elastic_alpha=10.0), "ema_decay": 0.9}


def _full_run(seed: int, checkpointer=None, callbacks=()):
    seed_everything(seed)
    model = cnn()
    r = fit(model, images(), images(16, seed=1), cfg(**FULL), objective=BINARY, seed=seed, progress=False,
            checkpointer=checkpointer, callbacks=callbacks)
    return model.state_dict(), r


def test_same_params_and_seed_give_bit_identical_metrics_with_every_feature_on():
    (w1, r1), (w2, r2), (_, r3) = _full_run(5), _full_run(5), _full_run(6)
    def strip(h):
        return [{k: v for k, v in e.items() if k != "train_seconds"} for e in h]
    assert strip(r1.history) == strip(r2.history)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert strip(r1.history) != strip(r3.history)


class _Interrupt(Exception):
    pass


def test_resuming_from_a_checkpoint_ends_bit_identical(tmp_path):
    reference, _ = _full_run(7)

    class StopAt2:
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                raise _Interrupt

    ck = Checkpointer(tmp_path, key="k", every_steps=3)
    with pytest.raises(_Interrupt):
        _full_run(7, checkpointer=ck, callbacks=[StopAt2()])
    saved = torch.load(ck.path, weights_only=True)  # plain tensors and containers only
    assert saved["position"]["epoch"] == 2 and saved["position"]["step"] > 0  # a mid-epoch save
    torch.manual_seed(999)  # a resumed process starts from other RNG states
    resumed, r = _full_run(7, checkpointer=ck)
    assert r.resumed_from == {"epoch": 2, "step": saved["position"]["step"]}
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_checkpoint_key_follows_params_and_data_but_not_checkpoint_settings(tmp_path):
    f = tmp_path / "train.npz"
    f.write_bytes(b"abc")
    t = TrainConfig().model_dump()
    base = params_key(1, {"a": 1}, t, [f])
    other_ck = {**t, "checkpoint": Checkpointing(every_steps=7).model_dump(), "inspect": Inspection(every_epochs=1).model_dump()}
    assert params_key(1, {"a": 1}, other_ck, [f]) == base
    assert params_key(1, {"a": 2}, t, [f]) != base
    assert params_key(2, {"a": 1}, t, [f]) != base
    f.write_bytes(b"abd")
    assert params_key(1, {"a": 1}, t, [f]) != base
    Checkpointer(tmp_path, "one").save({"x": torch.ones(1)})
    assert Checkpointer(tmp_path, "two").load() is None
    assert torch.equal(Checkpointer(tmp_path, "one").load()["x"], torch.ones(1))


# --------------------------------------------------------------------------- inspection and overfit mode
def test_inspection_reports_per_layer_activation_and_gradient_statistics():
    seed_everything(0)
    seen = {}

    class Keep:
        def on_epoch_end(self, epoch, logs):
            seen[epoch] = logs

    run(cnn(), images(), cfg(epochs=2, batch_size=8, inspect=Inspection(every_epochs=2)), callbacks=[Keep()])
    assert not any(k.startswith("grad_norm/") for k in seen[1])
    assert seen[2]["grad_norm/head.5.weight"] > 0
    assert 0 <= seen[2]["act_zero_frac/features.0.2"] <= 1
    stats = activation_stats(mlp(), tabular(8).inputs)
    assert {"act_mean/head", "act_std/body.0"} <= set(stats)


def test_overfit_mode_memorises_one_fixed_batch():
    seed_everything(0)
    g = torch.Generator().manual_seed(3)
    noise = TensorData((torch.randn(64, 4, generator=g), torch.zeros(64, 1, dtype=torch.long)),
                       torch.randint(0, 2, (64,), generator=g))  # random labels: only memorising helps
    r = run(mlp(0.0), noise, cfg(epochs=200, batch_size=16, optimizer="adam", lr=0.03, overfit_batches=1))
    assert r.history[-1]["train_loss"] < 0.05


# --------------------------------------------------------------------------- search helpers
def test_search_suggests_from_the_declared_space_and_applies_validated_overrides():
    import optuna

    from torchcycle.config import ImageSource, ImageTask
    from torchcycle.errors import ConfigError
    from torchcycle.tuning.search import apply_overrides, suggest

    space = {"train.lr": SearchDim(low=1e-4, high=1e-2, log=True),
             "model.channels": SearchDim(type="categorical", choices=[[8, 16], [16, 32]]),
             "train.batch_size": SearchDim(type="int", low=16, high=64)}
    trial = optuna.trial.FixedTrial({"train.lr": 0.003, "model.channels": "[16, 32]", "train.batch_size": 32})
    values = suggest(trial, space)
    assert values == {"train.lr": 0.003, "model.channels": [16, 32], "train.batch_size": 32}
    task = ImageTask(kind="image", source=ImageSource(builtin="mnist"), model=CNNConfig())
    tuned = apply_overrides(task, {**values, "train.augment.enabled": True})
    assert tuned.model.channels == [16, 32] and tuned.train.lr == 0.003 and tuned.train.augment.enabled
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        apply_overrides(task, {"train.lrr": 1.0})
    with pytest.raises(ValueError, match="lr"):  # pydantic's ValidationError is a ValueError
        apply_overrides(task, {"train.lr": -1.0})
    assert math.isclose(task.train.lr, 1e-3)


def test_search_prunes_a_trial_that_falls_behind_the_median():
    import optuna

    from torchcycle.tuning.search import PruningCallback

    study = optuna.create_study(direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))

    def objective(trial, losses):
        cb = PruningCallback(trial, "val_loss", maximise=False)
        for epoch, loss in enumerate(losses, start=1):
            cb.on_epoch_end(epoch, {"val_loss": loss})
        return cb.best

    study.optimize(lambda t: objective(t, [0.9, 0.5, 0.3, 0.2]), n_trials=1)
    study.optimize(lambda t: objective(t, [0.8, 0.6, 0.55, 0.5]), n_trials=1)  # behind at epoch 2
    study.optimize(lambda t: objective(t, [0.7, 0.4, 0.25, 0.1]), n_trials=1)  # ahead: runs to the end
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"], states
    assert max(study.trials[1].intermediate_values) == 2 and study.best_value == pytest.approx(0.1)
