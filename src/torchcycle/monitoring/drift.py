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


def domain_classifier_drift(reference: np.ndarray, batch: np.ndarray, seed: int = 0, max_rows: int = 2000,
                            ) -> dict[str, Any]:
    """Can a classifier tell the batch's embeddings from the training data's? Cross-validated ROC AUC of a
    logistic regression (0.5: indistinguishable), its Mann-Whitney p-value, and the PSI of its scores."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    ref = reference[rng.permutation(len(reference))[:max_rows]]
    new = batch[rng.permutation(len(batch))[:max_rows]]
    if len(ref) < 5 or len(new) < 5:
        return {"type": "embedding", "test": "domain classifier", "auc": 0.5, "p_value": 1.0, "psi": 0.0}
    x = np.vstack([ref, new])
    y = np.r_[np.zeros(len(ref)), np.ones(len(new))]
    folds = StratifiedKFold(n_splits=min(5, len(new), len(ref)), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=1000, class_weight="balanced"), x, y, cv=folds,
                               method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, scores))
    p_value = float(mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").pvalue)
    edges = np.linspace(0, 1, 11)
    p_ref = np.histogram(scores[y == 0], edges)[0] / len(ref)
    p_new = np.histogram(scores[y == 1], edges)[0] / len(new)
    return {"type": "embedding", "test": "domain classifier (5-fold logistic regression)", "auc": auc,
            "p_value": p_value, "psi": psi(p_ref, p_new)}


def text_drift(reference: pd.DataFrame, batch: pd.DataFrame, ref_embeddings: np.ndarray, batch_embeddings: np.ndarray,
               label: str | None, psi_threshold: float = 0.2, p_value: float = 0.01) -> dict[str, Any]:
    """Drift of text batches: token count and out-of-vocabulary share per text (KS + PSI), the labels
    (chi-square), and the model's pooled embeddings (a domain classifier). Frames hold the columns
    `tokens` and `oov_share` (and `label`)."""
    columns = {c: numeric_drift(reference[c], batch[c]) for c in ("tokens", "oov_share")}
    if label is not None:
        columns["label"] = categorical_drift(reference[label], batch[label])
    columns["embedding"] = domain_classifier_drift(ref_embeddings, batch_embeddings)
    return {"kind": "text", "reference_rows": len(reference), "batch_rows": len(batch),
            **_decide(columns, psi_threshold, p_value)}
