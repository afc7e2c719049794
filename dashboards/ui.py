"""Shared page pieces: the task picker, the 'nothing yet' message, and charts in the house style
(Okabe-Ito colours and cividis, as in torchcycle.evaluation.plots, so the dashboard and the reports match)."""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data
from torchcycle.evaluation.plots import MATRIX_CMAP, PALETTE

TASK_KEY = "task"
CHOSEN_KEY = "_task_chosen"  # survives pages that do not draw the picker
RUN_HINT = "Run `make run` (the whole pipeline: train, evaluate, explain, export, register) first."


def task_picker() -> str | None:
    """Sidebar selector of the task every page shows; None when params.yaml defines none."""
    names = list(data.tasks())
    if not names:
        return None
    wanted = st.query_params.get(TASK_KEY)  # links such as /predict?task=mnist open on that task
    if wanted in names and st.session_state.get("_task_from_link") != wanted:
        st.session_state[TASK_KEY] = st.session_state["_task_from_link"] = wanted
    if st.session_state.get(TASK_KEY) not in names:  # the widget's state is gone: restore the last choice
        st.session_state[TASK_KEY] = st.session_state.get(CHOSEN_KEY) if st.session_state.get(CHOSEN_KEY) in names \
            else names[0]
    chosen = st.sidebar.selectbox("Task", names, key=TASK_KEY, format_func=lambda t: f"{t} ({data.tasks()[t]})")
    st.session_state[CHOSEN_KEY] = chosen
    return chosen


def task() -> str:
    """The task chosen in the sidebar (the first task when the page runs on its own)."""
    chosen = st.session_state.get(TASK_KEY)
    if chosen in data.tasks():
        st.session_state[CHOSEN_KEY] = chosen
        return chosen
    return task_picker()


def nothing_yet(what: str) -> None:
    """Tell the reader what to run instead of failing, then end the page."""
    st.info(f"{what}\n\n{RUN_HINT}", icon=":material/hourglass_empty:")
    st.stop()


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- charts
def colours(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def _finish(chart: alt.Chart, height: Any = 320) -> alt.Chart:
    return (chart.properties(height=height)
            .configure_axis(labelFontSize=12, titleFontSize=13, gridColor="#DDDDDD")
            .configure_legend(labelFontSize=12, titleFontSize=12, orient="bottom")
            .configure_title(fontSize=15, anchor="start"))  # fmt: skip


def lines(frame: pd.DataFrame, x: str, y: str, colour: str | None, title: str, x_title: str | None = None,
          y_title: str | None = None, diagonal: bool = False, height: int = 320) -> alt.Chart:
    """Line chart with one Okabe-Ito colour per series; optional y = x reference line."""
    enc: dict[str, Any] = {
        "x": alt.X(x, type="quantitative", title=x_title or x),
        "y": alt.Y(y, type="quantitative", title=y_title or y),
        "tooltip": [c for c in (colour, x, y) if c],
    }
    if colour:
        n = frame[colour].nunique()
        enc["color"] = alt.Color(colour, type="nominal", scale=alt.Scale(range=colours(n)), title=colour)
    chart = alt.Chart(frame, title=title).mark_line(strokeWidth=2.5).encode(**enc)
    if diagonal:
        ref = alt.Chart(pd.DataFrame({x: [0, 1], y: [0, 1]})).mark_line(
            strokeDash=[5, 4], color="#888888", strokeWidth=1).encode(x=x, y=y)
        chart = ref + chart
    return _finish(chart, height)


def bars(frame: pd.DataFrame, x: str, y: str, title: str, x_title: str | None = None, colour: str | None = None,
         height: Any = None, sort: str | None = "-x", rule: float | None = None) -> alt.Chart:
    """Horizontal bars (y categorical), largest on top; `rule`: a dashed reference line at that x (e.g. the
    overall value the bars are compared with)."""
    enc: dict[str, Any] = {
        "x": alt.X(x, type="quantitative", title=x_title or x),
        "y": alt.Y(y, type="nominal", sort=sort, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=220)),
        "tooltip": [y, alt.Tooltip(x, format=".4f")],
    }
    if colour:
        enc["color"] = alt.Color(colour, type="nominal", scale=alt.Scale(range=colours(frame[colour].nunique())))
    else:
        enc["color"] = alt.value(PALETTE[0])
    chart = alt.Chart(frame, title=title).mark_bar().encode(**enc)
    if rule is not None:
        chart = chart + alt.Chart(pd.DataFrame({x: [rule]})).mark_rule(
            strokeDash=[5, 4], color="#333333", strokeWidth=1.5).encode(x=alt.X(x, type="quantitative"))
    # one band per bar (a fixed pixel height collapses short charts in Streamlit)
    return _finish(chart, height or alt.Step(26))


