"""Validation of a tabular source before anything trains: problems are collected (not just the first)
and raised together as one DataValidationError naming the file, line and column."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from torchcycle.data.validate import Report


@dataclass
class ColumnRoles:
    target: str
    numeric: list[str]
    categorical: list[str]
    dates: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    target_type: str = "classification"
    target_type_reason: str = ""

    @property
    def features(self) -> list[str]:
        return self.numeric + self.dates + self.categorical


def resolve_roles(df: pd.DataFrame, source) -> ColumnRoles:
    """Decide the role of each column, honouring explicit params first: numbers, dates (never category
    levels), categories; ID-like columns (near-unique names, case numbers, …) are dropped with their
    reason unless `source.features` lists them."""
    from torchcycle.kinds.tabular.columns import detect_dates, detect_id_like
    from torchcycle.targets import infer_type

    excluded = {source.target, *source.drop}
    candidates = source.features or [c for c in df.columns if c not in excluded]
    dropped: dict[str, str] = {}
    if not source.features:
        declared = {*(source.numeric or []), *(source.categorical or []), *(source.dates or [])}
        ids = detect_id_like(df, [c for c in candidates if c not in declared])
        dropped = {c: f"ID-like ({why}); list it in `source.features` to keep it" for c, why in ids.items()}
    features = [c for c in candidates if c not in dropped]
    dates = source.dates
    if dates is None:
        undeclared = [c for c in features if c not in (source.numeric or []) and c not in (source.categorical or [])]
        dates = detect_dates(df, undeclared)
    numeric = source.numeric
    if numeric is None:
        numeric = [c for c in features if c not in (source.categorical or []) and c not in dates
                   and pd.api.types.is_numeric_dtype(df[c])]
    categorical = source.categorical
    if categorical is None:
        categorical = [c for c in features if c not in numeric and c not in dates]
    target_type, why = (infer_type(df[source.target], source.target_type) if source.target in df.columns
                        else (source.target_type, ""))
    return ColumnRoles(target=source.target, numeric=list(numeric), categorical=list(categorical), dates=list(dates),
                       dropped=dropped, target_type=target_type, target_type_reason=why)


def as_labels(values: pd.Series) -> pd.Series:
    """Text labels that read the same whichever file they came from: whole floats such as 1.0 (what
    pandas makes of an integer column with gaps) become "1", surrounding spaces are dropped."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")
    return values.astype("string").str.strip()


def _where(name: str, idx: Any, has_header: bool) -> str:
    return f"{name} line {int(idx) + 2}" if has_header else f"{name} row {int(idx)}"


def validate_tabular(
    frames: dict[str, tuple[Path, pd.DataFrame]], source, preprocess, has_header: bool = True, batch: bool = False
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
        cleaned[split] = df
    if report.errors:
        return report, cleaned, None

    train = cleaned["train"]
    roles = resolve_roles(train, source)
    _check_target(report, cleaned, frames, roles, source, batch)
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
        for col in roles.dates:
            _check_dates(report, df, col, file, has_header)
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
        "target_type": roles.target_type,
        "target_type_reason": roles.target_type_reason,
        "target_distribution": _target_summary(cleaned, roles),
        "numeric": roles.numeric,
        "dates": roles.dates,
        "categorical": roles.categorical,
        "columns": column_decisions(cleaned["train"], roles, preprocess),
        "missing": {s: df[roles.features].isna().sum().to_dict() for s, df in cleaned.items()},
    }
    return report, cleaned, roles




def _check_target(report: Report, cleaned: dict[str, pd.DataFrame], frames: dict, roles: ColumnRoles, source,
                  batch: bool = False) -> None:
    """The target type's own checks (classes, or numbers), with the inferred type and why in the report."""
    from torchcycle.targets import get_target

    target, first_file = roles.target, frames["train"][0]
    kind = get_target(roles.target_type)
    report.check("target_type", True, f"{roles.target_type} ({roles.target_type_reason})")
    problems = kind.check(cleaned["train"][target], source, batch)
    for problem in problems:
        report.fail("target_values", f"{first_file}: {problem}")
    for df in cleaned.values():
        df[target] = kind.clean(df[target])
    if not problems:
        report.check("target_values", True, str(kind.describe(cleaned["train"][target])))
    if "test" in cleaned:
        unknown = kind.unseen(cleaned["test"][target], cleaned["train"][target])
        if unknown:
            report.fail(
                "test_labels",
                f"{frames['test'][0]}: labels {unknown} never appear in the training file; the model cannot "
                "predict them. Fix the labels or add training rows of those classes.",
            )


def _target_summary(cleaned: dict[str, pd.DataFrame], roles: ColumnRoles) -> dict[str, Any]:
    from torchcycle.targets import get_target

    return {s: get_target(roles.target_type).describe(df[roles.target]) for s, df in cleaned.items()}


def _check_dates(report: Report, df: pd.DataFrame, col: str, file: Path, has_header: bool) -> None:
    from torchcycle.kinds.tabular.columns import unparseable

    if col not in df.columns:
        return
    bad = unparseable(df[col])
    if bad.any():
        idx = bad.idxmax()
        report.fail(
            "date_types",
            f"{_where(str(file), idx, has_header)}, column '{col}': value {df[col][idx]!r} is not a date "
            f"({int(bad.sum())} such value(s)). Fix the value (ISO 8601, e.g. 2024-03-01), or list '{col}' under "
            "`source.categorical` if it is not a date.",
        )


def column_decisions(train: pd.DataFrame, roles: ColumnRoles, preprocess) -> dict[str, dict[str, str]]:
    """What the pipeline does with each column, in words, for the validation report and the dashboard."""
    out: dict[str, dict[str, str]] = {roles.target: {"role": "target", "detail": roles.target_type}}
    for col in roles.numeric:
        out[col] = {"role": "numeric", "detail": f"imputed ({preprocess.numeric_missing}), scaled ({preprocess.scaling})"}
    for col in roles.dates:
        out[col] = {"role": "date", "detail": "year, month, day of week, day of year, days since the earliest "
                                              "training date; never category levels"}
    for col in roles.categorical:
        levels = int(train[col].nunique()) if col in train else 0
        cap = preprocess.max_categories
        detail = f"{levels} levels"
        if cap is not None and levels > cap:
            detail += f"; capped to the {cap} most frequent (`preprocess.max_categories`), the rest map to 'unseen'"
        out[col] = {"role": "categorical", "detail": detail}
    for col, why in roles.dropped.items():
        out[col] = {"role": "dropped", "detail": why}
    return out
