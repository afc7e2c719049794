"""Date, ID-like and high-cardinality column handling for tabular data (torchcycle.kinds.tabular.columns)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest

from torchcycle.errors import PredictionInputError
from torchcycle.kinds.tabular import columns as cols


def _parse(values) -> pd.Series:
    """parse_dates with every warning turned into an error: the parser must stay quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cols.parse_dates(pd.Series(values))


# ---- parse_dates / unparseable ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01", "2024-03-01 00:00:00"),
        ("2024-03-01T12:30:00", "2024-03-01 12:30:00"),
        ("2024-03-01 12:30", "2024-03-01 12:30:00"),
        ("  2024-03-01  ", "2024-03-01 00:00:00"),
        ("2024-03-01T12:00:00+02:00", "2024-03-01 10:00:00"),  # tz-aware text becomes naive UTC
    ],
)
def test_parse_dates_reads_iso_strings(text, expected):
    parsed = _parse([text, None])
    assert parsed.dtype == "datetime64[ns]"
    assert parsed.iloc[0] == pd.Timestamp(expected)
    assert pd.isna(parsed.iloc[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("03/01/2024", "2024-03-01"),  # month first, as format='mixed' reads it
        ("3/1/2024 14:05", "2024-03-01 14:05"),
        ("March 1, 2024", "2024-03-01"),
        ("1 Mar 2024", "2024-03-01"),
        ("2024/03/01", "2024-03-01"),
    ],
)
def test_parse_dates_reads_mixed_formats(text, expected):
    # mixed with an ISO value in the same column, which must not pin the whole column to one format
    parsed = _parse(pd.Series(["2024-01-15", text], dtype=object))
    assert parsed.iloc[0] == pd.Timestamp("2024-01-15")
    assert parsed.iloc[1] == pd.Timestamp(expected)


def test_parse_dates_keeps_datetime_columns_and_makes_tz_aware_naive_utc():
    naive = pd.Series(pd.to_datetime(["2024-02-29 06:00", None]).as_unit("s"), index=[10, 11], name="when")
    parsed = _parse(naive)
    assert parsed.dtype == "datetime64[ns]"
    assert list(parsed.index) == [10, 11] and parsed.name == "when"
    assert parsed.iloc[0] == pd.Timestamp("2024-02-29 06:00") and pd.isna(parsed.iloc[1])

    aware = pd.Series(pd.to_datetime(["2024-07-01 12:00"]).tz_localize("Europe/Berlin"))
    parsed = _parse(aware)
    assert parsed.dtype == "datetime64[ns]"
    assert parsed.iloc[0] == pd.Timestamp("2024-07-01 10:00")  # CEST is UTC+2


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([20240301, 20240302, 1_700_000_000], dtype="int64"),
        pd.Series([2024.0, 1.5, np.nan], dtype="float64"),
        pd.Series([True, False]),
        pd.Series(["20240301", "2024", "12.5", "-3"], dtype=object),  # numbers written as text
    ],
)
def test_numbers_are_never_dates(values):
    parsed = _parse(values)
    assert parsed.dtype == "datetime64[ns]"
    assert parsed.isna().all()


def test_parse_dates_rejects_text_that_only_dateutil_would_call_a_date():
    # these would otherwise become "today at 12:30", "now", or year 1 depending on when they are parsed
    assert _parse(["12:30", "today", "now", "March", "1/2", "abc", "case-00001"]).isna().all()


def test_unparseable_flags_present_bad_values_but_not_missing_or_blank():
    values = pd.Series(["2024-01-01", "not a date", None, "   ", "", "2024-13-45", 7], dtype=object)
    assert cols.unparseable(values).tolist() == [False, True, False, False, False, True, True]


# ---- detect_dates ----------------------------------------------------------------------------------


