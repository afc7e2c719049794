"""Classification targets: class codes, cross-entropy, softmax probabilities out, accuracy/ROC AUC and
their curves, a predicted class per row.

After training, `calibrate` fits a calibration map of the logits on the validation split (temperature,
vector or matrix scaling; `train.calibration.method`) and, for a binary task, the decision threshold on
the calibrated positive-class probability (`train.threshold`). Both live in the target state, so the head
(inside the ONNX graph) outputs calibrated probabilities and `predictions` applies the threshold for
every consumer: evaluate, predict, the served model and the dashboard."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

MAX_NUMERIC_CLASSES = 50  # more numeric "classes" than this is almost surely a number to regress


def encode_labels(labels: pd.Series | np.ndarray, classes: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.asarray([lookup[str(v)] for v in labels], dtype=np.int64)


def class_order(labels: pd.Series | np.ndarray, positive_class: str | None = None) -> list[str]:
    """Sorted class names; for a binary task the positive class (if named) is put last (index 1)."""
    classes = sorted({str(v) for v in labels}, key=_natural_key)
    if positive_class is not None and len(classes) == 2 and positive_class in classes:
        classes.remove(positive_class)
        classes.append(positive_class)
    return classes


def _natural_key(s: str) -> tuple:
    return (0, float(s), s) if _is_number(s) else (1, 0.0, s)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class Softmax(nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)


class Temperature(nn.Module):
    """logits / T, T a constant of the graph."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class CalibratedSoftmax(nn.Module):
    """softmax(calibration(logits)): the head of a calibrated classifier (plain tensor ops, so it exports
    to ONNX as a division or a MatMul + Add before the Softmax)."""

    def __init__(self, calibration: nn.Module) -> None:
        super().__init__()
        self.calibration = calibration

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.calibration(logits), dim=1)


def _fixed_linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32).reshape(-1)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    return layer.requires_grad_(False)


def affine_calibration(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The calibration of `state` as calibrated logits = logits @ W.T + b, or None when uncalibrated."""
    cal = state.get("calibration") or {}
    k = len(state["classes"])
    if cal.get("method") == "temperature":
        return np.eye(k) / float(cal["temperature"]), np.zeros(k)
    if cal.get("method") in ("vector", "matrix"):
        return np.asarray(cal["weight"], np.float64), np.asarray(cal["bias"], np.float64)
    return None


def calibration_module(state: dict[str, Any]) -> nn.Module:
    """Raw logits -> calibrated logits (identity when the state has no calibration)."""
    cal = state.get("calibration") or {}
    if cal.get("method") == "temperature":
        return Temperature(cal["temperature"])
    affine = affine_calibration(state)
    return nn.Identity() if affine is None else _fixed_linear(*affine)


def log_odds(state: dict[str, Any] | None = None) -> nn.Module:
    """Binary tasks: one number a person can read, linear in the logits (a Linear layer, so SHAP's
    DeepLIFT rules apply to it as to the rest of the network): the log-odds of the positive class, after
    the state's calibration when it has one (so it matches the probabilities the head outputs)."""
    affine = affine_calibration(state) if state is not None else None
    if affine is not None:
        weight, bias = affine
        diff = np.array([-1.0, 1.0])
        return _fixed_linear((diff @ weight)[None, :], np.array([diff @ bias]))
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, 1.0]]))
    return layer.requires_grad_(False)


