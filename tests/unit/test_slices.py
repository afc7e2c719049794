"""Slices and group fairness: per-slice metrics are the target's own metrics on the slice's rows, the
fairness measures equal fairlearn's and a hand computation, gaps point the right way for a lower-is-better
metric, small levels are skipped, and each kind says what its slices are."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from matplotlib.figure import Figure
from PIL import Image

from torchcycle.config import TabularPreprocess
from torchcycle.errors import ConfigError
from torchcycle.evaluation.slices import fairness_figure, slice_report, slice_table, slices_figure
from torchcycle.kinds import kind_of
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.targets.classification import CLASSIFICATION
from torchcycle.targets.regression import REGRESSION

BINARY = {"type": "classification", "name": "label", "classes": ["no", "yes"], "positive_class": "yes"}


def _proba(p_yes: list[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(p_yes, dtype=np.float64)
    return np.column_stack([1 - p, p])


def _tiny() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Group a: y 1 1 0 0, p(yes) .9 .4 .7 .2 -> predicted 1 0 1 0 (selection 1/2, TPR 1/2, FPR 1/2).
    Group b: y 1 0 0 0, p(yes) .8 .6 .55 .1 -> predicted 1 1 1 0 (selection 3/4, TPR 1, FPR 2/3)."""
    groups = pd.DataFrame({"g": list("aaaabbbb")})
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    return groups, y, _proba([0.9, 0.4, 0.7, 0.2, 0.8, 0.6, 0.55, 0.1])


def test_fairness_of_a_tiny_example_matches_a_hand_computation() -> None:
    groups, y, proba = _tiny()
    f = slice_report(groups, y, proba, CLASSIFICATION, BINARY, min_rows=1)["fairness"]["g"]
    a, b = f["by_group"]["a"], f["by_group"]["b"]
    assert (a["selection_rate"], a["true_positive_rate"], a["false_positive_rate"], a["rows"]) == (0.5, 0.5, 0.5, 4)
    assert (b["selection_rate"], b["true_positive_rate"], b["rows"]) == (0.75, 1.0, 4)
    assert b["false_positive_rate"] == pytest.approx(2 / 3)
    assert f["demographic_parity_difference"] == pytest.approx(0.25)  # |1/2 - 3/4|
    assert f["equalized_odds_difference"] == pytest.approx(0.5)  # max(|1/2 - 1|, |1/2 - 2/3|)


