"""Reading a tabular source: the built-in tables shipped in the package or a user's CSV/Parquet files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from torchcycle.data.sources import builtin_file, read_table

ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    "income",
]  # fmt: skip
ADULT_NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]

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


def load_diamonds() -> TabularFrames:
    """ggplot2's 53,940 diamonds (price in US dollars from carat, cut, colour, clarity and dimensions)."""
    file = builtin_file("diamonds", "diamonds.csv.gz")
    return TabularFrames(train=pd.read_csv(file), test=None, files=[file])


BUILTIN = {"adult": load_adult, "diamonds": load_diamonds}


def load_tabular(source, root: Path) -> TabularFrames:
    """Load a tabular task's rows from its `source` params section."""
    if source.builtin:
        return BUILTIN[source.builtin]()
    train_path = root / source.path
    train = read_table(train_path, sep=source.csv_sep, na_values=source.na_values)
    files = [train_path]
    test = None
    if source.test_path:
        test_path = root / source.test_path
        test = read_table(test_path, sep=source.csv_sep, na_values=source.na_values)
        files.append(test_path)
    return TabularFrames(train=train, test=test, files=files)


