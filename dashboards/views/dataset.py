"""Data: dataset summaries (rows, class balance, missing values, feature distributions), the
validation report of the last ingest, and the latest drift report of the retraining flow."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from dashboards import data, ui

from torchcycle.evaluation.plots import PALETTE

st.title("Data")
task = ui.task()
p = data.paths(task)
report = data.read(p.raw / "data_report.json")
validation = data.read(p.validation_report)
if report is None and validation is None:
    ui.nothing_yet(f"No data for **{task}** has been ingested yet.")

summary_tab, validation_tab, drift_tab = st.tabs(["Summary", "Validation", "Drift"])


def class_balance(counts: dict, title: str) -> None:
    frame = pd.DataFrame({"outcome": list(counts), "rows": list(counts.values())})
    st.altair_chart(ui.bars(frame, "rows", "outcome", title, "rows", sort="ascending"
                            if report.get("kind") == "image" else "-x"))


with summary_tab:
    if report is None:
        st.info(f"No data report yet. {ui.RUN_HINT}")
    elif report.get("kind") == "image":
        st.metric("Images", report["images"])
        st.caption(f"Sizes {report['sizes']['min_width']}–{report['sizes']['max_width']} × "
                   f"{report['sizes']['min_height']}–{report['sizes']['max_height']} px, modes {report['modes']}, "
                   f"source `{report.get('source', '?')}`")
        class_balance(report["class_counts"], "Class balance")
        files = data.test_images(task)
        if files:
            st.markdown("Test images")
            cols = st.columns(10)
            for n, f in enumerate(files[0][:20]):
                cols[n % 10].image(str(f), width=56)
    else:
        splits = report["splits"]
        cols = st.columns(len(splits) + 2)
        for col, (name, s) in zip(cols, splits.items()):
            col.metric(f"{name} rows", f"{s['rows']:,}")
        cols[-2].metric("numeric columns", len(report["numeric"]))
        cols[-1].metric("categorical columns", len(report["categorical"]))
        split = st.radio("Split", list(splits), horizontal=True, key="data_split")
        s = splits[split]
        left, right = st.columns(2)
        with left:
            class_balance(s["class_counts"], f"Class balance ({split})")
        with right:
            missing = pd.DataFrame({"column": list(s["missing"]), "missing": list(s["missing"].values())})
            missing["share"] = missing["missing"] / max(s["rows"], 1)
            st.altair_chart(ui.bars(missing, "share", "column", "Missing values", "share of rows"))
        if s.get("numeric"):
            st.markdown("Numeric columns")
            st.dataframe(pd.DataFrame(s["numeric"]).T, height=260)
        raw = data.read(p.raw / f"{split}.parquet")
        if raw is not None:
            feature = st.selectbox("Feature distribution", report["numeric"] + report["categorical"], key="data_feature")
            target = report["target"]
            frame = raw[[feature, target]].dropna(subset=[target])
            colour = alt.Color(f"{target}:N", scale=alt.Scale(range=list(PALETTE[:frame[target].nunique()])))
            if feature in report["numeric"]:
                chart = alt.Chart(frame.sample(min(len(frame), 20000), random_state=0)).mark_bar(opacity=0.75).encode(
                    x=alt.X(f"{feature}:Q", bin=alt.Bin(maxbins=40), title=feature),
                    y=alt.Y("count():Q", stack=None, title="rows"), color=colour)
            else:
                chart = alt.Chart(frame.astype(str)).mark_bar().encode(
                    y=alt.Y(f"{feature}:N", sort="-x", title=None), x=alt.X("count():Q", title="rows"), color=colour)
            st.altair_chart(chart.properties(height=320, title=f"{feature} by {target} ({split})"))

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
    drift = data.read(p.reports / "drift" / "drift.json")
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
