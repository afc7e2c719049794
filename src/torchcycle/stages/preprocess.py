"""preprocess@<task>: split (stratified, seeded), fit preprocessing on the training split only, and
write data/processed/<task>/: train/val/test arrays (.npz, no pickle), preprocessor.json, schema.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.config import Params, TabularTask
from torchcycle.data import preprocess as pp
from torchcycle.data.validate import resolve_roles
from torchcycle.errors import TorchcycleError
from torchcycle.paths import TaskPaths


def run(params: Params, task: str, root: Path) -> dict:
    cfg = params.task(task)
    paths = TaskPaths(task, root)
    if not paths.raw.exists():
        raise TorchcycleError(f"{paths.raw} not found. Run `dvc repro ingest@{task}` first.")
    if isinstance(cfg, TabularTask):
        return _tabular(cfg, paths, params.seed)
    return _images(cfg, paths, params.seed)


def _split_indices(y: np.ndarray, has_test: bool, split_cfg, seed: int):
    """(train, val, test) indices into y; test is empty when the source brought its own test file."""
    if has_test:
        pool, test = np.arange(len(y)), np.array([], dtype=np.int64)
    else:
        pool, test = pp.stratified_split(y, split_cfg.test_size, seed)
    keep, val = pp.stratified_split(y[pool], split_cfg.val_size, seed)
    return pool[keep], pool[val], test


def _tabular(cfg: TabularTask, paths: TaskPaths, seed: int) -> dict:
    src = cfg.source
    train_df = pd.read_parquet(paths.raw / "train.parquet")
    test_file = paths.raw / "test.parquet"
    test_df = pd.read_parquet(test_file) if test_file.exists() else None
    roles = resolve_roles(train_df, src)
    classes = pp.class_order(train_df[src.target], src.positive_class)
    y_all = pp.encode_labels(train_df[src.target], classes)
    tr, va, te = _split_indices(y_all, test_df is not None, cfg.split, seed)
    state = pp.fit_tabular(train_df.iloc[tr], roles.numeric, roles.categorical, cfg.preprocess)
    state["target"] = src.target
    state["classes"] = classes

    parts = {"train": (train_df, tr, "train"), "val": (train_df, va, "train")}
    parts["test"] = (test_df, np.arange(len(test_df)), "test") if test_df is not None else (train_df, te, "train")
    counts = {}
    with atomic_dir(paths.processed) as tmp:
        for name, (df, idx, origin) in parts.items():
            rows = df.iloc[idx]
            x_num, x_cat = pp.transform_tabular(rows, state)
            y = pp.encode_labels(rows[src.target], classes)
            np.savez(tmp / f"{name}.npz", x_num=x_num, x_cat=x_cat, y=y, row=idx.astype(np.int64),
                     origin=np.array([origin] * len(idx)))
            counts[name] = {"rows": len(idx), "class_counts": np.bincount(y, minlength=len(classes)).tolist()}
        write_json(tmp / "preprocessor.json", state)
        write_json(tmp / "schema.json", tabular_schema(state, src.positive_class))
        write_json(tmp / "splits.json", counts)
    return counts


def tabular_schema(state: dict, positive_class: str | None) -> dict:
    """What a caller must send: raw columns with their type, training range or known categories."""
    return {
        "kind": "tabular",
        "target": state["target"],
        "classes": state["classes"],
        "positive_class": state["classes"][1] if len(state["classes"]) == 2 else None,
        "numeric": [{"name": c["name"], "min": c["min"], "max": c["max"]} for c in state["numeric"]],
        "categorical": [{"name": c["name"], "categories": c["categories"]} for c in state["categorical"]],
    }


def _images(cfg, paths: TaskPaths, seed: int) -> dict:
    manifest = pd.read_csv(paths.raw / "manifest.csv", dtype={"label": str})
    size, channels = tuple(cfg.preprocess.size), cfg.preprocess.channels
    pixels = np.stack([pp.load_image(paths.raw / p, size, channels) for p in manifest["path"]])
    classes = pp.class_order(manifest["label"])
    y_all = pp.encode_labels(manifest["label"], classes)
    tr, va, te = _split_indices(y_all, False, cfg.split, seed)
    state = pp.fit_image_normalizer(pixels[tr], cfg.preprocess.normalize, size, channels)
    state["classes"] = classes
    counts = {}
    with atomic_dir(paths.processed) as tmp:
        for name, idx in (("train", tr), ("val", va), ("test", te)):
            np.savez(tmp / f"{name}.npz", x=pp.transform_images(pixels[idx], state), y=y_all[idx],
                     row=idx.astype(np.int64), path=manifest["path"].to_numpy(dtype=str)[idx])
            counts[name] = {"rows": len(idx), "class_counts": np.bincount(y_all[idx], minlength=len(classes)).tolist()}
        write_json(tmp / "preprocessor.json", state)
        write_json(tmp / "schema.json", {
            "kind": "image", "classes": classes, "size": list(size), "channels": channels,
            "value_range": [0, 255], "mean": state["mean"], "std": state["std"],
        })  # fmt: skip
        write_json(tmp / "splits.json", counts)
    return counts
