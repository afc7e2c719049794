"""ingest for images: validate every image, copy the folder (or write the built-in digits as PNGs) to
data/raw/<task>/images/<class>/<file> with a manifest, atomically."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.data import batches
from torchcycle.data.sources import builtin_file, display_path
from torchcycle.data.splits import stratified_split
from torchcycle.errors import DataValidationError
from torchcycle.kinds.image.batches import batch_errors
from torchcycle.kinds.image.sources import load_mnist, scan_image_folder
from torchcycle.kinds.image.validate import validate_images
from torchcycle.kinds.tabular.ingest import holdback_split


def ingest(cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
    src = cfg.source
    with atomic_dir(paths.raw) as tmp:
        images = tmp / "images"
        if src.builtin == "mnist":
            origin = images
            _write_mnist(images, src.max_images, seed)
        else:
            origin = root / src.path
        report, records = validate_images(origin, scan_image_folder(origin, src.extensions), src.extensions)
        report.raise_if_failed()
        if src.builtin is None:
            records = _subsample(records, src.max_images, seed)
        if src.holdback_images:
            kept, held = holdback_split(np.array([r.label for r in records]), src.holdback_images, seed)
            for i in held:
                dest = tmp / "holdback" / records[i].path.relative_to(origin)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(records[i].path, dest)
                if src.builtin:
                    records[i].path.unlink()
            records = [records[i] for i in kept]
        rel_paths = []
        for rec in records:
            rel = Path("images") / rec.path.relative_to(origin)
            if src.builtin is None:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rec.path, tmp / rel)
            rel_paths.append(str(rel))
        stored = batches.stored_batches(root, paths.task)
        batch_reports = {}
        for batch in stored:
            b_records, batch_reports[batches.batch_id(batch)] = _validate_batch(batch, src.extensions, root)
            for rec in b_records:
                rel = Path("images") / rec.label / f"{batch.name}__{rec.path.name}"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rec.path, tmp / rel)
                rel_paths.append(str(rel))
                records.append(rec)
        report.summary["batches"] = [batches.batch_id(p) for p in stored]
        report.summary["batch_reports"] = batch_reports
        pd.DataFrame({
            "path": rel_paths,
            "label": [r.label for r in records],
            "width": [r.width for r in records],
            "height": [r.height for r in records],
            "mode": [r.mode for r in records],
        }).to_csv(tmp / "manifest.csv", index=False)  # fmt: skip
        report.summary["root"] = str(Path("data/raw", paths.task, "images") if src.builtin else display_path(origin, root))
        report.summary["source"] = str(display_path(builtin_file("mnist5k") if src.builtin else origin, root))
        write_json(tmp / "data_report.json", {"kind": "image", "target_type": "classification", **report.summary,
                                              "images": len(records)})
    return report.to_dict()


def _validate_batch(batch: Path, extensions: list[str], root: Path) -> tuple[list, dict[str, Any]]:
    """An accepted batch, validated again with the rules it was accepted by (kinds/image/batches.py): its
    report is kept in the data report (`batch_reports`), and a batch that no longer passes stops ingest
    instead of losing images silently."""
    report, records = validate_images(batch, scan_image_folder(batch, extensions), extensions)
    report.errors = batch_errors(report)
    shown = str(display_path(batch, root))  # the data report reads the same on every machine
    for check in report.checks:
        check["detail"] = check["detail"].replace(str(batch), shown)
    report.summary["root"] = shown
    if report.errors:
        listed = "\n".join(f"  - {e}" for e in report.errors[:10])
        exc = DataValidationError(f"accepted batch {shown} no longer validates "
                                  f"({len(report.errors)} problem(s)):\n{listed}\nRemove or repair it.")
        exc.report = report.to_dict()  # type: ignore[attr-defined]
        raise exc
    return records, report.to_dict()


def _write_mnist(images: Path, max_images: int | None, seed: int) -> None:
    from PIL import Image

    pixels, labels = load_mnist()
    idx = np.arange(len(labels))
    if max_images and max_images < len(labels):
        _, idx = stratified_split(labels, test_size=max_images / len(labels), seed=seed)
    for i in idx:
        folder = images / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], mode="L").save(folder / f"{i:05d}.png", optimize=False, compress_level=1)


def _subsample(records: list, n: int | None, seed: int) -> list:
    if not n or len(records) <= n:
        return records
    _, keep = stratified_split(np.array([r.label for r in records]), test_size=n / len(records), seed=seed)
    return [records[i] for i in keep]
