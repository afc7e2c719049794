"""Explain: what the task's kind explains with (SHAP per column for tables: global importance, beeswarm and
any test row; Grad-CAM overlays by class and by correct/misclassified for images), from the explain stage
and from the torch weights of the served model."""

from __future__ import annotations

import streamlit as st
from dashboards import context, data, ui

st.title("Explain")
task = ui.task()
summary = data.read(data.paths(task).explain / "summary.json")
model = data.served(task)
if summary is None and model is None:
    ui.nothing_yet(f"No explanations for **{task}** yet (the explain stage writes {data.paths(task).explain}).")
context.kind_view(task).explain(context.page(task, model), summary)
