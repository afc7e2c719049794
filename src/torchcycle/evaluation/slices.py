"""Per-slice metrics and group-fairness measures on the test split.

Pure like `metrics.py`: a table of group labels (one row per test row, one column per slicing variable,
as a kind's `slice_frame` gives it), the encoded targets, the head's outputs and the target in; plain JSON
and figures out. Each slice is scored with the target's own `metrics()`, so a slice reads exactly like
the evaluate stage's headline numbers. Binary classification adds fairlearn's group-fairness measures on
the predicted labels of `target.predictions`, so a decision threshold in the target state is honoured.

Levels with fewer than `min_rows` rows are listed as skipped and left out of the fairness measures too:
a rate over a handful of rows would dominate a worst-case difference by noise alone.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MISSING = "<missing>"
FAIRNESS_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")


def slice_report(groups: pd.DataFrame, y: np.ndarray, outputs: np.ndarray, target: Any,
                 target_state: dict[str, Any], min_rows: int) -> dict[str, Any]:
    """Metrics per level of every column of `groups`, their gap to the overall value, and (binary
    classification) demographic parity and equalized odds per column. Plain JSON: None for undefined."""
    y, outputs = np.asarray(y), np.asarray(outputs)
    if not len(groups) == len(y) == len(outputs):
        raise ValueError(f"groups ({len(groups)} rows), y ({len(y)}) and outputs ({len(outputs)}) must align")
    labels = _labels(groups)
    overall = _headline(target, target.metrics(y, outputs, target_state))
    slices, skipped, reported = [], [], {}
    for column in labels.columns:
        values = labels[column].to_numpy()
        reported[column] = []
        for level in sorted(set(values), key=_natural_key):
            mask = values == level
            rows = int(mask.sum())
            if rows < min_rows:
                skipped.append({"column": column, "level": level, "rows": rows})
                continue
            metrics = _headline(target, target.metrics(y[mask], outputs[mask], target_state))
            gap = {m: (None if v is None or overall.get(m) is None else float(v - overall[m]))
                   for m, v in metrics.items()}
            slices.append({"column": column, "level": level, "rows": rows, "metrics": metrics, "gap": gap})
            reported[column].append(level)
    return {
        "columns": list(labels.columns),
        "min_rows": int(min_rows),
        "overall": overall,
        "slices": slices,
        "skipped": skipped,
        "fairness": _fairness(labels, reported, y, outputs, target, target_state),
        "largest_gap": _largest_gap(slices, target),
    }


def _labels(groups: pd.DataFrame) -> pd.DataFrame:
    """Group labels as text, missing values as MISSING."""
    return pd.DataFrame({str(c): [MISSING if _missing(v) else str(v) for v in groups[c]] for c in groups.columns},
                        index=range(len(groups)))


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _natural_key(level: str) -> tuple:
    """'Q2' before 'Q10', numbers by value, the missing level last."""
    parts = re.split(r"(\d+)", level)
    return (level == MISSING, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts])


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _headline(target: Any, metrics: dict[str, Any]) -> dict[str, float | None]:
    """The target's registry metrics (accuracy, roc_auc, … or rmse, mae, r2, …) as plain floats or None."""
    return {m: _number(metrics.get(m)) for m in target.metric_names if m in metrics}


def _largest_gap(slices: list[dict[str, Any]], target: Any) -> dict[str, Any] | None:
    """The slice that does worst against the overall value on the target's registry default metric."""
    metric = target.default_metric
    scored = [s for s in slices if s["gap"].get(metric) is not None]
    if not scored:
        return None
    pick = min if target.higher_is_better(metric) else max
    worst = pick(scored, key=lambda s: s["gap"][metric])
    return {"column": worst["column"], "level": worst["level"], "metric": metric, "gap": worst["gap"][metric]}


