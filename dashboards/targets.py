"""How each target type is shown: one small view per type, looked up by the type's name in VIEWS.

Pages never branch on the target type. They hand a view the model's outputs for one input, a model's
evaluation on the test split or a data report's target summary, and the view draws what fits: a class
with its probabilities or a number with its interval; accuracy, ROC and the confusion matrix or RMSE,
predicted-vs-actual and residuals; class counts or a histogram. A new target type (torchcycle.targets) is
one class here and one entry in VIEWS.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import reports, ui
from torchcycle.targets.classification import CLASSIFICATION

MAX_BARS = 10  # probabilities shown for one prediction (the most likely classes)


def _decide(outputs: np.ndarray, state: dict) -> int:
    """The class the model decides for one row: the decision threshold when the model has one."""
    return int(CLASSIFICATION.decisions(np.asarray(outputs)[None], state)[0])


class ClassificationView:
    headline = ("accuracy", "roc_auc", "f1_macro", "log_loss")  # Overview: the champion in four numbers
    examples_title = "Misclassified test examples"
    stage_tables = ("reliability",)  # evaluation tables of the evaluate stage the Model page draws

    # ------------------------------------------------------------------ one prediction
    def sentence(self, outputs: np.ndarray, state: dict) -> str:
        k = _decide(outputs, state)
        rule = state.get("threshold")
        at = f", decision threshold {rule['value']:.3f} ({rule['objective']})" if rule else ""
        return f"**{state['classes'][k]}** ({outputs[k]:.1%}{at})"

    def details(self, outputs: np.ndarray, state: dict) -> None:
        # "class" is a reserved word in Vega expressions: the column is called "outcome"
        frame = pd.DataFrame({"outcome": state["classes"], "probability": outputs})
        frame = frame.sort_values("probability", ascending=False).head(MAX_BARS)
        st.altair_chart(ui.bars(frame, "probability", "outcome", "Probabilities", "probability"))
        st.dataframe(frame, hide_index=True, column_config={"probability": st.column_config.NumberColumn(format="%.6f")})

    def verdict(self, actual: Any, outputs: np.ndarray, state: dict) -> str:
        """The true outcome (a class name) next to the prediction."""
        truth = str(actual)
        k = _decide(outputs, state)
        status = "correct" if state["classes"][k] == truth else "misclassified"
        return f"Actual **{truth}**, predicted {self.sentence(outputs, state)} — {status}."

    # ------------------------------------------------------------------ data
    def distribution(self, stats: dict, title: str, name: str = "class") -> None:
        counts = stats["class_counts"]
        frame = pd.DataFrame({"outcome": list(counts), "rows": list(counts.values())})
        st.altair_chart(ui.bars(frame, "rows", "outcome", title, "rows", sort=None))

    def groups(self, values: pd.Series) -> pd.Series:
        """Labels to colour feature distributions by: the classes themselves."""
        return values.astype(str)

    # ------------------------------------------------------------------ a model on the test split
    def evaluation(self, ev: dict, stage: dict | None = None) -> None:
        """The metrics (with the evaluate stage's confidence intervals), per-class metrics, confusion matrix
        and curves of `ev`; then the calibration and decision threshold the evaluate stage reported
        (`stage`: data.stage_reports)."""
        m, classes, t = ev["metrics"], ev["state"]["classes"], ev["tables"]
        cis = ((stage or {}).get("metrics") or {}).get("confidence_intervals") or {}
        head = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"]
        for col, k in zip(st.columns(len(head)), head):
            reports.metric(col, k.replace("_", " "), m.get(k), ui.fmt(m.get(k), 3), cis.get(k), lambda v: f"{v:.3f}")
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
        a, b, c = st.columns(3)
        a.altair_chart(ui.lines(t["roc"], "fpr", "tpr", None, f"ROC (AUC {ui.fmt(m.get('roc_auc'), 3)})",
                                "false positive rate", "true positive rate", diagonal=True, height=280))
        b.altair_chart(ui.lines(t["precision_recall"], "recall", "precision", None, "Precision-recall", height=280))
        c.altair_chart(ui.lines(t["calibration"], "mean_predicted", "fraction_positive", None, "Calibration",
                                "mean predicted probability", "observed frequency", diagonal=True, height=280))
        if len(classes) > 2:
            st.caption("ROC, precision-recall and calibration are micro-averaged over classes (one-vs-rest).")
        if stage is not None:
            self.calibration(stage.get("metrics") or {}, stage.get("tables") or {}, stage.get("origin", ""),
                             ev["state"].get("positive_class") or classes[-1])

    def calibration(self, metrics: dict, tables: dict[str, pd.DataFrame], origin: str, positive: str) -> None:
        """ECE before and after the calibration map, the reliability diagram (before, after, the diagonal)
        and, for a binary task with one, the decision threshold with its metrics next to 0.5's."""
        st.subheader("Calibration and decision threshold")
        cal = metrics.get("calibration")
        if not cal:
            st.info("No calibration report for this model: it was evaluated before calibration was reported.",
                    icon=":material/info:")
            return
        before, after = cal.get("before") or {}, cal.get("after") or {}
        ci = reports.ci_text((metrics.get("confidence_intervals") or {}).get("ece"), lambda v: f"{v:.4f}")
        st.markdown(f"Expected calibration error **{ui.fmt(before.get('ece'))} → {ui.fmt(after.get('ece'))}** "
                    + (f"({ci} after) " if ci else "")
                    + f"with {calibration_method(cal)} ({cal.get('ece_bins')} {cal.get('binning', 'equal-width')} "
                    "bins; lower is better).")
        st.caption(f"On the test split, from {origin}. Before: softmax of the raw logits; after: the calibrated "
                   "probabilities the served model outputs.")
        left, right = st.columns([2, 3])
        left.dataframe(calibration_table(cal), hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="%.4f") for c in ("before", "after", "change")})
        reliability = tables.get("reliability")
        if reliability is not None and not reliability.empty:
            right.altair_chart(ui.lines(reliability_frame(reliability), "confidence", "accuracy", "series",
                                        "Reliability diagram", "confidence (top-label probability)",
                                        "accuracy", diagonal=True, height=280))
        rule = metrics.get("threshold")
        if rule:
            st.markdown(f"Decision threshold **{rule['value']:.3f}** on P({positive}) "
                        f"(chosen on the validation split for `{rule.get('objective')}`), next to 0.5:")
            st.dataframe(threshold_table(rule), hide_index=True, column_config={
                c: st.column_config.NumberColumn(format="%.4f") for c in ("at the threshold", "at 0.5", "change")})
        else:
            st.caption("No decision threshold: the most probable class is predicted.")

    def worst(self, ev: dict) -> pd.DataFrame:
        """The misclassified test examples the reader filters for, most confident mistakes first: one row
        per example, indexed by test row, with `actual`, `predicted` and the probabilities."""
        classes, y, proba = ev["state"]["classes"], ev["y"], ev["outputs"]
        pred = CLASSIFICATION.decisions(proba, ev["state"])
        f1, f2, f3 = st.columns(3)
        actual = f1.selectbox("Actual class", ["any", *classes], key="gal_actual")
        predicted = f2.selectbox("Predicted class", ["any", *classes], key="gal_pred")
        limit = f3.slider("Show at most", 4, 48, 12, step=4, key="gal_n")
        mask = pred != y
        if actual != "any":
            mask &= y == classes.index(actual)
        if predicted != "any":
            mask &= pred == classes.index(predicted)
        idx = sorted(np.flatnonzero(mask), key=lambda i: -proba[i].max())[:limit]
        st.caption(f"{int(mask.sum())} misclassified of {len(y)} test examples match; most confident mistakes first.")
        table = pd.DataFrame({"actual": [classes[y[i]] for i in idx], "predicted": [classes[pred[i]] for i in idx]},
                             index=pd.Index([int(i) for i in idx], name="test row"))
        for k, name in enumerate(classes):
            table[f"P({name})"] = proba[idx, k]
        return table


