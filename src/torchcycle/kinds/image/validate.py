"""Validation of an image folder: every file decodes, every class folder holds images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchcycle.data.validate import Report


@dataclass
class ImageRecord:
    path: Path
    label: str
    width: int
    height: int
    mode: str


def validate_images(root: Path, items: list[tuple[Path, str]], extensions: list[str]) -> tuple[Report, list[ImageRecord]]:
    """Every file must be an image that decodes; every class folder must hold at least one image."""
    from PIL import Image, UnidentifiedImageError

    report = Report(kind="image")
    records: list[ImageRecord] = []
    exts = {e.lower() for e in extensions}
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    counts = dict.fromkeys(class_dirs, 0)
    for path, label in items:
        if path.suffix.lower() not in exts:
            report.fail(
                "image_files",
                f"{path}: not an image file (extension '{path.suffix}'; allowed {sorted(exts)}). "
                "Remove it from the class folder or convert it to PNG/JPEG.",
            )
            continue
        try:
            with Image.open(path) as im:
                im.load()
                records.append(ImageRecord(path, label, im.width, im.height, im.mode))
                counts[label] += 1
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            report.fail(
                "images_decode",
                f"{path}: cannot be decoded as an image ({type(exc).__name__}: {exc}). "
                "The file is corrupt or not really an image: replace it or delete it.",
            )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        report.fail(
            "class_folders",
            f"{root}: class folder(s) {empty} hold no valid image. Add images or remove the folder(s).",
        )
    if len(class_dirs) < 2:
        report.fail(
            "classes",
            f"{root}: found {len(class_dirs)} class folder(s) {class_dirs}; a classifier needs at least two.",
        )
    undecodable = sum(1 for c in report.checks if c["check"] == "images_decode" and not c["passed"])
    report.check("images_decode", not undecodable, f"{len(records)} images decode, {undecodable} do not")
    report.summary = {
        "root": str(root),
        "images": len(records),
        "classes": class_dirs,
        "class_counts": counts,
        "sizes": _size_summary(records),
        "modes": sorted({r.mode for r in records}),
    }
    return report, records


def _size_summary(records: list[ImageRecord]) -> dict[str, Any]:
    if not records:
        return {}
    w = [r.width for r in records]
    h = [r.height for r in records]
    return {"min_width": min(w), "max_width": max(w), "min_height": min(h), "max_height": max(h)}
