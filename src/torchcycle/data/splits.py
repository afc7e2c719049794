"""Seeded splits shared by every kind of data."""

from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, test_size: float, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out), seeded; stratified by label when the target is a class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    kept, held = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y if stratify else None)
    return np.sort(kept), np.sort(held)
