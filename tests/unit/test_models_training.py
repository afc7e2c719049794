"""Models built from params and the training loop: shapes, spec round trip, optimisation and reproducibility."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from torchcycle.config import (
    CNNConfig,
    EarlyStopping,
    ImageSource,
    ImageTask,
    MLPConfig,
    TabularPreprocess,
    TabularSource,
    TabularTask,
    TrainConfig,
)
from torchcycle.errors import TrainingError
from torchcycle.kinds import kind_of
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.kinds.tabular import schema as tabular_schema
from torchcycle.models.cnn import ImageCNN
from torchcycle.models.factory import build_model
from torchcycle.models.mlp import TabularMLP
from torchcycle.targets import get_target
from torchcycle.training.loop import TensorData, fit, make_optimizer, predict_proba, validation_logs
from torchcycle.training.objectives import ClassificationObjective
from torchcycle.training.reproducibility import seed_everything

pytestmark = pytest.mark.usefixtures("torch_globals")
BINARY = ClassificationObjective(2)


# --------------------------------------------------------------------------- helpers
def no_categoricals(n: int) -> torch.Tensor:
    return torch.zeros((n, 0), dtype=torch.long)


def numeric_data(x: torch.Tensor, y: torch.Tensor) -> TensorData:
    return TensorData((x, no_categoricals(len(y))), y)


def small_mlp(n_numeric: int, n_classes: int, hidden: int = 64) -> TabularMLP:
    return TabularMLP(n_numeric, [], n_classes, [hidden], batch_norm=False, dropout=0.0)


def train_cfg(**kw) -> TrainConfig:
    kw.setdefault("scheduler", "none")
    return TrainConfig(**kw)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def accuracy(model: nn.Module, data: TensorData) -> float:
    return float((predict_proba(model, data).argmax(1) == data.y.numpy()).mean())


# --------------------------------------------------------------------------- TabularMLP
@pytest.mark.parametrize("embedding_dim", [0, 3])
def test_tabular_mlp_output_shape(embedding_dim):
    cardinalities = [4, 2, 7]
    model = TabularMLP(
        5, cardinalities, 3, [16, 8], batch_norm=True, dropout=0.1, embedding_dim=embedding_dim
    )
    x_num = torch.randn(6, 5)
    x_cat = torch.stack([torch.randint(0, c, (6,)) for c in cardinalities], dim=1)

    out = model(x_num, x_cat)

    assert out.shape == (6, 3)
    expected_width = 5 + (3 * len(cardinalities) if embedding_dim else sum(cardinalities))
    assert model.encode(x_num, x_cat).shape == (6, expected_width)


def test_one_hot_encoding_marks_the_code_of_each_column():
    model = TabularMLP(1, [3, 2], 2, [4])
    x_cat = torch.tensor([[2, 0], [0, 1]])

    z = model.encode(torch.zeros(2, 1), x_cat)

    assert z.tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 1]]


def test_tabular_mlp_without_categorical_columns():
    model = TabularMLP(4, [], 2, [8])

    assert model(torch.randn(3, 4), no_categoricals(3)).shape == (3, 2)


# --------------------------------------------------------------------------- ImageCNN
@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (32, 32)), (3, (13, 7)), (1, (5, 9))])
def test_image_cnn_output_shape(channels, size):
    model = ImageCNN(channels, size, 4, [4, 8], hidden=16)

    out = model(torch.randn(2, channels, *size))

    assert out.shape == (2, 4)


def test_image_cnn_last_conv_layer_names_a_conv2d():
    model = ImageCNN(3, (16, 16), 5, [4, 8, 6], hidden=16)

    name = model.last_conv_layer
    layer = dict(model.named_modules())[name]

    assert isinstance(layer, nn.Conv2d)
    assert layer.out_channels == 6


def test_image_cnn_with_even_kernel_size():
    model = ImageCNN(1, (13, 13), 3, [4, 4], kernel_size=4, hidden=16)

    assert model(torch.randn(2, 1, 13, 13)).shape == (2, 3)


# --------------------------------------------------------------------------- spec round trip
def test_mlp_spec_round_trip_rebuilds_the_same_architecture():
    train = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0], "b": [0.5, 0.1, 0.2], "c": ["x", "y", "x"], "d": ["p", "q", "r"]}
    )
    state = pp.fit_tabular(train, ["a", "b"], ["c", "d"], TabularPreprocess())
    task = TabularTask(
        kind="tabular",
        source=TabularSource(builtin="adult", target="y"),
        model=MLPConfig(hidden_sizes=[8, 4], embedding_dim=2),
    )
    target = get_target("classification")
    target_state = target.fit(pd.Series(["no", "yes", "maybe"]), task.source)
    schema = json.loads(json.dumps(tabular_schema(state, target_state)))  # as read back from schema.json
    inputs = tuple(torch.from_numpy(a) for a in pp.transform_tabular(train, state))

    spec = json.loads(json.dumps(kind_of(task).model_spec(task, schema, TensorData(inputs, torch.zeros(len(train), dtype=torch.long)),
                                                         target.n_outputs(target_state))))
    rebuilt = build_model(spec)
    direct = TabularMLP(2, [3, 4], 3, [8, 4], batch_norm=True, dropout=0.1, embedding_dim=2)

    assert isinstance(rebuilt, TabularMLP)
    assert shapes(rebuilt) == shapes(direct)
    rebuilt.load_state_dict(direct.state_dict())  # strict: same keys and shapes


def test_cnn_spec_round_trip_rebuilds_the_same_architecture():
    task = ImageTask(
        kind="image", source=ImageSource(builtin="mnist"), model=CNNConfig(channels=[4, 6], hidden=12)
    )
    schema = {"classes": [str(i) for i in range(10)], "channels": 3, "size": [20, 12]}

    spec = json.loads(json.dumps(kind_of(task).model_spec(task, schema, TensorData((torch.zeros(2, 3, 20, 12),), torch.zeros(2)), 10)))
    rebuilt = build_model(spec)
    direct = ImageCNN(3, (20, 12), 10, [4, 6], hidden=12)

    assert shapes(rebuilt) == shapes(direct)
    rebuilt.load_state_dict(direct.state_dict())
    assert rebuilt(torch.randn(2, 3, 20, 12)).shape == (2, 10)


# --------------------------------------------------------------------------- the training loop
def test_training_overfits_a_tiny_batch():
    seed_everything(0)
    data = numeric_data(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    model = small_mlp(6, 3)
    cfg = train_cfg(
        epochs=60, batch_size=32, optimizer="adam", lr=0.03, early_stopping=EarlyStopping(enabled=False)
    )

    result = fit(model, data, data, cfg, objective=ClassificationObjective(3), seed=0, progress=False)

    assert len(result.history) == 60
    assert not result.stopped_early
    assert accuracy(model, data) == 1.0
    assert result.history[-1]["train_loss"] < 0.1 * result.history[0]["train_loss"]


def test_early_stopping_restores_the_best_weights():
    g = torch.Generator().manual_seed(0)
    train = numeric_data(torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g))
    # validation labels unrelated to the training ones: the model overfits and val loss turns up
    val = numeric_data(torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g))
    torch.manual_seed(0)
    model = small_mlp(6, 2)
    cfg = train_cfg(
        epochs=100, batch_size=16, optimizer="adam", lr=0.003, early_stopping=EarlyStopping(patience=3)
    )

    result = fit(model, train, val, cfg, objective=BINARY, seed=0, progress=False)

    losses = [h["val_loss"] for h in result.history]
    assert result.stopped_early
    assert result.best_epoch < len(result.history)
    assert len(result.history) == result.best_epoch + 3
    assert min(losses) == losses[result.best_epoch - 1] == pytest.approx(result.best_score)
    assert losses[-1] > min(losses) + 1e-3  # the last epoch was worse, so restoring matters
    assert validation_logs(model, val, BINARY)["val_loss"] == pytest.approx(min(losses), abs=1e-6)


def test_restore_best_off_keeps_the_last_epochs_weights():
    g = torch.Generator().manual_seed(0)
    train = numeric_data(torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g))
    val = numeric_data(torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g))
    kept = {}
    for restore in (True, False):
        torch.manual_seed(0)
        model = small_mlp(6, 2)
        cfg = train_cfg(epochs=20, batch_size=16, optimizer="adam", lr=0.003,
                        early_stopping=EarlyStopping(enabled=False), restore_best=restore)  # fmt: skip
        result = fit(model, train, val, cfg, objective=BINARY, seed=0, progress=False)
        kept[restore] = (result, validation_logs(model, val, BINARY)["val_loss"])

    (best, best_loss), (last, last_loss) = kept[True], kept[False]
    assert [h["val_loss"] for h in best.history] == [h["val_loss"] for h in last.history]  # same run
    assert best.kept_epoch == best.best_epoch < 20 and last.kept_epoch == 20
    assert best_loss == pytest.approx(best.history[best.best_epoch - 1]["val_loss"], abs=1e-6)
    assert last_loss == pytest.approx(last.history[-1]["val_loss"], abs=1e-6)
    assert last_loss > best_loss + 1e-3


def test_weight_decay_applies_to_weights_but_not_biases_or_norms():
    model = TabularMLP(3, [4], 2, [8], batch_norm=True, embedding_dim=2)
    names = {id(p): n for n, p in model.named_parameters()}

    optimizer = make_optimizer(model, train_cfg(weight_decay=0.05))

    by_decay = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert by_decay[0.05] == sorted(["categorical.embeddings.0.weight", "body.0.weight", "head.weight"])
    assert by_decay[0.0] == sorted(["body.0.bias", "body.1.weight", "body.1.bias", "head.bias"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_make_optimizer_builds_the_named_optimizer(name, cls):
    optimizer = make_optimizer(small_mlp(2, 2), train_cfg(optimizer=name, lr=0.123))

    assert type(optimizer) is cls
    assert all(g["lr"] == 0.123 for g in optimizer.param_groups)


def test_divergence_raises_training_error_with_advice():
    seed_everything(0)
    data = numeric_data(torch.randn(64, 6) * 1e6, torch.randint(0, 2, (64,)))
    cfg = train_cfg(epochs=3, batch_size=16, optimizer="sgd", lr=1e12)

    with pytest.raises(TrainingError) as info:
        fit(small_mlp(6, 2, hidden=16), data, data, cfg, objective=BINARY, seed=0, progress=False)
    message = str(info.value)
    assert "diverged" in message
    assert "batch" in message
    assert "Lower the learning rate" in message
    assert "1e+12" in message


def _train_once(seed: int) -> dict[str, torch.Tensor]:
    """Dropout, batch norm, embeddings, shuffling and a schedule: everything that consumes randomness."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(123)
    data = TensorData(
        (torch.randn(64, 4, generator=g), torch.randint(0, 3, (64, 2), generator=g)),
        torch.randint(0, 2, (64,), generator=g),
    )
    model = TabularMLP(4, [3, 3], 2, [16], batch_norm=True, dropout=0.3, embedding_dim=2)
    fit(
        model,
        data,
        data,
        train_cfg(epochs=3, batch_size=16, scheduler="cosine", weight_decay=0.01),
        objective=BINARY,
        seed=seed,
        progress=False,
    )
    return model.state_dict()


def test_same_seed_gives_bit_identical_weights():
    first, second, other = _train_once(3), _train_once(3), _train_once(4)

    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
