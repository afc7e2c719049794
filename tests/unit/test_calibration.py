"""Calibration and decision thresholds: ECE and Brier as documented, temperature / vector / matrix scaling
fitted on validation logits and applied inside the (ONNX-exported) head, the binary threshold chosen for
an objective and used by every prediction, and bootstrap intervals of the headline metrics."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import brier_score_loss, roc_auc_score

from torchcycle.config import Calibration, TabularPreprocess, Threshold
from torchcycle.evaluation import calibration as C
from torchcycle.evaluation.bootstrap import bootstrap_intervals
from torchcycle.export import onnx as X
from torchcycle.kinds.tabular import TABULAR
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.models.mlp import TabularMLP
from torchcycle.serving import Predictor
from torchcycle.targets.classification import CLASSIFICATION
from torchcycle.targets.regression import REGRESSION


def classifier_target(classes: list[str]) -> dict:
    return {"type": "classification", "name": "y", "classes": classes,
            "positive_class": classes[1] if len(classes) == 2 else None}


def train_cfg(method: str = "temperature", objective: str = "none", **threshold) -> SimpleNamespace:
    """What `calibrate` reads of a TrainConfig."""
    return SimpleNamespace(calibration=Calibration(method=method),
                           threshold=Threshold(objective=objective, **threshold))


def toy(n: int, k: int = 3, scale: float = 5.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true logits, labels drawn from softmax(true logits), an over-confident model's logits: ×scale)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, k))
    p = C.softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, y, z * scale


# --------------------------------------------------------------------------- measures
def test_ece_matches_a_hand_computed_example_with_top_label_equal_width_bins() -> None:
    y = np.array([0, 0, 1, 0])
    proba = np.array([[0.95, 0.05], [0.15, 0.85], [0.25, 0.75], [0.65, 0.35]])
    # bins of width 0.2: (0.8, 1] holds confidences .95 (hit) and .85 (miss): |0.5 - 0.9| * 2/4 = 0.2;
    # (0.6, 0.8] holds .75 (hit) and .65 (hit): |1.0 - 0.7| * 2/4 = 0.15
    assert C.expected_calibration_error(y, proba, bins=5) == pytest.approx(0.35)
    table = C.reliability_table(y, proba, bins=5)
    assert list(table.columns) == ["confidence", "mean_confidence", "accuracy", "count"]
    assert table["count"].tolist() == [0, 0, 0, 2, 2]
    assert table["confidence"].tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert table["accuracy"].iloc[3:].tolist() == [1.0, 0.5]
    assert table["mean_confidence"].iloc[3:].tolist() == pytest.approx([0.7, 0.9])
    assert table["accuracy"].iloc[:3].isna().all()
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert C.expected_calibration_error(np.array([0, 1]), perfect) == 0.0


def test_brier_is_the_multiclass_score_and_twice_sklearns_for_binary() -> None:
    y = np.array([0, 1, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = ((0.3**2 + 0.2**2 + 0.1**2) + (0.5**2 + 0.5**2) + 0.0) / 3
    assert C.brier_score(y, proba) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    p1 = rng.random(200)
    yb = (rng.random(200) < p1).astype(int)
    assert C.brier_score(yb, np.c_[1 - p1, p1]) == pytest.approx(2 * brier_score_loss(yb, p1))


# --------------------------------------------------------------------------- calibration maps
def test_temperature_scaling_softens_an_over_confident_model_and_keeps_its_ranking() -> None:
    _, y, logits = toy(6000, k=2, scale=5.0)
    fit, test = slice(0, 3000), slice(3000, None)
    t = C.fit_temperature(logits[fit], y[fit])
    assert t > 1 and t == pytest.approx(5.0, rel=0.2)
    before, after = C.softmax(logits[test]), C.softmax(logits[test] / t)
    assert C.expected_calibration_error(y[test], after) < 0.5 * C.expected_calibration_error(y[test], before)
    assert C.log_loss(y[test], after) < C.log_loss(y[test], before)
    assert roc_auc_score(y[test], after[:, 1]) == pytest.approx(roc_auc_score(y[test], before[:, 1]), abs=1e-12)


def test_vector_and_matrix_scaling_reduce_the_nll_of_per_class_miscalibration() -> None:
    z, y, _ = toy(6000, k=3)
    logits = z * np.array([3.0, 1.0, 0.4]) + np.array([1.0, 0.0, -1.0])  # a scale and a bias per class
    nll_raw = C.log_loss(y, C.softmax(logits))
    nll_temperature = C.log_loss(y, C.softmax(logits / C.fit_temperature(logits, y)))
    w, b = C.fit_vector_scaling(logits, y)
    assert np.allclose(w, np.diag(np.diag(w)))  # diagonal
    nll_vector = C.log_loss(y, C.softmax(logits @ w.T + b))
    w, b = C.fit_matrix_scaling(logits, y)
    nll_matrix = C.log_loss(y, C.softmax(logits @ w.T + b))
    assert nll_vector < nll_temperature < nll_raw
    assert nll_matrix < nll_temperature
    truth = C.log_loss(y, C.softmax(z))  # the labels' own distribution: nothing does much better
    assert nll_vector == pytest.approx(truth, abs=0.02) and nll_matrix == pytest.approx(truth, abs=0.02)


def test_a_separable_validation_split_does_not_send_the_calibration_to_infinity() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    margin = rng.uniform(2, 6, 20) * np.where(y == 1, 1, -1)  # every row right, with a margin
    logits = np.c_[-margin / 2, margin / 2]
    assert 0.3 < C.fit_temperature(logits, y) < 1  # sharper, but finite
    for fit in (C.fit_vector_scaling, C.fit_matrix_scaling):
        weight, bias = fit(logits, y)
        assert np.abs(weight).max() < 5 and np.abs(bias).max() < 5


# --------------------------------------------------------------------------- thresholds
def calibrated_binary(n: int = 40000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return (rng.random(n) < p).astype(int), p


@pytest.mark.parametrize("cost_fp", [0.5, 1.0, 3.0])
def test_cost_threshold_is_near_the_bayes_optimum_for_calibrated_probabilities(cost_fp) -> None:
    y, p = calibrated_binary()
    threshold, cost = C.choose_threshold(y, p, "cost", cost_fp=cost_fp)
    assert threshold == pytest.approx(cost_fp / (1 + cost_fp), abs=0.03)
    at_half = (cost_fp * ((p >= 0.5) & (y == 0)).sum() + ((p < 0.5) & (y == 1)).sum()) / len(y)
    assert cost <= at_half + 1e-12


def test_f1_and_balanced_accuracy_thresholds_maximise_their_objective() -> None:
    y, p = calibrated_binary(4000, seed=1)
    for objective, key in (("f1", "f1"), ("balanced_accuracy", "balanced_accuracy")):
        threshold, value = C.choose_threshold(y, p, objective)
        assert value == pytest.approx(C.binary_scores(y, p >= threshold)[key])
        brute = max(C.binary_scores(y, p >= t)[key] for t in np.unique(p)[::20])
        assert value >= brute - 1e-12
    # uniform calibrated probabilities: balanced accuracy peaks at the prevalence, 0.5
    assert C.choose_threshold(*calibrated_binary(), "balanced_accuracy")[0] == pytest.approx(0.5, abs=0.03)


def test_min_precision_threshold_has_the_highest_recall_at_that_precision() -> None:
    y, p = calibrated_binary(3000, seed=2)
    threshold, recall = C.choose_threshold(y, p, "min_precision", min_precision=0.9)
    predicted = p >= threshold
    assert y[predicted].mean() >= 0.9
    assert recall == pytest.approx(y[predicted].sum() / y.sum())
    scan = C.threshold_scan(y, p)
    precision = scan["tp"] / (scan["tp"] + scan["fp"])
    assert recall == pytest.approx((scan["tp"] / y.sum())[precision >= 0.9].max())
    # out of reach: 0.5 applies, and no value is claimed
    noise = np.random.default_rng(3).random(500)
    assert C.choose_threshold(np.r_[np.ones(5), np.zeros(495)], noise, "min_precision", min_precision=0.95) == (
        0.5, None)


# --------------------------------------------------------------------------- the classification target
def test_calibrate_stores_the_temperature_and_the_threshold_and_the_head_applies_them() -> None:
    _, y, logits = toy(4000, k=2, scale=4.0)
    state = CLASSIFICATION.calibrate(classifier_target(["no", "yes"]), logits.astype(np.float32), y,
                                     train_cfg("temperature", "f1"))
    cal = state["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 1
    assert cal["validation"]["log_loss_after"] < cal["validation"]["log_loss_before"]
    assert set(state["threshold"]) == {"objective", "value", "validation_score"}
    assert state["threshold"]["objective"] == "f1" and 0 < state["threshold"]["value"] < 1
    with torch.inference_mode():
        out = CLASSIFICATION.head(state)(torch.from_numpy(logits[:50].astype(np.float32))).numpy()
    np.testing.assert_allclose(out, C.softmax(logits[:50] / cal["temperature"]), atol=1e-6)
    # the readout explanations attribute is the calibrated log-odds
    readout, _ = CLASSIFICATION.readout(state)
    with torch.inference_mode():
        log_odds = readout(torch.from_numpy(logits[:50].astype(np.float32))).numpy()[:, 0]
    np.testing.assert_allclose(log_odds, np.log(out[:, 1] / out[:, 0]), atol=1e-4)

    plain = CLASSIFICATION.calibrate(state, logits.astype(np.float32), y, train_cfg("none", "none"))
    assert plain["calibration"]["method"] == "none" and "threshold" not in plain
    assert type(CLASSIFICATION.head(plain)).__name__ == "Softmax"
    multi = CLASSIFICATION.calibrate(classifier_target(["a", "b", "c"]), toy(900)[2], toy(900)[1],
                                     train_cfg("matrix", "f1"))
    assert np.asarray(multi["calibration"]["weight"]).shape == (3, 3) and "threshold" not in multi


def test_predictions_use_the_threshold_and_min_precision_out_of_reach_says_so() -> None:
    state = {**classifier_target(["no", "yes"]), "threshold": {"objective": "f1", "value": 0.8,
                                                               "validation_score": 0.7}}
    outputs = np.array([[0.3, 0.7], [0.15, 0.85], [0.6, 0.4]])
    table = CLASSIFICATION.predictions(outputs, state)
    assert list(table.columns) == ["predicted", "proba_no", "proba_yes"]
    assert table["predicted"].tolist() == ["no", "yes", "no"]
    assert CLASSIFICATION.predictions(outputs, classifier_target(["no", "yes"]))["predicted"].tolist() == [
        "yes", "yes", "no"]
    logits = np.random.default_rng(0).normal(0, 1, (400, 2)).astype(np.float32)
    backwards = (logits[:, 1] < np.quantile(logits[:, 1], 0.3)).astype(int)  # positives score lowest
    hopeless = CLASSIFICATION.calibrate(classifier_target(["no", "yes"]), logits, backwards,
                                        train_cfg("none", "min_precision", min_precision=0.99))
    assert hopeless["threshold"]["value"] == 0.5 and hopeless["threshold"]["validation_score"] is None
    assert "0.5 applies" in hopeless["threshold"]["note"]


def test_metrics_add_ece_brier_and_the_threshold_report_and_headline_matches_them() -> None:
    _, y, logits = toy(3000, k=2, scale=1.0, seed=4)
    proba = C.softmax(logits)
    state = {**classifier_target(["no", "yes"]), "threshold": {"objective": "f1", "value": 0.3}}
    metrics = CLASSIFICATION.metrics(y, proba, state, {"ece_bins": 10})
    assert metrics["ece"] == pytest.approx(C.expected_calibration_error(y, proba, 10))
    assert metrics["brier"] == pytest.approx(C.brier_score(y, proba))
    assert metrics["accuracy"] == pytest.approx(np.mean(proba.argmax(1) == y))  # argmax, not the threshold
    report = metrics["threshold"]
    assert list(report) == ["objective", "value", "accuracy_at_threshold", "accuracy_at_0.5", "f1_at_threshold",
                            "f1_at_0.5", "balanced_accuracy_at_threshold", "balanced_accuracy_at_0.5"]
    assert report["accuracy_at_threshold"] == pytest.approx(np.mean((proba[:, 1] >= 0.3) == y))
    assert report["accuracy_at_0.5"] == pytest.approx(metrics["accuracy"])
    assert report["f1_at_threshold"] > report["f1_at_0.5"]  # a low threshold favours the positive class's F1
    for k, probs in ((2, proba), (4, C.softmax(toy(3000, k=4, scale=1.0)[2]))):
        yy = y if k == 2 else toy(3000, k=4, scale=1.0)[1]
        st = classifier_target([str(i) for i in range(k)])
        full = CLASSIFICATION.metrics(yy, probs, st)
        fast = CLASSIFICATION.headline(yy, probs, st)
        assert set(fast) == set(CLASSIFICATION.headline_metrics)
        for name in CLASSIFICATION.headline_metrics:
            assert fast[name] == pytest.approx(full[name], abs=1e-9), name


def test_diagnostics_report_calibration_before_and_after() -> None:
    _, y, logits = toy(4000, k=3, scale=4.0, seed=5)
    state = CLASSIFICATION.calibrate(classifier_target(["a", "b", "c"]), logits[:2000], y[:2000], train_cfg())
    with torch.inference_mode():
        outputs = CLASSIFICATION.head(state)(torch.from_numpy(logits[2000:].astype(np.float32))).numpy()
    metrics, tables, figures = CLASSIFICATION.diagnostics(y[2000:], logits[2000:], outputs, state, {"ece_bins": 15})
    cal = metrics["calibration"]
    assert cal["method"] == "temperature" and cal["ece_bins"] == 15 and cal["temperature"] > 1
    assert cal["binning"] == "equal-width top-label confidence"
    assert set(cal["before"]) == set(cal["after"]) == {"ece", "brier", "log_loss"}
    assert cal["after"]["ece"] < cal["before"]["ece"] and metrics["ece_before"] == cal["before"]["ece"]
    table = tables["reliability"]
    assert list(table.columns) == ["confidence", "accuracy_before", "accuracy_after", "count_before", "count_after"]
    assert table["count_before"].sum() == table["count_after"].sum() == 2000
    assert list(figures) == ["reliability.png"]
    assert REGRESSION.diagnostics(y, logits, outputs, {}, {}) == ({}, {}, {})


@pytest.mark.parametrize("method", ["temperature", "vector", "matrix"])
def test_calibrated_head_exports_to_onnx_and_serves_the_threshold(method) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 90, 60).astype(float), "hours": rng.normal(40, 10, 60),
                          "city": rng.choice(["rome", "paris", "oslo"], 60)})
    state = pp.fit_tabular(frame, ["age", "hours"], ["city"], TabularPreprocess())
    torch.manual_seed(0)
    model = TabularMLP(2, pp.cardinalities(state), 2, [8]).eval()
    inputs = tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state))
    with torch.inference_mode():
        logits = model(*inputs).numpy()
    target = CLASSIFICATION.calibrate(classifier_target(["no", "yes"]), logits * 3, rng.integers(0, 2, 60),
                                      train_cfg(method, "balanced_accuracy"))
    graph = TABULAR.onnx_module(model, CLASSIFICATION.head(target)).eval()
    blob = X.export_onnx(graph, inputs, TABULAR.input_names(state), "outputs",
                         X.metadata_for(state, target, TABULAR.describe_input(state)))
    onnx_p = X.run_session(X.ort_session(blob), tuple(t.numpy() for t in inputs))
    torch_p = X.torch_outputs(graph, inputs)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-5)
    assert not np.allclose(torch_p, C.softmax(logits), atol=1e-3)  # the calibration is in the graph
    predictor = Predictor(blob)
    assert predictor.target_state["threshold"] == target["threshold"]
    expected = np.where(onnx_p[:, 1] >= target["threshold"]["value"], "yes", "no")
    assert predictor.predict(frame)["predicted"].tolist() == expected.tolist()


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_rows() -> None:
    # somewhat over-confident: near ECE 0 the resampled ECEs all lie above the estimate (ECE's upward bias)
    _, y, logits = toy(16281, k=2, scale=1.5, seed=6)
    proba = C.softmax(logits)
    state = classifier_target(["no", "yes"])

    def headline(yy, pp_):
        return CLASSIFICATION.headline(yy, pp_, state)

    small = bootstrap_intervals(headline, y[:600], proba[:600], samples=200, confidence=0.95, seed=0)
    started = time.perf_counter()
    large = bootstrap_intervals(headline, y, proba, samples=200, confidence=0.95, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"200 resamples of 16,281 rows took {elapsed:.1f}s"
    assert set(large) == set(CLASSIFICATION.headline_metrics)
    point = headline(y, proba)
    for name, ci in large.items():
        assert ci["level"] == 0.95 and ci["samples"] == 200
        assert ci["low"] <= point[name] <= ci["high"], name
        assert ci["high"] - ci["low"] < small[name]["high"] - small[name]["low"], name
    again = bootstrap_intervals(headline, y[:600], proba[:600], samples=200, confidence=0.95, seed=0)
    assert again == small  # seeded
    assert bootstrap_intervals(headline, y, proba, samples=0, confidence=0.95, seed=0) == {}


def test_bootstrap_skips_undefined_metrics_and_regression_headline_matches_metrics() -> None:
    def metric_fn(y, o):
        return {"mean": float(np.mean(o)), "undefined": None, "label": "x"}

    out = bootstrap_intervals(metric_fn, np.zeros(50), np.arange(50.0), samples=50, confidence=0.9, seed=1)
    assert list(out) == ["mean"] and out["mean"]["level"] == 0.9
    rng = np.random.default_rng(0)
    state = {"type": "regression", "name": "price", "transform": "none", "mean": 10.0, "std": 2.0,
             "coverage": 0.9, "halfwidth": 1.0}
    y = rng.normal(0, 1, 300)
    pred = (y + rng.normal(0, 0.3, 300)) * 2.0 + 10.0
    outputs = np.c_[pred, pred - 1, pred + 1]
    full, fast = REGRESSION.metrics(y, outputs, state), REGRESSION.headline(y, outputs, state)
    assert set(fast) == set(REGRESSION.headline_metrics)
    for name in REGRESSION.headline_metrics:
        assert fast[name] == pytest.approx(full[name], rel=1e-9)
