"""Validation rules run before anything trains. Each returns a JSON-able report; problems are collected
(not just the first) and raised together as one DataValidationError naming file, row/column or image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from torchcycle.errors import DataValidationError

MAX_LISTED = 10


@dataclass
class Report:
    kind: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "passed": bool(ok), "detail": detail})
        return ok

    def fail(self, name: str, message: str) -> None:
        self.check(name, False, message)
        self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "failed" if self.errors else "passed",
            "kind": self.kind,
            "errors": self.errors,
            "checks": self.checks,
            "summary": self.summary,
        }

    def raise_if_failed(self) -> None:
        if self.errors:
            listed = "\n".join(f"  - {e}" for e in self.errors[:MAX_LISTED])
            more = f"\n  … and {len(self.errors) - MAX_LISTED} more" if len(self.errors) > MAX_LISTED else ""
            exc = DataValidationError(f"data validation failed ({len(self.errors)} problem(s)):\n{listed}{more}")
            exc.report = self.to_dict()  # type: ignore[attr-defined]
            raise exc


# --------------------------------------------------------------------------- tabular
@dataclass
class ColumnRoles:
    target: str
    numeric: list[str]
    categorical: list[str]

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


def resolve_roles(df: pd.DataFrame, source) -> ColumnRoles:
    """Decide which columns are numeric and which categorical, honouring explicit params first."""
    excluded = {source.target, *source.drop}
    features = source.features or [c for c in df.columns if c not in excluded]
    numeric = source.numeric
    categorical = source.categorical
    if numeric is None:
        numeric = [c for c in features if c not in (categorical or []) and pd.api.types.is_numeric_dtype(df[c])]
    if categorical is None:
        categorical = [c for c in features if c not in numeric]
    return ColumnRoles(target=source.target, numeric=list(numeric), categorical=list(categorical))


def as_labels(values: pd.Series) -> pd.Series:
    """Text labels that read the same whichever file they came from: whole floats such as 1.0 (what
    pandas makes of an integer column with gaps) become "1", surrounding spaces are dropped."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    return values.astype("string").str.strip()


def _where(name: str, idx: Any, has_header: bool) -> str:
    return f"{name} line {int(idx) + 2}" if has_header else f"{name} row {int(idx)}"