def _mixed_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    signup = days.strftime("%Y-%m-%d").to_series(index=range(n)).astype(object)
    signup.iloc[3] = None  # missing values do not count against a date column
    return pd.DataFrame(
        {
            "signup": signup,
            "plan": rng.choice(["basic", "pro", "team"], n),
            "amount": rng.normal(100, 20, n),
            "visits": rng.integers(0, 30, n),
            "stamp": pd.Series(days),
            "few": ["2024-01-01", "2024-01-02", "2024-01-03", None] + [None] * (n - 4),
        }
    )


def test_detect_dates_picks_date_columns_only_in_input_order():
    df = _mixed_frame()
    found = cols.detect_dates(df, ["plan", "stamp", "amount", "signup", "visits", "few"])
    assert found == ["stamp", "signup"]


def test_detect_dates_requires_min_share_of_values_to_parse():
    values = [f"2024-01-{d:02d}" for d in range(1, 20)] + ["n/a"]  # 95% parse
    df = pd.DataFrame({"d": values})
    assert cols.detect_dates(df, ["d"], min_share=0.95) == ["d"]
    assert cols.detect_dates(df, ["d"], min_share=0.99) == []


# ---- fit_date / date_features ----------------------------------------------------------------------


def test_fit_date_remembers_earliest_training_day():
    spec = cols.fit_date(pd.Series(["2024-03-05 17:45", "2024-01-01T08:00:00", None, "2024-02-01"]), "signup")
    assert spec == {"name": "signup", "reference": "2024-01-01", "features": list(cols.DATE_FEATURES)}
    assert cols.fit_date(pd.Series([None, None], dtype=object), "x")["reference"] == "1970-01-01"


def test_date_features_values_for_known_dates():
    spec = {"name": "signup", "reference": "2024-01-01", "features": list(cols.DATE_FEATURES)}
    values = pd.Series(["2024-02-29", "2023-12-31T18:00:00", None, ""], index=[7, 3, 9, 1])
    out = cols.date_features(values, spec)
    assert out.dtype == np.float64 and out.shape == (4, 5)
    np.testing.assert_array_equal(out[0], [2024, 2, 3, 60, 59])  # leap day, a Thursday
    np.testing.assert_allclose(out[1], [2023, 12, 6, 365, -0.25])  # Sunday, fractional days before ref
    assert np.isnan(out[2]).all() and np.isnan(out[3]).all()
    assert cols.date_feature_names(spec) == [
        "signup.year",
        "signup.month",
        "signup.day_of_week",
        "signup.day_of_year",
        "signup.days_since_reference",
    ]


def test_date_features_rejects_unparseable_value_naming_column_row_and_fix():
    spec = {"name": "signup", "reference": "2024-01-01", "features": list(cols.DATE_FEATURES)}
    values = pd.Series(["2024-01-02", None, "next tuesday", "2024-99-99"], index=[100, 101, 102, 103])
    with pytest.raises(PredictionInputError) as err:
        cols.date_features(values, spec)
    message = str(err.value)
    assert "'signup'" in message
    assert "row 2" in message  # the position, not the index label 102
    assert "'next tuesday'" in message
    assert "2 such value" in message
    assert "2024-03-01" in message  # says what a good value looks like


def test_date_features_is_vectorised_on_100k_iso_strings():
    rng = np.random.default_rng(1)
    stamps = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 300_000_000, 100_000), unit="s")
    values = pd.Series(stamps.strftime("%Y-%m-%dT%H:%M:%S"), dtype=object)
    spec = cols.fit_date(values, "t")
    start = time.perf_counter()
    out = cols.date_features(values, spec)
    elapsed = time.perf_counter() - start
    assert out.shape == (100_000, 5) and not np.isnan(out).any()
    assert elapsed < 2.0, f"date_features took {elapsed:.2f}s on 100,000 ISO strings"


# ---- detect_id_like --------------------------------------------------------------------------------


