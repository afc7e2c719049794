"""One module per kind of target: what a task predicts decides its loss, the model's output head, its
metrics and plots, the registry metric and its direction, and what a prediction looks like.

Stages, the served model, the flows and the dashboard hold a *target state* (plain JSON: the type and
what was fitted on the training split, e.g. the class names or the target's scale) and call
`target_of(state)`; none of them branches on the type. A new target type is one module here plus one
entry in `TARGETS`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
from torch import nn

from torchcycle.errors import ConfigError

AUTO_REGRESSION_MIN_DISTINCT = 20  # a numeric target with more distinct values than this is a number


class Target(Protocol):
    """What differs by the kind of target. Every method is pure: arrays and JSON state in, arrays out."""

    name: str
    default_metric: str  # what the registry compares when params say `auto`
    metric_names: tuple[str, ...]  # metrics a registry rule may name
    headline_metrics: tuple[str, ...]  # scalar metrics given bootstrap confidence intervals by evaluate

    stratified: bool  # whether splits are stratified by the encoded target

    def clean(self, values: pd.Series) -> pd.Series:
        """The target column as stored after ingest (text labels, or numbers)."""
        ...

    def unseen(self, values: pd.Series, known: pd.Series) -> list[str]:
        """Target values of new rows that a model trained on `known` cannot predict."""
        ...

    def describe(self, values: pd.Series) -> dict[str, Any]:
        """The target's distribution for data reports (class counts, or statistics and a histogram)."""
        ...

    def check(self, values: pd.Series, source: Any, batch: bool = False) -> list[str]:
        """Problems with the target column of the training rows (or, `batch`, of a batch of new rows,
        which need not span every class or value), each naming the fix."""
        ...

    def fit(self, values: pd.Series, source: Any) -> dict[str, Any]:
        """The target state fitted on the training rows (JSON)."""
        ...

    def encode(self, values: pd.Series, state: dict[str, Any]) -> np.ndarray:
        """Raw target values -> what the model trains on (class codes or the scaled number)."""
        ...

    def stratify(self, encoded: np.ndarray) -> np.ndarray | None:
        """Labels to stratify splits by, or None."""
        ...

    def n_outputs(self, state: dict[str, Any]) -> int: ...

    def objective(self, state: dict[str, Any], train_cfg: Any) -> Any:
        """The training loss and validation metrics (torchcycle.training.objectives)."""
        ...

    def calibrate(self, state: dict[str, Any], val_outputs: np.ndarray, val_y: np.ndarray,
                  train_cfg: Any = None) -> dict[str, Any]:
        """State completed with what is fitted on the raw validation outputs after training, as
        `train_cfg` (the task's TrainConfig; None: its defaults) asks: a probability calibration and a
        decision threshold, or prediction intervals. The head and `predictions` apply it."""
        ...

    def head(self, state: dict[str, Any]) -> nn.Module:
        """Raw model outputs -> what consumers get (inside the ONNX graph too)."""
        ...

    def output_columns(self, state: dict[str, Any]) -> list[str]: ...

    def readout(self, state: dict[str, Any]) -> tuple[nn.Module, str]:
        """A linear readout of the raw outputs that explanations attribute, and its name in words."""
        ...

    def metrics(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                options: dict[str, Any] | None = None) -> dict[str, Any]:
        """metrics.json's numbers for the head's outputs. `options` (the `evaluate` params: `ece_bins`,
        `bootstrap_samples`, `confidence`, and `seed`) may tune them; None: defaults."""
        ...

    def headline(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                 options: dict[str, Any] | None = None) -> dict[str, float | None]:
        """`headline_metrics` alone, equal to `metrics`' values, fast enough for every bootstrap resample."""
        ...

    def diagnostics(self, y: np.ndarray, raw_outputs: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
                    options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame], dict]:
        """What needs the raw model outputs as well as the head's (e.g. calibration before and after):
        (metrics merged into metrics.json, plot tables, figures by file name); ({}, {}, {}) if nothing."""
        ...

    def tables(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any],
               options: dict[str, Any] | None = None) -> dict[str, pd.DataFrame]: ...

    def figures(self, metrics: dict, tables: dict[str, pd.DataFrame], state: dict[str, Any]) -> dict[str, Any]: ...

    def predictions(self, outputs: np.ndarray, state: dict[str, Any]) -> pd.DataFrame:
        """The table a person reads: `predicted` first, then the numbers behind it."""
        ...

    def summarise(self, y: np.ndarray, state: dict[str, Any]) -> dict[str, Any]:
        """A split's encoded targets in a few numbers (class counts, or the mean), for splits.json."""
        ...

    def decode(self, y: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Encoded targets -> values a person recognises (class names or numbers in target units)."""
        ...

    def parity(self, reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> dict[str, Any]: ...

    def higher_is_better(self, metric: str) -> bool: ...

    def same_task(self, state: dict[str, Any], other: dict[str, Any]) -> bool:
        """Whether two models' outputs can be scored on the same labels (same classes, same target)."""
        ...

    def mistakes(self, y: np.ndarray, outputs: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """How bad each prediction is, worst highest (the probability given to a wrong class, or the
        absolute error); NaN for a right answer."""
        ...


def _targets() -> dict[str, Target]:
    from torchcycle.targets.classification import CLASSIFICATION
    from torchcycle.targets.regression import REGRESSION

    return {t.name: t for t in (CLASSIFICATION, REGRESSION)}


def get_target(name: str) -> Target:
    targets = _targets()
    if name not in targets:
        raise ConfigError(f"unknown target type '{name}'; choose one of {sorted(targets)}")
    return targets[name]


def target_of(state: dict[str, Any]) -> Target:
    """The target type of a fitted target state (what the model config and the ONNX metadata carry)."""
    return get_target(state.get("type", "classification"))


def infer_type(values: pd.Series, declared: str) -> tuple[str, str]:
    """(type, why): `declared` unless it is `auto`; auto calls a numeric target with more than
    AUTO_REGRESSION_MIN_DISTINCT distinct values a regression target, anything else a class."""
    if declared != "auto":
        return declared, f"source.target_type is '{declared}'"
    numbers = pd.to_numeric(values.dropna(), errors="coerce")
    distinct = int(values.dropna().nunique())
    if len(numbers) and numbers.notna().all() and distinct > AUTO_REGRESSION_MIN_DISTINCT:
        return "regression", (f"auto: the target is numeric with {distinct} distinct values "
                              f"(> {AUTO_REGRESSION_MIN_DISTINCT})")
    kind = "numeric" if len(numbers) and numbers.notna().all() else "non-numeric"
    return "classification", f"auto: the target is {kind} with {distinct} distinct values"
