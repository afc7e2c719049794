"""Data: the summary of the raw data (what its kind shows: rows and columns, or images; the target's
distribution as its type shows it: class counts or a histogram), the validation report of the last
ingest, and the latest drift report of the retraining flow."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashboards import context, data, ui

st.title("Data")
task = ui.task()
p = data.paths(task)
report = data.read(p.data_report)
validation = data.read(p.validation_report)
if report is None and validation is None:
    ui.nothing_yet(f"No data for **{task}** has been ingested yet.")

summary_tab, validation_tab, drift_tab = st.tabs(["Summary", "Validation", "Drift"])

with summary_tab:
    if report is None:
        st.info(f"No data report yet. {ui.RUN_HINT}")
    else:
        context.kind_view(task).data_summary(context.page(task, target_type=report["target_type"]), report)

with validation_tab:
    if validation is None:
        st.info(f"No validation report yet. {ui.RUN_HINT}")
    else:
        status = validation["status"]
        (st.success if status == "passed" else st.error)(f"Validation **{status}**")
        for err in validation.get("errors", []):
            st.error(err)
        checks = pd.DataFrame(validation.get("checks", []))
        if not checks.empty:
            st.dataframe(checks, hide_index=True, column_config={"passed": st.column_config.CheckboxColumn()})

with drift_tab:
    drift = data.read(p.drift / "drift.json")
    if drift is None:
        st.info("No drift report yet: the retraining flow writes one when a new batch arrives "
                "(`torchcycle simulate-arrival <task>`, then the flow in pipelines/).")
    else:
        share = drift["drift_share"]
        st.markdown(f"Latest report **{drift.get('created', '?')}** · batches {drift.get('batches', [])} · "
                    f"{len(drift['drifted_columns'])} of {len(drift['columns'])} columns drifted "
                    f"(share {share:.0%}) · rule: {drift.get('rule', '')}")
        frame = pd.DataFrame(drift["columns"]).T.rename_axis("column").reset_index()
        frame["status"] = frame["drifted"].map({True: "drifted", False: "stable"})
        st.altair_chart(ui.bars(frame, "psi", "column", "Population stability index per column", "PSI",
                                colour="status"))
        st.dataframe(frame, hide_index=True)
