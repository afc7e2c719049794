"""Drift between a new batch and the training data, per feature, with scipy's two-sample tests and the
population stability index (PSI). Pure: frames/arrays in, a JSON-able report out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=float), EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_drift(reference: pd.Series, batch: pd.Series, bins: int = 10) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    ref, new = reference.dropna().to_numpy(float), batch.dropna().to_numpy(float)
    if len(ref) == 0 or len(new) == 0:
        return {"type": "numeric", "psi": 0.0, "p_value": 1.0, "test": "ks"}
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    if len(edges) < 3:  # (nearly) constant column: compare the share equal to its value
        value = ref[0]
        p_ref, p_new = [np.mean(ref == value), np.mean(ref != value)], [np.mean(new == value), np.mean(new != value)]
    else:
        p_ref = np.histogram(ref, edges)[0] / len(ref)
        p_new = np.histogram(new, edges)[0] / len(new)
    test = ks_2samp(ref, new)
    return {
        "type": "numeric", "test": "ks", "statistic": float(test.statistic), "p_value": float(test.pvalue),
        "psi": psi(p_ref, p_new), "reference_mean": float(ref.mean()), "batch_mean": float(new.mean()),
    }  # fmt: skip


def categorical_drift(reference: pd.Series, batch: pd.Series) -> dict[str, Any]:
    from scipy.stats import chi2_contingency

    ref = reference.fillna("<missing>").astype(str)
    new = batch.fillna("<missing>").astype(str)
    levels = sorted(set(ref) | set(new))
    c_ref = ref.value_counts().reindex(levels, fill_value=0).to_numpy()
    c_new = new.value_counts().reindex(levels, fill_value=0).to_numpy()
    table = np.vstack([c_ref, c_new])
    table = table[:, table.sum(axis=0) > 0]
    p_value = float(chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    return {
        "type": "categorical", "test": "chi2", "p_value": p_value,
        "psi": psi(c_ref / max(c_ref.sum(), 1), c_new / max(c_new.sum(), 1)),
        "unseen_levels": sorted(set(new) - set(ref))[:20],
    }  # fmt: skip


def _decide(columns: dict[str, dict], psi_threshold: float, p_value: float) -> dict[str, Any]:
    for stats in columns.values():
        stats["drifted"] = bool(stats["psi"] >= psi_threshold and stats["p_value"] < p_value)
    drifted = [c for c, s in columns.items() if s["drifted"]]
    return {
        "columns": columns,
        "drifted_columns": drifted,
        "drift_share": len(drifted) / max(len(columns), 1),
        "rule": f"a column drifts when PSI >= {psi_threshold} and the test's p-value < {p_value}",
    }


def tabular_drift(
    reference: pd.DataFrame, batch: pd.DataFrame, numeric: list[str], categorical: list[str],
    psi_threshold: float = 0.2, p_value: float = 0.01,
) -> dict[str, Any]:
    """Per-column drift of `batch` against `reference` (the training rows)."""
    columns = {c: numeric_drift(reference[c], batch[c]) for c in numeric}
    columns.update({c: categorical_drift(reference[c], batch[c]) for c in categorical})
    return {"kind": "tabular", "reference_rows": len(reference), "batch_rows": len(batch),
            **_decide(columns, psi_threshold, p_value)}


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """Cheap per-image statistics that move when the image source changes (exposure, contrast, ink)."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return pd.DataFrame({
        "mean_intensity": x.mean(1),
        "contrast": x.std(1),
        "bright_fraction": (x > 0.5).mean(1),
    })  # fmt: skip


def image_drift(
    reference: np.ndarray, batch: np.ndarray, ref_labels: list[str], batch_labels: list[str],
    psi_threshold: float = 0.2, p_value: float = 0.01,
) -> dict[str, Any]:
    """Drift of pixel statistics (KS per statistic) and of the class balance (chi-square)."""
    ref_stats, new_stats = image_statistics(reference), image_statistics(batch)
    columns = {c: numeric_drift(ref_stats[c], new_stats[c]) for c in ref_stats.columns}
    columns["label"] = categorical_drift(pd.Series(ref_labels), pd.Series(batch_labels))
    return {"kind": "image", "reference_rows": len(reference), "batch_rows": len(batch),
            **_decide(columns, psi_threshold, p_value)}


def drift_figure(report: dict[str, Any]):
    """Bar chart of PSI per column, drifted columns highlighted, with the threshold line."""
    from matplotlib.figure import Figure

    from torchcycle.evaluation.plots import PALETTE, style

    cols = report["columns"]
    names = sorted(cols, key=lambda c: cols[c]["psi"])
    values = [cols[c]["psi"] for c in names]
    with style():
        fig = Figure(figsize=(7, max(2.5, 0.35 * len(names) + 1)))
        ax = fig.add_subplot()
        colours = [PALETTE[3] if cols[c]["drifted"] else PALETTE[0] for c in names]
        ax.barh(names, values, color=colours)
        ax.set_xlabel("population stability index (PSI)")
        ax.set_title(f"Drift of the new batch: {len(report['drifted_columns'])} of {len(names)} columns drifted")
        fig.tight_layout()
    return fig
