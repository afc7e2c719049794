"""Preprocessing fitted on the training rows only, and the transforms every prediction path shares."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from torchcycle.config import TabularPreprocess
from torchcycle.data.splits import stratified_split
from torchcycle.errors import PredictionInputError
from torchcycle.kinds.image import preprocess as ip
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.targets.classification import class_order, encode_labels


# --------------------------------------------------------------------------- helpers
def train_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "age": [20.0, 30.0, np.nan, 40.0, 90.0],
        "hours": [10.0, 20.0, 30.0, 40.0, 50.0],
        "city": pd.array(["rome", "paris", None, "rome", "oslo"], dtype="string"),
    })  # fmt: skip


def other_frame() -> pd.DataFrame:
    """Rows whose values (and so whose own statistics) are far from the training rows."""
    return pd.DataFrame({
        "age": [1000.0, np.nan, -50.0],
        "hours": [0.0, 100.0, 7.0],
        "city": ["paris", "tokyo", None],
    })  # fmt: skip


def fit(df: pd.DataFrame, **cfg) -> dict:
    return pp.fit_tabular(df, ["age", "hours"], ["city"], TabularPreprocess(**cfg))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def numeric_spec(state: dict, name: str) -> dict:
    return next(c for c in state["numeric"] if c["name"] == name)


# --------------------------------------------------------------------------- tabular: fitting
def test_standard_scaling_uses_training_statistics_only():
    train = train_frame()
    ages = train["age"].to_numpy()
    median = np.nanmedian(ages)
    filled = np.where(np.isnan(ages), median, ages)
    mean, std = filled.mean(), filled.std()  # population std of the imputed training column

    state = fit(train)
    x_num, _ = pp.transform_tabular(other_frame(), state)

    spec = numeric_spec(state, "age")
    assert spec["fill"] == pytest.approx(median)
    assert spec["center"] == pytest.approx(mean)
    assert spec["scale"] == pytest.approx(std)
    expected = (np.array([1000.0, median, -50.0]) - mean) / std
    np.testing.assert_allclose(x_num[:, 0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "scaling, center_scale",
    [
        ("robust", lambda v: (np.median(v), np.percentile(v, 75) - np.percentile(v, 25))),
        ("minmax", lambda v: (v.min(), v.max() - v.min())),
        ("none", lambda v: (0.0, 1.0)),
    ],
)
def test_other_scalings_match_numpy(scaling, center_scale):
    hours = train_frame()["hours"].to_numpy()
    center, scale = center_scale(hours)

    state = fit(train_frame(), scaling=scaling)
    x_num, _ = pp.transform_tabular(other_frame(), state)

    np.testing.assert_allclose(x_num[:, 1], (np.array([0.0, 100.0, 7.0]) - center) / scale, rtol=1e-6)


def test_quantile_scaling_matches_sklearn_and_makes_skewed_columns_normal():
    """`scaling: quantile` maps each number through its training quantiles to a standard normal, as
    scikit-learn's QuantileTransformer does (the state keeps 101 quantiles, no centre or scale)."""
    from scipy.special import ndtri
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.default_rng(0)
    income = rng.lognormal(10, 1.5, 2000)  # heavily skewed
    income[rng.random(2000) < 0.3] = 0.0  # and mostly-zero, like capital gains: repeated quantiles
    train = pd.DataFrame({"age": rng.normal(40, 12, 2000), "hours": income, "city": ["a", "b"] * 1000})
    state = fit(train, scaling="quantile")
    spec = numeric_spec(state, "hours")
    assert len(spec["quantiles"]) == pp.N_QUANTILES and (spec["center"], spec["scale"]) == (0.0, 1.0)

    reference = QuantileTransformer(n_quantiles=pp.N_QUANTILES, output_distribution="normal").fit(
        train[["age", "hours"]].to_numpy())
    new = pd.DataFrame({"age": [-50.0, 10.0, 40.0, 75.0, 500.0], "hours": [0.0, 1e3, 2e4, 1e6, 1e9],
                        "city": ["a"] * 5})
    x_train, _ = pp.transform_tabular(train, state)
    x_new, _ = pp.transform_tabular(new, state)
    zero = train["hours"].to_numpy() == 0
    # scikit-learn sends every value equal to the training minimum to the bound (-5.2); here the tied
    # zeros get the middle of their share of the distribution instead. Everything else agrees.
    np.testing.assert_allclose(x_new[:, 0], reference.transform(new[["age", "hours"]].to_numpy())[:, 0], atol=2e-3)
    np.testing.assert_allclose(x_new[1:, 1], reference.transform(new[["age", "hours"]].to_numpy())[1:, 1], atol=2e-3)
    np.testing.assert_allclose(x_train[~zero], reference.transform(train[["age", "hours"]].to_numpy())[~zero],
                               atol=2e-3)
    assert x_new[0, 1] == pytest.approx(ndtri(zero.mean() / 2), abs=0.05)
    np.testing.assert_allclose(x_train[zero, 1], x_new[0, 1])
    assert abs(float(x_train[:, 0].mean())) < 0.05 and abs(float(x_train[:, 0].std()) - 1) < 0.05
    assert np.isfinite(x_new).all() and np.all(np.diff(x_new, axis=0) > 0)  # monotone, outliers clipped
    assert x_new[-1].max() == pytest.approx(ndtri(1 - 1e-7))


