"""Overview: every task with its champion, the headline metrics of its target type, provenance, and the
latest runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashboards import data, targets, ui

st.title("Overview")
st.caption(f"MLflow: `{data.tracking_uri()}` · project: `{data.root()}`")
uri = data.tracking_uri()
any_model = False
for task, kind in data.tasks().items():
    with st.container(border=True):
        champ = data.champion(task)
        local = data.read(data.paths(task).metrics)
        st.subheader(f"{task} · {kind}")
        if champ is None and local is None:
            st.info(f"No model for **{task}** yet. {ui.RUN_HINT}", icon=":material/hourglass_empty:")
            continue
        any_model = True
        headline = targets.view(data.target_type(task) or data.served(task).predictor.target_state["type"]).headline
        run = data.run_info(uri, champ["run_id"]) if champ else None
        metrics = {k: run["metrics"].get(f"test_{k}") for k in headline} if run else \
            {k: local.get(k) for k in headline}
        cols = st.columns(len(headline) + 1)
        cols[0].metric("Champion", f"v{champ['version']}" if champ else "not registered")
        for col, (k, v) in zip(cols[1:], metrics.items()):
            col.metric(k.replace("_", " "), ui.fmt(v))
        if run:
            tags = run["tags"]
            st.markdown(
                f"Trained **{run['start']:%Y-%m-%d %H:%M} UTC** · git commit `{tags.get('git_commit', '?')[:10]}`"
                f"{' (uncommitted changes)' if tags.get('git_dirty') == 'true' else ''} · raw data version "
                f"`{tags.get('data_version_raw', '?')[:10]}` · [run in MLflow]"
                f"({data.run_link(run['experiment_id'], run['run_id'])})"
            )
        decision = data.read(data.paths(task).registry_report)
        if decision:
            d = decision["decision"]
            verdict = "promoted to champion" if d["promoted"] else "kept as challenger"
            st.markdown(f"Last registration: v{decision['version']} {verdict} — {d['reason']}.")
        if data.store_exists():
            recent = data.runs(uri, data.experiment_name(task))
            if not recent.empty:
                show = recent.head(5)
                table = pd.DataFrame({
                    "run": show["run_name"], "status": show["status"],
                    "started (UTC)": show["start"].dt.strftime("%Y-%m-%d %H:%M"),
                    "minutes": (show["duration_s"] / 60).round(1),
                    **{f"test {k}": show.get(f"metrics.test_{k}") for k in headline[:2]},
                    "link": [data.run_link(e, r) for e, r in zip(show["experiment_id"], show["run_id"])],
                })  # fmt: skip
                st.markdown("Latest pipeline and retraining runs")
                st.dataframe(table, hide_index=True, column_config={
                    "link": st.column_config.LinkColumn("MLflow", display_text="open")})
if not any_model:
    st.info(f"Nothing trained yet. {ui.RUN_HINT}", icon=":material/rocket_launch:")
