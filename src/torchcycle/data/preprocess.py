"""Preprocessing fitted on the training split only, with its state as plain JSON (never pickle).

The same `transform_*` functions serve training, evaluation and every prediction path (CLI, dashboard,
flows), so a model always sees its inputs prepared exactly as it was trained.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.errors import PredictionInputError

MISSING = "<missing>"
N_QUANTILES = 101
UNSEEN_CODE = 0  # category code 0 is "unseen / rare"; known levels start at 1


# --------------------------------------------------------------------------- splits
def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out), stratified by label and seeded."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    kept, held = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    return np.sort(kept), np.sort(held)


def encode_labels(labels: pd.Series | np.ndarray, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup[str(v)] for v in labels], dtype=np.int64)


def class_order(labels: pd.Series | np.ndarray, positive_class: str | None = None) -> list[str]:
    """Sorted class names; for a binary task the positive class (if named) is put last (index 1)."""
    classes = sorted({str(v) for v in labels}, key=_natural_key)
    if positive_class is not None and len(classes) == 2 and positive_class in classes:
        classes.remove(positive_class)
        classes.append(positive_class)
    return classes


def _natural_key(s: str) -> tuple:
    return (0, float(s), s) if _is_number(s) else (1, 0.0, s)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- tabular
def fit_tabular(train: pd.DataFrame, numeric: list[str], categorical: list[str], cfg) -> dict[str, Any]:
    """Fit imputation, scaling and category vocabularies on the training rows only."""
    num_state = []
    for col in numeric:
        values = train[col].astype("float64")
        fill = {"median": values.median(), "mean": values.mean(), "zero": 0.0}[cfg.numeric_missing]
        fill = 0.0 if pd.isna(fill) else float(fill)
        filled = values.fillna(fill)
        spec = {"name": col, "fill": fill, "min": float(filled.min()), "max": float(filled.max())}
        if cfg.scaling == "quantile":
            spec["quantiles"] = np.quantile(filled.to_numpy(), np.linspace(0, 1, N_QUANTILES)).tolist()
            spec["center"], spec["scale"] = 0.0, 1.0
        else:
            spec["center"], spec["scale"] = _scaling(filled, cfg.scaling)
        num_state.append(spec)
    cat_state = []
    for col in categorical:
        values = train[col].astype("string")
        if cfg.categorical_missing == "category":
            values = values.fillna(MISSING)
            fill = MISSING
        else:
            fill = str(values.mode(dropna=True).iloc[0]) if values.notna().any() else MISSING
            values = values.fillna(fill)
        counts = values.value_counts()
        levels = sorted(str(v) for v in counts[counts >= cfg.min_category_count].index)
        cat_state.append({"name": col, "fill": fill, "categories": levels})
    return {"kind": "tabular", "numeric": num_state, "categorical": cat_state}


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

    Raises PredictionInputError for a missing column or a non-numeric value in a numeric column,
    naming the column, so every consumer reports bad input the same way.
    """
    needed = [c["name"] for c in state["numeric"]] + [c["name"] for c in state["categorical"]]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise PredictionInputError(
            f"input is missing column(s) {missing}. Expected columns: {needed}."
        )
    n = len(df)
    x_num = np.empty((n, len(state["numeric"])), dtype=np.float32)
    for j, spec in enumerate(state["numeric"]):
        raw = df[spec["name"]]
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & values.isna() & (raw.astype("string").str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise PredictionInputError(
                f"column '{spec['name']}', row {i}: {raw.iloc[i]!r} is not a number ({int(bad.sum())} such value(s))."
            )
        values = values.astype("float64").fillna(spec["fill"]).to_numpy()
        if "quantiles" in spec:
            values = quantile_normal(values, np.asarray(spec["quantiles"]))
        x_num[:, j] = ((values - spec["center"]) / spec["scale"]).astype(np.float32)
    x_cat = np.empty((n, len(state["categorical"])), dtype=np.int64)
    for j, spec in enumerate(state["categorical"]):
        lookup = {c: i + 1 for i, c in enumerate(spec["categories"])}
        values = df[spec["name"]].astype("string").str.strip().fillna(spec["fill"])
        x_cat[:, j] = [lookup.get(v, UNSEEN_CODE) for v in values]
    return x_num, x_cat


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


# --------------------------------------------------------------------------- images
def load_image(source: str | Path | bytes, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode any PNG/JPEG (grey or colour, any size) to uint8 (C, H, W) at the model's size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        name = "uploaded bytes" if isinstance(source, bytes) else str(source)
        raise PredictionInputError(f"{name}: cannot be decoded as an image ({exc}). Use a PNG or JPEG file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def fit_image_normalizer(train_uint8: np.ndarray, how: str, size, channels: int) -> dict[str, Any]:
    """Per-channel mean/std of the training images (or plain [0, 1] scaling)."""
    if how == "dataset":
        x = train_uint8.astype(np.float64) / 255.0
        mean = x.mean(axis=(0, 2, 3)).tolist()
        std = [max(s, 1e-6) for s in x.std(axis=(0, 2, 3)).tolist()]
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    return {"kind": "image", "size": list(size), "channels": channels, "mean": mean, "std": std,
            "value_range": [0, 255]}


def transform_images(x_uint8: np.ndarray, state: dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) -> normalised float32, checking the shape the model expects."""
    c = state["channels"]
    h, w = state["size"]
    if x_uint8.ndim != 4 or x_uint8.shape[1:] != (c, h, w):
        raise PredictionInputError(
            f"images have shape {tuple(x_uint8.shape[1:])}, the model expects (channels, height, width) = "
            f"{(c, h, w)}. Load them with load_image(..., size={tuple(state['size'])}, channels={c})."
        )
    mean = np.asarray(state["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(state["std"], dtype=np.float32)[None, :, None, None]
    return ((x_uint8.astype(np.float32) / 255.0) - mean) / std
