"""Explain: SHAP (global importance, beeswarm, any test row) for tabular tasks; Grad-CAM overlays by class
and by correct/misclassified for image tasks. Explanations use the torch weights of the served model."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from dashboards import data, explanations, ui

from torchcycle.evaluation.plots import MATRIX_CMAP
from torchcycle.explain import plots as XP

st.title("Explain")
task = ui.task()
p = data.paths(task)
summary = data.read(p.explain / "summary.json")
model = data.served(task)
if summary is None and model is None:
    ui.nothing_yet(f"No explanations for **{task}** yet (the explain stage writes {p.explain}).")


def tabular() -> None:
    importance = data.read(p.explain / "importance.csv")
    values = data.read(p.explain / "shap_values.parquet")
    if summary is not None and importance is not None and values is not None:
        st.caption(f"SHAP ({summary['method']}) of {summary['rows']} test rows against {summary['background_rows']} "
                   f"training rows; explained output: {summary['explained_output']}.")
        left, right = st.columns([2, 3])
        top = importance.head(15)
        left.altair_chart(ui.bars(top, "mean_abs_shap", "feature", "Global importance", "mean |SHAP value|"))
        right.altair_chart(beeswarm(values, list(top["feature"])))
    else:
        st.info(f"Global SHAP values appear after the explain stage. {ui.RUN_HINT}")
    st.subheader("Explain one test row")
    raw = data.raw_test(task)
    if model is None or raw is None:
        ui.nothing_yet("No served model to explain yet.")
    records, y = raw
    default = int(summary["local_rows"][0]) if summary and summary.get("local_rows") else 0
    row = st.number_input(f"Test row (0 – {len(records) - 1})", 0, len(records) - 1, default, key="explain_row")
    frame = records.iloc[[row]]
    proba = model.predictor.proba_records(frame)[0]
    classes = model.predictor.classes
    k = int(proba.argmax())
    status = "correct" if classes[k] == classes[int(y[row])] else "misclassified"
    st.markdown(f"Actual **{classes[int(y[row])]}**, {model.label} predicts **{classes[k]}** ({proba[k]:.1%}) — {status}.")
    st.image(waterfall_png(model.label, task, int(row)), width="stretch")
    st.dataframe(frame, hide_index=True)


@st.cache_data(show_spinner="Explaining the row…", max_entries=64)
def waterfall_png(label: str, task: str, row: int) -> bytes:
    """Local SHAP picture of a test row for the served model (`label` names the version, so a new
    champion gets new pictures)."""
    served = data.served(task)
    frame = data.raw_test(task)[0].iloc[[row]]
    shap = explanations.local_shap(served, frame)
    return ui.png(XP.waterfall(shap.values, shap.expected, frame.iloc[0][shap.columns], f"Test row {row}",
                               output_name=shap.output_name))


def beeswarm(values: pd.DataFrame, features: list[str]) -> alt.Chart:
    """SHAP value per row and feature; colour is the feature's value rank (cividis: low dark, high light)."""
    rng = np.random.default_rng(0)
    parts = []
    for f in features:
        v = values[f"value.{f}"]
        rank = v.rank(pct=True) if pd.api.types.is_numeric_dtype(v) else \
            v.astype("string").map(v.astype("string").value_counts(normalize=True)).rank(pct=True)
        parts.append(pd.DataFrame({"feature": f, "shap": values[f"shap.{f}"], "value": v.astype(str),
                                   "rank": rank.fillna(0.5), "jitter": rng.uniform(-1, 1, len(v))}))
    long = pd.concat(parts, ignore_index=True)
    chart = alt.Chart(long, title="SHAP values per row").mark_circle(size=14, opacity=0.7).encode(
        x=alt.X("shap:Q", title="SHAP value (right pushes the prediction up)"),
        y=alt.Y("feature:N", sort=features, title=None),
        yOffset=alt.YOffset("jitter:Q", scale=alt.Scale(domain=[-3, 3])),
        color=alt.Color("rank:Q", scale=alt.Scale(scheme=MATRIX_CMAP), title="feature value (rank)"),
        tooltip=["feature", "value", alt.Tooltip("shap:Q", format=".3f")],
    )
    return chart.properties(height=30 * len(features) + 40).configure_axis(labelFontSize=12, titleFontSize=13)


def images() -> None:
    cams = data.read(p.explain / "gradcam.npz")
    if summary is None or cams is None:
        ui.nothing_yet("Grad-CAM overlays appear after the explain stage.")
    classes = [str(c) for c in cams["classes"]]
    st.caption(f"{summary['method']} on layer `{summary['layer']}` of {summary['images']} test images; "
               "heat maps (cividis) mark where the evidence for the predicted class lies.")
    with st.expander("Average Grad-CAM per class", expanded=False):
        st.image(class_maps_png(str(p.explain / "gradcam.npz"), data._stamp(p.explain / "gradcam.npz")))
    a, b = st.columns(2)
    cls = a.selectbox("Actual class", ["any", *classes], key="cam_class")
    kind = b.radio("Examples", ["correct", "misclassified"], horizontal=True, key="cam_kind")
    actual, predicted = cams["actual"], cams["predicted"]
    mask = (actual == predicted) if kind == "correct" else (actual != predicted)
    if cls != "any":
        mask &= actual == classes.index(cls)
    picked = np.flatnonzero(mask)
    if not len(picked):
        st.info("No such examples among the explained images.")
        return
    overlays = overlay_images(task, data._stamp(p.explain / "gradcam.npz"))
    grid = st.columns(6)
    for n, j in enumerate(picked[:36]):
        i = int(cams["test_index"][j])
        grid[n % 6].image(overlays[j], width=110, caption=f"#{i}: {classes[actual[j]]} → {classes[predicted[j]]}")


@st.cache_data(show_spinner=False, max_entries=8)
def class_maps_png(path: str, stamp: float) -> bytes:
    cams = data.read(Path(path))
    return ui.png(XP.class_maps(cams["class_average"], [str(c) for c in cams["classes"]]))


@st.cache_data(show_spinner="Drawing the overlays…", max_entries=8)
def overlay_images(task: str, stamp: float) -> list[np.ndarray]:
    """Every explained test image with its Grad-CAM map blended on top, in the order of gradcam.npz."""
    from torchcycle.data.preprocess import load_image

    paths = data.paths(task)
    cams, state = data.read(paths.explain / "gradcam.npz"), data.read(paths.preprocessor)
    files, _ = data.test_images(task)
    return [explanations.overlay(load_image(files[int(i)], tuple(state["size"]), state["channels"]), m)
            for i, m in zip(cams["test_index"], cams["maps"])]


if data.tasks()[task] == "tabular":
    tabular()
else:
    images()
