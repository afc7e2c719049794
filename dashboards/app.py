"""torchcycle dashboard: `make dashboard` (Streamlit on 127.0.0.1:8501).

Reads only the project's stores (DVC outputs, MLflow at MLFLOW_TRACKING_URI or the embedded SQLite
store) and predicts with the champion through ONNX Runtime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `streamlit run dashboards/app.py` puts only dashboards/ on the path; pages import `dashboards.*`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import streamlit as st

from dashboards import ui

HERE = Path(__file__).resolve().parent
PAGES = [
    ("overview.py", "Overview", ":material/dashboard:"),
    ("experiments.py", "Experiments", ":material/science:"),
    ("model.py", "Model", ":material/analytics:"),
    ("explain.py", "Explain", ":material/lightbulb:"),
    ("predict.py", "Predict", ":material/online_prediction:"),
    ("dataset.py", "Data", ":material/table_chart:"),
]

st.set_page_config(page_title="torchcycle", page_icon=":material/cycle:", layout="wide")
page = st.navigation([st.Page(HERE / "views" / f, title=t, icon=i, url_path=t.lower(), default=n == 0)
                      for n, (f, t, i) in enumerate(PAGES)])
st.sidebar.markdown("**torchcycle**")
ui.task_picker()
page.run()
