"""New table batches: one file in the drop zone is one batch, validated with ingest's rules against
the training rows' columns, stored as Parquet, and compared with the training rows for drift (the
target included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_path, read_json
from torchcycle.data import batches as B
from torchcycle.data.sources import read_table
from torchcycle.data.validate import Report
from torchcycle.paths import TaskPaths


class TabularBatches:
    def find(self, zone: Path, task: str) -> list[B.Arrival]:
        visible = sorted(p for p in zone.iterdir() if not p.name.startswith(".") and p.is_file())
        return [B.Arrival(task, f"{B.new_batch_id()}-{p.name.split('.')[0]}", [p]) for p in visible]

    def validate(self, arrival: B.Arrival, cfg: Any, root: Path) -> tuple[Report, Any]:
        """Same rules as ingest, plus: the batch carries the training columns and only known labels."""
        from torchcycle.kinds.tabular.validate import validate_tabular
        from torchcycle.targets import get_target

        reference = pd.read_parquet(TaskPaths(arrival.task, root).raw / "train.parquet")
        file = arrival.paths[0]
        src = cfg.source
        report = Report(kind="tabular")
        try:
            df = read_table(file, sep=src.csv_sep, na_values=src.na_values)
        except Exception as exc:  # DataValidationError from read_table names the file
            report.fail("readable", str(exc))
            return report, None
        missing = [c for c in reference.columns if c not in df.columns]
        if missing:
            report.fail("required_columns", f"{file}: missing column(s) {missing} that the training data has. "
                                            f"A batch needs the columns {list(reference.columns)}.")
            return report, None
        profile = read_json(TaskPaths(arrival.task, root).data_report)
        pinned = _pinned(src, reference, df, profile)
        report, cleaned, roles = validate_tabular({"train": (file, df)}, pinned, cfg.preprocess, batch=True)
        if report.errors:
            return report, None
        batch = cleaned["train"][list(reference.columns)]
        unknown = get_target(roles.target_type).unseen(batch[src.target], reference[src.target])
        if unknown:
            report.fail("labels", f"{file}: labels {unknown} are not classes of this task "
                                  f"({sorted(set(reference[src.target]))}).")
            return report, None
        return report, batch

    def accept(self, root: Path, arrival: B.Arrival, batch: pd.DataFrame) -> Path:
        target = B.batches_dir(root, arrival.task) / f"{arrival.batch_id}.parquet"
        with atomic_path(target) as tmp:
            batch.to_parquet(tmp, index=False)
        for path in arrival.paths:
            path.unlink()
        return target

    def count(self, path: Path) -> int:
        return len(pd.read_parquet(path))

    def drift(self, root: Path, task: str, cfg: Any, stored: list[Path], r: Any) -> dict[str, Any]:
        """Every feature column and the target of the new rows against the training rows."""
        from torchcycle.kinds.tabular.preprocess import column_types
        from torchcycle.monitoring import drift as D

        reference = pd.read_parquet(TaskPaths(task, root).raw / "train.parquet")
        batch = pd.concat([pd.read_parquet(p) for p in stored], ignore_index=True)
        state = read_json(TaskPaths(task, root).preprocessor)
        roles = column_types(state)
        numeric = [c for c, role in roles.items() if role == "numeric"]
        categorical = [c for c, role in roles.items() if role == "categorical"]
        target = cfg.source.target
        (numeric if pd.api.types.is_numeric_dtype(reference[target]) else categorical).append(target)
        return D.tabular_drift(reference, batch, numeric, categorical, r.psi_threshold, r.p_value)

    def release(self, raw: Path, zone: Path, part: int, slices: int) -> list[Path]:
        """Copy slice `part` of the held-back rows into the drop zone as one CSV file."""
        held = pd.read_parquet(raw / "holdback.parquet")
        rows = np.array_split(np.arange(len(held)), slices)[part]
        target = zone / f"arrival-{part + 1:02d}.csv"
        with atomic_path(target) as tmp:
            held.iloc[rows].to_csv(tmp, index=False)
        return [target]


def _pinned(src: Any, reference: pd.DataFrame, df: pd.DataFrame, profile: dict) -> Any:
    """The training data decides the roles (numbers, dates, categories) and the target type, so a batch
    cannot silently turn a numeric column into text or a date into a category."""
    dates = list(profile.get("dates", []))
    features = [c for c in reference.columns if c != src.target and c not in dates]
    return src.model_copy(update={
        "numeric": [c for c in features if pd.api.types.is_numeric_dtype(reference[c])],
        "categorical": [c for c in features if not pd.api.types.is_numeric_dtype(reference[c])],
        "dates": dates, "features": None, "target_type": profile.get("target_type", src.target_type), "drop": [c for c in df.columns if c not in reference.columns],
    })  # fmt: skip
