"""Predict with the champion through ONNX Runtime: a form generated from the schema or a CSV batch for
tabular tasks, an image upload for image tasks; each prediction comes with its explanation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st
from dashboards import data, explanations, predicting, ui

from torchcycle.errors import PredictionInputError
from torchcycle.explain import plots as XP

st.title("Predict")
task = ui.task()
model = data.served(task)
if model is None:
    ui.nothing_yet(f"No champion (or exported model) for **{task}** yet.")
classes = model.predictor.classes
state = model.predictor.state
st.caption(f"Predictions by **{model.label}** of `{data.registered_name(task)}` through ONNX Runtime; "
           "explanations from its torch weights.")


def probabilities(proba: np.ndarray, top: int | None = None) -> None:
    # "class" is a reserved word in Vega expressions: the column is called "outcome"
    frame = pd.DataFrame({"outcome": classes, "probability": proba}).sort_values("probability", ascending=False)
    frame = frame.head(top) if top else frame
    st.altair_chart(ui.bars(frame, "probability", "outcome", "Probabilities", "probability"))
    st.dataframe(frame, hide_index=True, key=None,
                 column_config={"probability": st.column_config.NumberColumn(format="%.6f")})


def schema() -> dict:
    """Ranges and categories shown in the form: the task's schema.json, else the model's own state."""
    s = data.read(data.paths(task).schema)
    return s if s and s.get("kind") == "tabular" else {"numeric": state["numeric"], "categorical": state["categorical"]}


def tabular() -> None:
    sch = schema()
    ranges = {c["name"]: c for c in state["numeric"]}
    raw = data.raw_test(task)
    example = raw[0].iloc[0] if raw is not None else None
    form_tab, batch_tab = st.tabs(["One row", "CSV batch"])
    with form_tab, st.form("predict_form"):
        cols = st.columns(3)
        record: dict = {}
        for n, spec in enumerate(sch["numeric"]):
            lo, hi = ranges.get(spec["name"], spec)["min"], ranges.get(spec["name"], spec)["max"]
            default = example[spec["name"]] if example is not None and pd.notna(example[spec["name"]]) else \
                ranges.get(spec["name"], {}).get("fill", lo)
            record[spec["name"]] = cols[n % 3].number_input(
                f"{spec['name']} ({lo:g} – {hi:g})", value=float(default), key=f"num_{spec['name']}",
                help=f"training range {lo:g} – {hi:g}")
        for n, spec in enumerate(sch["categorical"], start=len(sch["numeric"])):
            options = list(spec["categories"])
            default = str(example[spec["name"]]) if example is not None and pd.notna(example[spec["name"]]) else None
            record[spec["name"]] = cols[n % 3].selectbox(
                spec["name"], options, index=options.index(default) if default in options else 0,
                key=f"cat_{spec['name']}")
        submitted = st.form_submit_button("Predict", type="primary")
    if submitted:
        with form_tab:
            one_row(record)
    with batch_tab:
        batch()


def one_row(record: dict) -> None:
    problems = predicting.range_problems(record, state)
    if problems:
        st.error("Out of the training range — the model has never seen such values, so no prediction is "
                 "made:\n\n" + "\n".join(f"- {p}" for p in problems))
        return
    frame = pd.DataFrame([record])
    start = time.perf_counter()
    proba = model.predictor.proba_records(frame)[0]
    ms = (time.perf_counter() - start) * 1e3
    k = int(proba.argmax())
    st.success(f"Prediction: **{classes[k]}** ({proba[k]:.1%})")
    st.caption(f"ONNX Runtime: {ms:.1f} ms")
    left, right = st.columns([1, 2])
    with left:
        probabilities(proba)
    with right:
        shap = explanations.local_shap(model, frame)
        ui.pyplot(XP.waterfall(shap.values, shap.expected, frame.iloc[0][shap.columns],
                               "Why: local SHAP of this row", output_name=shap.output_name))


def batch() -> None:
    target = (data.read(data.paths(task).schema) or {}).get("target")
    st.markdown(f"Upload a CSV with the columns {', '.join(f'`{c}`' for c in predicting.expected_columns(state))}"
                f" (at most {predicting.MAX_CSV_BYTES // 2**20} MB).")
    upload = st.file_uploader("CSV file", type=["csv"], key="predict_csv")
    if upload is None:
        return
    try:
        records, notes = predicting.read_csv(upload.name, upload.getvalue(), state, target)
        result = model.predictor.predict_records(records)
    except PredictionInputError as exc:
        st.error(str(exc))
        return
    for note in notes:
        st.info(note)
    outside = predicting.out_of_range(records, state)
    out = pd.concat([records.reset_index(drop=True), result], axis=1)
    if not outside.empty:
        flags = np.zeros(len(records), bool)
        for spec in state["numeric"]:
            v = pd.to_numeric(records[spec["name"]], errors="coerce").to_numpy()
            flags |= (v < spec["min"]) | (v > spec["max"])
        out["outside_training_range"] = flags
        st.warning(f"{int(flags.sum())} row(s) hold values outside the training range; their predictions are "
                   "extrapolations (flagged in the column `outside_training_range`).")
        st.dataframe(outside, hide_index=True)
    st.success(f"{len(out)} row(s) predicted by {model.label}.")
    st.dataframe(out.head(200), hide_index=True)
    st.download_button("Download predictions (CSV)", out.to_csv(index=False).encode(),
                       file_name=f"{task}_predictions.csv", mime="text/csv", key="predict_download")


def image() -> None:
    h, w = state["size"]
    st.markdown(f"Upload a PNG or JPEG (any size; resized to {h}×{w}, "
                f"{'greyscale' if state['channels'] == 1 else 'RGB'}; at most "
                f"{predicting.MAX_IMAGE_BYTES // 2**20} MB).")
    upload = st.file_uploader("Image", type=["png", "jpg", "jpeg"], key="predict_image")
    if upload is None:
        return
    try:
        pixels = predicting.image_pixels(upload.name, upload.getvalue(), state)
    except PredictionInputError as exc:
        st.error(str(exc))
        return
    start = time.perf_counter()
    proba = model.predictor.proba_pixels(pixels)[0]
    k = int(proba.argmax())
    heat = explanations.grad_cam(model, pixels, [k])[0]
    ms = (time.perf_counter() - start) * 1e3
    st.success(f"Prediction: **{classes[k]}** ({proba[k]:.1%})")
    st.caption(f"ONNX Runtime prediction and Grad-CAM: {ms:.0f} ms")
    a, b, c = st.columns([1, 1, 2])
    a.image(pixels[0].transpose(1, 2, 0) if pixels.shape[1] == 3 else pixels[0, 0], caption="as the model sees it",
            width=180)
    b.image(explanations.overlay(pixels[0], heat), caption=f"Grad-CAM for '{classes[k]}'", width=180)
    with c:
        top = st.slider("Top k", 1, len(classes), min(5, len(classes)), key="predict_topk")
        probabilities(proba, top)


if data.tasks()[task] == "tabular":
    tabular()
else:
    image()