def test_slice_metrics_and_fairness_match_fairlearn_and_the_target_on_a_toy_frame() -> None:
    rng = np.random.default_rng(0)
    n = 600
    groups = pd.DataFrame({"sex": rng.choice(["Female", "Male"], n, p=[0.35, 0.65]),
                           "race": rng.choice(["A", "B", "C"], n, p=[0.6, 0.3, 0.1])})
    y = rng.integers(0, 2, n)
    p_yes = np.clip(0.3 * y + 0.35 + 0.1 * (groups["sex"] == "Male") + rng.normal(0, 0.2, n), 0.01, 0.99)
    proba = _proba(p_yes)
    report = slice_report(groups, y, proba, CLASSIFICATION, BINARY, min_rows=30)
    json.dumps(report, allow_nan=False)  # plain JSON throughout

    assert report["columns"] == ["sex", "race"] and report["min_rows"] == 30 and report["skipped"] == []
    overall = CLASSIFICATION.metrics(y, proba, BINARY)
    assert report["overall"] == {m: pytest.approx(overall[m]) for m in CLASSIFICATION.metric_names}
    for s in report["slices"]:
        mask = (groups[s["column"]] == s["level"]).to_numpy()
        own = CLASSIFICATION.metrics(y[mask], proba[mask], BINARY)
        assert s["rows"] == mask.sum()
        assert s["metrics"]["accuracy"] == pytest.approx(own["accuracy"])
        assert s["metrics"]["roc_auc"] == pytest.approx(own["roc_auc"])
        assert s["gap"]["accuracy"] == pytest.approx(own["accuracy"] - overall["accuracy"])

    y_pred = (p_yes >= 0.5).astype(int)  # argmax of two columns
    rates = {"selection_rate": selection_rate, "true_positive_rate": true_positive_rate,
             "false_positive_rate": false_positive_rate}
    for column in ("sex", "race"):
        g = groups[column].to_numpy()
        frame = MetricFrame(metrics=rates, y_true=y, y_pred=y_pred, sensitive_features=g)
        ours = report["fairness"][column]
        for level, row in frame.by_group.iterrows():
            for rate in rates:
                assert ours["by_group"][level][rate] == pytest.approx(row[rate])
        assert ours["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y, y_pred, sensitive_features=g))
        assert ours["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, y_pred, sensitive_features=g))
    assert report["largest_gap"]["metric"] == "roc_auc"
    worst = min((s for s in report["slices"]), key=lambda s: s["gap"]["roc_auc"])
    assert (report["largest_gap"]["column"], report["largest_gap"]["level"]) == (worst["column"], worst["level"])


def test_the_threshold_in_the_target_state_changes_selection_rates() -> None:
    groups, y, proba = _tiny()
    rule = {"objective": "cost", "value": 0.65, "validation_score": None, "cost_fp": 2.0}
    default = slice_report(groups, y, proba, CLASSIFICATION, BINARY, min_rows=1)["fairness"]["g"]["by_group"]
    strict = slice_report(groups, y, proba, CLASSIFICATION, {**BINARY, "threshold": rule}, min_rows=1)["fairness"]["g"]
    assert (default["a"]["selection_rate"], default["b"]["selection_rate"]) == (0.5, 0.75)
    assert (strict["by_group"]["a"]["selection_rate"], strict["by_group"]["b"]["selection_rate"]) == (0.5, 0.25)
    assert strict["demographic_parity_difference"] == pytest.approx(0.25)
    assert strict["by_group"]["b"]["false_positive_rate"] == 0.0


def test_gaps_and_the_largest_gap_of_a_lower_is_better_metric() -> None:
    state = {"type": "regression", "name": "price", "transform": "none", "mean": 0.0, "std": 1.0,
             "coverage": 0.9, "halfwidth": 1.0}
    rng = np.random.default_rng(1)
    y = rng.normal(10, 3, 90)
    error = np.r_[np.zeros(40), np.full(40, 2.0), np.full(10, 1.0)]  # a exact, b off by 2, c off by 1
    outputs = np.column_stack([y + error, y + error - 1, y + error + 1])
    groups = pd.DataFrame({"region": ["a"] * 40 + ["b"] * 40 + ["c"] * 10})
    report = slice_report(groups, y, outputs, REGRESSION, state, min_rows=20)
    json.dumps(report, allow_nan=False)

    overall = np.sqrt((40 * 4 + 10 * 1) / 90)  # c's rows count overall though c is skipped
    assert report["overall"]["rmse"] == pytest.approx(overall)
    by_level = {s["level"]: s for s in report["slices"]}
    assert set(by_level) == {"a", "b"}
    assert by_level["a"]["metrics"]["rmse"] == pytest.approx(0.0) and by_level["a"]["gap"]["rmse"] < 0
    assert by_level["b"]["gap"]["rmse"] == pytest.approx(2.0 - overall) and by_level["b"]["gap"]["rmse"] > 0
    assert report["skipped"] == [{"column": "region", "level": "c", "rows": 10}]
    assert report["fairness"] == {}  # no positive class: no group-fairness measures
    # rmse: lower is better, so the worst slice is the one with the largest positive gap
    assert report["largest_gap"] == {"column": "region", "level": "b", "metric": "rmse",
                                     "gap": pytest.approx(2.0 - overall)}


def test_small_levels_are_skipped_everywhere_and_undefined_metrics_are_none() -> None:
    groups = pd.DataFrame({"g": ["big"] * 6 + ["small"] * 2 + [None] * 3})
    y = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1])  # the missing group holds one class only
    proba = _proba([0.9, 0.2, 0.8, 0.3, 0.4, 0.6, 0.7, 0.9, 0.8, 0.6, 0.3])
    report = slice_report(groups, y, proba, CLASSIFICATION, BINARY, min_rows=3)
    json.dumps(report, allow_nan=False)
    assert [s["level"] for s in report["slices"]] == ["big", "<missing>"]
    assert report["skipped"] == [{"column": "g", "level": "small", "rows": 2}]
    missing = report["slices"][1]
    assert missing["metrics"]["roc_auc"] is None and missing["gap"]["roc_auc"] is None
    assert set(report["fairness"]["g"]["by_group"]) == {"big", "<missing>"}
    assert report["largest_gap"]["level"] == "big"  # the only slice with a defined roc_auc gap
    everything_small = slice_report(groups, y, proba, CLASSIFICATION, BINARY, min_rows=100)
    assert everything_small["slices"] == [] and everything_small["largest_gap"] is None
    assert everything_small["fairness"] == {} and len(everything_small["skipped"]) == 3
    assert isinstance(slices_figure(everything_small, "roc_auc"), Figure)


