"""The regression target (a number with a split-conformal interval, in target units everywhere outside
the model), how `auto` picks a target type, and the tabular columns that came with it: dates as
features, and a cap on huge category vocabularies."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from torchcycle.config import TabularPreprocess, TabularSource
from torchcycle.errors import PredictionInputError
from torchcycle.kinds.tabular.preprocess import (
    UNSEEN_CODE,
    cardinalities,
    column_types,
    feature_names,
    fit_tabular,
    input_columns,
    transform_tabular,
)
from torchcycle.targets import AUTO_REGRESSION_MIN_DISTINCT, get_target, infer_type, target_of
from torchcycle.targets.classification import CLASSIFICATION, MAX_NUMERIC_CLASSES
from torchcycle.targets.regression import REGRESSION


def source(**kw) -> TabularSource:
    return TabularSource(path="x.csv", target=kw.pop("target", "price"), **kw)


def prices(n: int = 500, seed: int = 0) -> pd.Series:
    """Positive and right-skewed, like prices."""
    return pd.Series(np.random.default_rng(seed).lognormal(7.0, 0.8, n), name="price")


# --------------------------------------------------------------------------- fit / encode / decode
@pytest.mark.parametrize("transform", ["none", "log"])
def test_fit_encode_decode_round_trip(transform) -> None:
    y = prices()
    state = REGRESSION.fit(y, source(target_transform=transform, interval_coverage=0.8))
    state = json.loads(json.dumps(state))  # what model_config.json and the ONNX metadata carry

    encoded = REGRESSION.encode(y, state)

    assert state["type"] == "regression" and state["name"] == "price" and state["transform"] == transform
    assert state["coverage"] == 0.8 and state["halfwidth"] == 0.0
    assert (state["min"], state["max"]) == (pytest.approx(y.min()), pytest.approx(y.max()))
    assert encoded.dtype == np.float32
    # standardised on the training rows, in (log-)target units
    assert float(encoded.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(encoded.std()) == pytest.approx(1.0, abs=1e-5)
    units = np.log(y.to_numpy()) if transform == "log" else y.to_numpy()
    assert state["mean"] == pytest.approx(units.mean()) and state["std"] == pytest.approx(units.std())
    np.testing.assert_allclose(REGRESSION.decode(encoded, state), y.to_numpy(), rtol=1e-5)
    assert target_of(state) is REGRESSION


def test_a_constant_target_gets_unit_scale() -> None:
    state = REGRESSION.fit(pd.Series([3.0] * 10), source())

    assert state["std"] == 1.0
    np.testing.assert_allclose(REGRESSION.encode(pd.Series([3.0, 5.0]), state), [0.0, 2.0])


def test_regression_is_one_output_never_stratified() -> None:
    state = REGRESSION.fit(prices(), source())

    assert REGRESSION.n_outputs(state) == 1
    assert REGRESSION.stratify(REGRESSION.encode(prices(), state)) is None and not REGRESSION.stratified
    assert REGRESSION.output_columns(state) == ["prediction", "lower", "upper"]


# --------------------------------------------------------------------------- the head
@pytest.mark.parametrize("transform", ["none", "log"])
def test_head_gives_prediction_and_interval_in_target_units(transform) -> None:
    state = {**REGRESSION.fit(prices(), source(target_transform=transform)), "halfwidth": 0.25}
    scaled = torch.tensor([[-1.0], [0.0], [2.0]])

    out = REGRESSION.head(state)(scaled).numpy().astype(np.float64)

    t = scaled.numpy()[:, 0] * state["std"] + state["mean"]
    lower, upper = t - 0.25, t + 0.25
    if transform == "log":  # the interval is added in log units: multiplicative in prices
        t, lower, upper = np.exp(t), np.exp(lower), np.exp(upper)
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out[:, 0], t, rtol=1e-5)
    np.testing.assert_allclose(out[:, 1], lower, rtol=1e-5)
    np.testing.assert_allclose(out[:, 2], upper, rtol=1e-5)
    np.testing.assert_allclose(out[:, 0], REGRESSION.decode(scaled.numpy()[:, 0], state), rtol=1e-5)
    table = REGRESSION.predictions(out, state)
    assert list(table.columns) == ["predicted", "lower", "upper"]
    assert (table["lower"] < table["predicted"]).all() and (table["predicted"] < table["upper"]).all()


def test_head_without_a_calibrated_halfwidth_is_a_point_interval() -> None:
    state = REGRESSION.fit(prices(), source())
    state.pop("halfwidth")

    out = REGRESSION.head(state)(torch.tensor([[0.5]])).numpy()

    assert out[0, 0] == out[0, 1] == out[0, 2]


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_calibrate_covers_about_coverage_of_validation_residuals(coverage) -> None:
    rng = np.random.default_rng(1)
    y = pd.Series(rng.normal(100, 20, 2000))
    state = REGRESSION.fit(y, source(interval_coverage=coverage))
    truth = REGRESSION.encode(y, state)
    noise = 0.3  # in standard deviations of the target
    val_outputs = (truth[:1000] + rng.normal(0, noise, 1000)).reshape(-1, 1).astype(np.float32)

    calibrated = REGRESSION.calibrate(state, val_outputs, truth[:1000])

    h = calibrated["halfwidth"]
    assert calibrated["coverage"] == coverage and state["halfwidth"] == 0.0  # a new state, not mutated
    residuals = np.abs((val_outputs[:, 0] - truth[:1000]) * state["std"])  # target units
    assert np.mean(residuals <= h) == pytest.approx(coverage, abs=0.01)
    # and on new points from the same distribution, through the head
    new_outputs = (truth[1000:] + rng.normal(0, noise, 1000)).reshape(-1, 1).astype(np.float32)
    out = REGRESSION.head(calibrated)(torch.from_numpy(new_outputs)).numpy().astype(np.float64)
    actual = y.to_numpy()[1000:]
    covered = np.mean((out[:, 1] <= actual) & (actual <= out[:, 2]))
    assert covered == pytest.approx(coverage, abs=0.04)
    expected_h = noise * state["std"] * {0.8: 1.2816, 0.9: 1.6449}[coverage]  # normal quantile
    assert h == pytest.approx(expected_h, rel=0.1)


def test_metrics_are_in_target_units_with_the_interval_coverage() -> None:
    y = prices(400)
    state = {**REGRESSION.fit(y, source(target_transform="log")), "halfwidth": 0.1}
    encoded = REGRESSION.encode(y, state)

    outputs = REGRESSION.head(state)(torch.from_numpy(encoded).reshape(-1, 1)).numpy()
    metrics = REGRESSION.metrics(encoded, outputs, state)

    assert metrics["rmse"] == pytest.approx(0.0, abs=1e-2 * y.mean())
    assert metrics["r2"] == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- parity and the registry
def test_parity_tolerance_is_relative_to_the_value() -> None:
    ref = np.array([[10_000.0, 9_000.0, 11_000.0], [0.5, 0.1, 0.9]])

    close = REGRESSION.parity(ref, ref + np.array([[0.5, 0.5, 0.5], [5e-5, 0, 0]]), 1e-4)
    far = REGRESSION.parity(ref, ref + np.array([[2.0, 0, 0], [0, 0, 0]]), 1e-4)
    small = REGRESSION.parity(ref, ref + np.array([[0, 0, 0], [2e-4, 0, 0]]), 1e-4)

    assert close["passed"] and close["max_abs_diff"] == pytest.approx(0.5)
    assert close["max_rel_diff"] == pytest.approx(0.5 / 9_000)  # the largest |Δ| / |value|
    assert not far["passed"] and far["max_rel_diff"] == pytest.approx(2e-4)
    # near zero the denominator is 1: an absolute tolerance
    assert not small["passed"] and small["max_rel_diff"] == pytest.approx(2e-4)
    assert REGRESSION.parity(ref[:0], ref[:0], 1e-4)["passed"]


def test_which_metrics_are_better_higher() -> None:
    assert REGRESSION.higher_is_better("r2")
    assert not any(REGRESSION.higher_is_better(m) for m in ("rmse", "mae", "mape"))
    assert REGRESSION.default_metric == "rmse" and set(REGRESSION.metric_names) == {"rmse", "mae", "r2", "mape"}
    assert CLASSIFICATION.higher_is_better("roc_auc") and not CLASSIFICATION.higher_is_better("log_loss")


def test_same_task_needs_the_same_target_column() -> None:
    state = REGRESSION.fit(prices(), source())
    other = REGRESSION.fit(prices(seed=1), source())
    assert REGRESSION.same_task(state, other)
    assert not REGRESSION.same_task(state, REGRESSION.fit(prices(), source(target="cost")))
    assert not REGRESSION.same_task(state, CLASSIFICATION.fit(pd.Series(["a", "b"]), source()))


# --------------------------------------------------------------------------- choosing the type
def test_infer_type_auto() -> None:
    many = pd.Series(np.arange(200) * 1.5)
    few = pd.Series([0, 1, 2] * 30)
    threshold = pd.Series(np.arange(AUTO_REGRESSION_MIN_DISTINCT))  # exactly the limit: still classes
    text = pd.Series([f"label {i}" for i in range(200)])

    assert infer_type(many, "auto")[0] == "regression"
    assert "200 distinct values" in infer_type(many, "auto")[1]
    assert infer_type(few, "auto")[0] == "classification"
    assert infer_type(threshold, "auto")[0] == "classification"
    assert infer_type(pd.Series(np.arange(AUTO_REGRESSION_MIN_DISTINCT + 1)), "auto")[0] == "regression"
    assert infer_type(text, "auto") == ("classification", "auto: the target is non-numeric with 200 distinct values")
    assert infer_type(pd.Series(["1.5", "2.5", None] * 10 + [str(i) for i in range(30)]), "auto")[0] == "regression"


def test_a_declared_type_wins_over_auto() -> None:
    assert infer_type(pd.Series(np.arange(200.0)), "classification") == (
        "classification", "source.target_type is 'classification'")
    assert infer_type(pd.Series(["a", "b"]), "regression")[0] == "regression"
    assert get_target("regression") is REGRESSION and get_target("classification") is CLASSIFICATION


def test_classification_check_suggests_regression_for_hundreds_of_numeric_classes() -> None:
    values = pd.Series([str(v) for v in np.repeat(np.arange(300) * 7, 2)], dtype="string")

    problems = CLASSIFICATION.check(values, source(target="price"))

    assert len(problems) == 1
    assert "numeric with 300 distinct values" in problems[0] and "too many to be classes" in problems[0]
    assert "`source.target_type: regression`" in problems[0]
    # a few numeric classes, or many text labels, are fine
    assert CLASSIFICATION.check(pd.Series(["1", "2", "3"] * 5), source()) == []
    assert CLASSIFICATION.check(pd.Series([f"c{i}" for i in range(300)] * 2), source()) == []
    assert MAX_NUMERIC_CLASSES < 300


def test_regression_check_names_what_cannot_be_regressed() -> None:
    assert REGRESSION.check(prices(), source()) == []
    (text,) = REGRESSION.check(pd.Series(["1.0", "cheap", "3"]), source())
    assert "must be a number for regression" in text and "'cheap'" in text and "classification" in text
    (few,) = REGRESSION.check(pd.Series([1.0, 2.0, 1.0, 2.0]), source())
    assert "only 2 distinct value(s)" in few
    (negative,) = REGRESSION.check(pd.Series([-1.0, 2.0, 3.0, 4.0]), source(target_transform="log"))
    assert "1 value(s) <= 0" in negative and "target_transform: log" in negative


# --------------------------------------------------------------------------- dates as features
def dated(n: int = 40) -> pd.DataFrame:
    days = pd.date_range("2023-01-01", periods=n, freq="7D")
    return pd.DataFrame({
        "size": np.linspace(10, 50, n),
        "signup": days.strftime("%Y-%m-%d").astype(object),
        "city": ["rome", "oslo"] * (n // 2),
    })  # fmt: skip


def fit_dated(train: pd.DataFrame, **cfg) -> dict:
    return fit_tabular(train, ["size"], ["city"], TabularPreprocess(**cfg), dates=["signup"])


def test_a_date_column_becomes_numeric_features() -> None:
    train = dated()
    state = json.loads(json.dumps(fit_dated(train, scaling="none")))

    x_num, x_cat = transform_tabular(train, state)

    date_features = [f"signup.{f}" for f in ("year", "month", "day_of_week", "day_of_year", "days_since_reference")]
    assert feature_names(state) == ["size", *date_features, "city"]
    assert input_columns(state) == ["size", "signup", "city"]
    assert column_types(state) == {"size": "numeric", "signup": "date", "city": "categorical"}
    assert state["dates"] == [{"name": "signup", "reference": "2023-01-01",
                               "features": [f.removeprefix("signup.") for f in date_features]}]
    assert x_num.shape == (40, 6) and x_cat.shape == (40, 1)
    np.testing.assert_array_equal(x_num[:3, 1], [2023, 2023, 2023])  # year
    np.testing.assert_array_equal(x_num[:3, 2], [1, 1, 1])  # month
    np.testing.assert_array_equal(x_num[:3, 5], [0, 7, 14])  # days since the earliest training date
    np.testing.assert_array_equal(x_num[:, 3], 6)  # 2023-01-01 was a Sunday, and so is every 7th day after


def test_missing_dates_are_imputed_like_numbers() -> None:
    train = dated()
    state = fit_dated(train, scaling="none")
    rows = train.head(2).copy()
    rows.loc[1, "signup"] = None

    x_num, _ = transform_tabular(rows, state)

    fills = [spec["fill"] for spec in state["numeric"] if spec.get("date") == "signup"]
    assert len(fills) == 5 and np.isfinite(x_num).all()
    np.testing.assert_allclose(x_num[1, 1:6], fills, rtol=1e-6)  # the training medians
    assert fills[4] == pytest.approx(np.median(np.arange(40) * 7))


def test_a_bad_date_is_an_error_naming_the_column() -> None:
    state = fit_dated(dated())
    rows = dated(4)
    rows.loc[2, "signup"] = "next tuesday"

    with pytest.raises(PredictionInputError, match=r"column 'signup', row 2: 'next tuesday' is not a date"):
        transform_tabular(rows, state)
    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['signup'\]"):
        transform_tabular(rows.drop(columns="signup"), state)


def test_dates_are_scaled_with_the_training_statistics() -> None:
    train = dated()
    state = fit_dated(train)
    x_num, _ = transform_tabular(train, state)

    # standardised on the training rows like any number
    np.testing.assert_allclose(x_num[:, 5].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_num[:, 5].std(), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- huge vocabularies
def test_max_categories_caps_a_5000_level_column_to_the_most_frequent() -> None:
    rng = np.random.default_rng(0)
    common = [f"common{i:02d}" for i in range(30)]
    levels = common * 20 + [f"rare{i:04d}" for i in range(4970)]  # 5,000 levels
    train = pd.DataFrame({"x": rng.normal(size=len(levels)), "code": rng.permutation(levels)})

    capped = fit_tabular(train, ["x"], ["code"], TabularPreprocess(max_categories=30))
    default = fit_tabular(train, ["x"], ["code"], TabularPreprocess())
    everything = fit_tabular(train, ["x"], ["code"], TabularPreprocess(max_categories=None))

    spec = capped["categorical"][0]
    assert spec["levels_seen"] == 5000
    assert spec["categories"] == sorted(common)  # the 30 most frequent, sorted by name
    assert cardinalities(capped) == [31]
    assert len(default["categorical"][0]["categories"]) == TabularPreprocess().max_categories == 200
    assert len(everything["categorical"][0]["categories"]) == 5000
    _, x_cat = transform_tabular(pd.DataFrame({"x": [0.0, 0.0], "code": ["common07", "rare0001"]}), capped)
    assert x_cat[:, 0].tolist() == [sorted(common).index("common07") + 1, UNSEEN_CODE]


def test_a_target_state_is_plain_json_for_either_type() -> None:
    for state in (REGRESSION.fit(prices(), source()),
                  CLASSIFICATION.fit(pd.Series(["no", "yes"]), SimpleNamespace(target="y", positive_class="yes"))):
        assert json.loads(json.dumps(state)) == state
        assert target_of(state).name == state["type"]
