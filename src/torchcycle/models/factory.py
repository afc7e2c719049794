"""Build a model from its spec (JSON written at training time by the kind of data's `model_spec`), so
loading weights never needs pickled objects. Models are looked up by name."""

from __future__ import annotations

from typing import Any

from torch import nn


def _builders() -> dict[str, Any]:
    from torchcycle.models.cnn import ImageCNN
    from torchcycle.models.mlp import TabularMLP

    return {"mlp": TabularMLP, "cnn": lambda image_size, **kw: ImageCNN(image_size=tuple(image_size), **kw)}


def build_model(spec: dict[str, Any]) -> nn.Module:
    builders = _builders()
    if spec["name"] not in builders:
        raise ValueError(f"unknown model '{spec['name']}'; known: {sorted(builders)}")
    return builders[spec["name"]](**spec["kwargs"])
