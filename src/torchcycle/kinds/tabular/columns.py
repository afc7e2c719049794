"""Column roles that plain numeric/categorical preprocessing gets wrong: dates, row identifiers, huge vocabularies.

A date one-hot encoded is a new category every day, and an ID column is memorised rather than learned
from, so both need spotting before a model is fitted. Everything here is a pure function over pandas
values (no I/O) so the same code serves training, evaluation and every prediction path.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from torchcycle.errors import PredictionInputError

DATE_FEATURES = ("year", "month", "day_of_week", "day_of_year", "days_since_reference")

# A date written as text carries a year: four digits ('2024-03-01', 'March 1, 2024') or a d/m/yy
# triple ('3/1/24'). Without this, dateutil turns '12:30', 'today' or 'March' into dates that
# depend on the day they were parsed, or into year 1.
_DATE_SHAPE = r"\d{4}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2}"
# A number written as text ('2024', '20240301', '12.5') is still a number, just as a numeric column is.
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# Vectorised formats tried before format='mixed', which falls back to dateutil row by row (~20 µs a row).
_FAST_FORMATS = ("ISO8601", "%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
_ID_NAME = re.compile(r"(^|[_\s-])(id|uuid|key|number|no|code)$", re.IGNORECASE)
_DATE_SHARE = 0.95  # share of present values that must parse for a text column to count as dates
_INTEGER_UNIQUE_SHARE = 0.99
_MIN_DATE_VALUES = 5
_SAMPLE = 1000  # values parsed first when deciding whether a column holds dates


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)


def _naive_ns(parsed: pd.Series) -> pd.Series:
    """UTC-naive datetime64[ns]; values outside the nanosecond range (e.g. year 1) become NaT."""
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    outside = parsed.notna() & ((parsed < pd.Timestamp.min) | (parsed > pd.Timestamp.max))
    if outside.any():
        parsed = parsed.mask(outside)
    return parsed.astype("datetime64[ns]")


def _parse_text(text: pd.Series) -> pd.Series:
    """Parse each distinct string once, vectorised formats first, and map the results back to the rows."""
    stripped = text.astype(object).where(text.notna()).str.strip()
    distinct = pd.Series(pd.unique(stripped.dropna()), dtype=object)
    candidates = distinct[distinct.str.contains(_DATE_SHAPE) & ~distinct.str.fullmatch(_NUMBER)]
    parsed = pd.Series(pd.NaT, index=candidates.index, dtype="datetime64[ns]")
    for fmt in (*_FAST_FORMATS, "mixed"):
        todo = parsed.isna()
        if not todo.any():
            break
        attempt = pd.to_datetime(candidates[todo], format=fmt, errors="coerce", utc=True)
        parsed[todo] = _naive_ns(attempt)
    positions = pd.Index(candidates.to_numpy(), dtype=object).get_indexer(stripped)
    out = np.full(len(stripped), np.datetime64("NaT"), dtype="datetime64[ns]")
    hit = positions >= 0
    out[hit] = parsed.to_numpy()[positions[hit]]
    return pd.Series(out, index=text.index, name=text.name)


def parse_dates(values: pd.Series) -> pd.Series:
    """Read a column as timezone-naive datetime64[ns] (UTC), NaT where missing or unreadable.

    One parser for training and prediction, so a date means the same thing in both. Numbers are
    never dates: an integer like 20240301 is far more often an amount or an ID than a day.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _naive_ns(values)
    if not _is_text(values):
        return pd.Series(pd.NaT, index=values.index, name=values.name, dtype="datetime64[ns]")
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        out = _parse_text(values)
    elif kind in ("datetime", "datetime64", "date"):
        out = _naive_ns(pd.to_datetime(values, errors="coerce", utc=True, format="mixed"))
    else:  # mixed object column: strings and datetimes are read, numbers, booleans and the rest are not
        is_str = values.map(lambda v: isinstance(v, str))
        is_time = values.map(lambda v: isinstance(v, pd.Timestamp | np.datetime64) or hasattr(v, "isoformat"))
        out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
        if is_str.any():
            out[is_str] = _parse_text(values[is_str])
        if is_time.any():
            out[is_time] = _naive_ns(
                pd.to_datetime(values[is_time], errors="coerce", utc=True, format="mixed")
            )
    out.index, out.name = values.index, values.name
    return out


