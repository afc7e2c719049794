"""Reading an image source: the built-in digits shipped in the package or a <root>/<class>/<image> folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from torchcycle.data.sources import builtin_file
from torchcycle.errors import DataValidationError


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled digits as uint8 images (N, 28, 28) and int labels."""
    path = builtin_file("mnist5k", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    pixels, labels = data[:, :-1], data[:, -1]
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def scan_image_folder(root: Path, extensions: list[str]) -> list[tuple[Path, str]]:
    """List (file, class name) pairs of a <root>/<class>/<image> folder, in a stable order.

    Only the layout is checked here; whether each file decodes is validation's job.
    """
    if not root.is_dir():
        raise DataValidationError(
            f"{root}: image folder not found. Set `source.path` to a folder laid out as <root>/<class>/<image>."
        )
    items: list[tuple[Path, str]] = []
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if stray:
        raise DataValidationError(
            f"{root}: files directly under the image root ({', '.join(stray[:5])}). Images must sit in one "
            "sub-folder per class: <root>/<class name>/<image file>. Move them into their class folder."
        )
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not file.name.startswith("."):
                items.append((file, class_dir.name))
    return items