def test_constant_column_gets_unit_scale_not_division_by_zero():
    train = pd.DataFrame({"age": [5.0, 5.0, 5.0], "hours": [1.0, 2.0, 3.0], "city": ["a", "b", "a"]})

    x_num, _ = pp.transform_tabular(pd.DataFrame({"age": [7.0], "hours": [2.0], "city": ["a"]}), fit(train))

    assert np.isfinite(x_num).all()
    assert x_num[0, 0] == pytest.approx(2.0)


def test_numeric_missing_filled_with_train_median():
    state = fit(train_frame(), scaling="none")
    row = pd.DataFrame({"age": [np.nan], "hours": [np.nan], "city": ["rome"]})

    x_num, _ = pp.transform_tabular(row, state)

    assert x_num[0, 0] == pytest.approx(np.nanmedian(train_frame()["age"]))
    assert x_num[0, 1] == pytest.approx(30.0)


def test_unseen_category_is_code_zero_and_missing_is_its_own_level():
    state = fit(train_frame(), categorical_missing="category")
    levels = sorted(["rome", "paris", "oslo", pp.MISSING])
    code = {level: i + 1 for i, level in enumerate(levels)}

    _, x_cat = pp.transform_tabular(other_frame(), state)

    assert state["categorical"][0]["categories"] == levels
    assert x_cat[:, 0].tolist() == [code["paris"], pp.UNSEEN_CODE, code[pp.MISSING]]
    assert pp.cardinalities(state) == [len(levels) + 1]


def test_most_frequent_policy_fills_missing_category_with_the_mode():
    state = fit(train_frame(), categorical_missing="most_frequent")
    levels = state["categorical"][0]["categories"]

    _, x_cat = pp.transform_tabular(other_frame(), state)

    assert pp.MISSING not in levels
    assert x_cat[2, 0] == levels.index("rome") + 1


def test_rare_levels_are_treated_as_unseen():
    state = fit(train_frame(), min_category_count=2)

    _, x_cat = pp.transform_tabular(
        pd.DataFrame({"age": [1.0, 1.0], "hours": [1.0, 1.0], "city": ["rome", "oslo"]}), state
    )

    assert state["categorical"][0]["categories"] == ["rome"]
    assert x_cat[:, 0].tolist() == [1, pp.UNSEEN_CODE]


def test_state_survives_a_json_round_trip():
    state = fit(train_frame())
    reloaded = json.loads(json.dumps(state))

    a_num, a_cat = pp.transform_tabular(other_frame(), state)
    b_num, b_cat = pp.transform_tabular(other_frame(), reloaded)

    np.testing.assert_array_equal(a_num, b_num)
    np.testing.assert_array_equal(a_cat, b_cat)
    assert a_num.dtype == np.float32 and a_cat.dtype == np.int64


# --------------------------------------------------------------------------- tabular: bad input
def test_transform_names_a_missing_column():
    rows = other_frame().drop(columns=["hours"])

    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['hours'\]"):
        pp.transform_tabular(rows, fit(train_frame()))


def test_transform_names_a_non_numeric_value():
    rows = pd.DataFrame({"age": ["31", "thirty", "40"], "hours": [1, 2, 3], "city": ["rome"] * 3})

    with pytest.raises(PredictionInputError) as info:
        pp.transform_tabular(rows, fit(train_frame()))
    message = str(info.value)
    assert "column 'age'" in message
    assert "row 1" in message
    assert "'thirty' is not a number" in message


def test_numeric_strings_and_blanks_are_accepted():
    state = fit(train_frame(), scaling="none")
    rows = pd.DataFrame({"age": ["31", " "], "hours": [1, 2], "city": ["rome", "rome"]})

    x_num, _ = pp.transform_tabular(rows, state)

    assert x_num[:, 0].tolist() == [31.0, pytest.approx(np.nanmedian(train_frame()["age"]))]


# --------------------------------------------------------------------------- splits and labels
def test_stratified_split_keeps_class_ratios():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)

    kept, held = stratified_split(y, test_size=0.2, seed=0)

    assert len(held) == 20
    assert np.bincount(y[held]).tolist() == [12, 6, 2]
    assert np.bincount(y[kept]).tolist() == [48, 24, 8]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))


def test_stratified_split_is_deterministic_for_a_seed():
    y = np.random.default_rng(0).integers(0, 3, size=200)

    first = stratified_split(y, 0.25, seed=7)
    again = stratified_split(y, 0.25, seed=7)
    other = stratified_split(y, 0.25, seed=8)

    assert np.array_equal(first[1], again[1])
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])


