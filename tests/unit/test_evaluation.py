"""Evaluation metrics, curve tables and figures: checked against scikit-learn and hand-computed cases."""

from __future__ import annotations

import io
import itertools
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from torchcycle.evaluation import plots
from torchcycle.evaluation.metrics import MAX_CURVE_POINTS, classification_metrics, curve_tables

SCALARS = [
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "log_loss",
]


def _random_case(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Informative but imperfect scores, so every metric lands strictly between its extremes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba, [f"class_{i}" for i in range(k)]


def _sklearn_reference(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    k = proba.shape[1]
    labels = list(range(k))
    pred = proba.argmax(axis=1)
    auc = (
        skm.roc_auc_score(y, proba[:, 1])
        if k == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, labels=labels, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, pred, labels=labels, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0),
        "roc_auc": auc,
        "log_loss": skm.log_loss(y, proba, labels=labels),
    }


# --- classification_metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_scalar_metrics_match_sklearn(k: int) -> None:
    y, proba, names = _random_case(600, k, seed=k)
    result = classification_metrics(y, proba, names)
    expected = _sklearn_reference(y, proba)
    for key in SCALARS:
        assert isinstance(result[key], float), key
        assert result[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0.0 < result["accuracy"] < 1.0  # the random case really is imperfect
    assert result["n_samples"] == 600


@pytest.mark.parametrize("k", [2, 3])
def test_per_class_and_confusion_match_sklearn(k: int) -> None:
    y, proba, names = _random_case(500, k, seed=10 + k)
    result = classification_metrics(y, proba, names)
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    assert list(result["per_class"]) == names
    for i, name in enumerate(names):
        entry = result["per_class"][name]
        assert entry["precision"] == pytest.approx(precision[i])
        assert entry["recall"] == pytest.approx(recall[i])
        assert entry["f1"] == pytest.approx(f1[i])
        assert entry["support"] == support[i] and isinstance(entry["support"], int)
    assert result["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_known_binary_case_by_hand() -> None:
    # p(pos) = .2 .3 .7 .8 for truths neg neg neg pos -> predictions neg neg pos pos.
    y = np.array([0, 0, 0, 1])
    p_pos = np.array([0.2, 0.3, 0.7, 0.8])
    result = classification_metrics(y, np.column_stack([1 - p_pos, p_pos]), ["neg", "pos"])
    assert result["confusion_matrix"] == [[2, 1], [0, 1]]
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["per_class"]["pos"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert result["per_class"]["neg"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert result["roc_auc"] == pytest.approx(1.0)  # the only positive outscores every negative
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.8])))


def test_known_binary_auc_with_one_misordered_pair() -> None:
    # Positives .4 .9 vs negatives .1 .6: 3 of 4 pairs ordered correctly -> AUC 0.75.
    y = np.array([0, 0, 1, 1])
    p_pos = np.array([0.1, 0.6, 0.4, 0.9])
    result = classification_metrics(y, np.column_stack([1 - p_pos, p_pos]), ["a", "b"])
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["confusion_matrix"] == [[1, 1], [1, 1]]


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    result = classification_metrics(y, np.eye(3)[y], ["cat", "dog", "bird"])
    for key in ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"]:
        assert result[key] == pytest.approx(1.0), key
    assert result["log_loss"] == pytest.approx(0.0, abs=1e-9)
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 3]]


