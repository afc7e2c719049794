"""Model: one registered version on the test split: metrics, per-class metrics, confusion matrix,
ROC / precision-recall / calibration, learning curves and the misclassified examples."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from dashboards import data, ui

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
ev = data.evaluation(task, choice)
if ev is None:
    ui.nothing_yet(f"The test split of **{task}** is missing.")
classes, m = ev["classes"], ev["metrics"]
if choice != data.WORKSPACE:
    run = data.run_info(uri, meta[choice]["run_id"])
    st.caption(f"Scored now on the workspace's test split ({len(ev['y'])} rows) through ONNX Runtime · "
               f"[run in MLflow]({data.run_link(run['experiment_id'], run['run_id'])})")

# ---------------------------------------------------------------- metrics
head = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"]
cols = st.columns(len(head))
for col, k in zip(cols, head):
    col.metric(k.replace("_", " "), ui.fmt(m.get(k), 3))
per_class = pd.DataFrame(m["per_class"]).T.rename_axis("class").reset_index()
left, right = st.columns([1, 1])
left.markdown("**Per-class metrics**")
left.dataframe(per_class, hide_index=True, column_config={
    k: st.column_config.ProgressColumn(k, min_value=0.0, max_value=1.0, format="%.3f")
    for k in ("precision", "recall", "f1")})
normalise = right.toggle("Row shares (recall per class)", value=True, key="model_norm")
matrix = pd.DataFrame(m["confusion_matrix"], index=classes, columns=classes)
cells = matrix.stack().rename("count").reset_index().set_axis(["actual", "predicted", "count"], axis=1)
cells["share"] = cells["count"] / cells.groupby("actual")["count"].transform("sum").clip(lower=1)
with right:
    ui.square(ui.heatmap(cells, "Confusion matrix", normalise))

# ---------------------------------------------------------------- curves
t = ev["tables"]
a, b, c = st.columns(3)
auc = ui.fmt(m.get("roc_auc"), 3)
a.altair_chart(ui.lines(t["roc"], "fpr", "tpr", None, f"ROC (AUC {auc})", "false positive rate",
                        "true positive rate", diagonal=True, height=280))
b.altair_chart(ui.lines(t["precision_recall"], "recall", "precision", None, "Precision-recall", height=280))
c.altair_chart(ui.lines(t["calibration"], "mean_predicted", "fraction_positive", None, "Calibration",
                        "mean predicted probability", "observed frequency", diagonal=True, height=280))
if len(classes) > 2:
    st.caption("ROC, precision-recall and calibration are micro-averaged over classes (one-vs-rest).")

long = pd.DataFrame()
if choice == data.WORKSPACE:
    history = data.read(data.paths(task).training / "learning_curve.csv")
    if history is not None:
        loss_cols = [col for col in history.columns if col.endswith("loss")]
        long = history.melt("epoch", loss_cols, var_name="series", value_name="value")
else:
    frames = [data.metric_history(uri, meta[choice]["run_id"], k).assign(series=k) for k in ("train_loss", "val_loss")]
    long = pd.concat(frames, ignore_index=True)
if not long.empty:
    st.altair_chart(ui.lines(long, "epoch", "value", "series", "Learning curves", y_title="loss", height=260))

# ---------------------------------------------------------------- misclassified gallery
st.subheader("Misclassified test examples")
y, proba = ev["y"], ev["proba"]
pred = proba.argmax(1)
f1, f2, f3 = st.columns(3)
actual = f1.selectbox("Actual class", ["any", *classes], key="gal_actual")
predicted = f2.selectbox("Predicted class", ["any", *classes], key="gal_pred")
limit = f3.slider("Show at most", 4, 48, 12, step=4, key="gal_n")
mask = pred != y
if actual != "any":
    mask &= y == classes.index(actual)
if predicted != "any":
    mask &= pred == classes.index(predicted)
idx = [int(i) for i in sorted(mask.nonzero()[0], key=lambda i: -proba[i].max())][:limit]
st.caption(f"{int(mask.sum())} misclassified of {len(y)} test examples match; most confident mistakes first.")
if not idx:
    st.stop()
if data.tasks()[task] == "tabular":
    raw = data.raw_test(task)
    rows = raw[0].iloc[idx].copy() if raw else pd.DataFrame(index=idx)
    rows.insert(0, "predicted", [classes[pred[i]] for i in idx])
    rows.insert(0, "actual", [classes[y[i]] for i in idx])
    for k, name in enumerate(classes):
        rows.insert(2 + k, f"P({name})", proba[idx, k])
    rows.insert(0, "test row", idx)
    st.dataframe(rows, hide_index=True)
else:
    files = data.test_images(task)
    grid = st.columns(6)
    for n, i in enumerate(idx):
        grid[n % 6].image(str(files[0][i]), width=96,
                          caption=f"#{i}: {classes[y[i]]} → {classes[pred[i]]} ({proba[i, pred[i]]:.0%})")
