"""Reading raw sources: the built-in datasets shipped in the package, a user's CSV/Parquet file, or a
user's image folder. Readers return plain pandas/numpy objects and raise errors that name the file."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from torchcycle.errors import DataValidationError

ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    "income",
]  # fmt: skip
ADULT_NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]


def builtin_file(*parts: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("torchcycle").joinpath("datasets", *parts)))


@dataclass
class TabularFrames:
    """Rows for training (and validation), plus the official test rows when the source has them."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    files: list[Path]


def load_adult() -> TabularFrames:
    """Both official Adult files, with the test file's header comment and label periods removed."""
    train_file, test_file = builtin_file("adult", "adult.data.gz"), builtin_file("adult", "adult.test.gz")
    kw = {"header": None, "names": ADULT_COLUMNS, "sep": r",\s*", "engine": "python", "na_values": ["?"]}
    train = pd.read_csv(train_file, **kw)
    test = pd.read_csv(test_file, skiprows=1, **kw)
    test["income"] = test["income"].str.rstrip(".")
    return TabularFrames(train=_drop_blank_rows(train), test=_drop_blank_rows(test), files=[train_file, test_file])


def _drop_blank_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.dropna(how="all").reset_index(drop=True)


def read_table(path: Path, *, sep: str = ",", na_values: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file; a malformed file is an error naming the file and, for CSV, the line."""
    if not path.exists():
        raise DataValidationError(
            f"{path}: file not found. Check `source.path` in params.yaml (paths are relative to the project root)."
        )
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if any(suffix.endswith(s) for s in (".csv", ".csv.gz", ".tsv", ".txt")):
            return pd.read_csv(path, sep=sep, na_values=na_values or [], keep_default_na=True,
                               skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise DataValidationError(
            f"{path}: malformed CSV ({exc}). Every row must have the same number of fields as the header; "
            "fix or remove the offending line, or set `source.csv_sep` if the file uses another separator."
        ) from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path}: cannot be read as a table ({exc}). Is it an empty or binary file?") from None
    except Exception as exc:  # pyarrow raises a zoo of types for corrupt Parquet
        raise DataValidationError(f"{path}: cannot be read ({type(exc).__name__}: {exc}).") from None
    raise DataValidationError(
        f"{path}: unsupported file type '{suffix}'. Use a .csv, .csv.gz or .parquet file."
    )


def load_tabular(source, root: Path) -> TabularFrames:
    """Load a tabular task's rows from its `source` params section."""
    if source.builtin == "adult":
        return load_adult()
    train_path = root / source.path
    train = read_table(train_path, sep=source.csv_sep, na_values=source.na_values)
    files = [train_path]
    test = None
    if source.test_path:
        test_path = root / source.test_path
        test = read_table(test_path, sep=source.csv_sep, na_values=source.na_values)
        files.append(test_path)
    return TabularFrames(train=train, test=test, files=files)


# --------------------------------------------------------------------------- images
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
