"""Model: one registered version (or the workspace's last evaluation) on the test split. Metrics and plots
come from its target type (accuracy, ROC, precision-recall, calibration and the confusion matrix; or RMSE,
predicted-vs-actual and residuals), with the evaluate stage's confidence intervals and calibration report;
then its metrics per slice of the test split and group fairness (the slices stage), its promotion decision
and model card (the register stage), and the worst test examples from its kind (rows, or pictures)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashboards import context, data, reports, targets, ui

st.title("Model")
task = ui.task()
uri = data.tracking_uri()
choices = data.model_choices(task)
if not choices:
    ui.nothing_yet(f"No evaluated or registered model for **{task}** yet.")
meta = {v["version"]: v for v in data.versions(uri, data.registered_name(task))} if data.store_exists() else {}


def label(choice: str) -> str:
    if choice == data.WORKSPACE:
        return "workspace (reports/ of the last `make run`)"
    aliases = ", ".join(meta[choice]["aliases"])
    return f"v{choice}" + (f" ({aliases})" if aliases else "")


champ = next((c for c in choices if "champion" in meta.get(c, {}).get("aliases", [])), choices[0])
choice = st.selectbox("Model version", choices, index=choices.index(champ), format_func=label, key="model_version")
problem = data.mismatch(task, choice)
if problem:
    st.warning(problem, icon=":material/block:")
    st.stop()
ev = data.evaluation(task, choice)
if ev is None:
    ui.nothing_yet(f"The test split of **{task}** is missing.")
view = targets.view(ev["state"]["type"])
if choice != data.WORKSPACE:
    run = data.run_info(uri, meta[choice]["run_id"])
    st.caption(f"Scored now on the workspace's test split ({len(ev['y'])} rows) through ONNX Runtime · "
               f"[run in MLflow]({data.run_link(run['experiment_id'], run['run_id'])})")

stage = data.stage_reports(task, choice, view.stage_tables)
view.evaluation(ev, stage)

long = pd.DataFrame()
if choice == data.WORKSPACE:
    history = data.read(data.paths(task).learning_curve)
    if history is not None:
        loss_cols = [col for col in history.columns if col.endswith("loss")]
        long = history.melt("epoch", loss_cols, var_name="series", value_name="value")
else:
    frames = [data.metric_history(uri, meta[choice]["run_id"], k).assign(series=k) for k in ("train_loss", "val_loss")]
    long = pd.concat(frames, ignore_index=True)
if not long.empty:
    st.subheader("Learning curves")
    st.altair_chart(ui.lines(long, "epoch", "value", "series", "Loss by epoch", y_title="loss", height=260))

target = data.target_of(ev["state"])
reports.slices_section(stage["slices"], target.higher_is_better, stage["origin"])
reports.registration_section(data.registration(task, choice),
                             "workspace's model" if choice == data.WORKSPACE else f"v{choice}")

st.subheader(view.examples_title)
table = view.worst(ev)
if not table.empty:
    context.kind_view(task).examples(context.page(task, target_type=ev["state"]["type"]), table)