def points(frame: pd.DataFrame, x: str, y: str, title: str, x_title: str | None = None,
           y_title: str | None = None, diagonal: bool = False, zero_line: bool = False, height: int = 300) -> alt.Chart:
    """Scatter plot in the first house colour; optional y = x line (predicted vs actual) or y = 0 line."""
    chart = alt.Chart(frame, title=title).mark_circle(size=18, opacity=0.55, color=PALETTE[0]).encode(
        x=alt.X(x, type="quantitative", title=x_title or x, scale=alt.Scale(zero=False)),
        y=alt.Y(y, type="quantitative", title=y_title or y, scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip(x, format=",.4~f"), alt.Tooltip(y, format=",.4~f")],
    )
    rule = None
    if diagonal:
        lo, hi = float(min(frame[x].min(), frame[y].min())), float(max(frame[x].max(), frame[y].max()))
        rule = alt.Chart(pd.DataFrame({x: [lo, hi], y: [lo, hi]})).mark_line(
            strokeDash=[5, 4], color="#888888", strokeWidth=1).encode(x=x, y=y)
    elif zero_line:
        rule = alt.Chart(pd.DataFrame({y: [0.0]})).mark_rule(strokeDash=[5, 4], color="#888888").encode(y=y)
    return _finish(chart if rule is None else rule + chart, height)


def histogram(edges: list[float], counts: list[int], title: str, x_title: str, height: int = 280) -> alt.Chart:
    """Bars between bin edges (as data reports and evaluation tables store histograms)."""
    frame = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "rows": counts})
    return _finish(alt.Chart(frame, title=title).mark_bar(color=PALETTE[0]).encode(
        x=alt.X("from:Q", bin="binned", title=x_title), x2="to:Q", y=alt.Y("rows:Q", title="rows"),
        tooltip=[alt.Tooltip("from:Q", format=",.4~f"), alt.Tooltip("to:Q", format=",.4~f"), "rows:Q"]), height)


def interval(predicted: float, lower: float, upper: float, name: str, what: str,
             known: tuple[float | None, float | None] = (None, None), height: int = 90) -> alt.Chart:
    """One prediction as a point on its interval, against the range the model was trained on (grey)."""
    rows = [{"what": what, "from": lower, "to": upper, "at": predicted}]
    frame = pd.DataFrame(rows)
    x = alt.X("from:Q", title=name, scale=alt.Scale(zero=False))
    layers = []
    if None not in known:
        layers.append(alt.Chart(pd.DataFrame({"from": [known[0]], "to": [known[1]]})).mark_rule(
            color="#BBBBBB", strokeWidth=2).encode(x=x, x2="to:Q"))
    layers.append(alt.Chart(frame).mark_rule(color=PALETTE[0], strokeWidth=8, opacity=0.6).encode(
        x=x, x2="to:Q", tooltip=[alt.Tooltip("from:Q", title="lower", format=",.4~f"),
                                  alt.Tooltip("to:Q", title="upper", format=",.4~f")]))
    layers.append(alt.Chart(frame).mark_point(color=PALETTE[3], filled=True, opacity=1, size=160, shape="diamond").encode(
        x=alt.X("at:Q"), tooltip=[alt.Tooltip("at:Q", title="predicted", format=",.4~f")]))
    return _finish(alt.layer(*layers), height)


def number(value: float) -> str:
    """A predicted or observed quantity as a person reads it: 3,912 · 48.2 · 0.0371."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def heatmap(matrix: pd.DataFrame, title: str, normalise: bool) -> alt.Chart:
    """Confusion matrix: cividis cells, counts (and row shares) in the tooltip and as labels."""
    value = "share" if normalise else "count"
    base = alt.Chart(matrix, title=title).encode(
        x=alt.X("predicted:N", title="predicted", sort=None),
        y=alt.Y("actual:N", title="actual", sort=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme=MATRIX_CMAP), title=value),
        tooltip=["actual", "predicted", "count", alt.Tooltip("share:Q", format=".1%")],
    )
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text(f"{value}:Q", format=".0%" if normalise else "d"),
        color=alt.condition(alt.datum.share > 0.5, alt.value("black"), alt.value("white")),
    )
    step = alt.Step(90 if matrix["actual"].nunique() <= 4 else 42)  # square cells, sized per class
    return _finish((cells + text).properties(width=step), step)


def square(chart: alt.Chart) -> None:
    """Draw at the chart's own width (a stretched confusion matrix turns into flat stripes)."""
    st.altair_chart(chart, width="content")


def pyplot(fig: Any) -> None:
    """A matplotlib Figure built by torchcycle's plot functions (no pyplot state involved)."""
    st.pyplot(fig)


def png(fig: Any, dpi: int = 110) -> bytes:
    """A figure as PNG bytes, so pages can cache the picture rather than redraw it on every visit."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
