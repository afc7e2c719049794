"""Experiments: the task's MLflow runs as a sortable, filterable table; compare runs side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashboards import data, ui

st.title("Experiments")
task = ui.task()
uri = data.tracking_uri()
runs = data.runs(uri, data.experiment_name(task)) if data.store_exists() else pd.DataFrame()
if runs.empty:
    ui.nothing_yet(f"No MLflow runs for **{task}** in `{uri}` yet.")

# ---------------------------------------------------------------- filters
left, mid, right = st.columns([2, 1, 1])
query = left.text_input("Filter runs (any text in name, params or tags)", key="exp_query")
statuses = sorted(runs["status"].unique())
chosen_status = mid.multiselect("Status", statuses, default=statuses, key="exp_status")
metric_cols = sorted(c for c in runs.columns if c.startswith("metrics.test_"))
all_metric_cols = sorted(c for c in runs.columns if c.startswith("metrics."))
param_cols = sorted(c for c in runs.columns if c.startswith("params."))
show_params = right.toggle("Show every param", value=False, key="exp_all_params")

view = runs[runs["status"].isin(chosen_status)]
if query:
    text = view.astype(str).agg(" ".join, axis=1).str.contains(query, case=False, regex=False)
    view = view[text]
key_params = [c for c in param_cols if c.split(".", 1)[1] in
              {"lr", "train.lr", "epochs", "train.epochs", "name", "hidden_sizes", "channels", "seed", "train_rows"}]
columns = ["run_name", "status", "start", "duration_s", *metric_cols, *(param_cols if show_params else key_params),
           "tags.git_commit", "tags.data_version_raw"]
table = view[[c for c in columns if c in view.columns]].copy()
table.insert(0, "MLflow", [data.run_link(e, r) for e, r in zip(view["experiment_id"], view["run_id"])])
table.insert(1, "run_id", view["run_id"])
st.caption(f"{len(view)} of {len(runs)} runs · click a column header to sort · links open the MLflow UI "
           f"at {data.mlflow_ui()} (`make mlflow`; set TORCHCYCLE_MLFLOW_UI for another server)")
st.dataframe(table, hide_index=True, height=min(420, 38 + 35 * len(table)), column_config={
    "MLflow": st.column_config.LinkColumn("MLflow", display_text="open"),
    "start": st.column_config.DatetimeColumn("started (UTC)", format="YYYY-MM-DD HH:mm"),
    "duration_s": st.column_config.NumberColumn("seconds", format="%.0f"),
    **{c: st.column_config.NumberColumn(c.removeprefix("metrics."), format="%.4f") for c in metric_cols},
})

# ---------------------------------------------------------------- compare
st.subheader("Compare runs")
labels = {r: f"{n} · {r[:8]}" for r, n in zip(view["run_id"], view["run_name"])}
picked = st.multiselect("Pick two or more runs", list(labels), default=list(labels)[:2], format_func=labels.get,
                        key="exp_compare")
if len(picked) < 2:
    st.info("Pick at least two runs to compare them.")
    st.stop()
sel = runs.set_index("run_id").loc[picked]
names = [labels[r] for r in picked]
metric_table = sel[[c for c in all_metric_cols if c in sel.columns]].T
metric_table.columns = names
metric_table.index = [c.removeprefix("metrics.") for c in metric_table.index]
param_table = sel[param_cols].T.astype(str)
param_table.columns = names
param_table.index = [c.removeprefix("params.") for c in param_table.index]
differs = param_table.nunique(axis=1) > 1
a, b = st.columns(2)
a.markdown("**Metrics**")
a.dataframe(metric_table.style.format("{:.4f}", na_rep="–"), height=360)
b.markdown(f"**Params** ({int(differs.sum())} differ; shown first)")
b.dataframe(pd.concat([param_table[differs], param_table[~differs]]), height=360)

curves = sorted({c.removeprefix("metrics.") for c in all_metric_cols if c.startswith(("metrics.val_", "metrics.train_"))})
defaults = [c for c in ("val_loss", "val_accuracy", "val_roc_auc", "val_rmse") if c in curves][:2] or curves[:2]
chosen = st.multiselect("Learning curves", curves, default=defaults, key="exp_curves")
cols = st.columns(max(1, len(chosen)))
for col, key in zip(cols, chosen):
    frames = [data.metric_history(uri, r, key).assign(run=labels[r]) for r in picked]
    history = pd.concat(frames, ignore_index=True)
    if history.empty:
        col.caption(f"no history of {key}")
        continue
    col.altair_chart(ui.lines(history, "epoch", "value", "run", key, y_title=key, height=280))
