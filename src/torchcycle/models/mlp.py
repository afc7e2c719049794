"""The tabular model: categorical columns one-hot encoded or embedded, concatenated with the scaled
numeric columns, then an MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torchcycle.models.layers import activation


class CategoricalEncoder(nn.Module):
    """Turns integer category codes (0 = unseen) into a dense vector per row.

    With `embedding_dim == 0` each column is one-hot encoded (no parameters); otherwise each column
    gets its own learned embedding table.
    """

    def __init__(self, cardinalities: list[int], embedding_dim: int = 0) -> None:
        super().__init__()
        self.cardinalities = list(cardinalities)
        self.embedding_dim = embedding_dim
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_dim) for card in cardinalities
        ) if embedding_dim > 0 else nn.ModuleList()

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
        return torch.cat(
            [F.one_hot(x_cat[:, j], card).to(torch.float32) for j, card in enumerate(self.cardinalities)], dim=1
        )


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
    ) -> None:
        super().__init__()
        self.categorical = CategoricalEncoder(cardinalities, embedding_dim)
        width = n_numeric + self.categorical.out_features
        layers: list[nn.Module] = []
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
        return torch.cat([x_num, self.categorical(x_cat)], dim=1)

    def forward_encoded(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z))

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.forward_encoded(self.encode(x_num, x_cat))