def _present(values: pd.Series) -> pd.Series:
    """Non-null and, for text, non-blank: blank cells are how CSVs spell 'missing'."""
    present = values.notna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if not _is_text(values):
        return present
    if pd.api.types.infer_dtype(values, skipna=True) == "string":
        blank = values.str.strip().eq("")
    else:
        blank = values.map(lambda v: isinstance(v, str) and not v.strip(), na_action="ignore")
    return present & ~blank.to_numpy(dtype=bool, na_value=False)


def unparseable(values: pd.Series) -> pd.Series:
    """Mask of present values that parse_dates cannot read, so a bad cell is reported, not silently NaN."""
    return _present(values) & parse_dates(values).isna()


def _date_share(values: pd.Series, min_share: float) -> float:
    """Share of present values that parse as dates; an even sample first rules out most text cheaply."""
    present = values[_present(values)]
    if present.empty:
        return 0.0
    if len(present) > _SAMPLE:
        sample = present.iloc[np.linspace(0, len(present) - 1, _SAMPLE).astype(int)]
        share = float(parse_dates(sample).notna().mean())
        if share < min_share / 2:
            return share
    return float(parse_dates(present).notna().mean())


def detect_dates(df: pd.DataFrame, candidates: list[str], min_share: float = 0.95) -> list[str]:
    """Candidate columns that hold dates, in input order; used to turn them into features, not categories.

    Numeric columns are never dates, and a handful of values is too little evidence to call one.
    """
    found = []
    for col in candidates:
        values = df[col]
        if int(_present(values).sum()) < _MIN_DATE_VALUES:
            continue
        if pd.api.types.is_datetime64_any_dtype(values.dtype) or (
            _is_text(values) and _date_share(values, min_share) >= min_share
        ):
            found.append(col)
    return found


def fit_date(values: pd.Series, name: str) -> dict:
    """Remember the earliest training day, so 'days since' means the same at training and prediction."""
    earliest = parse_dates(values).min()
    reference = "1970-01-01" if pd.isna(earliest) else earliest.strftime("%Y-%m-%d")
    return {"name": name, "reference": reference, "features": list(DATE_FEATURES)}


_SMALL = 16  # up to this many values, plain ISO text is read without pandas' machinery (single requests)


def _few_iso(values: pd.Series) -> list | None:
    """A handful of ISO-8601 strings or missing values as naive UTC datetimes, or None to take the
    general path. Serving one record at a time would otherwise spend milliseconds in format detection."""
    from datetime import UTC, datetime

    if len(values) > _SMALL:
        return None
    out = []
    for v in values.tolist():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
            continue
        if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+)?(Z|[+-]\d{2}:?\d{2})?", v.strip()):
            return None
        try:
            d = datetime.fromisoformat(v.strip())
        except ValueError:
            return None
        out.append(d.astimezone(UTC).replace(tzinfo=None) if d.tzinfo else d)
    return out