class Classification:
    name = "classification"
    default_metric = "roc_auc"
    metric_names = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")
    # scalar metrics with bootstrap confidence intervals in metrics.json (`headline` computes them fast)
    headline_metrics = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "log_loss", "ece")

    def check(self, values: pd.Series, source: Any, batch: bool = False) -> list[str]:
        if batch:  # a batch may hold one class; labels unknown to the model are checked by `unseen`
            return []
        counts = values.value_counts()
        target = getattr(source, "target", "target")
        if len(counts) < 2:
            only = counts.index[0] if len(counts) else "nothing"
            return [(f"target '{target}' has a single class ('{only}'); a classifier needs at least two. "
                    "Check `source.target`, or add rows of the other class(es).")]
        problems = []
        numeric = pd.to_numeric(pd.Series(counts.index), errors="coerce").notna().all()
        if numeric and len(counts) > MAX_NUMERIC_CLASSES:
            problems.append(
                f"target '{target}' is numeric with {len(counts)} distinct values, too many to be classes. "
                "If it is a quantity to predict, set `source.target_type: regression` (or `auto`).")
        rare = counts[counts < 2]
        if len(rare) and not problems:
            problems.append(f"class(es) {list(rare.index)[:10]} have fewer than 2 rows; a stratified split needs "
                            "at least 2 rows per class. Add rows or merge the class.")
        return problems

    stratified = True

    def clean(self, values: pd.Series) -> pd.Series:
        """Labels that read the same whichever file they came from (1.0 and "1 " are both "1")."""
        if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
            values = values.astype("Int64")
        return values.astype("string").str.strip()

    def unseen(self, values: pd.Series, known: pd.Series) -> list[str]:
        """Labels a model trained on `known` cannot predict."""
        return sorted(set(values.dropna().unique()) - set(known.dropna().unique()))

    def describe(self, values: pd.Series) -> dict[str, Any]:
        return {"class_counts": {str(k): int(v) for k, v in values.value_counts().head(30).items()}}

    def fit(self, values: pd.Series, source: Any) -> dict[str, Any]:
        classes = class_order(values, getattr(source, "positive_class", None))
        return {"type": self.name, "name": getattr(source, "target", None), "classes": classes,
                "positive_class": classes[1] if len(classes) == 2 else None}

    def encode(self, values: pd.Series, state: dict[str, Any]) -> np.ndarray:
        return encode_labels(values, state["classes"])

    def stratify(self, encoded: np.ndarray) -> np.ndarray | None:
        return encoded

    def n_outputs(self, state: dict[str, Any]) -> int:
        return len(state["classes"])

    def objective(self, state: dict[str, Any], train_cfg: Any) -> Any:
        from torchcycle.training.objectives import ClassificationObjective

        return ClassificationObjective(len(state["classes"]))

    def calibrate(self, state: dict[str, Any], val_outputs: np.ndarray, val_y: np.ndarray,
                  train_cfg: Any = None) -> dict[str, Any]:
        """The state with `calibration` fitted on the validation logits (`train.calibration.method`):
        {"method": "none"}, {"method": "temperature", "temperature": T} or {"method": "vector" | "matrix",
        "weight": K×K, "bias": K}, plus "validation": rows and log loss before and after. A binary task
        with a `train.threshold.objective` also gets "threshold": {"objective", "value",
        "validation_score"} (and the objective's parameter, or a "note" when min_precision is out of
        reach and 0.5 applies), chosen on the calibrated validation probabilities; without one, 0.5."""
        from torchcycle.config import Calibration, Threshold
        from torchcycle.evaluation import calibration as C

        method = getattr(getattr(train_cfg, "calibration", None), "method", Calibration().method)
        rule = getattr(train_cfg, "threshold", None) or Threshold()
        logits = np.asarray(val_outputs, np.float64).reshape(len(val_y), -1)
        y = np.asarray(val_y).astype(np.int64).ravel()
        fitted: dict[str, Any] = {"method": method}
        if method == "temperature":
            fitted["temperature"] = C.fit_temperature(logits, y)
        elif method in ("vector", "matrix"):
            weight, bias = (C.fit_vector_scaling if method == "vector" else C.fit_matrix_scaling)(logits, y)
            fitted.update(weight=weight.tolist(), bias=bias.tolist())
        elif method != "none":
            raise ValueError(f"unknown calibration method '{method}'")
        out = {k: v for k, v in state.items() if k not in ("calibration", "threshold")}
        out["calibration"] = fitted
        with torch.inference_mode():
            proba = self.head(out)(torch.from_numpy(logits.astype(np.float32))).numpy().astype(np.float64)
        fitted["validation"] = {"rows": len(y), "log_loss_before": C.log_loss(y, C.softmax(logits)),
                                "log_loss_after": C.log_loss(y, proba)}
        if len(state["classes"]) == 2 and rule.objective != "none":
            value, score = C.choose_threshold(y == 1, proba[:, 1], rule.objective, rule.cost_fp, rule.min_precision)
            threshold: dict[str, Any] = {"objective": rule.objective, "value": value, "validation_score": score}
            if rule.objective == "cost":
                threshold["cost_fp"] = rule.cost_fp
            if rule.objective == "min_precision":
                threshold["min_precision"] = rule.min_precision
                if score is None:
                    threshold["note"] = (f"no threshold reaches precision {rule.min_precision} on the validation "
                                         "split; 0.5 applies")
            out["threshold"] = threshold
        return out

    def head(self, state: dict[str, Any]) -> nn.Module:
        """Softmax of the logits after the state's calibration (plain softmax when it has none)."""
        if affine_calibration(state) is None:
            return Softmax()
        return CalibratedSoftmax(calibration_module(state))

    def output_columns(self, state: dict[str, Any]) -> list[str]:
        return [f"proba_{c}" for c in state["classes"]]

    def readout(self, state: dict[str, Any]) -> tuple[nn.Module, str]:
        if len(state["classes"]) == 2:
            return log_odds(state), f"log-odds of '{state['classes'][-1]}'"
        return nn.Identity(), "logit of the predicted class"

    def metrics(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Headline, per-class and confusion metrics of the (calibrated) probabilities. `accuracy`, the
        per-class numbers and the confusion matrix are those of the most probable class (0.5 for a binary
        task), comparable across models whatever their threshold; `ece` (top-label, `options["ece_bins"]`
        equal-width bins) and `brier` (multi-class, twice scikit-learn's for a binary task) measure
        calibration. A binary task with a threshold adds "threshold": the objective, the value, and
        accuracy, F1 of the positive class and balanced accuracy at the threshold and at 0.5."""
        from torchcycle.evaluation import calibration as C
        from torchcycle.evaluation.metrics import classification_metrics

        base = classification_metrics(y, outputs, state["classes"])
        out: dict[str, Any] = {}
        for key, value in base.items():
            out[key] = value
            if key == "log_loss":
                out["ece"] = C.expected_calibration_error(y, outputs, _ece_bins(options))
                out["brier"] = C.brier_score(y, outputs)
        rule = state.get("threshold")
        if rule and len(state["classes"]) == 2:
            truth = np.asarray(y).astype(np.int64) == 1
            p = np.asarray(outputs, np.float64)[:, 1]
            at = {"threshold": C.binary_scores(truth, p >= rule["value"]), "0.5": C.binary_scores(truth, p >= 0.5)}
            out["threshold"] = {"objective": rule["objective"], "value": float(rule["value"]),
                                **{f"{name}_at_{where}": at[where][name]
                                   for name in ("accuracy", "f1", "balanced_accuracy") for where in at}}
        return out

    def headline(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                 options: dict[str, Any] | None = None) -> dict[str, float | None]:
        """`headline_metrics` only, as `metrics` computes them but in numpy (a rank-based ROC AUC), fast
        enough to recompute on every bootstrap resample."""
        from torchcycle.evaluation import calibration as C

        y = np.asarray(y).astype(np.int64).ravel()
        p = np.asarray(outputs, np.float64)
        p = p / p.sum(axis=1, keepdims=True)
        k = p.shape[1]
        pred = p.argmax(axis=1)
        matrix = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
        tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
        denominator = support + predicted
        f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
        present = support > 0
        return {
            "accuracy": float(tp.sum() / max(len(y), 1)),
            "balanced_accuracy": float(np.mean(tp[present] / support[present])) if present.any() else 0.0,
            "f1_macro": float(f1.mean()),
            "roc_auc": _rank_auc(y, p),
            "log_loss": C.log_loss(y, p),
            "ece": C.expected_calibration_error(y, p, _ece_bins(options)),
        }

    def diagnostics(self, y: np.ndarray, raw_outputs: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                    options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict]:
        """Calibration before (softmax of the raw logits) and after (the head's outputs) on the test split:
        metrics {"ece_before", "calibration": {"method", "ece_bins", "binning", "before": {"ece",
        "brier", "log_loss"}, "after": {…}, and "temperature" for temperature scaling}}, the
        `reliability` table (confidence bin centre, accuracy and rows per bin before and after) and the
        `reliability.png` diagram."""
        from torchcycle.evaluation import calibration as C

        bins = _ece_bins(options)
        before = C.softmax(np.asarray(raw_outputs, np.float64).reshape(len(outputs), -1))
        after = np.asarray(outputs, np.float64)
        summary = {name: {"ece": C.expected_calibration_error(y, p, bins), "brier": C.brier_score(y, p),
                          "log_loss": C.log_loss(y, p)} for name, p in (("before", before), ("after", after))}
        cal = state.get("calibration") or {"method": "none"}
        calibration: dict[str, Any] = {"method": cal.get("method", "none"), "ece_bins": bins,
                                       "binning": "equal-width top-label confidence", **summary}
        if "temperature" in cal:
            calibration["temperature"] = float(cal["temperature"])
        b, a = C.reliability_table(y, before, bins), C.reliability_table(y, after, bins)
        table = pd.DataFrame({"confidence": b["confidence"], "accuracy_before": b["accuracy"],
                              "accuracy_after": a["accuracy"], "count_before": b["count"], "count_after": a["count"]})
        table = table[(table["count_before"] > 0) | (table["count_after"] > 0)].reset_index(drop=True)
        figure = C.reliability_figure(table, bins, summary["before"], summary["after"])
        return ({"ece_before": summary["before"]["ece"], "calibration": calibration}, {"reliability": table},
                {"reliability.png": figure})

    def tables(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
               options: dict[str, Any] | None = None) -> dict[str, pd.DataFrame]:
        from torchcycle.evaluation.metrics import curve_tables

        return curve_tables(y, outputs, state["classes"])

    def figures(self, metrics: dict, tables: dict[str, pd.DataFrame], state: dict[str, Any]) -> dict[str, Any]:
        from torchcycle.evaluation import plots as P

        return {
            "confusion_matrix.png": P.confusion_matrix_figure(metrics["confusion_matrix"], state["classes"]),
            "roc.png": P.roc_figure(tables["roc"], metrics["roc_auc"]),
            "precision_recall.png": P.precision_recall_figure(tables["precision_recall"]),
            "calibration.png": P.calibration_figure(tables["calibration"]),
        }

    def predictions(self, outputs: np.ndarray, state: dict[str, Any]) -> pd.DataFrame:
        """`predicted` is the most probable class, or for a binary task with a threshold in its state the
        positive class when its probability is at least the threshold; then one probability per class."""
        classes = state["classes"]
        table = pd.DataFrame(outputs, columns=self.output_columns(state))
        table.insert(0, "predicted", [classes[i] for i in self.decisions(outputs, state)])
        return table

    def decisions(self, outputs: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """The predicted class code per row (see `predictions`)."""
        out = np.asarray(outputs)
        rule = state.get("threshold")
        if rule and len(state["classes"]) == 2 and len(out):
            return (out[:, 1].astype(np.float64) >= float(rule["value"])).astype(np.int64)
        return out.argmax(1) if len(out) else np.zeros(0, np.int64)

    def outputs_of(self, predictions: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
        """The graph outputs behind a `predictions` table (e.g. reports/<task>/predictions.csv): (N, K)."""
        return predictions[self.output_columns(state)].to_numpy(np.float64)

    def summarise(self, y: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        """What a split's encoded targets look like, for splits.json."""
        return {"class_counts": np.bincount(y, minlength=len(state["classes"])).tolist()}

    def decode(self, y: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        return np.asarray(state["classes"], dtype=object)[np.asarray(y, dtype=np.int64)]

    def mistakes(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """The probability of the wrongly predicted class (a confident mistake scores near 1)."""
        out = np.asarray(outputs, np.float64)
        predicted = self.decisions(out, state)
        score = out[np.arange(len(out)), predicted] if len(out) else np.zeros(0)
        return np.where(predicted != np.asarray(y, np.int64), score, np.nan)

    def parity(self, reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> dict[str, Any]:
        """Max |probability difference| and predicted-class agreement; `passed` needs both."""
        diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()) if len(reference) else 0.0
        mismatched = int((reference.argmax(1) != candidate.argmax(1)).sum())
        return {"rows": len(reference), "max_abs_diff": diff, "tolerance": tolerance,
                "class_mismatches": mismatched, "passed": bool(diff <= tolerance and mismatched == 0)}

    def higher_is_better(self, metric: str) -> bool:
        return metric != "log_loss"

    def same_task(self, state: dict[str, Any], other: dict[str, Any]) -> bool:
        return other.get("type", self.name) == self.name and list(other.get("classes", [])) == list(state["classes"])


def _ece_bins(options: dict[str, Any] | None) -> int:
    return int((options or {}).get("ece_bins") or 15)


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC from ranks (Mann-Whitney, ties at mid-rank): the positive class's for a binary task, else
    the macro average of one-vs-rest AUCs (scikit-learn's `ovr`/`macro`); None with a class missing."""
    from scipy.stats import rankdata

    k = p.shape[1]
    counts = np.bincount(y, minlength=k)
    if (counts == 0).any():
        return None
    columns = [1] if k == 2 else range(k)
    aucs = []
    for c in columns:
        positive = y == c
        n1, n0 = counts[c], len(y) - counts[c]
        ranks = rankdata(p[:, c])
        aucs.append((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return float(np.mean(aucs))


CLASSIFICATION = Classification()
