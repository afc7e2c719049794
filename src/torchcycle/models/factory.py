"""Build a model from its params section and the data's schema; the same spec (JSON) rebuilds it for
loading weights, so no pickled objects are ever needed."""

from __future__ import annotations

from typing import Any

from torch import nn


def model_spec(task_cfg, schema: dict[str, Any], train_inputs: tuple | None = None) -> dict[str, Any]:
    """A JSON-able description from which `build_model` recreates the architecture.

    `train_inputs` (the training tensors) are needed only by data-dependent parts, such as the
    quantile bins of piecewise-linear numeric embeddings; the result is stored in the spec.
    """
    m = task_cfg.model
    n_classes = len(schema["classes"])
    if m.name == "mlp":
        return {
            "name": "mlp",
            "kwargs": {
                "n_numeric": len(schema["numeric"]),
                "cardinalities": [len(c["categories"]) + 1 for c in schema["categorical"]],
                "n_classes": n_classes,
                "hidden_sizes": list(m.hidden_sizes),
                "activation_name": m.activation,
                "dropout": m.dropout,
                "batch_norm": m.batch_norm,
                "embedding_dim": m.embedding_dim,
                "numeric_embedding": m.numeric_embedding,
                "numeric_embedding_dim": m.numeric_embedding_dim,
                "numeric_bin_edges": _bin_edges(m, train_inputs),
                "periodic_frequencies": m.periodic_frequencies,
                "periodic_sigma": m.periodic_sigma,
                "residual": m.residual,
            },
        }
    if m.name == "cnn":
        return {
            "name": "cnn",
            "kwargs": {
                "in_channels": schema["channels"],
                "image_size": list(schema["size"]),
                "n_classes": n_classes,
                "channels": list(m.channels),
                "kernel_size": m.kernel_size,
                "hidden": m.hidden,
                "dropout": m.dropout,
                "batch_norm": m.batch_norm,
                "activation_name": m.activation,
                "residual": m.residual,
            },
        }
    raise ValueError(f"unknown model '{m.name}'")


def build_model(spec: dict[str, Any]) -> nn.Module:
    from torchcycle.models.cnn import ImageCNN
    from torchcycle.models.mlp import TabularMLP

    registry = {"mlp": TabularMLP, "cnn": ImageCNN}
    kwargs = dict(spec["kwargs"])
    if spec["name"] == "cnn":
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return registry[spec["name"]](**kwargs)


def _bin_edges(m, train_inputs: tuple | None) -> list[list[float]] | None:
    if m.numeric_embedding != "ple":
        return None
    if train_inputs is None:
        raise ValueError("numeric_embedding 'ple' needs the training inputs to place its bins")
    from torchcycle.models.numeric_embeddings import quantile_bin_edges

    return quantile_bin_edges(train_inputs[0], m.numeric_bins)
