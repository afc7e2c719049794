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
from typing import Any

from torchcycle.atomic import read_json, write_json
from torchcycle.data.validate import Report
from torchcycle.paths import TaskPaths


def incoming_dir(root: Path, task: str) -> Path:
    return TaskPaths(task, root).incoming


def batches_dir(root: Path, task: str) -> Path:
    return TaskPaths(task, root).batches


def quarantine_dir(root: Path, task: str) -> Path:
    return TaskPaths(task, root).quarantine


@dataclass
class Arrival:
    """One batch in the drop zone: a table file, or (images) the class folders present at check time."""

    task: str
    batch_id: str
    paths: list[Path]


def new_batch_id() -> str:
    return time.strftime("batch-%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.monotonic_ns() % 10**6:06d}"


def find_arrivals(root: Path, task: str, cfg: Any) -> list[Arrival]:
    """What is waiting in the drop zone; hidden files (.partial uploads, state) are ignored."""
    from torchcycle.kinds import kind_of

    zone = incoming_dir(root, task)
    if not zone.is_dir():
        return []
    return kind_of(cfg).new_batches().find(zone, task)


def quarantine(root: Path, arrival: Arrival, report: Report) -> Path:
    """Move a rejected batch out of the drop zone, with its report next to it."""
    target = quarantine_dir(root, arrival.task) / arrival.batch_id
    target.mkdir(parents=True, exist_ok=True)
    for path in arrival.paths:
        shutil.move(str(path), target / path.name)
    write_json(target / "report.json", report.to_dict())
    return target


def stored_batches(root: Path, task: str) -> list[Path]:
    folder = batches_dir(root, task)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(".dvc")
                  and p.name != ".gitignore")


def unversioned_batches(root: Path, task: str) -> list[Path]:
    """Stored batches without their `.dvc` file: accepted by a check whose `dvc add` then failed (or that
    was killed in between). The next check versions them before taking in anything new."""
    return [p for p in stored_batches(root, task) if not p.with_name(f"{p.name}.dvc").exists()]


def batch_id(path: Path) -> str:
    return path.name.removesuffix(".parquet")


def trained_batches(root: Path, task: str) -> set[str]:
    """Batch ids that the current raw data (and so the current model) already includes."""
    report = TaskPaths(task, root).data_report
    return set(read_json(report).get("batches", [])) if report.exists() else set()


def pending_batches(root: Path, task: str) -> list[Path]:
    done = trained_batches(root, task)
    return [p for p in stored_batches(root, task) if batch_id(p) not in done]


# --------------------------------------------------------------------------- simulated arrivals
def release_next(root: Path, task: str, slices: int, kind: Any) -> tuple[int, list[Path]]:
    """Copy the next of `slices` equal slices of the held-back data into the drop zone.

    Returns (slice number, files written); slice 0 means everything has been released already.
    """
    raw = TaskPaths(task, root).raw
    zone = incoming_dir(root, task)
    state_file = zone / ".released.json"
    released = read_json(state_file)["released"] if state_file.exists() else 0
    if released >= slices:
        return 0, []
    zone.mkdir(parents=True, exist_ok=True)
    if not (raw / "holdback.parquet").exists() and not (raw / "holdback").is_dir():
        raise FileNotFoundError(
            f"no held-back data in {raw}. Set `{task}.source.holdback_rows` (tables) or "
            f"`holdback_images` (images) in params.yaml and run `dvc repro ingest@{task}` first."
        )
    written = kind.new_batches().release(raw, zone, released, slices)
    write_json(state_file, {"released": released + 1, "slices": slices})
    return released + 1, written
