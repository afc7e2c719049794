"""Tabular preprocessing fitted on the training split only, with its state as plain JSON (never pickle).

The same `transform_tabular` serves training, evaluation and every prediction path (CLI, dashboard,
flows, the served model), so a model always sees its inputs prepared exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from torchcycle.errors import PredictionInputError

MISSING = "<missing>"
N_QUANTILES = 101
UNSEEN_CODE = 0  # category code 0 is "unseen / rare"; known levels start at 1


def fit_tabular(train: pd.DataFrame, numeric: list[str], categorical: list[str], cfg,
                dates: list[str] | None = None) -> dict[str, Any]:
    """Fit imputation, scaling and category vocabularies on the training rows only.

    Date columns become numeric features (year, month, day of week, day of year, days since the
    earliest training date), imputed and scaled like any number, never category levels.
    """
    from torchcycle.kinds.tabular.columns import date_feature_names, date_features, fit_date

    date_state = [fit_date(train[col], col) for col in dates or []]
    numbers = {col: train[col].astype("float64") for col in numeric}
    for spec in date_state:
        values = date_features(train[spec["name"]], spec)
        for j, name in enumerate(date_feature_names(spec)):
            numbers[name] = pd.Series(values[:, j], index=train.index)
    num_state = []
    for col, values in numbers.items():
        fill = {"median": values.median(), "mean": values.mean(), "zero": 0.0}[cfg.numeric_missing]
        fill = 0.0 if pd.isna(fill) else float(fill)
        filled = values.fillna(fill)
        spec = {"name": col, "fill": fill, "min": float(filled.min()), "max": float(filled.max())}
        if col not in numeric:
            spec["date"] = col.rsplit(".", 1)[0]
        if cfg.scaling == "quantile":
            spec["quantiles"] = np.quantile(filled.to_numpy(), np.linspace(0, 1, N_QUANTILES)).tolist()
            spec["center"], spec["scale"] = 0.0, 1.0
        else:
            spec["center"], spec["scale"] = _scaling(filled, cfg.scaling)
        num_state.append(spec)
    cat_state = [_fit_categorical(train[col], col, cfg) for col in categorical]
    return {"kind": "tabular", "numeric": num_state, "categorical": cat_state, "dates": date_state}


def _fit_categorical(column: pd.Series, name: str, cfg) -> dict[str, Any]:
    from torchcycle.kinds.tabular.columns import cap_levels

    values = column.astype("string")
    if cfg.categorical_missing == "category":
        fill = MISSING
    else:
        fill = str(values.mode(dropna=True).iloc[0]) if values.notna().any() else MISSING
    counts = values.fillna(fill).value_counts()
    counts.index = counts.index.astype(str)
    levels = cap_levels(counts, cfg.min_category_count, cfg.max_categories)
    return {"name": name, "fill": fill, "categories": levels, "levels_seen": len(counts)}


def input_columns(state: dict[str, Any]) -> list[str]:
    """The raw columns a caller sends, in the model's order: numbers, dates, categories."""
    return list(column_types(state))


def feature_names(state: dict[str, Any]) -> list[str]:
    """Names of the model's input features (x_num columns, then x_cat columns): the one place where
    column names come from the preprocessing state."""
    return [c["name"] for c in state["numeric"]] + [c["name"] for c in state["categorical"]]


def column_types(state: dict[str, Any]) -> dict[str, str]:
    """Raw column -> numeric | date | categorical, for schemas and forms: the one place where the raw
    column names and their roles come from the preprocessing state."""
    types = {c["name"]: "numeric" for c in state["numeric"] if "date" not in c}
    types.update({d["name"]: "date" for d in state.get("dates", [])})
    types.update({c["name"]: "categorical" for c in state["categorical"]})
    return types


def _scaling(values: pd.Series, how: str) -> tuple[float, float]:
    if how == "standard":
        center, scale = float(values.mean()), float(values.std(ddof=0))
    elif how == "robust":
        q1, q3 = values.quantile([0.25, 0.75])
        center, scale = float(values.median()), float(q3 - q1)
    elif how == "minmax":
        center, scale = float(values.min()), float(values.max() - values.min())
    else:
        center, scale = 0.0, 1.0
    return center, (scale if scale > 0 else 1.0)


def transform_tabular(df: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows -> (x_num float32 (N, n_num), x_cat int64 (N, n_cat)); unseen categories map to 0.

    Raises PredictionInputError for a missing column, a non-numeric value in a numeric column or an
    unreadable date, naming the column, so every consumer reports bad input the same way.
    """
    from torchcycle.kinds.tabular.columns import date_feature_names, date_features

    needed = input_columns(state)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise PredictionInputError(
            f"input is missing column(s) {missing}. Expected columns: {needed}."
        )
    n = len(df)
    derived: dict[str, np.ndarray] = {}
    for spec in state.get("dates", []):
        values = date_features(df[spec["name"]], spec)
        derived.update({name: values[:, j] for j, name in enumerate(date_feature_names(spec))})
    x_num = np.empty((n, len(state["numeric"])), dtype=np.float32)
    for j, spec in enumerate(state["numeric"]):
        values = derived[spec["name"]] if "date" in spec else _numbers(df[spec["name"]], spec["name"])
        values = np.where(np.isnan(values), spec["fill"], values)
        if "quantiles" in spec:
            values = quantile_normal(values, np.asarray(spec["quantiles"]))
        x_num[:, j] = ((values - spec["center"]) / spec["scale"]).astype(np.float32)
    x_cat = np.empty((n, len(state["categorical"])), dtype=np.int64)
    for j, spec in enumerate(state["categorical"]):
        lookup = {c: i + 1 for i, c in enumerate(spec["categories"])}
        values = df[spec["name"]].astype("string").str.strip().fillna(spec["fill"])
        x_cat[:, j] = values.map(lookup).fillna(UNSEEN_CODE).to_numpy(dtype=np.int64)
    return x_num, x_cat


def _numbers(raw: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna() & values.isna() & (raw.astype("string").str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PredictionInputError(
            f"column '{name}', row {i}: {raw.iloc[i]!r} is not a number ({int(bad.sum())} such value(s))."
        )
    return values.astype("float64").to_numpy()


def quantile_normal(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Map values through the training quantiles to a standard normal (robust to heavy skew).

    Interpolating forwards and backwards and averaging handles repeated quantiles (e.g. a column
    that is mostly zero), as scikit-learn's QuantileTransformer does.
    """
    from scipy.special import ndtri

    ranks = np.linspace(0, 1, len(quantiles))
    u = 0.5 * (np.interp(values, quantiles, ranks) - np.interp(-values, -quantiles[::-1], -ranks[::-1]))
    return ndtri(np.clip(u, 1e-7, 1 - 1e-7))


def cardinalities(state: dict[str, Any]) -> list[int]:
    """Embedding table sizes per categorical column (known levels + the unseen slot)."""
    return [len(c["categories"]) + 1 for c in state["categorical"]]


