"""Checks on what people hand the Predict page, before anything reaches the model.

Every problem becomes a PredictionInputError whose message the page shows as is; the prediction itself
goes through `torchcycle.serving.Predictor`, the same path as `torchcycle predict`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from torchcycle.errors import PredictionInputError

MAX_CSV_BYTES = 20 * 1024 * 1024
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_ROWS = 100_000


def check_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise PredictionInputError(f"{name} is {size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
    if size == 0:
        raise PredictionInputError(f"{name} is empty.")


def expected_columns(state: dict) -> list[str]:
    return [c["name"] for c in state["numeric"]] + [c["name"] for c in state["categorical"]]


def read_csv(name: str, blob: bytes, state: dict, target: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The uploaded CSV as raw records with exactly the model's columns (a target column is dropped);
    read by the CLI's own reader so both parse a file the same way. Returns (records, notes)."""
    from torchcycle.serving import read_records

    check_size(name, len(blob), MAX_CSV_BYTES)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "upload.csv"
        file.write_bytes(blob)
        try:
            frame = read_records(file)
        except PredictionInputError as exc:
            raise PredictionInputError(f"{name}: {str(exc).split(': ', 1)[-1]}") from None
    if frame.empty:
        raise PredictionInputError(f"{name} holds no rows.")
    if len(frame) > MAX_ROWS:
        raise PredictionInputError(f"{name} has {len(frame)} rows; the limit is {MAX_ROWS}.")
    notes = []
    if target and target in frame.columns:
        frame = frame.drop(columns=[target])
        notes.append(f"the target column '{target}' was ignored")
    needed = expected_columns(state)
    missing = [c for c in needed if c not in frame.columns]
    extra = [c for c in frame.columns if c not in needed]
    if missing or extra:
        parts = ([f"missing column(s) {missing}"] if missing else []) + ([f"unexpected column(s) {extra}"] if extra else [])
        raise PredictionInputError(f"{name}: {' and '.join(parts)}. Expected exactly these columns: {needed}.")
    return frame[needed], notes


def out_of_range(frame: pd.DataFrame, state: dict) -> pd.DataFrame:
    """Per numeric column: how many values lie outside the training range (only columns with any)."""
    rows = []
    for spec in state["numeric"]:
        values = pd.to_numeric(frame[spec["name"]], errors="coerce")
        outside = (values < spec["min"]) | (values > spec["max"])
        if outside.any():
            rows.append({"column": spec["name"], "values outside": int(outside.sum()),
                         "training min": spec["min"], "training max": spec["max"]})
    return pd.DataFrame(rows)


def range_problems(record: dict, state: dict) -> list[str]:
    """Form values outside the training range, as sentences."""
    out = []
    for spec in state["numeric"]:
        v = record[spec["name"]]
        if v is not None and not (spec["min"] <= v <= spec["max"]):
            out.append(f"**{spec['name']}** = {v:g} is outside the training range "
                       f"{spec['min']:g} – {spec['max']:g}")
    return out


def image_pixels(name: str, blob: bytes, state: dict) -> np.ndarray:
    """uint8 (1, C, H, W) at the model's size, decoded by the shared loader (resizes, converts colour)."""
    from torchcycle.data.preprocess import load_image

    check_size(name, len(blob), MAX_IMAGE_BYTES)
    try:
        pixels = load_image(blob, tuple(state["size"]), state["channels"])
    except Exception:  # undecodable, truncated or a decompression bomb: all the same here
        raise PredictionInputError(f"{name} is not a readable PNG or JPEG image.") from None
    return pixels[None]
