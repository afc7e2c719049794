"""Validation of a text source: the text column is there and holds text, empty and duplicate texts,
lengths, encoding problems and the label balance — counted, with examples and the rows named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.data.validate import Report
from torchcycle.kinds.tabular.validate import as_labels

EXAMPLES = 5
# U+FFFD (a decoder gave up), C0 controls other than tab/newline, and UTF-8 read as Latin-1/cp1252 ("Ã©", "â€™")
_BROKEN = re.compile("\ufffd|[\x00-\x08\x0b\x0c\x0e-\x1f]|Ã[\x80-\xbf©¨ª«¢§±³¼½¶]|â€")


def words(texts: pd.Series) -> np.ndarray:
    return texts.str.split().str.len().fillna(0).to_numpy(dtype=np.int64)


def length_summary(texts: pd.Series) -> dict[str, float]:
    n = words(texts)
    if not len(n):
        return {}
    q = np.percentile(n, [50, 90, 99])
    return {"min_words": int(n.min()), "median_words": float(q[0]), "p90_words": float(q[1]),
            "p99_words": float(q[2]), "max_words": int(n.max()), "mean_words": round(float(n.mean()), 2)}


def _rows(file: Path, idx: Any, has_header: bool = True) -> str:
    lines = [int(i) + (2 if has_header else 0) for i in list(idx)[:EXAMPLES]]
    more = f" and {len(idx) - EXAMPLES} more" if len(idx) > EXAMPLES else ""
    return f"{file.name} line(s) {', '.join(map(str, lines))}{more}"


def validate_text(frames: dict[str, tuple[Path, pd.DataFrame]], source, batch: bool = False,
                  ) -> tuple[Report, dict[str, pd.DataFrame], str]:
    """Check every file; return the report, frames of (text, target) with empty texts and missing labels
    dropped (counted), and the target type with its reason."""
    from torchcycle.targets import get_target, infer_type

    report = Report(kind="text")
    col, target = source.text_column, source.target
    cleaned: dict[str, pd.DataFrame] = {}
    target_type, why = source.target_type, ""
    for split, (file, df) in frames.items():
        df = df.reset_index(drop=True)
        if df.empty:
            report.fail("rows", f"{file}: the file has no data rows. Point `source.path` at a file with rows.")
            continue
        absent = [c for c in (col, target) if c not in df.columns]
        if absent:
            report.fail("required_columns", f"{file}: column(s) {absent} not found (`source.text_column` is '{col}', "
                        f"`source.target` is '{target}'). Columns are {list(df.columns)}; set those keys in params.yaml.")
            continue
        texts = df[col]
        # an all-empty column reads as float NaN: say it is empty rather than "holds float64 values"
        if (texts.astype("string").fillna("").str.strip() == "").all():
            report.fail("empty_texts", f"{file}: every value of column '{col}' is empty. Set `source.text_column` to "
                        "the column with the text.")
            continue
        if pd.api.types.is_numeric_dtype(texts) or pd.api.types.is_bool_dtype(texts):
            report.fail("text_column", f"{file}: column '{col}' holds {texts.dtype} values, not text. Set "
                        "`source.text_column` to the column with the text (a table of numbers is `kind: tabular`).")
            continue
        texts = texts.astype("string")
        empty = texts.isna() | (texts.str.strip() == "")
        share = float(empty.mean())
        if share > source.max_empty_fraction:
            report.fail("empty_texts", f"{file}: {int(empty.sum())} of {len(df)} texts ({share:.1%}) in column '{col}' "
                        f"are empty ({_rows(file, np.flatnonzero(empty))}); more than `source.max_empty_fraction` "
                        f"= {source.max_empty_fraction}. Fix the file or raise the limit to drop them.")
            continue
        report.check("empty_texts", not empty.any(), f"{file.name}: {int(empty.sum())} empty text(s) dropped"
                     + (f" ({_rows(file, np.flatnonzero(empty))})" if empty.any() else ""))
        labels = df[target]
        no_label = labels.isna() | (labels.astype("string").str.strip() == "")
        report.check("missing_target", not no_label.any(), f"{file.name}: {int(no_label.sum())} row(s) without a "
                     "label dropped" + (f" ({_rows(file, np.flatnonzero(no_label))})" if no_label.any() else ""))
        keep = ~(empty | no_label).to_numpy()
        broken = texts.fillna("").str.contains(_BROKEN).to_numpy() & keep
        report.check("encoding", not broken.any(), f"{file.name}: {int(broken.sum())} text(s) with replacement "
                     "characters, control characters or mis-decoded UTF-8"
                     + (f" ({_rows(file, np.flatnonzero(broken))}: {texts[broken].head(2).str.slice(0, 60).tolist()})"
                        if broken.any() else ""))
        out = pd.DataFrame({col: texts[keep].str.strip().astype(object).to_numpy(),
                            target: labels[keep].to_numpy()})
        dup = out[col].duplicated(keep=False)
        conflicting = int(out[dup].groupby(col)[target].nunique().gt(1).sum()) if dup.any() else 0
        report.check("duplicates", not dup.any(), f"{file.name}: {int(out[col].duplicated().sum())} duplicated "
                     f"text(s), {conflicting} of them with different labels"
                     + (f" (e.g. {out[col][dup].head(2).str.slice(0, 60).tolist()})" if dup.any() else ""))
        report.summary.setdefault("lengths", {})[split] = length_summary(out[col])
        report.summary.setdefault("dropped", {})[split] = {"empty_text": int(empty.sum()),
                                                           "missing_target": int(no_label.sum())}
        cleaned[split] = out
    if "train" not in cleaned:
        return report, cleaned, target_type
    if not batch:
        target_type, why = infer_type(cleaned["train"][target], source.target_type)
    kind = get_target(target_type)
    if target_type == "classification":
        for df in cleaned.values():
            df[target] = as_labels(df[target])
    report.check("target_type", True, f"{target_type} ({why})" if why else target_type)
    problems = kind.check(cleaned["train"][target], source, batch)
    for problem in problems:
        report.fail("target_values", f"{frames['train'][0]}: {problem}")
    for df in cleaned.values():
        df[target] = kind.clean(df[target])
    if not problems:
        report.check("label_balance", True, str(kind.describe(cleaned["train"][target])))
    if "test" in cleaned and not problems:
        unknown = kind.unseen(cleaned["test"][target], cleaned["train"][target])
        if unknown:
            report.fail("test_labels", f"{frames['test'][0]}: labels {unknown} never appear in the training file.")
    report.summary["rows"] = {split: len(df) for split, df in cleaned.items()}
    report.summary["target_type"] = target_type
    report.summary["target_type_reason"] = why
    return report, cleaned, target_type
