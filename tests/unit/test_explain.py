"""Explanations with truths that can be checked by hand: a model that reads one column gets all of the
SHAP attribution there, SHAP values add up to output minus expected value, and a CNN that reads one
image quadrant gets its class-activation mass there."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb
from torch import nn

from torchcycle.explain import plots as XP
from torchcycle.kinds.image.gradcam import (
    class_average_maps,
    grad_cam,
    pick_examples,
    quadrant_mass,
    resolve_layer,
)
from torchcycle.kinds.tabular.shap import (
    ExplainedOutput,
    _deep_batched,
    encoded_widths,
    explain_tabular,
    global_importance,
    pick_local_rows,
    sum_to_columns,
)
from torchcycle.models.cnn import ImageCNN
from torchcycle.models.mlp import TabularMLP
from torchcycle.targets.classification import CLASSIFICATION, log_odds
from torchcycle.targets.regression import REGRESSION

COLUMNS = ["a", "b", "c", "colour", "shape"]


def readout(n_classes: int) -> nn.Module:
    """What the classification target explains: log-odds of the positive class (binary), else the logits."""
    module, _ = CLASSIFICATION.readout({"classes": [str(i) for i in range(n_classes)]})
    return module


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 4, (n, 2), generator=g)


def _mlp(**kwargs) -> TabularMLP:
    torch.manual_seed(0)
    return TabularMLP(3, [4, 4], 2, [16, 8], **kwargs).eval()


def test_model_reading_one_column_gets_all_attribution_there() -> None:
    model = _mlp()
    with torch.no_grad():  # the first layer ignores everything but numeric column "a"
        first = model.body[0]
        first.weight[:, 1:] = 0.0
    shap = explain_tabular(model, _inputs(40, 1), _inputs(25, 2), COLUMNS, readout(2))

    assert shap.values.shape == (25, 5, 1)
    assert np.abs(shap.values[:, 1:]).max() == 0.0
    # column "a" carries each row's whole difference from the expected output, which varies by row
    np.testing.assert_allclose(shap.values[:, 0, 0], shap.output[:, 0] - shap.expected[0], atol=1e-4)
    assert np.std(shap.values[:, 0, 0]) > 1e-2
    assert shap.additivity_error < 1e-4
    importance = global_importance(shap.values[..., 0], COLUMNS)
    assert importance["feature"][0] == "a" and importance["share"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [
    {"numeric_embedding": "periodic", "numeric_embedding_dim": 4, "periodic_frequencies": 3},
    {"embedding_dim": 3, "batch_norm": True},
])  # fmt: skip
def test_shap_values_add_up_to_output_minus_expected_value(kwargs) -> None:
    model = _mlp(**kwargs)
    shap = explain_tabular(model, _inputs(50, 3), _inputs(30, 4), COLUMNS, readout(2))
    assert shap.values.shape == (30, 5, 1)
    assert shap.additivity_error < 1e-4
    # the binary output explained is the log-odds of the positive class
    with torch.no_grad():
        logits = model(*_inputs(30, 4))
    np.testing.assert_allclose(shap.output[:, 0], (logits[:, 1] - logits[:, 0]).numpy(), atol=1e-5)


def test_batched_deep_explainer_matches_shaps_own_loop() -> None:
    import shap

    model = _mlp(numeric_embedding="periodic", numeric_embedding_dim=4, periodic_frequencies=3)
    with torch.no_grad():
        z_bg, z = model.encode(*_inputs(20, 5)), model.encode(*_inputs(6, 6))
    explainer = shap.DeepExplainer(ExplainedOutput(model, log_odds()).eval(), z_bg)
    ours = _deep_batched(explainer, z, z_bg, chunk=4)
    theirs = np.asarray(explainer.shap_values(z, check_additivity=False)).reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_multiclass_explains_every_class_logit() -> None:
    torch.manual_seed(0)
    model = TabularMLP(3, [4, 4], 3, [8]).eval()
    shap = explain_tabular(model, _inputs(20, 1), _inputs(5, 2), COLUMNS, readout(3))
    assert shap.values.shape == (5, 5, 3) and shap.additivity_error < 1e-4


def test_regression_explains_the_prediction_in_target_units() -> None:
    torch.manual_seed(0)
    model = TabularMLP(3, [4, 4], 1, [16, 8]).eval()
    state = {"type": "regression", "name": "price", "mean": 7.5, "std": 2.0, "transform": "none"}
    module, words = REGRESSION.readout(state)
    shap = explain_tabular(model, _inputs(40, 1), _inputs(12, 2), COLUMNS, module)
    assert words == "predicted price"
    assert shap.values.shape == (12, 5, 1) and shap.additivity_error < 1e-4
    with torch.no_grad():
        scaled = model(*_inputs(12, 2))[:, 0].numpy()
    np.testing.assert_allclose(shap.output[:, 0], scaled * 2.0 + 7.5, rtol=1e-5)


def test_encoded_blocks_are_summed_back_to_their_columns() -> None:
    model = _mlp(embedding_dim=3, numeric_embedding="periodic", numeric_embedding_dim=4, periodic_frequencies=2)
    assert encoded_widths(model, 3) == [4, 4, 4, 3, 3]
    assert encoded_widths(_mlp(), 3) == [1, 1, 1, 4, 4]  # one-hot: a block per level
    values = np.arange(2 * 7, dtype=float).reshape(2, 7, 1)
    summed = sum_to_columns(values, [1, 2, 4])
    np.testing.assert_array_equal(summed[0, :, 0], [0, 1 + 2, 3 + 4 + 5 + 6])
    with pytest.raises(ValueError, match="add up to 6"):
        sum_to_columns(values, [1, 2, 3])


def test_local_rows_include_misclassified_ones() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 1, 0, 0, 1, 0, 1])
    rows = pick_local_rows(y != pred, 4)
    assert len(rows) == 4 and {1, 3} <= set(rows.tolist())


# --------------------------------------------------------------------------- Grad-CAM
class TopLeftCNN(nn.Module):
    """Its decision reads only the top-left quadrant of the conv feature map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        h, w = a.shape[-2:]
        return self.head(a[:, :, : h // 2, : w // 2].mean((2, 3)))


def _predicted(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def test_hirescam_mass_lies_in_the_only_quadrant_the_model_reads() -> None:
    model = TopLeftCNN()
    x = torch.rand(12, 1, 16, 16)  # content everywhere
    maps = grad_cam(model, x, _predicted(model, x), method="hirescam")
    assert maps.shape == (12, 16, 16)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)  # each map scaled to its own peak
    assert quadrant_mass(maps)[:, 0].min() > 0.95


def test_gradcam_mass_lies_in_the_quadrant_holding_the_evidence() -> None:
    model = TopLeftCNN()
    with torch.no_grad():
        model.features[0].bias.zero_()
    x = torch.zeros(12, 1, 32, 32)
    x[:, :, :16, :16] = torch.rand(12, 1, 16, 16)  # the evidence sits in the quadrant the model reads
    target = np.ones(12, dtype=int)
    with torch.no_grad():
        model.head.weight[1] = model.head.weight[1].abs()  # class 1 is driven up by the activations
    maps = grad_cam(model, x, target)
    # all but the one-pixel rim the 3x3 convolution spreads across the quadrant's border
    assert quadrant_mass(maps)[:, 0].min() > 0.9


def test_default_layer_is_the_last_conv_and_unknown_names_list_the_choices() -> None:
    model = ImageCNN(1, (16, 16), 3, [4, 6], batch_norm=True).eval()
    name, module = resolve_layer(model, None)
    assert name == model.last_conv_layer and isinstance(module, nn.Conv2d)
    with pytest.raises(ValueError, match=r"features\.0\.0"):
        resolve_layer(model, "conv9")


def _square_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Faint noise with one bright 4x4 square: in the bottom-right quadrant for class 1, in the top-left
    one for class 0, anywhere inside it. Where the square is, is all that tells the classes apart."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        r, c = (torch.randint(0, 5, (2,), generator=g) + 8 * y[i]).tolist()
        x[i, 0, r : r + 4, c : c + 4] += 1.0
    return x, y


@pytest.fixture(scope="module")
def square_cnn() -> ImageCNN:
    """The project's image CNN (batch norm, max-pool, dense head), trained on `_square_images`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = ImageCNN(1, (16, 16), 2, [4, 8], hidden=16)
        x, y = _square_images(512, seed=0)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            batch = torch.randint(0, len(x), (64,), generator=g)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.mark.parametrize("layer", [None, "features.0.0"])
def test_gradcam_of_a_trained_cnn_lights_the_quadrant_holding_its_evidence(square_cnn, layer) -> None:
    """Grad-CAM of the true class, at the default (last) conv layer or a named earlier one, puts the most
    mass of (nearly) every map in the quadrant holding the square, and over half of it on average (a map
    that ignored the evidence would put about a quarter there)."""
    x, y = _square_images(64, seed=1)
    assert (_predicted(square_cnn, x) == y.numpy()).mean() > 0.95  # it learned where to look
    for cls, quadrant in ((1, 3), (0, 0)):  # bottom-right, top-left
        maps = grad_cam(square_cnn, x[y == cls], np.full(int((y == cls).sum()), cls), layer=layer)
        assert maps.shape == (int((y == cls).sum()), 16, 16)
        mass = quadrant_mass(maps)
        assert (mass.argmax(axis=1) == quadrant).mean() >= 0.9, (cls, mass.argmax(axis=1))
        assert mass[:, quadrant].mean() > 0.55, (cls, mass[:, quadrant].mean())


def test_examples_of_every_class_and_class_averages() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 0, 2])
    chosen = pick_examples(y, pred, per_class=1)
    assert {(i, k) for i, k in chosen} >= {(1, "misclassified"), (4, "misclassified"), (5, "correct")}
    maps = np.stack([np.full((2, 2), v, np.float32) for v in [0, 1, 2, 3, 5, 7]])
    avg = class_average_maps(maps, y, 4)
    np.testing.assert_allclose(avg[:, 0, 0], [1, 4, 7, 0])


# --------------------------------------------------------------------------- figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture
def shap_case() -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 3)) * [1.0, 3.0, 0.5]  # b matters most, then a, then c
    levels = rng.permutation(["x"] * 18 + ["y"] * 9 + ["z"] * 3)  # x the most common level, z the rarest
    features = pd.DataFrame({"a": rng.normal(size=30), "b": rng.integers(0, 5, 30), "c": levels})
    return values, features, global_importance(values, list(features.columns))


def test_importance_bar_draws_mean_abs_shap_largest_on_top(shap_case) -> None:
    values, _, importance = shap_case
    fig = XP.importance_bar(importance)
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda p: p.get_y())  # bottom to top
    expected = np.abs(values).mean(axis=0)
    order = np.argsort(expected)  # smallest at the bottom
    np.testing.assert_allclose([b.get_width() for b in bars], expected[order])
    assert [t.get_text() for t in ax.get_yticklabels()] == [["a", "b", "c"][j] for j in order]
    assert {b.get_facecolor()[:3] for b in bars} == {to_rgb(XP.PALETTE[0])}
    assert _png(fig)[:4] == b"\x89PNG"


def test_beeswarm_draws_each_rows_shap_value_coloured_by_feature_rank(shap_case) -> None:
    values, features, importance = shap_case
    ax = XP.beeswarm(values, features, importance).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == list(reversed(importance["feature"]))  # most important on top
    for row, (name, dots) in enumerate(zip(labels, ax.collections)):
        points = dots.get_offsets()
        np.testing.assert_allclose(points[:, 0], values[:, list(features.columns).index(name)])
        assert np.abs(points[:, 1] - row).max() <= 0.35  # jitter stays inside the feature's row
        colour = np.asarray(dots.get_array())
        assert colour.min() >= 0 and colour.max() <= 1
        if name == "c":  # a categorical's colour: how common its level is
            by_level = {level: set(colour[features["c"] == level]) for level in "xyz"}
            assert all(len(v) == 1 for v in by_level.values())
            assert max(by_level["z"]) < max(by_level["y"]) < max(by_level["x"])
        else:  # a number's colour: its rank among the rows, so higher values are never paler
            value = features[name].to_numpy()
            assert (np.sign(np.subtract.outer(colour, colour)) == np.sign(np.subtract.outer(value, value))).all()


def test_waterfall_bars_add_up_from_expected_value_to_the_prediction(shap_case) -> None:
    values, features, _ = shap_case
    row, expected = values[0], 0.3
    ax = XP.waterfall(row, expected, features.iloc[0], "row 0", top=2).axes[0]
    bars = sorted(ax.patches, key=lambda p: p.get_y())  # bottom (first step) to top
    steps = [b.get_width() for b in bars]
    biggest = np.argsort(-np.abs(row))
    # the two largest contributions, and the third column folded into one bar, drawn bottom-up
    np.testing.assert_allclose(steps, [row[biggest[2]], row[biggest[1]], row[biggest[0]]])
    assert ax.get_yticklabels()[0].get_text() == "1 other columns"
    np.testing.assert_allclose([b.get_x() for b in bars], expected + np.concatenate([[0], np.cumsum(steps)[:-1]]))
    for bar, step in zip(bars, steps):  # pushing up or down, in the two colours
        assert bar.get_facecolor()[:3] == to_rgb(XP.POSITIVE if step >= 0 else XP.NEGATIVE)
    lines = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()}
    assert lines[f"expected {expected:.2f}"] == expected
    assert lines[f"this row {expected + row.sum():.2f}"] == pytest.approx(expected + row.sum())


def test_cam_figures_draw_the_images_and_maps_they_are_given() -> None:
    rng = np.random.default_rng(0)
    images, maps = rng.random((3, 1, 8, 8)), rng.random((3, 8, 8))
    fig = XP.cam_overlays(images, maps, ["a", "b", "c"])
    drawn = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == ["a", "b", "c"]
    for ax, image, cam in zip(drawn, images, maps):
        under, over = ax.images
        np.testing.assert_array_equal(np.asarray(under.get_array()), image[0])
        np.testing.assert_array_equal(np.asarray(over.get_array()), cam)
        assert over.get_alpha() == 0.5 and over.get_clim() == (0, 1) and over.get_cmap().name == "cividis"

    averages = rng.random((3, 8, 8)) * [[[1.0]], [[2.0]], [[0.5]]]
    fig = XP.class_maps(averages, ["0", "1", "2"])
    drawn = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert [ax.get_title() for ax in drawn] == ["class 0", "class 1", "class 2"]
    for ax, cam in zip(drawn, averages):  # one shared colour scale, so classes compare
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), cam)
        assert ax.images[0].get_clim() == (0, pytest.approx(averages.max()))
    assert _png(fig)[:4] == b"\x89PNG"