def test_missing_class_gives_none_auc_instead_of_raising() -> None:
    y = np.array([0, 1, 1, 0])  # class 2 never occurs
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    result = classification_metrics(y, proba, ["a", "b", "c"])
    assert result["roc_auc"] is None
    assert math.isfinite(result["log_loss"])
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert result["per_class"]["c"]["support"] == 0
    assert result["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # absent class not averaged in


def test_single_class_binary_gives_none_auc() -> None:
    y = np.ones(3, dtype=int)
    result = classification_metrics(y, np.tile([0.2, 0.8], (3, 1)), ["neg", "pos"])
    assert result["roc_auc"] is None
    assert result["confusion_matrix"] == [[0, 0], [0, 3]]


@pytest.mark.parametrize("k", [2, 3])
def test_metrics_are_json_serialisable(k: int) -> None:
    y, proba, names = _random_case(100, k)
    result = classification_metrics(y, proba.astype(np.float32), names)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_float32_rows_that_drift_from_one_are_accepted() -> None:
    y, proba, names = _random_case(200, 3)
    drifted = (proba * (1 + 5e-5)).astype(np.float32)
    assert classification_metrics(y, drifted, names)["log_loss"] == pytest.approx(
        skm.log_loss(y, proba), rel=1e-4
    )


@pytest.mark.parametrize(
    ("y", "proba", "names", "message"),
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"], "shape"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "labels must lie"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], ["a", "b"], r"\[0, 1\]"),
        ([0, 1], [[0.9, 0.9], [0.5, 0.5]], ["a", "b"], "sum to 1"),
        ([], np.empty((0, 2)), ["a", "b"], "non-empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(y: list, proba: list, names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.asarray(y, dtype=int), np.asarray(proba), names)


# --- curve_tables -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_roc_table_shape_and_endpoints(k: int) -> None:
    y, proba, names = _random_case(4000, k)
    truth = (y == 1) if k == 2 else np.eye(k, dtype=int)[y].ravel()
    score = proba[:, 1] if k == 2 else proba.ravel()
    assert len(skm.roc_curve(truth, score)[0]) > MAX_CURVE_POINTS  # so downsampling is exercised
    roc = curve_tables(y, proba, names)["roc"]
    assert list(roc.columns) == ["fpr", "tpr"]
    assert 2 <= len(roc) <= MAX_CURVE_POINTS
    assert (roc["fpr"].diff().dropna() >= 0).all() and (roc["tpr"].diff().dropna() >= 0).all()
    assert tuple(roc.iloc[0]) == (0.0, 0.0)
    assert tuple(roc.iloc[-1]) == (1.0, 1.0)


def test_roc_table_area_matches_binary_auc_when_not_downsampled() -> None:
    y, proba, names = _random_case(200, 2)
    roc = curve_tables(y, proba, names)["roc"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))


@pytest.mark.parametrize("k", [2, 3])
def test_precision_recall_table(k: int) -> None:
    y, proba, names = _random_case(4000, k)
    pr = curve_tables(y, proba, names)["precision_recall"]
    assert list(pr.columns) == ["recall", "precision"]
    assert 2 <= len(pr) <= MAX_CURVE_POINTS
    assert (pr["recall"].diff().dropna() >= 0).all()
    assert pr["recall"].iloc[0] == 0.0 and pr["recall"].iloc[-1] == 1.0
    assert pr["precision"].between(0, 1).all()
    # At recall 1 every sample is called positive, so precision is the positive rate.
    prevalence = np.mean(y == 1) if k == 2 else 1 / k
    assert pr["precision"].iloc[-1] == pytest.approx(prevalence)


def test_confusion_table_has_one_named_row_per_sample() -> None:
    y, proba, names = _random_case(300, 3)
    table = curve_tables(y, proba, names)["confusion"]
    assert list(table.columns) == ["actual", "predicted"]
    assert len(table) == 300
    assert table["actual"].tolist() == [names[i] for i in y]
    assert table["predicted"].tolist() == [names[i] for i in proba.argmax(axis=1)]
    counts = pd.crosstab(table["actual"], table["predicted"]).reindex(
        index=names, columns=names, fill_value=0
    )
    assert counts.to_numpy().tolist() == classification_metrics(y, proba, names)["confusion_matrix"]


def test_binary_calibration_table_matches_sklearn() -> None:
    y, proba, names = _random_case(1000, 2)
    cal = curve_tables(y, proba, names)["calibration"]
    fraction, mean = calibration_curve(y == 1, proba[:, 1], n_bins=10)
    assert list(cal.columns) == ["mean_predicted", "fraction_positive"]
    np.testing.assert_allclose(cal["mean_predicted"], mean)
    np.testing.assert_allclose(cal["fraction_positive"], fraction)


def test_multiclass_calibration_is_confidence_vs_correctness() -> None:
    y = np.array([0, 1, 2, 0])
    proba = np.array([[0.95, 0.03, 0.02], [0.05, 0.91, 0.04], [0.92, 0.04, 0.04], [0.3, 0.35, 0.35]])
    cal = curve_tables(y, proba, ["a", "b", "c"])["calibration"]
    # Bin [0.3, 0.4): confidence .35, wrong. Bin [0.9, 1.0]: confidences .95 .91 .92, two of three right.
    np.testing.assert_allclose(cal["mean_predicted"], [0.35, (0.95 + 0.91 + 0.92) / 3])
    np.testing.assert_allclose(cal["fraction_positive"], [0.0, 2 / 3])


def test_curves_are_empty_not_nan_when_a_class_is_missing() -> None:
    tables = curve_tables(np.ones(4, dtype=int), np.tile([0.3, 0.7], (4, 1)), ["neg", "pos"])
    assert tables["roc"].empty and list(tables["roc"].columns) == ["fpr", "tpr"]
    assert tables["precision_recall"].empty
    assert not tables["calibration"].isna().any().any()


# --- plots ------------------------------------------------------------------------------------------


def _render(fig: Figure) -> None:
    """Actually draw, because many matplotlib errors only surface at render time."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


@pytest.fixture
def evaluated() -> tuple[dict, dict[str, pd.DataFrame], list[str]]:
    y, proba, names = _random_case(300, 3)
    return classification_metrics(y, proba, names), curve_tables(y, proba, names), names


def test_learning_curves_split_losses_and_metrics() -> None:
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.7, 0.5],
            "val_loss": [1.1, 0.8, 0.7],
            "val_accuracy": [0.5, 0.6, 0.7],
            "lr": [1e-3, 1e-3, 1e-4],
        }
    )
    fig = plots.learning_curves(history)
    assert isinstance(fig, Figure)
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_title() == "Loss" and metric_ax.get_title() == "Metrics"
    assert loss_ax.get_xlabel() == metric_ax.get_xlabel() == "Epoch"
    assert {line.get_label() for line in loss_ax.get_lines()} == {"train_loss", "val_loss"}
    assert {line.get_label() for line in metric_ax.get_lines()} == {"val_accuracy"}  # no lr
    assert fig.get_suptitle() == "Learning curves"
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    for name, line in lines.items():  # each line draws its own column against the epochs
        np.testing.assert_array_equal(line.get_xdata(), history["epoch"])
        np.testing.assert_array_equal(line.get_ydata(), history[name])
    # a train/val pair reads as one: the same colour, train dashed and validation solid
    assert lines["train_loss"].get_color() == lines["val_loss"].get_color() == plots.PALETTE[0]
    assert (lines["train_loss"].get_linestyle(), lines["val_loss"].get_linestyle()) == ("--", "-")
    assert lines["val_accuracy"].get_color() == plots.PALETTE[0]  # its own panel's first colour
    _render(fig)


def test_learning_curves_give_each_metric_its_own_colour() -> None:
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.2, 0.9],
                            "train_accuracy": [0.6, 0.7], "val_accuracy": [0.5, 0.6], "val_f1": [0.4, 0.5]})
    lines = {line.get_label(): line for ax in plots.learning_curves(history).axes for line in ax.get_lines()}
    assert lines["train_accuracy"].get_color() == lines["val_accuracy"].get_color() == plots.PALETTE[0]
    assert lines["val_f1"].get_color() == plots.PALETTE[1]


def test_learning_curves_with_losses_only_and_missing_epoch() -> None:
    fig = plots.learning_curves(pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5]}))
    assert len(fig.axes[1].get_lines()) == 0
    _render(fig)
    with pytest.raises(ValueError, match="epoch"):
        plots.learning_curves(pd.DataFrame({"train_loss": [1.0]}))


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_figure_annotates_counts(evaluated, normalize: bool) -> None:
    result, _, names = evaluated
    fig = plots.confusion_matrix_figure(result["confusion_matrix"], names, normalize=normalize)
    ax = fig.axes[0]
    assert "Confusion matrix" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted class", "True class")
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    texts = [t.get_text().split("\n")[0] for t in ax.texts]
    assert texts == [str(c) for row in result["confusion_matrix"] for c in row]
    assert ax.images[0].get_cmap().name == "cividis"
    # the colours: each row's shares of its true class (or the raw counts), on a fixed scale
    counts = np.asarray(result["confusion_matrix"], dtype=float)
    shown = np.asarray(ax.images[0].get_array())
    if normalize:
        np.testing.assert_allclose(shown, counts / counts.sum(axis=1, keepdims=True))
        np.testing.assert_allclose(shown.sum(axis=1), 1.0)
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert [t.get_text().split("\n")[1] for t in ax.texts] == [f"{v:.0%}" for v in shown.ravel()]
    else:
        np.testing.assert_array_equal(shown, counts)
        assert ax.images[0].get_clim() == (0.0, counts.max())
    _render(fig)


def test_confusion_matrix_figure_rejects_mismatched_names() -> None:
    with pytest.raises(ValueError, match="3x3"):
        plots.confusion_matrix_figure([[1, 0], [0, 1]], ["a", "b", "c"])


def test_confusion_matrix_figure_with_empty_row() -> None:
    fig = plots.confusion_matrix_figure(np.array([[3, 1], [0, 0]]), ["a", "b"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["3\n75%", "1\n25%", "0\n0%", "0\n0%"]
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), [[0.75, 0.25], [0.0, 0.0]])
    _render(fig)


def _curve(ax, label_start: str):
    return next(line for line in ax.get_lines() if line.get_label().startswith(label_start))


def test_roc_figure(evaluated) -> None:
    result, tables, _ = evaluated
    fig = plots.roc_figure(tables["roc"], result["roc_auc"])
    ax = fig.axes[0]
    assert ax.get_title() == "ROC curve"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("False positive rate", "True positive rate")
    model = _curve(ax, "Model")
    assert model.get_label() == f"Model (AUC = {result['roc_auc']:.3f})"
    np.testing.assert_array_equal(model.get_xdata(), tables["roc"]["fpr"])
    np.testing.assert_array_equal(model.get_ydata(), tables["roc"]["tpr"])
    chance = _curve(ax, "Chance")
    assert list(chance.get_xdata()) == list(chance.get_ydata()) == [0, 1]
    _render(fig)


def test_roc_figure_without_auc_or_curve() -> None:
    fig = plots.roc_figure(pd.DataFrame({"fpr": [], "tpr": []}), None)
    assert any("undefined" in t.get_text() for t in fig.axes[0].texts)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["Chance"]  # no empty model curve
    _render(fig)


def test_precision_recall_figure(evaluated) -> None:
    _, tables, _ = evaluated
    fig = plots.precision_recall_figure(tables["precision_recall"])
    ax = fig.axes[0]
    assert ax.get_title() == "Precision-recall curve"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Recall", "Precision")
    model = _curve(ax, "Model")
    np.testing.assert_array_equal(model.get_xdata(), tables["precision_recall"]["recall"])
    np.testing.assert_array_equal(model.get_ydata(), tables["precision_recall"]["precision"])
    assert model.get_drawstyle() == "steps-post"  # precision holds until the next threshold
    _render(fig)


def test_calibration_figure(evaluated) -> None:
    _, tables, _ = evaluated
    fig = plots.calibration_figure(tables["calibration"])
    ax = fig.axes[0]
    assert ax.get_title() == "Calibration curve"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Mean predicted probability", "Fraction of positives")
    model = _curve(ax, "Model")
    np.testing.assert_array_equal(model.get_xdata(), tables["calibration"]["mean_predicted"])
    np.testing.assert_array_equal(model.get_ydata(), tables["calibration"]["fraction_positive"])
    assert model.get_marker() == "o"  # bins are points, not a continuous curve
    diagonal = _curve(ax, "Perfectly calibrated")
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
    _render(fig)


def test_curve_figures_reject_wrong_columns() -> None:
    with pytest.raises(ValueError, match="columns"):
        plots.roc_figure(pd.DataFrame({"x": [0.0], "y": [0.0]}), 0.5)


def test_style_is_applied_to_figures_but_not_leaked_globally(evaluated) -> None:
    _, tables, _ = evaluated
    before = dict(matplotlib.rcParams)
    fig = plots.roc_figure(tables["roc"], 0.8)
    assert dict(matplotlib.rcParams) == before
    ax = fig.axes[0]
    assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    model_line = next(line for line in ax.get_lines() if line.get_label().startswith("Model"))
    assert model_line.get_color() == plots.PALETTE[0]


# Machado, Oliveira & Fernandes (2009): full-severity colour-vision deficiencies, on linear RGB.
CVD = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
    "typical vision": np.eye(3).tolist(),
}
MIN_DELTA_E = 12.0  # CIE76; matplotlib's tab10 falls to 4.6 under protanopia, Okabe-Ito stays above 16


def _lab(colour: str, vision: list[list[float]]) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour as seen with `vision`."""
    srgb = np.asarray(to_rgb(colour))
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    linear = np.clip(np.asarray(vision) @ linear, 0.0, 1.0)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    f = np.cbrt(xyz / [0.95047, 1.0, 1.08883]).clip(min=4 / 29)  # (the linear toe only matters near black)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _closest_pair(palette, vision) -> float:
    return min(float(np.linalg.norm(_lab(a, vision) - _lab(b, vision)))
               for a, b in itertools.combinations(palette, 2))


@pytest.mark.parametrize("vision", list(CVD))
def test_palette_colours_stay_distinguishable_with_colour_blindness(vision: str) -> None:
    """What the palette is for: every two series colours differ visibly under each common colour-vision
    deficiency (simulated), which a red/green palette such as tab10 fails."""
    assert len(set(plots.PALETTE)) == len(plots.PALETTE) >= 8
    assert _closest_pair(plots.PALETTE, CVD[vision]) >= MIN_DELTA_E
    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors[:8]]
    if vision in ("protanopia", "deuteranopia"):
        assert _closest_pair(tab10, CVD[vision]) < MIN_DELTA_E  # the check can tell the two apart


def test_figures_draw_series_in_palette_order() -> None:
    """The style's colour cycle is the palette, so every figure's nth series gets the nth colour."""
    with plots.style():
        fig = Figure()
        ax = fig.subplots()
        drawn = [ax.plot([0, 1], [0, i])[0].get_color() for i in range(len(plots.PALETTE))]
    assert [c.upper() for c in drawn] == [c.upper() for c in plots.PALETTE]
