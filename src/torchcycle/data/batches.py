"""New data arriving after the first training: the drop zone, validation of a batch with the same rules
as ingest, quarantine of bad batches, and the store of accepted batches that ingest appends.

    data/incoming/<task>/      files dropped by people or jobs (CSV/Parquet rows, or <class>/<image>)
    data/batches/<task>/       accepted batches, each versioned with DVC, appended by ingest@<task>
    data/quarantine/<task>/    rejected batches, each with the report saying what was wrong
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from torchcycle.atomic import atomic_dir, atomic_path, read_json, write_json
from torchcycle.config import ImageTask, TabularTask
from torchcycle.data import sources
from torchcycle.data.validate import Report, validate_images, validate_tabular

TABULAR_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def incoming_dir(root: Path, task: str) -> Path:
    return root / "data" / "incoming" / task


def batches_dir(root: Path, task: str) -> Path:
    return root / "data" / "batches" / task


def quarantine_dir(root: Path, task: str) -> Path:
    return root / "data" / "quarantine" / task


@dataclass
class Arrival:
    """One batch in the drop zone: a table file, or (images) the class folders present at check time."""

    task: str
    batch_id: str
    paths: list[Path]


def new_batch_id() -> str:
    return time.strftime("batch-%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.monotonic_ns() % 10**6:06d}"


def find_arrivals(root: Path, task: str, cfg: TabularTask | ImageTask) -> list[Arrival]:
    """What is waiting in the drop zone; hidden files (.partial uploads, state) are ignored."""
    zone = incoming_dir(root, task)
    if not zone.is_dir():
        return []
    visible = sorted(p for p in zone.iterdir() if not p.name.startswith("."))
    if isinstance(cfg, TabularTask):
        return [Arrival(task, f"{new_batch_id()}-{p.name.split('.')[0]}", [p]) for p in visible if p.is_file()]
    return [Arrival(task, new_batch_id(), visible)] if visible else []


def validate_tabular_batch(arrival: Arrival, cfg: TabularTask, reference: pd.DataFrame) -> tuple[Report, pd.DataFrame | None]:
    """Same rules as ingest, plus: the batch must carry the columns the model was trained on."""
    file = arrival.paths[0]
    src = cfg.source
    report = Report(kind="tabular")
    try:
        df = sources.read_table(file, sep=src.csv_sep, na_values=src.na_values)
    except Exception as exc:  # DataValidationError from read_table names the file
        report.fail("readable", str(exc))
        return report, None
    missing = [c for c in reference.columns if c not in df.columns]
    if missing:
        report.fail(
            "required_columns",
            f"{file}: missing column(s) {missing} that the training data has. A batch needs the columns "
            f"{list(reference.columns)}.",
        )
        return report, None
    # the reference decides the roles, so a batch cannot silently turn a numeric column into text
    pinned = src.model_copy(update={
        "numeric": [c for c in reference.columns if pd.api.types.is_numeric_dtype(reference[c]) and c != src.target],
        "categorical": [c for c in reference.columns if not pd.api.types.is_numeric_dtype(reference[c])
                        and c != src.target],
        "features": None, "drop": [c for c in df.columns if c not in reference.columns],
    })  # fmt: skip
    report, cleaned, _roles = validate_tabular({"train": (file, df)}, pinned, cfg.preprocess)
    if report.errors:
        return report, None
    batch = cleaned["train"][list(reference.columns)]
    unknown = sorted(set(batch[src.target]) - set(reference[src.target]))
    if unknown:
        report.fail("labels", f"{file}: labels {unknown} are not classes of this task "
                              f"({sorted(set(reference[src.target]))}).")
        return report, None
    return report, batch


def validate_image_batch(arrival: Arrival, cfg: ImageTask, classes: list[str]) -> tuple[Report, list]:
    zone = arrival.paths[0].parent
    report = Report(kind="image")
    try:
        items = sources.scan_image_folder(zone, cfg.source.extensions)
    except Exception as exc:
        report.fail("layout", str(exc))
        return report, []
    unknown = sorted({label for _, label in items} - set(classes))
    if unknown:
        report.fail("labels", f"{zone}: class folder(s) {unknown} are not classes of this task ({classes}).")
        return report, []
    report, records = validate_images(zone, items, cfg.source.extensions)
    # a batch need not contain every class: only decode errors and stray files count here
    report.errors = [e for e in report.errors if "class folder(s)" not in e and "needs at least two" not in e]
    return report, records


def quarantine(root: Path, arrival: Arrival, report: Report) -> Path:
    """Move a rejected batch out of the drop zone, with its report next to it."""
    target = quarantine_dir(root, arrival.task) / arrival.batch_id
    target.mkdir(parents=True, exist_ok=True)
    for path in arrival.paths:
        shutil.move(str(path), target / path.name)
    write_json(target / "report.json", report.to_dict())
    return target


def accept_tabular(root: Path, arrival: Arrival, batch: pd.DataFrame) -> Path:
    target = batches_dir(root, arrival.task) / f"{arrival.batch_id}.parquet"
    with atomic_path(target) as tmp:
        batch.to_parquet(tmp, index=False)
    for path in arrival.paths:
        path.unlink()
    return target


def accept_images(root: Path, arrival: Arrival, records: list) -> Path:
    target = batches_dir(root, arrival.task) / arrival.batch_id
    zone = arrival.paths[0].parent
    with atomic_dir(target) as tmp:
        for rec in records:
            dest = tmp / rec.path.relative_to(zone)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rec.path, dest)
    for path in arrival.paths:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return target


def stored_batches(root: Path, task: str) -> list[Path]:
    folder = batches_dir(root, task)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".dvc")
                  and p.name != ".gitignore")


def batch_id(path: Path) -> str:
    return path.name.removesuffix(".parquet")


def trained_batches(root: Path, task: str) -> set[str]:
    """Batch ids that the current raw data (and so the current model) already includes."""
    report = root / "data" / "raw" / task / "data_report.json"
    return set(read_json(report).get("batches", [])) if report.exists() else set()


def pending_batches(root: Path, task: str) -> list[Path]:
    done = trained_batches(root, task)
    return [p for p in stored_batches(root, task) if batch_id(p) not in done]


# --------------------------------------------------------------------------- simulated arrivals
def release_next(root: Path, task: str, slices: int) -> tuple[int, list[Path]]:
    """Copy the next of `slices` equal slices of the held-back data into the drop zone.

    Returns (slice number, files written); slice 0 means everything has been released already.
    """
    import numpy as np

    raw = root / "data" / "raw" / task
    zone = incoming_dir(root, task)
    state_file = zone / ".released.json"
    released = read_json(state_file)["released"] if state_file.exists() else 0
    if released >= slices:
        return 0, []
    zone.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if (raw / "holdback.parquet").exists():
        held = pd.read_parquet(raw / "holdback.parquet")
        part = np.array_split(np.arange(len(held)), slices)[released]
        target = zone / f"arrival-{released + 1:02d}.csv"
        with atomic_path(target) as tmp:
            held.iloc[part].to_csv(tmp, index=False)
        written.append(target)
    elif (raw / "holdback").is_dir():
        files = sorted(p for p in (raw / "holdback").rglob("*") if p.is_file())
        for i in np.array_split(np.arange(len(files)), slices)[released]:
            src = files[i]
            dest = zone / src.parent.name / f"arrival-{released + 1:02d}-{src.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            written.append(dest)
    else:
        raise FileNotFoundError(
            f"no held-back data in {raw}. Set `{task}.source.holdback_rows` (tables) or "
            f"`holdback_images` (images) in params.yaml and run `dvc repro ingest@{task}` first."
        )
    write_json(state_file, {"released": released + 1, "slices": slices})
    return released + 1, written