def test_table_and_figures() -> None:
    groups, y, proba = _tiny()
    report = slice_report(groups.assign(h=list("xyxyxyxy")), y, proba, CLASSIFICATION, BINARY, min_rows=1)
    table = slice_table(report)
    assert list(table[["column", "level"]].itertuples(index=False, name=None)) == [
        ("g", "a"), ("g", "b"), ("h", "x"), ("h", "y")]
    assert {"rows", "accuracy", "gap_accuracy", "selection_rate", "true_positive_rate"} <= set(table.columns)
    for fig in (slices_figure(report, "accuracy"), fairness_figure(report)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        assert buffer.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no fairness"):
        fairness_figure({**report, "fairness": {}})


# --------------------------------------------------------------------------- the kinds' slices
def test_image_slices_are_the_true_class_and_brightness_quartiles(tmp_path) -> None:
    intensities = [200, 10, 120, 60, 250, 90, 30, 160]  # one flat grey image each
    files = []
    for i, level in enumerate(intensities):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((6, 6), level, dtype=np.uint8), mode="L").save(files[-1])
    raw = pd.DataFrame({"image": files})
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    target_state = {"type": "classification", "classes": ["cat", "dog", "fox"], "positive_class": None}
    state = {"kind": "image", "size": [6, 6], "channels": 1, "mean": [0.0], "std": [1.0]}
    frame = kind_of("image").slice_frame(raw, y, state, target_state, None)
    assert list(frame.columns) == ["class", "brightness"]
    assert frame["class"].tolist() == ["cat", "dog", "fox", "cat", "dog", "fox", "cat", "dog"]
    # sorted: 10 30 | 60 90 | 120 160 | 200 250
    assert frame["brightness"].tolist() == ["Q4 (brightest)", "Q1 (darkest)", "Q3", "Q2", "Q4 (brightest)",
                                            "Q2", "Q1 (darkest)", "Q3"]
    assert kind_of("image").slice_frame(raw, y, state, target_state, ["class"]).columns.tolist() == ["class"]
    with pytest.raises(ConfigError, match="not known for images"):
        kind_of("image").slice_frame(raw, y, state, target_state, ["colour"])


def test_tabular_slices_default_to_the_categorical_columns() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 40), "hours": rng.normal(40, 5, 40),
                          "city": rng.choice(["Oslo", "Lima"], 40), "plan": rng.choice(["free", "pro"], 40)})
    state = pp.fit_tabular(frame, ["age", "hours"], ["city", "plan"], TabularPreprocess())
    raw = frame.assign(city=frame["city"].where(frame.index != 3, None)).iloc[::-1]  # any index works
    y = np.zeros(len(raw), dtype=np.int64)
    tabular = kind_of("tabular")
    groups = tabular.slice_frame(raw, y, state, BINARY, None)
    assert list(groups.columns) == ["city", "plan"] and len(groups) == 40
    assert groups["city"].iloc[-4] == "<missing>" and set(groups["plan"]) == {"free", "pro"}
    assert groups["plan"].tolist() == raw["plan"].tolist()
    ages = tabular.slice_frame(raw, y, state, BINARY, ["age", "plan"])
    assert list(ages.columns) == ["age", "plan"] and ages["age"].nunique() == 4  # a number: quartile ranges
    with pytest.raises(ConfigError, match=r"\['zip'\] are not columns"):
        tabular.slice_frame(raw, y, state, BINARY, ["zip"])
