"""Seeded splits shared by every kind of data."""

from __future__ import annotations

from typing import Any

import numpy as np


def stratified_split(y: np.ndarray, test_size: float, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out), seeded; stratified by label when the target is a class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    kept, held = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y if stratify else None)
    return np.sort(kept), np.sort(held)


def split_indices(y: np.ndarray, labels: np.ndarray | None, has_test: bool, split_cfg: Any, seed: int):
    """(train, val, test) indices; test is empty when the source brought its own test file. Stratified
    by `labels` when the target type gives any."""
    stratify = labels is not None
    if has_test:
        pool, test = np.arange(len(y)), np.array([], dtype=np.int64)
    else:
        pool, test = stratified_split(y, split_cfg.test_size, seed, stratify=stratify)
    keep, val = stratified_split(y[pool], split_cfg.val_size, seed, stratify=stratify)
    return pool[keep], pool[val], test


def sample(n: int, k: int, seed: int) -> np.ndarray:
    """At most k of n indices, seeded and sorted (rows to explain, background rows)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(k, n), replace=False))
