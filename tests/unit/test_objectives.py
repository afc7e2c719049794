"""Training objectives: the loss and validation metrics of classification and regression, and the
training loop driven by a regression objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from torch import nn
from torch.nn import functional as F

from torchcycle.config import EarlyStopping, TrainConfig
from torchcycle.errors import ConfigError
from torchcycle.training.loop import TensorData, fit, make_optimizer, make_scheduler, predict_outputs
from torchcycle.training.objectives import ClassificationObjective, RegressionObjective, higher_is_better
from torchcycle.training.reproducibility import seed_everything

pytestmark = pytest.mark.usefixtures("torch_globals")


def logits_and_labels(n: int = 40, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.arange(n) % k


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_classification_loss_is_summed_cross_entropy_on_float_logits(smoothing):
    logits, y = logits_and_labels()
    got = ClassificationObjective(3).loss(logits.to(torch.bfloat16), y, smoothing)
    want = F.cross_entropy(logits.to(torch.bfloat16).float(), y, reduction="sum", label_smoothing=smoothing)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


def test_classification_validation_logs_match_the_loops_numbers():
    logits, y = logits_and_labels()
    logs = ClassificationObjective(3).validation_logs(logits.numpy(), y.numpy())
    proba = F.softmax(logits, dim=1).numpy()
    nll = -np.mean(np.log(np.clip(proba[np.arange(len(y)), y.numpy()], 1e-7, 1.0)))
    assert set(logs) == {"val_loss", "val_accuracy", "val_roc_auc"}
    assert logs["val_loss"] == pytest.approx(float(nll), rel=1e-6)
    assert logs["val_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert logs["val_accuracy"] == float((logits.argmax(1) == y).double().mean())
    assert logs["val_roc_auc"] == pytest.approx(roc_auc_score(y.numpy(), proba, multi_class="ovr"))
    binary_logits, binary_y = logits_and_labels(k=2)
    auc = ClassificationObjective(2).validation_logs(binary_logits.numpy(), binary_y.numpy())["val_roc_auc"]
    assert auc == pytest.approx(roc_auc_score(binary_y.numpy(), F.softmax(binary_logits, 1)[:, 1].numpy()))


def test_classification_roc_auc_is_nan_when_a_class_is_missing():
    logits, _ = logits_and_labels(6)
    one_class = ClassificationObjective(2).validation_logs(logits[:, :2].numpy(), np.zeros(6, dtype=np.int64))
    two_of_three = ClassificationObjective(3).validation_logs(logits.numpy(), np.array([0, 1, 0, 1, 0, 1]))
    assert math.isnan(one_class["val_roc_auc"]) and math.isnan(two_of_three["val_roc_auc"])
    assert one_class["val_accuracy"] == float((logits[:, :2].argmax(1) == 0).double().mean())


def test_monitor_directions():
    cls, reg = ClassificationObjective(2), RegressionObjective()
    assert not cls.higher_is_better("val_loss") and cls.higher_is_better("val_accuracy")
    assert cls.higher_is_better("val_roc_auc")
    assert reg.higher_is_better("val_r2")
    assert not any(reg.higher_is_better(m) for m in ("val_loss", "val_rmse", "val_mae"))
    assert all(m in cls.monitors for m in ("val_loss", "val_accuracy", "val_roc_auc"))
    assert reg.monitors == ("val_loss", "val_rmse", "val_mae", "val_r2")
    with pytest.raises(ConfigError, match="val_banana"):
        higher_is_better("val_banana")


# --------------------------------------------------------------------------- regression
def regression_pair(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, generator=g)
    return (y + torch.randn(n, generator=g) * 1.5).unsqueeze(1), y  # errors beyond the Huber delta too


@pytest.mark.parametrize("shape", ["column", "flat"])
def test_regression_losses_are_summed_mse_and_huber(shape):
    outputs, y = regression_pair()
    outputs = outputs if shape == "column" else outputs[:, 0]
    flat = outputs.reshape(-1)
    mse = RegressionObjective("mse").loss(outputs, y, label_smoothing=0.3)  # smoothing does not apply
    huber = RegressionObjective("huber", huber_delta=0.5).loss(outputs, y, 0.0)
    assert torch.allclose(mse, F.mse_loss(flat, y, reduction="sum"))
    assert torch.allclose(huber, F.huber_loss(flat, y, reduction="sum", delta=0.5))
    assert huber < mse


def test_regression_loss_rejects_more_than_one_output_per_row():
    with pytest.raises(ValueError, match=r"one value per row.*\(4, 2\)"):
        RegressionObjective().loss(torch.zeros(4, 2), torch.zeros(4), 0.0)
    with pytest.raises(ConfigError, match="mae"):
        RegressionObjective("mae")  # type: ignore[arg-type]


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_validation_logs_match_scikit_learn(loss):
    outputs, y = regression_pair()
    logs = RegressionObjective(loss).validation_logs(outputs.numpy(), y.numpy())
    p, t = outputs[:, 0].double().numpy(), y.double().numpy()
    assert set(logs) == {"val_loss", "val_rmse", "val_mae", "val_r2"}
    torch_loss = F.mse_loss if loss == "mse" else F.huber_loss
    assert logs["val_loss"] == pytest.approx(float(torch_loss(outputs[:, 0].double(), y.double())), rel=1e-9)
    assert logs["val_rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), rel=1e-9)
    assert logs["val_mae"] == pytest.approx(mean_absolute_error(t, p), rel=1e-9)
    assert logs["val_r2"] == pytest.approx(r2_score(t, p), rel=1e-9)


def test_regression_r2_is_nan_for_a_constant_target():
    logs = RegressionObjective().validation_logs(np.array([[0.5], [1.0], [2.0]]), np.ones(3, dtype=np.float32))
    assert math.isnan(logs["val_r2"])
    assert logs["val_mae"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- the loop with a regression objective
def line_data(n: int, seed: int) -> TensorData:
    """y = 2x + noise, standardised with fixed constants (as the caller would with training statistics)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    y = 2 * x[:, 0] + 0.1 * torch.randn(n, generator=g)
    return TensorData((x,), ((y - 0.0) / 2.0).float())