def _id_frame(n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    case = [f"case-{i:05d}" for i in range(1, n + 1)]
    case[10] = case[11]  # near-unique, not perfectly unique
    case[20] = None
    return pd.DataFrame(
        {
            "case": case,
            "row": np.arange(1, n + 1),
            "customer_id": rng.permutation(np.arange(100_000, 100_000 + n)),
            "CustomerID": rng.permutation(n).astype("float64"),  # whole-number floats with an id name
            "income": rng.permutation(np.arange(20_000, 20_000 + n)),  # shuffled, near-unique, not an id
            "weight": rng.normal(70, 10, n),  # measurements: fractional floats
            "price": np.sort(rng.uniform(1, 500, n)),  # even sorted and unique, a measurement stays one
            "colour": rng.choice(["red", "green", "blue"], n),
            "visits": rng.integers(0, 40, n),  # a count with repeats
            "birth": (pd.Timestamp("1940-01-01") + pd.to_timedelta(rng.permutation(n * 3)[:n], unit="D"))
            .strftime("%Y-%m-%d")
            .to_numpy(dtype=object),
        }
    )


def test_detect_id_like_flags_identifiers_with_reasons():
    df = _id_frame()
    found = cols.detect_id_like(df, list(df.columns))
    assert set(found) == {"case", "row", "customer_id", "CustomerID", "birth"}
    assert found["case"] == "near-unique text: 4,998 distinct values in 4,999 rows (100%)"
    assert "sorted" in found["row"] and "5,000 distinct values in 5,000 rows (100%)" in found["row"]
    assert "named like an identifier" in found["customer_id"]
    assert "date" in found["birth"]


@pytest.mark.parametrize("column", ["income", "weight", "price", "colour", "visits"])
def test_detect_id_like_leaves_descriptive_columns_alone(column):
    df = _id_frame()
    assert cols.detect_id_like(df, [column]) == {}


def test_detect_id_like_needs_enough_rows():
    df = _id_frame(49)
    assert cols.detect_id_like(df, list(df.columns)) == {}
    assert cols.detect_id_like(df, ["row"], min_rows=10) != {}


# ---- cap_levels ------------------------------------------------------------------------------------


def test_cap_levels_honours_min_count_and_returns_sorted_names():
    counts = pd.Series({"zebra": 10, "apple": 3, "mango": 1, "kiwi": 2})
    assert cols.cap_levels(counts) == ["apple", "kiwi", "mango", "zebra"]
    assert cols.cap_levels(counts, min_count=2) == ["apple", "kiwi", "zebra"]
    assert cols.cap_levels(counts, min_count=11) == []


def test_cap_levels_keeps_most_frequent_with_deterministic_ties():
    counts = pd.Series({"d": 5, "c": 5, "b": 5, "a": 1, "e": 9})
    assert cols.cap_levels(counts, max_categories=2) == ["b", "e"]  # e, then b wins the 5-way tie by name
    shuffled = counts.sample(frac=1.0, random_state=3)
    assert cols.cap_levels(shuffled, max_categories=3) == ["b", "c", "e"]
    assert cols.cap_levels(counts, min_count=2, max_categories=10) == ["b", "c", "d", "e"]


def test_cap_levels_reads_levels_as_text():
    counts = pd.Series([4, 2, 7], index=[10, 2, 33])
    assert cols.cap_levels(counts, max_categories=2) == ["10", "33"]


def test_a_few_iso_values_read_the_same_as_a_large_batch() -> None:
    """Single requests take a fast path for ISO text; it must agree with the general parser."""
    values = pd.Series(["2024-02-29", "2024-03-01T12:30:00", None, "2024-03-01 12:30",
                        "2024-03-01T12:30:00+02:00", "1999-12-31T23:59:59Z"])
    spec = {"name": "d", "reference": "2023-01-05"}
    few = cols.date_features(values, spec)
    many = cols.date_features(pd.concat([values] * 10, ignore_index=True), spec)[: len(values)]
    np.testing.assert_allclose(few, many, equal_nan=True)
    with pytest.raises(PredictionInputError, match="column 'd', row 1"):
        cols.date_features(pd.Series(["2024-01-01", "2024-13-45"]), spec)