def calibration_method(cal: dict) -> str:
    """'temperature scaling (T = 1.234)', 'vector scaling', 'no calibration'."""
    method = cal.get("method") or "none"
    if method == "none":
        return "no calibration"
    temperature = cal.get("temperature")
    return f"{method} scaling" + (f" (T = {temperature:.3f})" if isinstance(temperature, (int, float)) else "")


def calibration_table(cal: dict) -> pd.DataFrame:
    """ECE, Brier score and log loss before and after calibration, and the change."""
    before, after = cal.get("before") or {}, cal.get("after") or {}
    names = [k for k in ("ece", "brier", "log_loss") if k in before or k in after]
    names += [k for k in {**before, **after} if k not in names]
    rows = [{"measure": k, "before": before.get(k), "after": after.get(k)} for k in names]
    frame = pd.DataFrame(rows, columns=["measure", "before", "after"])
    frame["change"] = pd.to_numeric(frame["after"]) - pd.to_numeric(frame["before"])
    return frame


def reliability_frame(table: pd.DataFrame) -> pd.DataFrame:
    """reliability.csv (confidence, accuracy_before/after, count_before/after) as one line per series."""
    parts = []
    for when, name in (("before", "before calibration"), ("after", "after calibration")):
        counts = table[f"count_{when}"]
        part = table.loc[counts > 0, ["confidence", f"accuracy_{when}", f"count_{when}"]]
        parts.append(part.set_axis(["confidence", "accuracy", "rows"], axis=1).assign(series=name))
    return pd.concat(parts, ignore_index=True)


