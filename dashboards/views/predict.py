"""Predict with the champion through ONNX Runtime. What the input looks like (a form and a CSV batch for
tables, an upload for images) comes from the task's kind, how a prediction reads (a class and its
probabilities, a number and its interval) from its target type; each prediction comes with its explanation."""

from __future__ import annotations

import streamlit as st
from dashboards import context, data, ui

st.title("Predict")
task = ui.task()
model = data.served(task)
if model is None:
    ui.nothing_yet(f"No champion (or exported model) for **{task}** yet.")
st.caption(f"Predictions by **{model.label}** of `{data.registered_name(task)}` through ONNX Runtime; "
           "explanations from its torch weights.")
context.kind_view(task).predict(context.page(task, model))
