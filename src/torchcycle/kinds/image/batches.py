"""New image batches: the class folders in the drop zone form one batch, validated like ingest (every
image decodes, only known classes), stored as a folder, and compared with the training images for
drift of pixel statistics and class balance."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, read_json
from torchcycle.data import batches as B
from torchcycle.data.validate import Report
from torchcycle.paths import TaskPaths

# Checks of validate_images about a whole data set that a batch need not pass: a batch may bring images of
# one class only, so fewer than two class folders ("classes") or a class folder left without an image
# ("class_folders") do not reject it. Every other failed check does (by check name, never message text).
DATASET_CHECKS = frozenset({"class_folders", "classes"})
IGNORED = "not required of a batch: a batch may hold some of the task's classes only"


def batch_errors(report: Report) -> list[str]:
    """The errors that reject a batch, chosen by check name, and the dataset-wide failures marked ignored.

    Report.fail records each error twice, as a failed check {"check": name, "detail": message} and as the
    same message in `errors`; a summary check (Report.check) records no error. So each error is paired with
    the failed check that carries it, and kept unless that check's name is in DATASET_CHECKS. An error
    without a failed check of its own (none is expected) is kept: no error is dropped unclassified.
    """
    unpaired = list(report.errors)
    kept = []
    for check in report.checks:
        if check["passed"] or check["detail"] not in unpaired:
            continue  # a passed check, or a summary check that records no error
        unpaired.remove(check["detail"])
        if check["check"] in DATASET_CHECKS:
            check["ignored"] = IGNORED
        else:
            kept.append(check["detail"])
    return kept + unpaired


class ImageBatches:
    def find(self, zone: Path, task: str) -> list[B.Arrival]:
        visible = sorted(p for p in zone.iterdir() if not p.name.startswith("."))
        return [B.Arrival(task, B.new_batch_id(), visible)] if visible else []

    def validate(self, arrival: B.Arrival, cfg: Any, root: Path) -> tuple[Report, Any]:
        from torchcycle.kinds.image.sources import scan_image_folder
        from torchcycle.kinds.image.validate import validate_images

        classes = read_json(TaskPaths(arrival.task, root).schema)["target"]["classes"]
        zone = arrival.paths[0].parent
        report = Report(kind="image")
        try:
            items = scan_image_folder(zone, cfg.source.extensions)
        except Exception as exc:
            report.fail("layout", str(exc))
            return report, None
        unknown = sorted({label for _, label in items} - set(classes))
        if unknown:
            report.fail("labels", f"{zone}: class folder(s) {unknown} are not classes of this task ({classes}).")
            return report, None
        report, records = validate_images(zone, items, cfg.source.extensions)
        report.errors = batch_errors(report)  # a batch need not contain every class
        if not records and not report.errors:
            report.fail("images", f"{zone}: no image in the class folder(s). A batch needs at least one image.")
        return report, (records or None)

    def accept(self, root: Path, arrival: B.Arrival, records: list) -> Path:
        target = B.batches_dir(root, arrival.task) / arrival.batch_id
        zone = arrival.paths[0].parent
        with atomic_dir(target) as tmp:
            for rec in records:
                dest = tmp / rec.path.relative_to(zone)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rec.path, dest)
        for path in arrival.paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return target

    def count(self, path: Path) -> int:
        return sum(1 for p in path.rglob("*") if p.is_file())

    def drift(self, root: Path, task: str, cfg: Any, stored: list[Path], r: Any) -> dict[str, Any]:
        from torchcycle.kinds.image.preprocess import load_image
        from torchcycle.monitoring import drift as D

        raw = TaskPaths(task, root).raw
        manifest = pd.read_csv(raw / "manifest.csv", dtype={"label": str})
        size, ch = tuple(cfg.preprocess.size), cfg.preprocess.channels
        ref = [load_image(raw / p, size, ch) for p in manifest["path"]]
        files = [(f, f.parent.name) for p in stored for f in sorted(p.rglob("*")) if f.is_file()]
        new = [load_image(f, size, ch) for f, _ in files]
        return D.image_drift(np.stack(ref), np.stack(new), list(manifest["label"]), [c for _, c in files],
                             r.psi_threshold, r.p_value)

    def release(self, raw: Path, zone: Path, part: int, slices: int) -> list[Path]:
        """Copy slice `part` of the held-back images into the drop zone, in their class folders."""
        files = sorted(p for p in (raw / "holdback").rglob("*") if p.is_file())
        written = []
        for i in np.array_split(np.arange(len(files)), slices)[part]:
            src = files[i]
            dest = zone / src.parent.name / f"arrival-{part + 1:02d}-{src.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            written.append(dest)
        return written