def threshold_table(rule: dict) -> pd.DataFrame:
    """Accuracy, F1 (of the positive class) and balanced accuracy at the decision threshold and at 0.5."""
    names = [k.removesuffix("_at_threshold") for k in rule if k.endswith("_at_threshold")]
    frame = pd.DataFrame([{"metric": k.replace("_", " "), "at the threshold": rule.get(f"{k}_at_threshold"),
                           "at 0.5": rule.get(f"{k}_at_0.5")} for k in names],
                         columns=["metric", "at the threshold", "at 0.5"])
    frame["change"] = pd.to_numeric(frame["at the threshold"]) - pd.to_numeric(frame["at 0.5"])
    return frame


class RegressionView:
    headline = ("rmse", "mae", "r2", "interval_coverage")
    examples_title = "Largest errors on the test split"
    stage_tables: tuple[str, ...] = ()  # nothing beyond the metrics (coverage, intervals)

    # ------------------------------------------------------------------ one prediction
    def sentence(self, outputs: np.ndarray, state: dict) -> str:
        predicted, lower, upper = (float(v) for v in outputs[:3])
        return (f"{_name(state)} ≈ **{ui.number(predicted)}** ({_coverage(state)} interval "
                f"{ui.number(lower)} – {ui.number(upper)})")

    def details(self, outputs: np.ndarray, state: dict) -> None:
        predicted, lower, upper = (float(v) for v in outputs[:3])
        st.metric(f"predicted {_name(state)}", ui.number(predicted))
        st.altair_chart(ui.interval(predicted, lower, upper, _name(state), f"{_coverage(state)} interval",
                                    (state.get("min"), state.get("max"))))
        span = f"; training values ranged {ui.number(state['min'])} – {ui.number(state['max'])}" if "min" in state else ""
        st.caption(f"The interval ({ui.number(lower)} – {ui.number(upper)}) is split-conformal: calibrated on the "
                   f"validation split so that {_coverage(state)} of such intervals hold the true {_name(state)}{span}.")

    def verdict(self, actual: Any, outputs: np.ndarray, state: dict) -> str:
        """The true value (in target units) next to the prediction and its interval."""
        truth = float(actual)
        inside = "inside" if outputs[1] <= truth <= outputs[2] else "outside"
        return f"Actual {_name(state)} **{ui.number(truth)}**, predicted {self.sentence(outputs, state)} — {inside} the interval."

    # ------------------------------------------------------------------ data
    def distribution(self, stats: dict, title: str, name: str = "value") -> None:
        h = stats["target_histogram"]
        st.altair_chart(ui.histogram(h["edges"], h["counts"], title, name))
        s = stats.get("target_stats", {})
        st.caption(" · ".join(f"{k} {ui.number(s[k])}" for k in ("min", "25%", "50%", "mean", "75%", "max") if k in s))

    def groups(self, values: pd.Series) -> pd.Series:
        """Labels to colour feature distributions by: the target's quartiles, e.g. '326 – 950'."""
        numbers = pd.to_numeric(values, errors="coerce")
        bins = pd.qcut(numbers, 4, duplicates="drop")
        return bins.map(lambda b: f"{ui.number(b.left)} – {ui.number(b.right)}").astype(str)

    # ------------------------------------------------------------------ a model on the test split
    def evaluation(self, ev: dict, stage: dict | None = None) -> None:
        """RMSE, MAE, R² (with the evaluate stage's confidence intervals: `stage`, data.stage_reports),
        MAPE, the intervals' coverage and width; predicted-vs-actual and the residuals."""
        m, t, state = ev["metrics"], ev["tables"], ev["state"]
        cis = ((stage or {}).get("metrics") or {}).get("confidence_intervals") or {}
        r2 = lambda v: ui.fmt(v, 3)  # noqa: E731
        head = {"RMSE": ("rmse", ui.number), "MAE": ("mae", ui.number), "R²": ("r2", r2), "MAPE": ("mape", _share),
                f"coverage ({_coverage(state)} nominal)": ("interval_coverage", _share),
                "mean interval width": ("interval_mean_width", ui.number)}  # fmt: skip
        for col, (label, (key, fmt)) in zip(st.columns(len(head)), head.items()):
            reports.metric(col, label, m.get(key), fmt(m.get(key)), cis.get(key), fmt)
        name = _name(state)
        a, b, c = st.columns(3)
        a.altair_chart(ui.points(t["predicted_vs_actual"], "actual", "predicted", "Predicted vs actual",
                                 f"actual {name}", f"predicted {name}", diagonal=True))
        b.altair_chart(ui.points(t["residuals"], "predicted", "residual", "Residuals", f"predicted {name}",
                                 "actual − predicted", zero_line=True))
        hist = t["residual_histogram"]
        centres = hist["residual"].to_numpy()
        width = float(np.diff(centres).mean()) if len(centres) > 1 else 1.0
        edges = [*(centres - width / 2), centres[-1] + width / 2]
        c.altair_chart(ui.histogram(edges, hist["count"].tolist(), "Residual histogram", "actual − predicted", 300))

    def worst(self, ev: dict) -> pd.DataFrame:
        """The test examples with the largest absolute errors: one row per example, indexed by test row,
        with `actual`, `predicted`, the interval and the error."""
        from torchcycle.targets import target_of

        state, out = ev["state"], ev["outputs"]
        actual = target_of(state).decode(ev["y"], state)
        error = actual - out[:, 0]
        outside = (actual < out[:, 1]) | (actual > out[:, 2])
        a, b = st.columns([1, 2])
        limit = a.slider("Show at most", 4, 48, 12, step=4, key="gal_n")
        only_outside = b.toggle("Only examples outside their interval", value=False, key="gal_outside")
        pool = np.flatnonzero(outside) if only_outside else np.arange(len(actual))
        idx = pool[np.argsort(-np.abs(error[pool]), kind="stable")][:limit]
        st.caption(f"{int(outside.sum())} of {len(actual)} test examples lie outside their {_coverage(state)} "
                   "interval; largest absolute errors first.")
        table = pd.DataFrame({"actual": actual[idx], "predicted": out[idx, 0], "lower": out[idx, 1],
                              "upper": out[idx, 2], "error": error[idx]})
        # labels are stored scaled in float32: 17,608 comes back as 17,607.9992, so show what a person wrote
        decimals = int(max(0, 3 - np.floor(np.log10(max(float(np.abs(actual).max()), 1e-12)))))
        return table.round(decimals).set_axis(pd.Index([int(i) for i in idx], name="test row"))


def _name(state: dict) -> str:
    return state.get("name") or "value"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _coverage(state: dict) -> str:
    return f"{state.get('coverage', 0.9):.0%}"


VIEWS: dict[str, Any] = {"classification": ClassificationView(), "regression": RegressionView()}


def view(type_name: str) -> Any:
    """The view of a target type by name (a target state's `type`, a data report's `target_type`)."""
    return VIEWS[type_name]
