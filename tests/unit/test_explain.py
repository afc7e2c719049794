"""Explanations with truths that can be checked by hand: a model that reads one column gets all of the
SHAP attribution there, SHAP values add up to output minus expected value, and a CNN that reads one
image quadrant gets its class-activation mass there."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
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
    assert np.abs(shap.values[:, 0]).min() > 0 or np.abs(shap.values[:, 0]).max() > 1e-3
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
    assert maps.shape == (12, 16, 16) and maps.max() <= 1.0
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
    x = torch.randn(4, 1, 16, 16)
    maps = grad_cam(model, x, [0, 1, 2, 0], layer="features.0.0")
    assert maps.shape == (4, 16, 16) and (maps >= 0).all()


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


def test_explanation_figures_render() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 3))
    features = pd.DataFrame({"a": rng.normal(size=30), "b": rng.integers(0, 5, 30), "c": list("xyz") * 10})
    importance = global_importance(values, list(features.columns))
    for fig in (XP.importance_bar(importance), XP.beeswarm(values, features, importance),
                XP.waterfall(values[0], 0.3, features.iloc[0], "row 0", top=2),
                XP.cam_overlays(rng.random((3, 1, 8, 8)), rng.random((3, 8, 8)), ["a", "b", "c"]),
                XP.class_maps(rng.random((3, 8, 8)), ["0", "1", "2"])):
        assert _png(fig)[:4] == b"\x89PNG"
