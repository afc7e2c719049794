"""The Model page's sections on what the evaluate, slices and register stages reported, for any target type:
confidence intervals next to a metric, per-slice metrics with their gap to the overall value and the
group-fairness measures (slices.json), and a version's promotion gates and model card.

The pure helpers (tables and sentences from the reports' dicts) come first; the `*_section` functions
draw them. Which way is better for a metric comes from the caller (the target type's
`higher_is_better`), so nothing here knows the metrics by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import ui

WORSE, BETTER = "#D55E00", "#0072B2"  # Okabe-Ito vermillion and blue: below and above the overall value
FAIRNESS_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate")
FAIRNESS_MEASURES = {"demographic_parity_difference": "demographic parity difference",
                     "equalized_odds_difference": "equalized odds difference"}
VERDICT_STYLE = {"pass": "color: #009E73; font-weight: 600", "fail": f"color: {WORSE}; font-weight: 600",
                 "skipped": "color: #777777"}  # Okabe-Ito bluish green for a pass


# --------------------------------------------------------------------------- pure helpers
def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def short(value: Any, signed: bool = False) -> str:
    """A metric of any scale in four significant digits: 0.8656, 0.0118, 2,914, +0.016; '–' when undefined."""
    number = _number(value)
    if number is None:
        return "–"
    return f"{number:+,.4g}" if signed else f"{number:,.4g}"


def level_text(level: Any) -> str:
    """A confidence level as a percentage: 0.95 -> '95%'."""
    value = _number(level)
    if value is None:
        return "95%"
    return f"{value * 100:g}%" if value <= 1 else f"{value:g}%"


def ci_text(ci: dict | None, fmt: Callable[[float], str] = lambda v: f"{v:.3f}") -> str | None:
    """'95% CI 0.866–0.876' from metrics.json's `confidence_intervals[metric]`; None without both ends."""
    low, high = _number((ci or {}).get("low")), _number((ci or {}).get("high"))
    if low is None or high is None:
        return None
    return f"{level_text((ci or {}).get('level'))} CI {fmt(low)}–{fmt(high)}"


def with_ci(shown: str, ci: dict | None, fmt: Callable[[float], str] = lambda v: f"{v:.3f}") -> str:
    """'0.871 (95% CI 0.866–0.876)', or the value alone when there is no interval."""
    text = ci_text(ci, fmt)
    return f"{shown} ({text})" if text else shown


def gap_colour(gap: Any, higher_is_better: bool) -> str:
    """CSS for a slice's gap to the overall value: vermillion when the slice does worse, blue when better."""
    value = _number(gap)
    if value is None or value == 0:
        return ""
    worse = value < 0 if higher_is_better else value > 0
    return f"color: {WORSE if worse else BETTER}; font-weight: 600"


def slice_metrics(report: dict) -> list[str]:
    """The metrics the slices report scores each slice with, in its order."""
    names = list(report.get("overall") or {})
    for s in report.get("slices") or []:
        names += [m for m in s.get("metrics") or {} if m not in names]
    return names


def slice_columns(report: dict) -> list[str]:
    """The slicing columns with something to show (a reported slice, a skipped level or fairness measures)."""
    used = {s.get("column") for s in (report.get("slices") or []) + (report.get("skipped") or [])}
    return [c for c in report.get("columns") or [] if c in used or c in (report.get("fairness") or {})]


def slice_rows(report: dict, column: str) -> pd.DataFrame:
    """One row per reported level of `column`: level, rows, then each metric and its gap to overall; a metric
    undefined on every level (ROC AUC on slices of one class) is left out."""
    metrics = slice_metrics(report)
    metrics = [m for m in metrics if any(_number((s.get("metrics") or {}).get(m)) is not None
                                         for s in report.get("slices") or [] if s.get("column") == column)]
    rows = [{"level": str(s["level"]), "rows": int(s["rows"]),
             **{k: v for m in metrics for k, v in ((m, _number((s.get("metrics") or {}).get(m))),
                                                   (f"gap {m}", _number((s.get("gap") or {}).get(m))))}}
            for s in report.get("slices") or [] if s.get("column") == column]
    return pd.DataFrame(rows, columns=["level", "rows", *(x for m in metrics for x in (m, f"gap {m}"))])


def skipped_text(report: dict, column: str) -> str | None:
    """Which levels of `column` had too few rows to be reported on their own."""
    skipped = [s for s in report.get("skipped") or [] if s.get("column") == column]
    if not skipped:
        return None
    levels = ", ".join(f"{s.get('level')} ({s.get('rows')} rows)" for s in skipped)
    return f"Not reported (fewer than {report.get('min_rows')} test rows): {levels}."


