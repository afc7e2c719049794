"""SHAP attributions for the tabular MLP, reported per original column.

The MLP sees a flat encoded vector (numeric embeddings, one-hot or embedded categoricals), so SHAP
runs on `forward_encoded` and the attributions of each column's block of encoded features are summed
back to that column: a reader sees "education", not "education_Bachelors". Because SHAP values are
additive, the column sums still add up to the model output minus the expected value.

Pure functions: arrays and a model in, arrays out; no files.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import nn


@dataclass
class TabularShap:
    """Attributions of the explained output (log-odds of the positive class for binary tasks, else the
    logit of each class) per original column: values (N, F, K); expected (K,); output (N, K)."""

    values: np.ndarray
    expected: np.ndarray
    output: np.ndarray
    columns: list[str]
    method: str

    @property
    def additivity_error(self) -> float:
        """max |sum of attributions + expected value - model output|: 0 for exact SHAP values."""
        return float(np.abs(self.values.sum(axis=1) + self.expected[None, :] - self.output).max())


class ExplainedOutput(nn.Module):
    """The quantity SHAP explains: the target type's readout of the model output (log-odds for binary
    tasks, logits otherwise, the value in target units for regression). Linear in the model output, so
    DeepExplainer's rules still apply."""

    def __init__(self, model: nn.Module, readout: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.readout = readout

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.readout(self.model.forward_encoded(z))


def encoded_widths(model: nn.Module, n_numeric: int) -> list[int]:
    """How many encoded features each original column occupies, numeric columns first (as in `encode`)."""
    if n_numeric:
        numeric = model.numeric
        per = 1 if numeric is None else numeric.out_features // n_numeric
        widths = [per] * n_numeric
    else:
        widths = []
    cat = model.categorical
    widths += [cat.embedding_dim] * len(cat.cardinalities) if cat.embedding_dim > 0 else list(cat.cardinalities)
    return widths


def sum_to_columns(values: np.ndarray, widths: list[int]) -> np.ndarray:
    """(N, D_encoded, K) -> (N, n_columns, K) by summing each column's block."""
    if sum(widths) != values.shape[1]:
        raise ValueError(f"column widths add up to {sum(widths)}, attributions have {values.shape[1]} features")
    bounds = np.cumsum([0, *widths])
    return np.stack([values[:, a:b].sum(axis=1) for a, b in pairwise(bounds)], axis=1)


def explain_tabular(
    model: nn.Module,
    background: tuple[torch.Tensor, torch.Tensor],
    rows: tuple[torch.Tensor, torch.Tensor],
    columns: list[str],
    readout: nn.Module,
    method: str = "deep",
) -> TabularShap:
    """SHAP values of `rows` against `background` (both (x_num, x_cat)) per original column.

    `deep` (DeepExplainer, exact additivity for ReLU-type MLPs and fast) or `gradient`
    (GradientExplainer: expected gradients, approximate but model-agnostic).
    """
    import shap

    model = model.eval()
    explained = ExplainedOutput(model, readout).eval()
    with torch.no_grad():
        z_bg = model.encode(*background).detach()
        z = model.encode(*rows).detach()
        output = explained(z).numpy().astype(np.float64)
        expected = explained(z_bg).mean(0).numpy().astype(np.float64)
    if method == "deep":
        explainer = shap.DeepExplainer(explained, z_bg)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small matmuls: one thread is faster than two fighting over a core
        try:
            raw = _deep_batched(explainer, z, z_bg)
        finally:
            torch.set_num_threads(threads)
        if raw is None:  # shap internals moved: its own (per-row, slower) loop gives the same values
            raw = explainer.shap_values(z, check_additivity=False)
    elif method == "gradient":
        explainer = shap.GradientExplainer(explained, z_bg)
        raw = explainer.shap_values(z)
    else:
        raise ValueError(f"unknown SHAP method '{method}'; choose deep or gradient")
    values = np.asarray(raw, dtype=np.float64)
    if values.ndim == 2:  # a single output comes back without its trailing axis
        values = values[..., None]
    if values.shape[0] != z.shape[0]:  # older layout: one array per output
        values = np.moveaxis(values, 0, -1)
    widths = encoded_widths(model, rows[0].shape[1])
    return TabularShap(sum_to_columns(values, widths), expected, output, list(columns), method)


def _deep_batched(explainer, z: torch.Tensor, z_bg: torch.Tensor, chunk: int = 64) -> np.ndarray | None:
    """DeepExplainer's values with many rows per backward pass instead of one: (N, D, K).

    shap tiles each row against the background and runs one backward pass per row; its DeepLIFT
    handlers only need inputs and references paired across the two halves of a batch, so pairing
    `chunk` rows with the background at once gives identical values (checked in the tests) ~20x faster.
    """
    try:
        from shap.explainers._deep.deep_pytorch import add_interim_values, deeplift_grad
    except ImportError:
        return None
    inner = getattr(explainer, "explainer", None)
    if inner is None or not hasattr(inner, "add_handles"):
        return None
    model, b = inner.model, z_bg.shape[0]
    with torch.no_grad():
        n_out = model(z[:1]).shape[1]
    out = np.zeros((z.shape[0], z.shape[1], n_out))
    handles = inner.add_handles(model, add_interim_values, deeplift_grad)
    try:
        for start in range(0, z.shape[0], chunk):
            x = z[start : start + chunk]
            c = x.shape[0]
            x_t, r_t = x.repeat_interleave(b, dim=0), z_bg.repeat(c, 1)
            diff = (x_t - r_t).reshape(c, b, -1)
            for k in range(n_out):
                joint = torch.cat([x_t, r_t]).requires_grad_()
                model.zero_grad()
                (grad,) = torch.autograd.grad(model(joint)[:, k].sum(), joint)
                out[start : start + c, :, k] = (grad[: c * b].reshape(c, b, -1) * diff).mean(1).detach().numpy()
    finally:
        for handle in handles:
            handle.remove()
        inner.remove_attributes(model)
    return out


def global_importance(values: np.ndarray, columns: list[str]) -> pd.DataFrame:  # noqa: F821
    """Mean |SHAP| per column (N, F) sorted descending, with its share of the total."""
    import pandas as pd

    mean_abs = np.abs(values).mean(axis=0)
    total = mean_abs.sum() or 1.0
    table = pd.DataFrame({"feature": columns, "mean_abs_shap": mean_abs, "share": mean_abs / total})
    return table.sort_values("mean_abs_shap", ascending=False, ignore_index=True)


def pick_local_rows(error: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of rows for local plots: half of them wrong (misclassified, or a large error) when there
    are any, the rest right."""
    rng = np.random.default_rng(seed)
    error = np.asarray(error, dtype=bool)
    wrong, right = np.flatnonzero(error), np.flatnonzero(~error)
    n_wrong = min(len(wrong), max(n // 2, 1 if n else 0))
    picked = list(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else []
    picked += list(rng.choice(right, min(len(right), n - n_wrong), replace=False))
    return np.asarray(sorted(int(i) for i in picked), dtype=np.int64)
