"""The tabular model: categorical columns one-hot encoded or embedded, concatenated with the scaled
numeric columns, then an MLP."""

from __future__ import annotations

from itertools import islice

import torch
from torch import nn
from torch.nn import functional as F

from torchcycle.models.layers import activation


class CategoricalEncoder(nn.Module):
    """Turns integer category codes (0 = unseen) into a dense vector per row.

    With `embedding_dim == 0` each column is one-hot encoded (no parameters); otherwise each column
    gets its own learned embedding table. The one-hot blocks are built in one vectorised op (codes
    shifted by each column's offset, one multi-hot row), which gives the same vector as one one-hot per
    column with a fraction of the operators: that matters at batch 1, eager or exported.
    """

    def __init__(self, cardinalities: list[int], embedding_dim: int = 0) -> None:
        super().__init__()
        self.cardinalities = list(cardinalities)
        self.embedding_dim = embedding_dim
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_dim) for card in cardinalities
        ) if embedding_dim > 0 else nn.ModuleList()
        starts = [sum(self.cardinalities[:j]) for j in range(len(self.cardinalities))]
        self.register_buffer("offsets", torch.tensor(starts, dtype=torch.long), persistent=False)

    @property
    def out_features(self) -> int:
        if self.embedding_dim > 0:
            return self.embedding_dim * len(self.cardinalities)
        return sum(self.cardinalities)

    def forward(self, x_cat: torch.Tensor) -> torch.Tensor:
        if not self.cardinalities:
            return x_cat.new_zeros((x_cat.shape[0], 0), dtype=torch.float32)
        if self.embedding_dim > 0:
            return torch.cat([emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings)], dim=1)
        return F.one_hot(x_cat + self.offsets, self.out_features).sum(dim=1).to(torch.float32)


class ResidualBlock(nn.Module):
    """x + Dropout(Linear(act(Linear(Norm(x))))): the ResNet-style MLP block of tabular DL baselines."""

    def __init__(self, width: int, hidden: int, activation_name: str, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.BatchNorm1d(width) if batch_norm else nn.LayerNorm(width),
            nn.Linear(width, hidden),
            activation(activation_name),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TabularMLP(nn.Module):
    def __init__(
        self,
        n_numeric: int,
        cardinalities: list[int],
        n_classes: int,
        hidden_sizes: list[int],
        activation_name: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        embedding_dim: int = 0,
        numeric_embedding: str = "none",
        numeric_embedding_dim: int = 16,
        numeric_bin_edges: list[list[float]] | None = None,
        periodic_frequencies: int = 16,
        periodic_sigma: float = 0.1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.categorical = CategoricalEncoder(cardinalities, embedding_dim)
        self.numeric = _numeric_encoder(
            n_numeric, numeric_embedding, numeric_embedding_dim, numeric_bin_edges,
            periodic_frequencies, periodic_sigma,
        )  # fmt: skip
        width = (self.numeric.out_features if self.numeric is not None else n_numeric) + self.categorical.out_features
        layers: list[nn.Module] = []
        if residual:
            size = hidden_sizes[0]
            layers.append(nn.Linear(width, size))
            layers += [ResidualBlock(size, h, activation_name, dropout, batch_norm) for h in hidden_sizes[1:] or [size]]
            layers += [nn.BatchNorm1d(size) if batch_norm else nn.LayerNorm(size), activation(activation_name)]
            width = size
        else:
            for size in hidden_sizes:
                layers.append(nn.Linear(width, size))
                if batch_norm:
                    layers.append(nn.BatchNorm1d(size))
                layers.append(activation(activation_name))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def encode(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        """The flat input vector the MLP sees (numeric columns, then encoded categoricals)."""
        num = self.numeric(x_num) if self.numeric is not None else x_num
        return torch.cat([num, self.categorical(x_cat)], dim=1)

    def forward_encoded(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() and self.categorical.embedding_dim == 0 and self.categorical.cardinalities:
            return self._forward_gathered(x_num, x_cat)
        return self.forward_encoded(self.encode(x_num, x_cat))

    def _forward_gathered(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        """The same function with the one-hot columns folded into the first layer: a one-hot vector
        times a weight matrix is a lookup of that matrix's columns. Eager torch is fastest with the
        dense form (one large GEMM); ONNX Runtime at batch 1 with this one (a handful of operators
        instead of a one-hot construction, and a third less weight to read per row). The export
        stage's parity check holds the two to the same probabilities."""
        first = self.body[0] if len(self.body) else self.head
        num = self.numeric(x_num) if self.numeric is not None else x_num
        n = num.shape[1]
        active = F.embedding(x_cat + self.categorical.offsets, first.weight[:, n:].t()).sum(dim=1)
        h = F.linear(num, first.weight[:, :n], first.bias + active)
        if not len(self.body):
            return h
        for layer in islice(self.body, 1, None):
            h = layer(h)
        return self.head(h)


def _numeric_encoder(n_numeric, kind, dim, bin_edges, n_frequencies, sigma) -> nn.Module | None:
    from torchcycle.models.numeric_embeddings import PeriodicEmbedding, PiecewiseLinearEmbedding

    if kind == "none" or n_numeric == 0:
        return None
    if kind == "ple":
        if not bin_edges:
            raise ValueError("numeric_embedding 'ple' needs numeric_bin_edges computed from the training split")
        return PiecewiseLinearEmbedding(bin_edges, dim)
    if kind == "periodic":
        return PeriodicEmbedding(n_numeric, dim, n_frequencies, sigma)
    raise ValueError(f"unknown numeric_embedding '{kind}'; choose none, ple or periodic")
