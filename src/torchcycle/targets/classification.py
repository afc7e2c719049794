"""Classification targets: class codes, cross-entropy, softmax probabilities out, accuracy/ROC AUC and
their curves, a predicted class per row."""

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


def log_odds() -> nn.Module:
    """Binary tasks: one number a person can read, linear in the logits (a Linear layer, so SHAP's
    DeepLIFT rules apply to it as to the rest of the network)."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.0, 1.0]]))
    return layer.requires_grad_(False)


class Classification:
    name = "classification"
    default_metric = "roc_auc"
    metric_names = ("roc_auc", "accuracy", "balanced_accuracy", "f1_macro", "log_loss")

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

    def calibrate(self, state: dict[str, Any], val_outputs: np.ndarray, val_y: np.ndarray) -> dict[str, Any]:
        return state

    def head(self, state: dict[str, Any]) -> nn.Module:
        return Softmax()

    def output_columns(self, state: dict[str, Any]) -> list[str]:
        return [f"proba_{c}" for c in state["classes"]]

    def readout(self, state: dict[str, Any]) -> tuple[nn.Module, str]:
        if len(state["classes"]) == 2:
            return log_odds(), f"log-odds of '{state['classes'][-1]}'"
        return nn.Identity(), "logit of the predicted class"

    def metrics(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        from torchcycle.evaluation.metrics import classification_metrics

        return classification_metrics(y, outputs, state["classes"])

    def tables(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any]) -> dict[str, pd.DataFrame]:
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
        classes = state["classes"]
        table = pd.DataFrame(outputs, columns=self.output_columns(state))
        table.insert(0, "predicted", [classes[i] for i in np.asarray(outputs).argmax(1)])
        return table

    def outputs_of(self, predictions: pd.DataFrame, state: dict[str, Any]) -> np.ndarray:
        """The graph outputs behind a `predictions` table (e.g. reports/<task>/predictions.csv): (N, K)."""
        return predictions[self.output_columns(state)].to_numpy(np.float64)

    def decode(self, y: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        return np.asarray(state["classes"], dtype=object)[np.asarray(y, dtype=np.int64)]

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


CLASSIFICATION = Classification()