def regressor() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))


def regression_cfg(**kw) -> TrainConfig:
    kw = {"epochs": 40, "batch_size": 32, "optimizer": "adam", "lr": 0.01, "scheduler": "none",
          "early_stopping": EarlyStopping(enabled=False), **kw}  # fmt: skip
    return TrainConfig(**kw)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_fit_trains_a_regressor_to_well_below_the_spread_of_the_target(loss):
    seed_everything(0)
    train, val = line_data(256, 0), line_data(128, 1)
    model = regressor()
    result = fit(model, train, val, regression_cfg(), objective=RegressionObjective(loss), seed=0, progress=False)
    last = result.history[-1]
    assert {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2"} <= set(last)
    assert last["val_rmse"] < 0.2 * float(val.y.std())
    assert last["val_r2"] > 0.95
    assert result.history[0]["train_loss"] > 5 * last["train_loss"]
    assert predict_outputs(model, val).shape == (128, 1)


@pytest.mark.parametrize("monitor, best", [("val_rmse", min), ("val_r2", max)])
def test_fit_keeps_the_best_epoch_in_the_direction_of_the_monitor(monitor, best):
    seed_everything(0)
    train, val = line_data(64, 0), line_data(64, 1)
    cfg = regression_cfg(epochs=12, batch_size=16, lr=0.05, monitor=monitor)
    result = fit(regressor(), train, val, cfg, objective=RegressionObjective(), seed=0, progress=False)
    values = [h[monitor] for h in result.history]
    assert result.best_score == pytest.approx(best(values))
    assert values[result.best_epoch - 1] == best(values)


def test_plateau_schedule_follows_the_objectives_direction():
    cfg = regression_cfg(scheduler="plateau", monitor="val_r2")
    opt = make_optimizer(regressor(), cfg)
    assert make_scheduler(opt, cfg, higher_is_better=True).mode == "max"
    assert make_scheduler(opt, cfg, higher_is_better=False).mode == "min"
    assert make_scheduler(opt, regression_cfg(scheduler="plateau"), 1).mode == "min"  # val_loss by default


def test_a_monitor_the_objective_does_not_report_is_a_config_error():
    model = regressor()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"'val_accuracy'.*val_loss, val_rmse, val_mae, val_r2"):
        fit(model, line_data(8, 0), line_data(8, 1), regression_cfg(monitor="val_accuracy"),
            objective=RegressionObjective(), seed=0, progress=False)  # fmt: skip
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # raised before training
    with pytest.raises(ConfigError, match="val_r2"):
        fit(regressor(), line_data(8, 0), line_data(8, 1), regression_cfg(monitor="val_r2"),
            objective=ClassificationObjective(2), seed=0, progress=False)  # fmt: skip
