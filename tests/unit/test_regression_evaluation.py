"""Regression metrics, plot tables, figures and split-conformal intervals.

Metrics are checked against scikit-learn on random data rather than hard-coded numbers, and conformal
coverage against a synthetic problem whose noise level, and so ideal interval, is known.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from sklearn import metrics as skm

from torchcycle.evaluation import regression_plots
from torchcycle.evaluation.conformal import conformal_halfwidth, interval, min_calibration_points
from torchcycle.evaluation.regression import regression_metrics, regression_tables

TABLE_COLUMNS = {
    "predicted_vs_actual": ["actual", "predicted"],
    "residuals": ["predicted", "residual"],
    "residual_histogram": ["residual", "count"],
}


def _random_case(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets away from zero (so MAPE is defined) and informative but noisy predictions."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(1.0, 10.0, size=n)
    return y, y + rng.normal(0.0, 1.0, size=n)


def _linear_case(n: int, sigma: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """y = 3x + N(0, sigma) with the noise-free prediction 3x, so the ideal interval is ±z·sigma."""
    x = rng.uniform(-5.0, 5.0, size=n)
    return 3 * x + rng.normal(0.0, sigma, size=n), 3 * x


# --- metrics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed: int) -> None:
    y, pred = _random_case(500, seed)
    result = regression_metrics(y, pred)
    assert result["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred), rel=1e-12)
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
    assert result["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    assert result["mape"] == pytest.approx(skm.mean_absolute_percentage_error(y, pred), rel=1e-12)
    assert result["n_samples"] == 500
    assert not any(key.startswith("interval_") for key in result)


def test_metrics_are_plain_json() -> None:
    y, pred = _random_case(50)
    result = regression_metrics(y, pred, lower=pred - 1, upper=pred + 1, coverage=0.9)
    assert json.loads(json.dumps(result)) == result
    assert all(type(value) in (float, int) for value in result.values())


def test_mape_is_none_when_a_target_is_zero() -> None:
    y, pred = _random_case(50)
    y[7] = 0.0
    result = regression_metrics(y, pred)
    assert result["mape"] is None
    assert result["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred))


def test_r2_is_none_for_a_single_sample() -> None:
    result = regression_metrics([2.0], [1.5])
    assert result["r2"] is None
    assert result["rmse"] == pytest.approx(0.5)


def test_interval_metrics() -> None:
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lower = np.array([-1.0, 1.5, 1.0, 3.0])  # second point lies below its interval
    upper = np.array([1.0, 2.5, 3.0, 3.0])  # last interval is a single point and still covers y
    result = regression_metrics(y, y, lower=lower, upper=upper, coverage=0.8)
    assert result["interval_coverage"] == pytest.approx(0.75)
    assert result["interval_mean_width"] == pytest.approx(np.mean(upper - lower))
    assert result["interval_nominal_coverage"] == 0.8


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        (np.ones(5), np.ones(4), "same length"),
        (np.ones((5, 1)), np.ones(5), "1-D"),
        (np.ones(5), np.ones((5, 2)), "y_pred must be a non-empty 1-D"),
        (np.array([]), np.array([]), "non-empty"),
        (np.array([1.0, np.nan, 2.0]), np.ones(3), "y_true must be finite; 1 of 3"),
        (np.ones(3), np.array([1.0, np.inf, 2.0]), "y_pred must be finite"),
        (np.array(["a", "b"]), np.ones(2), "y_true must hold numbers"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(y_true: np.ndarray, y_pred: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        regression_metrics(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        regression_tables(y_true, y_pred)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lower": np.zeros(3)}, "together"),
        ({"coverage": 0.9}, "together"),
        ({"lower": np.zeros(2), "upper": np.ones(2)}, "one bound per sample"),
        ({"lower": np.ones(3), "upper": np.zeros(3)}, "inverted"),
        ({"lower": np.zeros(3), "upper": np.array([1.0, np.nan, 1.0])}, "upper must be finite"),
        ({"lower": np.zeros(3), "upper": np.ones(3), "coverage": 1.5}, "coverage"),
    ],
)
def test_bad_intervals_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        regression_metrics(np.ones(3), np.ones(3), **kwargs)


# --- tables -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "max_points"), [(50, 2000), (5000, 2000), (1001, 100)])
def test_tables_have_expected_columns_and_row_caps(n: int, max_points: int) -> None:
    y, pred = _random_case(n)
    tables = regression_tables(y, pred, max_points=max_points, bins=25)
    assert {name: list(frame.columns) for name, frame in tables.items()} == TABLE_COLUMNS
    scatter, residuals = tables["predicted_vs_actual"], tables["residuals"]
    assert len(scatter) == len(residuals) == min(n, max_points)
    assert len(tables["residual_histogram"]) == 25


def test_thinning_is_deterministic_and_keeps_the_extremes() -> None:
    y, pred = _random_case(5000)
    first = regression_tables(y, pred, max_points=300)["predicted_vs_actual"]
    second = regression_tables(y, pred, max_points=300)["predicted_vs_actual"]
    pd.testing.assert_frame_equal(first, second)
    assert first["actual"].is_monotonic_increasing
    assert first["actual"].iloc[0] == y.min()
    assert first["actual"].iloc[-1] == y.max()


def test_table_rows_are_real_pairs() -> None:
    """Thinning must keep (actual, predicted) and (predicted, residual) rows from the same samples."""
    y, pred = _random_case(3000)
    tables = regression_tables(y, pred, max_points=200)
    pairs = set(zip(y, pred))
    assert all(
        pair in pairs
        for pair in zip(tables["predicted_vs_actual"]["actual"], tables["predicted_vs_actual"]["predicted"])
    )
    residuals = tables["residuals"]
    assert residuals["predicted"].is_monotonic_increasing
    by_pred = dict(zip(pred, y - pred))
    assert all(by_pred[p] == r for p, r in zip(residuals["predicted"], residuals["residual"]))


def test_residual_histogram_counts_every_sample() -> None:
    y, pred = _random_case(4321)
    histogram = regression_tables(y, pred, max_points=100, bins=30)["residual_histogram"]
    assert histogram["count"].sum() == 4321
    expected_counts, edges = np.histogram(y - pred, bins=30)
    np.testing.assert_array_equal(histogram["count"], expected_counts)
    np.testing.assert_allclose(histogram["residual"], (edges[:-1] + edges[1:]) / 2)


def test_residual_histogram_handles_constant_residuals() -> None:
    histogram = regression_tables(np.arange(10.0), np.arange(10.0), bins=5)["residual_histogram"]
    assert histogram["count"].sum() == 10
    assert np.isfinite(histogram["residual"]).all()


@pytest.mark.parametrize(("kwargs", "match"), [({"max_points": 1}, "max_points"), ({"bins": 0}, "bins")])
def test_table_arguments_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        regression_tables(np.ones(3), np.ones(3), **kwargs)


# --- figures ----------------------------------------------------------------------------------------


def _render(fig: Figure) -> None:
    """Actually draw, because many matplotlib errors only surface at render time."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def _scatter_points(fig: Figure) -> int:
    (collection,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    return len(collection.get_offsets())


@pytest.fixture
def evaluated() -> tuple[dict, dict[str, pd.DataFrame]]:
    y, pred = _random_case(400)
    return regression_metrics(y, pred), regression_tables(y, pred, max_points=250, bins=20)


def test_predicted_vs_actual_figure(evaluated: tuple[dict, dict[str, pd.DataFrame]]) -> None:
    metrics, tables = evaluated
    fig = regression_plots.predicted_vs_actual_figure(tables["predicted_vs_actual"], metrics)
    assert isinstance(fig, Figure)
    assert _scatter_points(fig) == 250
    ax = fig.axes[0]
    (diagonal,) = ax.get_lines()
    assert diagonal.get_label() == "y = x"
    np.testing.assert_allclose(diagonal.get_xdata(), diagonal.get_ydata())
    assert f"RMSE = {metrics['rmse']:.4g}" in ax.get_title()
    assert f"R² = {metrics['r2']:.3f}" in ax.get_title()
    _render(fig)


def test_predicted_vs_actual_figure_without_r2() -> None:
    tables = regression_tables([2.0], [1.5])
    fig = regression_plots.predicted_vs_actual_figure(
        tables["predicted_vs_actual"], regression_metrics([2.0], [1.5])
    )
    assert "R² undefined" in fig.axes[0].get_title()
    _render(fig)


def test_residuals_figure(evaluated: tuple[dict, dict[str, pd.DataFrame]]) -> None:
    _, tables = evaluated
    fig = regression_plots.residuals_figure(tables["residuals"])
    assert isinstance(fig, Figure)
    assert _scatter_points(fig) == 250
    (zero_line,) = fig.axes[0].get_lines()
    assert set(zero_line.get_ydata()) == {0.0}
    _render(fig)


def test_residual_histogram_figure(evaluated: tuple[dict, dict[str, pd.DataFrame]]) -> None:
    _, tables = evaluated
    fig = regression_plots.residual_histogram_figure(tables["residual_histogram"])
    assert isinstance(fig, Figure)
    bars = fig.axes[0].patches
    assert len(bars) == 20
    assert sum(bar.get_height() for bar in bars) == 400
    _render(fig)


def test_figures_reject_tables_missing_columns() -> None:
    wrong = pd.DataFrame({"x": [1.0]})
    with pytest.raises(ValueError, match="lacks columns"):
        regression_plots.predicted_vs_actual_figure(wrong, {})
    with pytest.raises(ValueError, match="lacks columns"):
        regression_plots.residuals_figure(wrong)
    with pytest.raises(ValueError, match="lacks columns"):
        regression_plots.residual_histogram_figure(wrong)


# --- conformal --------------------------------------------------------------------------------------


def test_conformal_interval_reaches_nominal_coverage_with_known_noise() -> None:
    """With Gaussian noise the ideal 90 % interval is ±1.645·sigma; split conformal should get close
    to that width and to 90 % coverage on fresh data without being told the noise is Gaussian."""
    rng = np.random.default_rng(42)
    sigma = 2.0
    y_cal, pred_cal = _linear_case(2000, sigma, rng)
    halfwidth = conformal_halfwidth(y_cal, pred_cal, coverage=0.9)
    assert halfwidth == pytest.approx(1.645 * sigma, rel=0.10)

    y_new, pred_new = _linear_case(50_000, sigma, rng)
    lower, upper = interval(pred_new, halfwidth)
    np.testing.assert_allclose(upper - lower, 2 * halfwidth)
    result = regression_metrics(y_new, pred_new, lower=lower, upper=upper, coverage=0.9)
    assert result["interval_coverage"] == pytest.approx(0.9, abs=0.02)
    assert result["interval_mean_width"] == pytest.approx(2 * halfwidth)
    assert result["interval_nominal_coverage"] == 0.9


def test_conformal_halfwidth_is_the_finite_sample_quantile() -> None:
    """Split conformal's h is the ceil((n + 1)·coverage)-th smallest |residual|."""
    rng = np.random.default_rng(3)
    y, pred = _linear_case(99, 1.0, rng)
    expected = np.sort(np.abs(y - pred))[75 - 1]  # ceil(100 * 0.75) = 75, exact in binary floating point
    assert conformal_halfwidth(y, pred, coverage=0.75) == pytest.approx(expected)


@pytest.mark.parametrize("coverage", [0.0, 1.0, -0.1, 1.5, "0.9", None])
def test_invalid_coverage_raises(coverage: object) -> None:
    y, pred = _linear_case(100, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="coverage must be a number strictly between 0 and 1"):
        conformal_halfwidth(y, pred, coverage=coverage)  # type: ignore[arg-type]


def test_too_few_calibration_points_raise() -> None:
    y, pred = _linear_case(19, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 20 calibration points"):
        conformal_halfwidth(y, pred, coverage=0.9)
    y, pred = _linear_case(60, 1.0, np.random.default_rng(0))
    assert min_calibration_points(0.99) == 99
    with pytest.raises(ValueError, match=r"at least 99 calibration points for coverage 0\.99, got 60"):
        conformal_halfwidth(y, pred, coverage=0.99)


def test_conformal_calibration_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="y_cal and pred_cal must have the same length"):
        conformal_halfwidth(np.ones(30), np.ones(29), coverage=0.9)
    with pytest.raises(ValueError, match="pred_cal must be finite"):
        conformal_halfwidth(np.ones(30), np.full(30, np.nan), coverage=0.9)


@pytest.mark.parametrize("halfwidth", [-1.0, float("inf"), float("nan")])
def test_interval_rejects_bad_halfwidth(halfwidth: float) -> None:
    with pytest.raises(ValueError, match="halfwidth"):
        interval(np.zeros(3), halfwidth)