def test_class_order_puts_positive_class_last():
    labels = pd.Series([">50K", "<=50K", ">50K"])

    assert class_order(labels, ">50K") == ["<=50K", ">50K"]
    assert class_order(["yes", "no"], "no") == ["yes", "no"]
    assert class_order(["yes", "no"]) == ["no", "yes"]


def test_class_order_ignores_positive_class_when_not_binary_or_absent():
    assert class_order(["b", "a", "c"], "a") == ["a", "b", "c"]
    assert class_order(["b", "a"], "z") == ["a", "b"]


def test_class_order_sorts_digit_labels_numerically():
    assert class_order(["10", "9", "2", "0"]) == ["0", "2", "9", "10"]


def test_encode_labels_follows_class_order():
    classes = class_order(["yes", "no", "yes"], "no")

    assert encode_labels(["no", "yes", "yes"], classes).tolist() == [1, 0, 0]


# --------------------------------------------------------------------------- images
def test_load_image_rgb_to_grey_at_requested_size():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)

    out = ip.load_image(png_bytes(rgb), size=(5, 6), channels=1)

    assert out.shape == (1, 5, 6)
    assert out.dtype == np.uint8


def test_load_image_keeps_pixels_when_size_matches():
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    colour = ip.load_image(png_bytes(rgb), size=(7, 9), channels=3)
    grey = ip.load_image(png_bytes(rgb), size=(7, 9), channels=1)

    np.testing.assert_array_equal(colour, rgb.transpose(2, 0, 1))
    assert np.abs(grey[0].astype(np.float64) - luma).max() <= 1.0


def test_load_image_grey_to_three_channels_repeats_the_plane(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    path = tmp_path / "digit.png"
    path.write_bytes(png_bytes(grey))

    out = ip.load_image(path, size=(6, 8), channels=3)

    assert out.shape == (3, 6, 8)
    for c in range(3):
        np.testing.assert_array_equal(out[c], grey)


def test_load_image_resizes_a_flat_colour_without_changing_it():
    flat = np.full((40, 30, 3), (200, 100, 50), dtype=np.uint8)

    out = ip.load_image(png_bytes(flat), size=(8, 12), channels=3)

    assert out.shape == (3, 8, 12)
    assert out[:, 0, 0].tolist() == [200, 100, 50]
    assert (out == out[:, :1, :1]).all()


def test_load_image_rejects_corrupt_bytes():
    with pytest.raises(PredictionInputError, match="uploaded bytes: cannot be decoded"):
        ip.load_image(b"\x89PNG\r\n\x1a\n definitely not an image", size=(4, 4), channels=1)


def test_load_image_rejects_corrupt_file_naming_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"garbage")

    with pytest.raises(PredictionInputError, match=r"broken\.png: cannot be decoded"):
        ip.load_image(path, size=(4, 4), channels=1)


def test_fit_image_normalizer_matches_numpy():
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    scaled = x / 255.0
    expected_mean = [scaled[:, c].mean() for c in range(3)]
    expected_std = [scaled[:, c].std() for c in range(3)]

    state = ip.fit_image_normalizer(x, "dataset", (5, 4), 3)

    np.testing.assert_allclose(state["mean"], expected_mean, rtol=1e-12)
    np.testing.assert_allclose(state["std"], expected_std, rtol=1e-12)
    assert state["size"] == [5, 4] and state["channels"] == 3


def test_unit_normalizer_only_scales_to_zero_one():
    x = np.full((2, 1, 3, 3), 255, dtype=np.uint8)

    state = ip.fit_image_normalizer(x, "unit", (3, 3), 1)

    assert (state["mean"], state["std"]) == ([0.0], [1.0])
    np.testing.assert_array_equal(ip.transform_images(x, state), np.ones_like(x, dtype=np.float32))


def test_constant_images_do_not_divide_by_zero():
    x = np.full((3, 1, 4, 4), 17, dtype=np.uint8)

    state = ip.fit_image_normalizer(x, "dataset", (4, 4), 1)
    out = ip.transform_images(x, state)

    assert state["std"][0] > 0
    assert np.isfinite(out).all()


def test_transform_images_normalises_per_channel():
    x = np.random.default_rng(2).integers(0, 256, (4, 3, 2, 2), dtype=np.uint8)
    state = ip.fit_image_normalizer(x, "dataset", (2, 2), 3)

    out = ip.transform_images(x, state)

    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (2, 3, 4, 5), (3, 4, 4)])
def test_transform_images_rejects_wrong_shape_with_expected_shape(shape):
    state = ip.fit_image_normalizer(np.zeros((1, 3, 4, 4), np.uint8), "unit", (4, 4), 3)

    with pytest.raises(PredictionInputError) as info:
        ip.transform_images(np.zeros(shape, np.uint8), state)
    assert "(channels, height, width) = (3, 4, 4)" in str(info.value)
