"""Embeddings for numerical features, as in Gorishniy et al., "On Embeddings for Numerical Features in
Tabular Deep Learning" (NeurIPS 2022): each scalar becomes a small vector before the MLP, which lets an
MLP pick up threshold-like effects (capital gains, hours) that trees find easily.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def quantile_bin_edges(x: torch.Tensor, n_bins: int) -> list[list[float]]:
    """Per-feature bin edges from training quantiles; repeated quantiles collapse (fewer bins)."""
    qs = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    edges = []
    for j in range(x.shape[1]):
        col = x[:, j].to(torch.float64)
        e = torch.unique(torch.quantile(col, qs))
        if len(e) < 2:
            e = torch.tensor([float(e[0]) - 0.5, float(e[0]) + 0.5], dtype=torch.float64)
        edges.append(e.tolist())
    return edges


class PiecewiseLinearEmbedding(nn.Module):
    """PLE: bin t of feature f encodes clamp((x - lo_t) / (hi_t - lo_t), 0, 1), then a per-feature
    linear map to `dim` and a ReLU. Bins are padded so features with fewer bins contribute zeros."""

    def __init__(self, bin_edges: list[list[float]], dim: int) -> None:
        super().__init__()
        n_features = len(bin_edges)
        n_bins = max(len(e) - 1 for e in bin_edges)
        lo = torch.full((n_features, n_bins), 1e9)
        width = torch.ones(n_features, n_bins)
        for f, e in enumerate(bin_edges):
            e_t = torch.tensor(e, dtype=torch.float32)
            k = len(e) - 1
            lo[f, :k] = e_t[:-1]
            width[f, :k] = (e_t[1:] - e_t[:-1]).clamp_min(1e-6)
        self.register_buffer("lo", lo)
        self.register_buffer("width", width)
        self.weight = nn.Parameter(torch.empty(n_features, n_bins, dim))
        self.bias = nn.Parameter(torch.zeros(n_features, dim))
        nn.init.uniform_(self.weight, -1 / math.sqrt(n_bins), 1 / math.sqrt(n_bins))
        self.out_features = n_features * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = ((x.unsqueeze(-1) - self.lo) / self.width).clamp(0.0, 1.0)  # (N, F, B)
        out = _per_feature_linear(enc, self.weight) + self.bias
        return torch.relu(out).flatten(1)


class PeriodicEmbedding(nn.Module):
    """PLR: x -> [cos(2πcx), sin(2πcx)] with trainable frequencies c ~ N(0, σ²), then linear + ReLU."""

    def __init__(self, n_features: int, dim: int, n_frequencies: int = 16, sigma: float = 0.1) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * sigma)
        self.weight = nn.Parameter(torch.empty(n_features, 2 * n_frequencies, dim))
        self.bias = nn.Parameter(torch.zeros(n_features, dim))
        nn.init.uniform_(self.weight, -1 / math.sqrt(2 * n_frequencies), 1 / math.sqrt(2 * n_frequencies))
        self.out_features = n_features * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = 2 * math.pi * self.frequencies * x.unsqueeze(-1)  # (N, F, K)
        enc = torch.cat([torch.cos(v), torch.sin(v)], dim=-1)
        out = _per_feature_linear(enc, self.weight) + self.bias
        return torch.relu(out).flatten(1)


def _per_feature_linear(enc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(N, F, K) x (F, K, D) -> (N, F, D): one batched matmul, which both eager torch and ONNX Runtime
    run faster than the equivalent einsum."""
    return torch.bmm(enc.transpose(0, 1), weight).transpose(0, 1)
