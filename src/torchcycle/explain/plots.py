"""Explanation figures in the house style of evaluation/plots.py (Okabe-Ito colours, cividis maps).

Built on `matplotlib.figure.Figure` (no pyplot state); saving is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from torchcycle.evaluation.plots import MATRIX_CMAP, PALETTE, style

POSITIVE, NEGATIVE = PALETTE[3], PALETTE[0]  # vermillion pushes the output up, blue pushes it down


def importance_bar(importance: pd.DataFrame, top: int = 20, output_name: str = "log-odds") -> Figure:
    """Mean |SHAP| per original column, largest on top."""
    table = importance.head(top).iloc[::-1]
    with style():
        fig = Figure(figsize=(7.5, 0.35 * len(table) + 1.6), layout="constrained")
        ax = fig.subplots()
        ax.barh(table["feature"], table["mean_abs_shap"], color=PALETTE[0])
        ax.set_xlabel(f"mean |SHAP value| ({output_name})")
        ax.set_title("Global feature importance")
        ax.grid(axis="y", visible=False)
    return fig


def beeswarm(values: np.ndarray, features: pd.DataFrame, importance: pd.DataFrame, top: int = 15,
             output_name: str = "log-odds", seed: int = 0) -> Figure:
    """One row of dots per column (most important on top): x is the SHAP value, colour the feature's
    value rank within the explained rows (categoricals by frequency rank), as in shap's beeswarm."""
    rng = np.random.default_rng(seed)
    order = list(importance["feature"].head(top))
    columns = list(features.columns)
    with style():
        fig = Figure(figsize=(8, 0.42 * len(order) + 1.8), layout="constrained")
        ax = fig.subplots()
        for row, name in enumerate(reversed(order)):
            j = columns.index(name)
            v = values[:, j]
            colour = _value_rank(features[name])
            jitter = _swarm_offsets(v, rng)
            sc = ax.scatter(v, row + jitter, c=colour, cmap=MATRIX_CMAP, vmin=0, vmax=1, s=9, alpha=0.8,
                            linewidths=0)
        ax.axvline(0, color="#888888", linewidth=1)
        ax.set_yticks(range(len(order)), labels=list(reversed(order)))
        ax.set_xlabel(f"SHAP value ({output_name}); right pushes the prediction up")
        ax.set_title("SHAP values per row")
        ax.grid(axis="y", visible=False)
        if order:
            bar = fig.colorbar(sc, ax=ax, shrink=0.7, ticks=[0, 1])
            bar.ax.set_yticklabels(["low", "high"])
            bar.set_label("feature value (rank)")
    return fig


def waterfall(values: np.ndarray, expected: float, raw: pd.Series, title: str, top: int = 10,
              output_name: str = "log-odds") -> Figure:
    """One row's explanation: from the expected output, each column's contribution, to the prediction.
    Columns beyond `top` are folded into one bar so the arithmetic still adds up."""
    order = np.argsort(-np.abs(values))
    shown, rest = order[:top], order[top:]
    labels = [f"{raw.index[j]} = {_short(raw.iloc[j])}" for j in shown]
    contrib = [float(values[j]) for j in shown]
    if len(rest):
        labels.append(f"{len(rest)} other columns")
        contrib.append(float(values[rest].sum()))
    labels, contrib = labels[::-1], contrib[::-1]
    start = expected + np.concatenate([[0.0], np.cumsum(contrib)[:-1]])
    with style():
        fig = Figure(figsize=(8.5, 0.42 * len(labels) + 1.8), layout="constrained")
        ax = fig.subplots()
        colours = [POSITIVE if c >= 0 else NEGATIVE for c in contrib]
        ax.barh(range(len(labels)), contrib, left=start, color=colours)
        for i, (s, c) in enumerate(zip(start, contrib)):
            ax.text(s + c, i, f" {c:+.2f}", va="center", ha="left" if c >= 0 else "right", fontsize=9)
        ax.axvline(expected, color="#888888", linestyle="--", linewidth=1, label=f"expected {expected:.2f}")
        final = expected + sum(contrib)
        ax.axvline(final, color=PALETTE[7], linewidth=1, label=f"this row {final:.2f}")
        ax.set_yticks(range(len(labels)), labels=labels)
        ax.margins(x=0.15)  # room for the value labels at both ends
        ax.set_xlabel(output_name)
        ax.set_title(title)
        ax.legend(loc="best")
        ax.grid(axis="y", visible=False)
    return fig


def cam_overlays(images: np.ndarray, maps: np.ndarray, titles: Sequence[str], columns: int = 6) -> Figure:
    """Grid of images (N, C, H, W in [0, 1]) with their heat maps overlaid (cividis, half transparent)."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, int(np.ceil(n / cols)))
    with style():
        fig = Figure(figsize=(2.1 * cols, 2.3 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, img, m, title in zip(axes, images, maps, titles):
            ax.imshow(_display(img), cmap="gray" if img.shape[0] == 1 else None)
            ax.imshow(m, cmap=MATRIX_CMAP, alpha=0.5, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8, fontweight="normal")
        fig.suptitle("Grad-CAM: where the evidence for the predicted class lies")
    return fig


def class_maps(maps: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Average heat map of each true class, on one shared colour scale."""
    k = len(class_names)
    cols = min(k, 5)
    rows = int(np.ceil(k / cols))
    vmax = float(maps.max()) or 1.0
    with style():
        fig = Figure(figsize=(2.3 * cols + 0.8, 2.4 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        for ax in axes:
            ax.axis("off")
        im = None
        for ax, m, name in zip(axes, maps, class_names):
            im = ax.imshow(m, cmap=MATRIX_CMAP, vmin=0, vmax=vmax)
            ax.set_title(f"class {name}", fontsize=9, fontweight="normal")
        if im is not None:
            fig.colorbar(im, ax=list(axes), shrink=0.7).set_label("mean Grad-CAM")
        fig.suptitle("Average Grad-CAM per class")
    return fig


def _display(img: np.ndarray) -> np.ndarray:
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _value_rank(col: pd.Series) -> np.ndarray:
    """Feature values as ranks in [0, 1]; categoricals ranked by how common their level is."""
    if pd.api.types.is_numeric_dtype(col):
        r = col.rank(pct=True).fillna(0.5).to_numpy()
    else:
        freq = col.astype("string").map(col.astype("string").value_counts(normalize=True))
        r = freq.rank(pct=True).fillna(0.5).to_numpy()
    return r.astype(float)


def _swarm_offsets(v: np.ndarray, rng: np.random.Generator, width: float = 0.35) -> np.ndarray:
    """Vertical jitter proportional to the local density of points, so dense areas spread out."""
    if len(v) < 2:
        return np.zeros(len(v))
    hist, edges = np.histogram(v, bins=50)
    density = hist[np.clip(np.digitize(v, edges) - 1, 0, len(hist) - 1)] / max(hist.max(), 1)
    return rng.uniform(-1, 1, len(v)) * width * density


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 18 else text[:17] + "…"


def save_figures(folder, figures: dict) -> None:
    """Write figures (name -> Figure, names may hold sub-folders) as PNGs."""
    from pathlib import Path

    for name, fig in figures.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