def largest_gap_text(report: dict) -> str | None:
    """'race = Asian-Pac-Islander: roc_auc 0.902, 0.023 below the overall 0.925 (the largest gap).'"""
    gap = report.get("largest_gap") or {}
    metric, value = gap.get("metric"), _number(gap.get("gap"))
    if not metric or value is None:
        return None
    overall = _number((report.get("overall") or {}).get(metric))
    scored = next((_number((s.get("metrics") or {}).get(metric)) for s in report.get("slices") or []
                   if s.get("column") == gap.get("column") and s.get("level") == gap.get("level")), None)
    side = "below" if value < 0 else "above"
    at = f" {short(scored)}," if scored is not None else ""
    versus = f" the overall {short(overall)}" if overall is not None else " overall"
    return f"Largest gap: **{gap.get('column')} = {gap.get('level')}**: {metric}{at} {short(abs(value))} {side}{versus}."


def fairness_rows(report: dict, column: str) -> pd.DataFrame:
    """The group-fairness rates of `column` by level (selection rate, TPR, FPR, rows); empty without."""
    groups = ((report.get("fairness") or {}).get(column) or {}).get("by_group") or {}
    return pd.DataFrame([{"level": str(level), **{r: _number(g.get(r)) for r in FAIRNESS_RATES},
                          "rows": g.get("rows")} for level, g in groups.items()],
                        columns=["level", *FAIRNESS_RATES, "rows"])


def decision_from_tags(tags: dict[str, str]) -> dict | None:
    """A registered version's promotion decision from its tags (`decision.*`, `gate.<name>.*`), in the
    shape of registry.json's `decision`; None for a version registered before decisions were tagged."""
    if not any(k.startswith(("decision.", "gate.")) for k in tags):
        return None
    gates: dict[str, dict] = {}
    for key, value in tags.items():
        if key.startswith("gate.") and key.count(".") >= 2:
            name, field = key.removeprefix("gate.").rsplit(".", 1)
            gates.setdefault(name, {"name": name})[field] = value
    for gate in gates.values():
        for field in ("value", "limit"):
            gate[field] = _number(gate.get(field))
        gate["passed"] = gate.get("passed") == "true"
        gate["skipped"] = gate.get("verdict") == "skipped"
    promoted = tags.get("decision.promoted")
    warnings = tags.get("decision.warnings")
    return {"promoted": None if promoted is None else promoted == "true", "reason": tags.get("decision.reason"),
            "rule": tags.get("decision.rule"), "metric": tags.get("decision.metric"),
            "challenger_score": _number(tags.get("decision.challenger_score")),
            "champion_version": None if tags.get("decision.champion_version") in (None, "none")
            else tags["decision.champion_version"],
            "champion_score": _number(tags.get("decision.champion_score")),
            "gates": list(gates.values()), "warnings": warnings.split(" | ") if warnings else []}


def gates_frame(gates: list[dict]) -> pd.DataFrame:
    """One row per promotion gate: name, value, limit, verdict (pass, fail or skipped), detail."""
    return pd.DataFrame([{"gate": g.get("name"), "value": _number(g.get("value")), "limit": _number(g.get("limit")),
                          "verdict": str(g.get("verdict") or "–"),
                          "detail": g.get("detail") or ""} for g in gates],
                        columns=["gate", "value", "limit", "verdict", "detail"])


def decision_text(decision: dict, version: str | None) -> str:
    """'v2 was promoted to champion: improves roc_auc by … .'"""
    outcome = decision.get("promoted")
    said = "was promoted to champion" if outcome else ("stayed a challenger" if outcome is False else "was registered")
    reason = decision.get("reason")
    return f"**v{version}** {said}" + (f": {reason}." if reason else ".")


# --------------------------------------------------------------------------- sections
def metric(col: Any, label: str, value: Any, shown: str, ci: dict | None, fmt: Callable[[float], str]) -> None:
    """A headline metric with its bootstrap confidence interval underneath (and in its tooltip)."""
    text = ci_text(ci, fmt)
    samples = _number((ci or {}).get("samples"))
    detail = f"{shown} ({text}, {samples:.0f} bootstrap resamples of the test rows)" if text and samples else None
    col.metric(label, shown, help=detail)
    if text:
        col.caption(text)


def _styled(frame: pd.DataFrame, higher_is_better: Callable[[str], bool]) -> Any:
    gaps = [c for c in frame.columns if c.startswith("gap ")]
    values = [c for c in frame.columns if c not in gaps and c not in ("level", "rows")]
    styler = frame.style.format({**dict.fromkeys(values, short),
                                 **dict.fromkeys(gaps, lambda v: short(v, signed=True))})
    for c in gaps:
        better = higher_is_better(c.removeprefix("gap "))
        styler = styler.map(lambda v, better=better: gap_colour(v, better), subset=[c])
    return styler


