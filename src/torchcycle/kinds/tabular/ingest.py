"""ingest for tables: read the source, validate it, write train.parquet (+ test.parquet when the source
has an official test file, + holdback.parquet) and a data report, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.data import batches
from torchcycle.data.sources import display_path
from torchcycle.data.splits import stratified_split
from torchcycle.errors import DataValidationError
from torchcycle.kinds.tabular.sources import load_tabular
from torchcycle.kinds.tabular.validate import validate_tabular
from torchcycle.targets import get_target


def ingest(cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
    src = cfg.source
    loaded = load_tabular(src, root)
    frames = {"train": (display_path(loaded.files[0], root), loaded.train)}
    if loaded.test is not None:
        frames["test"] = (display_path(loaded.files[1], root), loaded.test)
    report, cleaned, roles = validate_tabular(frames, src, cfg.preprocess, has_header=src.builtin != "adult")
    report.raise_if_failed()
    stratify = get_target(roles.target_type).stratified
    if src.max_rows:
        cleaned = {k: _sample(df, src.target, src.max_rows, seed, stratify) for k, df in cleaned.items()}
        report.summary["sampled_rows"] = {k: len(df) for k, df in cleaned.items()}
    keep = [*roles.features, roles.target]
    holdback = None
    if src.holdback_rows:
        kept, held = holdback_split(cleaned["train"][src.target].to_numpy(), src.holdback_rows, seed, stratify)
        holdback, cleaned["train"] = cleaned["train"].iloc[held], cleaned["train"].iloc[kept]
    stored = batches.stored_batches(root, paths.task)
    if stored:
        cleaned["train"] = pd.concat(
            [cleaned["train"][keep], *(pd.read_parquet(p)[keep] for p in stored)], ignore_index=True
        )
        report.summary["batches"] = [batches.batch_id(p) for p in stored]
    with atomic_dir(paths.raw) as tmp:
        for split, df in cleaned.items():
            df[keep].to_parquet(tmp / f"{split}.parquet", index=False)
        if holdback is not None:
            holdback[keep].to_parquet(tmp / "holdback.parquet", index=False)
        profile = _profile(cleaned, roles)
        profile["batches"] = [batches.batch_id(p) for p in stored]
        write_json(tmp / "data_report.json", profile)
    return report.to_dict()


def holdback_split(labels: np.ndarray, n: int, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if n >= len(labels) // 2:
        raise DataValidationError(
            f"source.holdback asks for {n} of {len(labels)} training rows/images; keep it under half."
        )
    return stratified_split(labels, test_size=n, seed=seed, stratify=stratify)


def _sample(df: pd.DataFrame, target: str, n: int, seed: int, stratify: bool) -> pd.DataFrame:
    if len(df) <= n:
        return df
    _, keep = stratified_split(df[target].to_numpy(), test_size=n / len(df), seed=seed, stratify=stratify)
    return df.iloc[keep].reset_index(drop=True)


def _counts(values: pd.Series, top: int = 30) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().head(top).items()}


def _profile(frames: dict[str, pd.DataFrame], roles) -> dict:
    """Per-file summaries the dashboard shows: rows, the target's distribution, missing values, columns."""
    out = {}
    for split, df in frames.items():
        target = df[roles.target]
        out[split] = {
            "rows": len(df),
            "missing": df[roles.features].isna().sum().to_dict(),
            "numeric": {c: df[c].describe().round(4).to_dict() for c in roles.numeric},
            "dates": {c: {"min": str(df[c].min()), "max": str(df[c].max())} for c in roles.dates},
            "categorical": {c: _counts(df[c].fillna("<missing>")) for c in roles.categorical},
        }
        out[split].update(get_target(roles.target_type).describe(target))
    return {"kind": "tabular", "target": roles.target, "target_type": roles.target_type,
            "numeric": roles.numeric, "dates": roles.dates, "categorical": roles.categorical,
            "dropped": roles.dropped, "splits": out}

