"""Evaluation figures with one shared, colour-blind-safe look.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot, so nothing here touches
global figure state, needs a display, or leaks memory in long-running processes (dashboards, servers).
Saving is the caller's job: these functions only turn data into figures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import matplotlib
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies and in greyscale.
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
# Perceptually uniform and readable by colour-blind viewers, unlike viridis' green-yellow end or jet.
MATRIX_CMAP = "cividis"
_REFERENCE = {"color": "#888888", "linestyle": "--", "linewidth": 1.0}

STYLE: dict[str, object] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#DDDDDD",
    "grid.linewidth": 0.8,
    "grid.alpha": 0.8,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=list(PALETTE)),
    "image.cmap": MATRIX_CMAP,
    "lines.linewidth": 2.0,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}


def apply_style() -> None:
    """Make the house style global, for callers that draw their own figures (notebooks, dashboards)."""
    matplotlib.rcParams.update(STYLE)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the house style only while building a figure, so importing this module changes nothing."""
    with matplotlib.rc_context(STYLE):
        yield


def learning_curves(history: pd.DataFrame) -> Figure:
    """Losses (left) and other train_/val_ metrics (right) per epoch.

    They get separate panels because losses are unbounded while metrics usually live in [0, 1]; on one
    axis either would flatten the other. Columns outside train_*/val_* (learning rate, timings) are left
    out for the same reason.
    """
    if "epoch" not in history.columns:
        raise ValueError(f"history needs an 'epoch' column, got {list(history.columns)}")
    losses = [c for c in history.columns if c != "epoch" and c.endswith("loss")]
    metrics = [c for c in history.columns if c.startswith(("train_", "val_")) and c not in losses]
    with style():
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        loss_ax, metric_ax = fig.subplots(1, 2)
        _plot_series(loss_ax, history, losses, "Loss", "Loss")
        _plot_series(metric_ax, history, metrics, "Metrics", "Value")
        fig.suptitle("Learning curves")
    return fig


def confusion_matrix_figure(
    matrix: list[list[int]] | np.ndarray, class_names: Sequence[str], normalize: bool = True
) -> Figure:
    """Confusion matrix with counts annotated.

    With `normalize`, colour shows each true class's row share (recall), so rare classes are as visible as
    common ones; the annotated numbers stay raw counts (plus the share) so nothing is hidden.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be {k}x{k} to match class_names, got shape {counts.shape}")
    shares = _row_shares(counts)
    values = shares if normalize else counts
    vmax = 1.0 if normalize else max(int(counts.max()), 1)
    with style():
        side = min(max(4.5, 0.6 * k + 2.5), 12)
        fig = Figure(figsize=(side + 1.2, side), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(values, cmap=MATRIX_CMAP, vmin=0, vmax=vmax)
        ax.grid(False)
        _annotate_cells(ax, counts, shares if normalize else None, values / vmax)
        _label_matrix_axes(ax, class_names)
        colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
        colorbar.set_label("Share of true class" if normalize else "Count")
        if normalize:
            colorbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.set_title("Confusion matrix (row-normalised)" if normalize else "Confusion matrix")
    return fig


def roc_figure(roc: pd.DataFrame, auc: float | None) -> Figure:
    """ROC curve against the chance diagonal; AUC in the legend because it is what readers compare."""
    label = f"Model (AUC = {auc:.3f})" if auc is not None else "Model (AUC undefined)"
    with style():
        fig, ax = _unit_square_axes()
        ax.plot([0, 1], [0, 1], label="Chance", **_REFERENCE)
        _plot_curve(ax, roc, "fpr", "tpr", label)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title("ROC curve")
        ax.legend(loc="lower right")
    return fig


def precision_recall_figure(pr: pd.DataFrame) -> Figure:
    """Precision-recall curve, the more honest view than ROC when the positive class is rare."""
    with style():
        fig, ax = _unit_square_axes()
        _plot_curve(ax, pr, "recall", "precision", "Model", drawstyle="steps-post")
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_title("Precision-recall curve")
        ax.legend(loc="lower left")
    return fig


def calibration_figure(cal: pd.DataFrame) -> Figure:
    """Reliability diagram: points on the diagonal mean predicted probabilities can be taken at face value."""
    with style():
        fig, ax = _unit_square_axes()
        ax.plot([0, 1], [0, 1], label="Perfectly calibrated", **_REFERENCE)
        _plot_curve(ax, cal, "mean_predicted", "fraction_positive", "Model", marker="o")
        ax.set_xlabel("Mean predicted probability")
        ax.set_ylabel("Fraction of positives")
        ax.set_title("Calibration curve")
        ax.legend(loc="upper left")
    return fig


def _plot_series(ax: Axes, history: pd.DataFrame, columns: list[str], title: str, ylabel: str) -> None:
    """Train dashed, validation solid, same colour per metric, so each train/val pair reads as one."""
    marker = "o" if len(history) <= 30 else None
    colours = _colour_per_metric(columns)
    for column in columns:
        split, _, metric = column.partition("_")
        ax.plot(
            history["epoch"],
            history[column],
            label=column,
            color=colours[metric or column],
            linestyle="--" if split == "train" else "-",
            marker=marker,
            markersize=4,
        )
    if columns:
        ax.legend(loc="best")
    else:
        _empty_note(ax, "nothing recorded")
    ax.set_title(title)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(ylabel)


def _colour_per_metric(columns: list[str]) -> dict[str, str]:
    names = list(dict.fromkeys(c.partition("_")[2] or c for c in columns))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _plot_curve(ax: Axes, frame: pd.DataFrame, x: str, y: str, label: str, **kwargs: object) -> None:
    """Draw one curve, or say why there is none (e.g. one class missing) instead of an empty square."""
    missing = {x, y} - set(frame.columns)
    if missing:
        raise ValueError(f"curve table lacks columns {sorted(missing)}; has {list(frame.columns)}")
    if frame.empty:
        _empty_note(ax, "curve undefined (a class is missing)")
        return
    ax.plot(frame[x], frame[y], label=label, color=PALETTE[0], **kwargs)


def _unit_square_axes() -> tuple[Figure, Axes]:
    """Probability-vs-probability plots get equal, slightly padded axes so the diagonal is a true 45°."""
    fig = Figure(figsize=(5.2, 5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    return fig, ax


def _row_shares(counts: np.ndarray) -> np.ndarray:
    """Rows divided by their totals; an empty row (class absent from y_true) stays 0 instead of NaN."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def _annotate_cells(ax: Axes, counts: np.ndarray, shares: np.ndarray | None, intensity: np.ndarray) -> None:
    """Write each cell's count; text colour flips with the cell shade so it stays legible on cividis."""
    k = counts.shape[0]
    fontsize = 10 if k <= 6 else max(6, 13 - k // 2)
    for i in range(k):
        for j in range(k):
            text = f"{counts[i, j]}" if shares is None else f"{counts[i, j]}\n{shares[i, j]:.0%}"
            colour = "white" if intensity[i, j] < 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)


def _label_matrix_axes(ax: Axes, class_names: Sequence[str]) -> None:
    positions = np.arange(len(class_names))
    ax.set_xticks(positions, labels=list(class_names))
    ax.set_yticks(positions, labels=list(class_names))
    if len(class_names) > 4 or max(len(str(n)) for n in class_names) > 6:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    for spine in ax.spines.values():
        spine.set_visible(False)


def _empty_note(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555")
