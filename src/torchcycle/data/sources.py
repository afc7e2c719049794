"""Reading raw sources: the built-in datasets shipped in the package, a user's CSV/Parquet file, or a
user's image folder. Readers return plain pandas/numpy objects and raise errors that name the file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from torchcycle.errors import DataValidationError


def builtin_file(*parts: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("torchcycle").joinpath("datasets", *parts)))


def read_table(path: Path, *, sep: str = ",", na_values: list[str] | None = None,
               keep_default_na: bool = True) -> pd.DataFrame:
    """Read a CSV or Parquet file; a malformed file is an error naming the file and, for CSV, the line.
    `keep_default_na=False`: only `na_values` are missing (texts such as "None" or "NA" stay text)."""
    if not path.exists():
        raise DataValidationError(
            f"{path}: file not found. Check `source.path` in params.yaml (paths are relative to the project root)."
        )
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if any(suffix.endswith(s) for s in (".csv", ".csv.gz", ".tsv", ".txt")):
            return pd.read_csv(path, sep=sep, na_values=na_values or [], keep_default_na=keep_default_na,
                               skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise DataValidationError(
            f"{path}: malformed CSV ({exc}). Every row must have the same number of fields as the header; "
            "fix or remove the offending line, or set `source.csv_sep` if the file uses another separator."
        ) from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{path}: not UTF-8 text ({_first_bad_utf8(path, exc)}). "
            "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or point `source.path` at the right file."
        ) from None
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: cannot be read as a table ({exc}). Is it an empty or binary file?") from None
    except Exception as exc:  # pyarrow raises a zoo of types for corrupt Parquet
        raise DataValidationError(f"{path}: cannot be read ({type(exc).__name__}: {exc}).") from None
    raise DataValidationError(
        f"{path}: unsupported file type '{suffix}'. Use a .csv, .csv.gz or .parquet file."
    )


def _first_bad_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where the file stops being UTF-8: line, byte offset in the file and the byte. pandas' decoder reports
    an offset into its read buffer, not into the file, so the file is decoded again, a block at a time."""
    import codecs
    import gzip

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    try:
        with (gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")) as f:
            while True:
                block = f.read(1 << 20)
                try:
                    decoder.decode(block, final=not block)
                except UnicodeDecodeError as bad:  # bad.object is the undecoded tail of earlier blocks + this one
                    start = offset + len(block) - len(bad.object) + bad.start
                    line += bad.object[: bad.start].count(b"\n")
                    return f"line {line}, byte {bad.object[bad.start:bad.start + 1]!r} at offset {start}: {bad.reason}"
                if not block:
                    break
                offset += len(block)
                line += block.count(b"\n")
    except OSError:
        pass
    return f"byte {exc.object[exc.start:exc.start + 1]!r}: {exc.reason}"


def display_path(path: Path, root: Path) -> Path:
    """A path that reads the same on every machine: relative to the project, or to the package."""
    for base in (root.resolve(), builtin_file().parent.parent):
        try:
            return path.resolve().relative_to(base)
        except ValueError:
            continue
    return path