def _fairness(labels: pd.DataFrame, reported: dict[str, list[str]], y: np.ndarray, outputs: np.ndarray,
              target: Any, target_state: dict[str, Any]) -> dict[str, Any]:
    """fairlearn's selection rate, TPR and FPR by group, demographic parity and equalized odds
    differences per column, on the reported levels; empty unless the target names a positive class."""
    positive = target_state.get("positive_class")
    if positive is None:
        return {}
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    y_true = (y == list(target_state["classes"]).index(positive)).astype(np.int64)
    y_pred = (target.predictions(outputs, target_state)["predicted"].to_numpy() == positive).astype(np.int64)
    rates = dict(zip(FAIRNESS_RATES, (selection_rate, true_positive_rate, false_positive_rate)))
    out = {}
    for column, levels in reported.items():
        if not levels:
            continue
        values = labels[column].to_numpy()
        keep = np.isin(values, levels)
        t, p, g = y_true[keep], y_pred[keep], values[keep]
        frame = MetricFrame(metrics=rates, y_true=t, y_pred=p, sensitive_features=g)
        by_group = frame.by_group
        out[column] = {
            "demographic_parity_difference": _number(demographic_parity_difference(t, p, sensitive_features=g)),
            "equalized_odds_difference": _number(equalized_odds_difference(t, p, sensitive_features=g)),
            "by_group": {level: {**{r: _number(by_group.loc[level, r]) for r in FAIRNESS_RATES},
                                 "rows": int((g == level).sum())} for level in levels},
        }
    return out


# --------------------------------------------------------------------------- tables and figures
def slice_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per reported slice: rows, metrics, gaps and (binary classification) the group's rates."""
    rows = []
    for s in report["slices"]:
        fair = report["fairness"].get(s["column"], {}).get("by_group", {}).get(s["level"], {})
        rows.append({"column": s["column"], "level": s["level"], "rows": s["rows"], **s["metrics"],
                     **{f"gap_{m}": v for m, v in s["gap"].items()},
                     **{r: fair[r] for r in FAIRNESS_RATES if r in fair}})
    return pd.DataFrame(rows, columns=None if rows else ["column", "level", "rows"])


def slices_figure(report: dict[str, Any], metric: str) -> Figure:
    """Horizontal bars of `metric` per slice, grouped and coloured by column, the overall value a line."""
    from torchcycle.evaluation.plots import PALETTE, style

    slices = report["slices"]
    with style():
        fig = Figure(figsize=(8, min(max(2.5, 0.35 * len(slices) + 1.5), 30)), layout="constrained")
        ax = fig.subplots()
        if not slices:
            ax.text(0.5, 0.5, f"no slice has {report['min_rows']} or more rows", ha="center", va="center",
                    transform=ax.transAxes, color="#555555")
            ax.set_title(f"{metric} by slice")
            return fig
        positions, labels, position = [], [], 0.0
        for i, column in enumerate(report["columns"]):
            members = [s for s in slices if s["column"] == column]
            if not members:
                continue
            colour = PALETTE[i % len(PALETTE)]
            for j, s in enumerate(members):
                value = s["metrics"].get(metric)
                ax.barh(position, value if value is not None else 0.0, color=colour,
                        label=column if j == 0 else None)
                if value is None:
                    ax.text(0, position, " undefined", va="center", color="#555555")
                positions.append(position)
                labels.append(f"{s['level']} (n={s['rows']})")
                position += 1
            position += 0.6  # a gap between columns
        overall = report["overall"].get(metric)
        if overall is not None:
            ax.axvline(overall, color="#333333", linestyle="--", linewidth=1.2, label=f"overall = {overall:.3f}")
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_title(f"{metric} by slice")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def fairness_figure(report: dict[str, Any]) -> Figure:
    """Selection rate, TPR and FPR by group, one panel per column, the two differences in its title."""
    from torchcycle.evaluation.plots import PALETTE, style

    fairness = report["fairness"]
    if not fairness:
        raise ValueError("the report has no fairness measures (binary classification only)")
    with style():
        heights = [max(1.8, 0.55 * len(f["by_group"]) + 1.0) for f in fairness.values()]
        fig = Figure(figsize=(8, min(sum(heights) + 0.5, 30)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(fairness), 1, height_ratios=heights, squeeze=False)[:, 0])
        width = 0.8 / len(FAIRNESS_RATES)
        for ax, (column, f) in zip(axes, fairness.items()):
            levels = list(f["by_group"])
            base = np.arange(len(levels), dtype=float)
            for k, rate in enumerate(FAIRNESS_RATES):
                values = [f["by_group"][lv][rate] for lv in levels]
                ax.barh(base + (k - 1) * width, [v if v is not None else 0.0 for v in values], height=width,
                        color=PALETTE[k], label=rate.replace("_", " "))
            ax.set_yticks(base, [f"{lv} (n={f['by_group'][lv]['rows']})" for lv in levels])
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.set_title(f"{column}: demographic parity diff {_fmt(f['demographic_parity_difference'])}, "
                         f"equalized odds diff {_fmt(f['equalized_odds_difference'])}", fontsize=11)
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        axes[-1].set_xlabel("rate")
        fig.suptitle("Group fairness on the test split")
    return fig


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
