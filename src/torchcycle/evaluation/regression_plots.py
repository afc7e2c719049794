"""Regression evaluation figures, drawn from the tables of `regression.regression_tables`.

They share `plots.py`'s house style and palette (imported, not copied, so the two sets of figures cannot
drift apart) and, like it, build `Figure` objects directly instead of using pyplot: no global state, no
display needed, and saving renders through matplotlib's Agg canvas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from torchcycle.evaluation.plots import _REFERENCE, PALETTE, _empty_note, style


def predicted_vs_actual_figure(table: pd.DataFrame, metrics: Mapping[str, Any]) -> Figure:
    """Predictions against targets around the y = x line, with RMSE and R² in the title.

    Equal axes make the diagonal a true 45°, so systematic over- or under-prediction shows as a tilt.
    """
    _require(table, {"actual", "predicted"})
    with style():
        fig = Figure(figsize=(5.6, 5.4), layout="constrained")
        ax = fig.subplots()
        if table.empty:
            _empty_note(ax, "no samples")
        else:
            low = float(min(table["actual"].min(), table["predicted"].min()))
            high = float(max(table["actual"].max(), table["predicted"].max()))
            ax.plot([low, high], [low, high], label="y = x", **_REFERENCE)
            _scatter(ax, table["actual"], table["predicted"])
            ax.set_aspect("equal", adjustable="datalim")
            ax.legend(loc="upper left")
        ax.set_xlabel("Actual")
        ax.set_ylabel("Predicted")
        ax.set_title(f"Predicted vs actual\n{_headline(metrics)}")
    return fig


def residuals_figure(table: pd.DataFrame) -> Figure:
    """Residual (actual - predicted) against prediction: a funnel or curve means the error depends on the
    prediction, which a single RMSE hides."""
    _require(table, {"predicted", "residual"})
    with style():
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        ax.axhline(0.0, **_REFERENCE)
        if table.empty:
            _empty_note(ax, "no samples")
        else:
            _scatter(ax, table["predicted"], table["residual"])
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Residual (actual - predicted)")
        ax.set_title("Residuals")
    return fig


def residual_histogram_figure(table: pd.DataFrame) -> Figure:
    """Distribution of residuals with a zero line: an off-centre peak is bias, heavy tails are outliers."""
    _require(table, {"residual", "count"})
    with style():
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
        if table.empty:
            _empty_note(ax, "no samples")
        else:
            centres = table["residual"].to_numpy(dtype=float)
            ax.bar(centres, table["count"], width=_bar_width(centres), color=PALETTE[0], edgecolor="white")
        ax.axvline(0.0, **_REFERENCE)
        ax.set_xlabel("Residual (actual - predicted)")
        ax.set_ylabel("Count")
        ax.set_title("Residual distribution")
    return fig


def _scatter(ax: Axes, x: pd.Series, y: pd.Series) -> None:
    """Small translucent markers, fainter as points multiply, so dense regions read as dense."""
    alpha = float(np.clip(300 / max(len(x), 1), 0.2, 0.8))
    ax.scatter(x, y, s=12, alpha=alpha, color=PALETTE[0], edgecolors="none", label="Samples")


def _headline(metrics: Mapping[str, Any]) -> str:
    parts = []
    for key, label, fmt in (("rmse", "RMSE", ".4g"), ("r2", "R²", ".3f")):
        value = metrics.get(key)
        parts.append(f"{label} = {value:{fmt}}" if value is not None else f"{label} undefined")
    return ", ".join(parts)


def _bar_width(centres: np.ndarray) -> float:
    """Bins are equal-width, so the gap between neighbouring centres is the bin width."""
    return float(np.diff(centres).min()) if centres.size > 1 else 1.0


def _require(table: pd.DataFrame, columns: set[str]) -> None:
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)}; has {list(table.columns)}")