def validate_tabular(
    frames: dict[str, tuple[Path, pd.DataFrame]], source, preprocess, has_header: bool = True
) -> tuple[Report, dict[str, pd.DataFrame], ColumnRoles | None]:
    """Check every file of a tabular source and return typed, cleaned frames.

    `frames` maps a split name ("train", "test") to (file, rows). Rows with a missing target are
    dropped (the explicit policy) and counted; everything else that is wrong is an error.
    """
    report = Report(kind="tabular")
    target = source.target
    cleaned: dict[str, pd.DataFrame] = {}
    first_file, first = frames["train"]
    declared = {
        "features": source.features or [], "numeric": source.numeric or [],
        "categorical": source.categorical or [], "drop": source.drop,
    }  # fmt: skip
    for split, (file, df) in frames.items():
        name = file.name
        df = df.reset_index(drop=True)
        if df.empty:
            report.fail("rows", f"{file}: the file has no data rows. Point `source.path` at a file with rows.")
            continue
        if target not in df.columns:
            report.fail(
                "target_present",
                f"{file}: target column '{target}' not found. Columns are {list(df.columns)}. "
                f"Set `source.target` in params.yaml to the column that holds the label.",
            )
            continue
        report.check("target_present", True, f"{name}: '{target}'")
        for key, cols in declared.items():
            missing = [c for c in cols if c not in df.columns]
            if missing:
                report.fail(
                    "required_columns",
                    f"{file}: column(s) {missing} named in `source.{key}` are missing. "
                    f"Available columns: {list(df.columns)}.",
                )
        if split != "train" and set(df.columns) != set(first.columns):
            report.fail(
                "same_columns",
                f"{file}: columns differ from {first_file.name}: missing {sorted(set(first.columns) - set(df.columns))}, "
                f"extra {sorted(set(df.columns) - set(first.columns))}. Both files need the same columns.",
            )
        n_before = len(df)
        df = df[df[target].notna()].copy()  # keep the original index: messages cite file lines
        dropped = n_before - len(df)
        report.check("target_missing_policy", True, f"{name}: dropped {dropped} row(s) with no target")
        df[target] = as_labels(df[target])
        cleaned[split] = df
    if report.errors:
        return report, cleaned, None

    train = cleaned["train"]
    roles = resolve_roles(train, source)
    classes = sorted(train[target].unique())
    if len(classes) < 2:
        only = classes[0] if classes else "nothing"
        report.fail(
            "target_classes",
            f"{first_file}: target '{target}' has a single class ('{only}'); a classifier needs at least two. "
            "Check `source.target`, or add rows of the other class(es).",
        )
    else:
        counts = train[target].value_counts()
        report.check("target_classes", True, f"{len(classes)} classes: {counts.to_dict()}")
        rare = counts[counts < 2]
        if len(rare):
            report.fail(
                "class_size",
                f"{first_file}: class(es) {list(rare.index)} have fewer than 2 rows; a stratified split needs "
                "at least 2 rows per class. Add rows or merge the class.",
            )
    if "test" in cleaned:
        unknown = sorted(set(cleaned["test"][target].unique()) - set(classes))
        if unknown:
            report.fail(
                "test_labels",
                f"{frames['test'][0]}: labels {unknown} never appear in the training file; the model cannot "
                "predict them. Fix the labels or add training rows of those classes.",
            )

    for split, df in cleaned.items():
        file = frames[split][0]
        for col in roles.numeric:
            if col not in df.columns:
                continue
            parsed = pd.to_numeric(df[col], errors="coerce")
            bad = df[col].notna() & parsed.isna()
            if bad.any():
                idx = bad.idxmax()
                report.fail(
                    "numeric_types",
                    f"{_where(str(file), idx, has_header)}, column '{col}': value {df[col][idx]!r} is not a "
                    f"number ({int(bad.sum())} such value(s)). Fix the value, or list '{col}' under "
                    "`source.categorical` if it is not numeric.",
                )
            df[col] = parsed.astype("float64")
        for col in roles.categorical:
            if col in df.columns:
                df[col] = as_labels(df[col])
        missing = df[roles.features].isna().mean() if all(c in df for c in roles.features) else pd.Series()
        too_many = missing[missing > source.max_missing_fraction]
        for col, frac in too_many.items():
            report.fail(
                "missing_values",
                f"{file}, column '{col}': {frac:.0%} of values are missing (limit "
                f"{source.max_missing_fraction:.0%}). Drop the column with `source.drop` or raise "
                "`source.max_missing_fraction`.",
            )
        report.check(
            "missing_values_policy",
            not len(too_many),
            f"{file.name}: numeric missing -> {preprocess.numeric_missing}, categorical missing -> "
            f"{preprocess.categorical_missing}; counts {df[roles.features].isna().sum()[lambda s: s > 0].to_dict()}",
        )

    cleaned = {split: df.reset_index(drop=True) for split, df in cleaned.items()}
    report.summary = {
        "files": {split: str(frames[split][0]) for split in frames},
        "rows": {split: len(df) for split, df in cleaned.items()},
        "target": target,
        "classes": classes,
        "class_counts": {s: df[target].value_counts().to_dict() for s, df in cleaned.items()},
        "numeric": roles.numeric,
        "categorical": roles.categorical,
        "missing": {s: df[roles.features].isna().sum().to_dict() for s, df in cleaned.items()},
    }
    return report, cleaned, roles


# --------------------------------------------------------------------------- images
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
    report.check("images_decode", not any(e for e in report.errors if "decoded" in e), f"{len(records)} images decode")
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