def slices_section(report: dict | None, higher_is_better: Callable[[str], bool], origin: str) -> None:
    """Per-slice metrics of one slicing column (table with coloured gaps, bar chart against overall) and,
    when the report has them for that column, the group-fairness rates and differences."""
    st.subheader("Slices and fairness")
    if not report:
        st.info("No slices report for this model: the `slices@` stage writes one (`reports/<task>/slices.json`); "
                "versions trained before it existed have none.", icon=":material/info:")
        return
    st.caption(f"The metrics on each group of the test split, from {origin}. Gaps are slice − overall: "
               f":orange[worse] or :blue[better] than the whole test split.")
    largest = largest_gap_text(report)
    if largest:
        st.warning(largest, icon=":material/warning:")
    columns = slice_columns(report)
    if not columns:
        st.info(f"No slice has {report.get('min_rows')} or more test rows.")
        return
    left, right = st.columns([1, 1])
    column = left.selectbox("Slice column", columns, key="slice_column")
    table = slice_rows(report, column)
    metrics = [c for c in table.columns if c not in ("level", "rows") and not c.startswith("gap ")]
    undefined = [m for m in slice_metrics(report) if m not in metrics]
    default = (report.get("largest_gap") or {}).get("metric")
    chosen = right.selectbox("Metric", metrics or slice_metrics(report), key="slice_metric",
                             index=metrics.index(default) if default in metrics else 0)
    if table.empty:
        st.info(f"No level of **{column}** has {report.get('min_rows')} or more test rows.")
    else:
        st.dataframe(_styled(table, higher_is_better), hide_index=True)
        if undefined:
            st.caption(f"Undefined on every slice of {column}, so not shown: {', '.join(undefined)}.")
        overall = _number((report.get("overall") or {}).get(chosen))
        chart = table.dropna(subset=[chosen])
        if not chart.empty:
            title = f"{chosen} by {column}" + (f" (dashed: overall {short(overall)})" if overall is not None else "")
            st.altair_chart(ui.bars(chart, chosen, "level", title, chosen, sort=None, rule=overall))
    skipped = skipped_text(report, column)
    if skipped:
        st.caption(skipped)
    fairness = (report.get("fairness") or {}).get(column)
    if fairness:
        st.markdown(f"**Group fairness over {column}** (predicted labels, the decision threshold applied)")
        cols = st.columns(len(FAIRNESS_MEASURES))
        for col, (key, label) in zip(cols, FAIRNESS_MEASURES.items()):
            col.metric(label, ui.fmt(_number(fairness.get(key)), 3))
        st.dataframe(fairness_rows(report, column), hide_index=True, column_config={
            r: st.column_config.ProgressColumn(r.replace("_", " "), min_value=0.0, max_value=1.0, format="%.3f")
            for r in FAIRNESS_RATES})
        st.caption("Demographic parity difference: the largest difference in selection rate between groups; "
                   "equalized odds difference: the larger of the largest TPR and FPR differences (fairlearn).")


def registration_section(registration: dict, label: str) -> None:
    """A version's promotion decision with its gates, and its model card."""
    st.subheader("Promotion decision and model card")
    version, decision, card = registration.get("version"), registration.get("decision"), registration.get("card")
    if version is None:
        st.info(f"The {label} is not registered yet: the `register@` stage registers it, decides on its "
                "promotion and writes its model card.", icon=":material/info:")
        return
    if decision is None:
        st.caption(f"v{version} has no recorded promotion decision (registered before decisions were tagged).")
    else:
        st.markdown(decision_text(decision, version))
        if decision.get("rule"):
            st.caption(f"Rule: {decision['rule']}.")
        for warning in decision.get("warnings") or []:
            st.warning(warning, icon=":material/warning:")
        gates = gates_frame(decision.get("gates") or [])
        if gates.empty:
            st.caption("No promotion gates were configured for this version.")
        else:
            styled = gates.style.format({"value": "{:.4f}", "limit": "{:g}"}, na_rep="–")
            st.dataframe(styled.map(lambda v: VERDICT_STYLE.get(v, ""), subset=["verdict"]), hide_index=True)
    if card is None:
        st.info(f"v{version} has no model card: it was registered before model cards existed (the register "
                "stage logs one per version as the run artifact `model_card/model_card.md`).", icon=":material/info:")
        return
    with st.expander(f"Model card of v{version}", expanded=False, icon=":material/description:"):
        st.markdown(card)
        st.download_button("Download the model card (Markdown)", card, file_name=f"model_card_v{version}.md",
                           mime="text/markdown", key="model_card_download")
