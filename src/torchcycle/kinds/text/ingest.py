"""ingest for text: read the source, validate it, write train.parquet (+ test.parquet, + holdback.parquet)
of (text, target) and a data report with lengths and label balance, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.data import batches
from torchcycle.data.sources import display_path
from torchcycle.kinds.tabular.ingest import _sample, holdback_split
from torchcycle.kinds.text.sources import load_text
from torchcycle.kinds.text.validate import length_summary, validate_text, words
from torchcycle.targets import get_target

EXAMPLES_PER_LABEL = 3


def ingest(cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
    src = cfg.source
    loaded = load_text(src, root)
    frames = {"train": (display_path(loaded.files[0], root), loaded.train)}
    if loaded.test is not None:
        frames["test"] = (display_path(loaded.files[1], root), loaded.test)
    report, cleaned, target_type = validate_text(frames, src)
    report.raise_if_failed()
    stratify = get_target(target_type).stratified
    if src.max_rows:
        cleaned = {k: _sample(df, src.target, src.max_rows, seed, stratify) for k, df in cleaned.items()}
        report.summary["sampled_rows"] = {k: len(df) for k, df in cleaned.items()}
    holdback = None
    if src.holdback_rows:
        kept, held = holdback_split(cleaned["train"][src.target].to_numpy(), src.holdback_rows, seed, stratify)
        holdback, cleaned["train"] = cleaned["train"].iloc[held], cleaned["train"].iloc[kept]
    stored = batches.stored_batches(root, paths.task)
    if stored:
        cleaned["train"] = pd.concat([cleaned["train"], *(pd.read_parquet(p) for p in stored)], ignore_index=True)
    with atomic_dir(paths.raw) as tmp:
        for split, df in cleaned.items():
            df.to_parquet(tmp / f"{split}.parquet", index=False)
        if holdback is not None:
            holdback.to_parquet(tmp / "holdback.parquet", index=False)
        profile = _profile(cleaned, src, target_type)
        profile["batches"] = [batches.batch_id(p) for p in stored]
        profile["source"] = str(display_path(loaded.files[0], root))
        write_json(tmp / "data_report.json", profile)
    return report.to_dict()


def _profile(frames: dict[str, pd.DataFrame], src: Any, target_type: str) -> dict[str, Any]:
    """What the dashboard's Data page shows: rows, word-length histogram, labels and example texts."""
    out = {}
    for split, df in frames.items():
        n = words(df[src.text_column])
        counts, edges = _histogram(n)
        out[split] = {"rows": len(df), "lengths": length_summary(df[src.text_column]),
                      "length_histogram": {"edges": edges, "counts": counts},
                      **get_target(target_type).describe(df[src.target])}
    train = frames["train"]
    examples = {}
    if get_target(target_type).stratified:
        for label, group in train.groupby(src.target, sort=True):
            examples[str(label)] = group[src.text_column].head(EXAMPLES_PER_LABEL).tolist()
    else:
        examples["examples"] = train[src.text_column].head(EXAMPLES_PER_LABEL * 2).tolist()
    return {"kind": "text", "text_column": src.text_column, "target": src.target, "target_type": target_type,
            "splits": out, "examples": examples}


def _histogram(n: Any) -> tuple[list[int], list[int]]:
    import numpy as np

    top = int(max(n.max(), 1)) if len(n) else 1
    edges = np.unique(np.linspace(0, top + 1, 21).astype(int))
    counts, _ = np.histogram(n, bins=edges)
    return counts.tolist(), edges.tolist()
