"""The raw records (or image files) behind a processed split, for paths that must start from raw input:
scoring a registered model (whose own preprocessing state may differ from the current one), SHAP tables
that show the values a person would recognise, and the export parity check of the full raw path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from torchcycle.errors import TorchcycleError
from torchcycle.paths import TaskPaths


def raw_records(paths: TaskPaths, split: str = "test") -> tuple[pd.DataFrame, np.ndarray]:
    """(raw rows in split order, labels) of a tabular split; rows come from train/test.parquet."""
    with np.load(paths.split(split), allow_pickle=False) as z:
        rows, origin, y = z["row"], z["origin"], z["y"]
    parts = []
    for name in np.unique(origin):
        file = paths.raw / f"{name}.parquet"
        if not file.exists():
            raise TorchcycleError(f"{file} not found. Run `dvc repro ingest@{paths.task}` first.")
        parts.append((name, pd.read_parquet(file)))
    frames = dict(parts)
    pieces, order = [], []  # one take per origin file, then restore the split order
    for name, frame in frames.items():
        mask = origin == name
        pieces.append(frame.iloc[rows[mask]])
        order.append(np.flatnonzero(mask))
    out = pd.concat(pieces).iloc[np.argsort(np.concatenate(order), kind="stable")]
    return out.reset_index(drop=True), y


def image_files(paths: TaskPaths, split: str = "test") -> tuple[list[Path], np.ndarray]:
    with np.load(paths.split(split), allow_pickle=False) as z:
        return [paths.raw / p for p in z["path"]], z["y"]


def fingerprint(inputs: pd.DataFrame | list[Path], y: np.ndarray) -> str:
    """Identity of a test split as raw input + labels, so scores from different runs are comparable
    only when they were measured on the same rows."""
    h = hashlib.sha256()
    if isinstance(inputs, pd.DataFrame):
        h.update(pd.util.hash_pandas_object(inputs, index=False).to_numpy().tobytes())
        h.update(",".join(map(str, inputs.columns)).encode())
    else:
        for f in inputs:
            h.update(Path(f).read_bytes())
    h.update(np.asarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