def date_features(values: pd.Series, spec: dict) -> np.ndarray:
    """float64 (N, 5) in DATE_FEATURES order; NaN where missing, an error where a value is not a date.

    A silently-NaN typo would be imputed and give a confident wrong prediction, so bad input fails.
    """
    few = _few_iso(values)
    if few is not None:
        from datetime import datetime

        reference = datetime.fromisoformat(spec["reference"])
        rows = [[np.nan] * len(DATE_FEATURES) if d is None else
                [d.year, d.month, d.weekday(), d.timetuple().tm_yday, (d - reference).total_seconds() / 86400.0]
                for d in few]
        return np.asarray(rows, dtype=np.float64).reshape(len(values), len(DATE_FEATURES))
    dates = parse_dates(values)
    bad = (_present(values) & dates.isna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PredictionInputError(
            f"column '{spec['name']}', row {row}: {values.iloc[row]!r} is not a date "
            f"({int(bad.sum())} such value(s)). Write dates like '2024-03-01' or '2024-03-01T12:30:00', "
            f"or leave the cell empty if the date is unknown."
        )
    dt = dates.dt
    since = (dates - pd.Timestamp(spec["reference"])) / pd.Timedelta(days=1)
    columns = [dt.year, dt.month, dt.day_of_week, dt.day_of_year, since]
    return np.column_stack([c.to_numpy(dtype="float64", na_value=np.nan) for c in columns]).reshape(
        len(values), len(DATE_FEATURES)
    )


def date_feature_names(spec: dict) -> list[str]:
    """Feature names for one date column, aligned with the columns of date_features."""
    return [f"{spec['name']}.{feature}" for feature in DATE_FEATURES]


def _looks_like_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name)) or name.lower().endswith("id")


def _whole_numbers(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        return False
    if pd.api.types.is_integer_dtype(values.dtype):
        return True
    floats = values.to_numpy(dtype="float64", na_value=np.nan)
    return bool(np.isfinite(floats).all() and (floats == np.round(floats)).all())


def detect_id_like(
    df: pd.DataFrame, columns: list[str], *, min_rows: int = 50, unique_share: float = 0.95
) -> dict[str, str]:
    """Columns that identify rows rather than describe them, with the reason in words.

    A model fed an ID learns the training rows by heart and nothing that carries to new rows. Integers
    need more than uniqueness (a shuffled 'income' is near-unique too): sorted order or an ID-like name.
    """
    if len(df) < min_rows:
        return {}
    found: dict[str, str] = {}
    for col in columns:
        values = df[col]
        present = values[_present(values)]
        n = len(present)
        if n == 0:
            continue
        distinct = int(present.nunique())
        share = distinct / n
        counted = f"{distinct:,} distinct values in {n:,} rows ({share:.0%})"
        if pd.api.types.is_datetime64_any_dtype(values.dtype) or (
            _is_text(values) and _date_share(present, _DATE_SHARE) >= _DATE_SHARE
        ):
            if share >= unique_share:
                found[col] = (
                    f"near-unique dates: {counted}; a date this specific (like a date of birth) singles out a row"
                )
        elif _is_text(values) or isinstance(values.dtype, pd.CategoricalDtype):
            if share >= unique_share:
                found[col] = f"near-unique text: {counted}"
        elif _whole_numbers(present) and share >= _INTEGER_UNIQUE_SHARE:
            if present.is_monotonic_increasing or present.is_monotonic_decreasing:
                found[col] = f"near-unique integers in sorted order, like a row number: {counted}"
            elif _looks_like_id_name(str(col)):
                found[col] = f"near-unique integers in a column named like an identifier: {counted}"
    return found


def cap_levels(counts: pd.Series, min_count: int = 1, max_categories: int | None = None) -> list[str]:
    """Levels a categorical column keeps, sorted by name; the rest share the 'unseen/rare' code.

    Thousands of levels seen once or twice cost embedding rows the model cannot learn; ties are broken
    by name so the same data always yields the same vocabulary.
    """
    if max_categories is not None and max_categories < 0:
        raise ValueError(f"max_categories must be >= 0 or None, got {max_categories}")
    totals = counts.groupby(counts.index.astype(str)).sum()
    kept = [(int(c), level) for level, c in totals.items() if c >= min_count]
    kept.sort(key=lambda item: (-item[0], item[1]))
    if max_categories is not None:
        kept = kept[:max_categories]
    return sorted(level for _, level in kept)
