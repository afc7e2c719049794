"""Build a model from its spec (JSON written at training time by the kind of data's `model_spec`), so
loading weights never needs pickled objects. Models are looked up by name."""

from __future__ import annotations

from typing import Any

from torch import nn


def _builders() -> dict[str, Any]:
    from torchcycle.models.cnn import ImageCNN
    from torchcycle.models.mlp import TabularMLP
    from torchcycle.models.text import BagOfTokens, PretrainedText, TransformerText

    return {
        "mlp": TabularMLP,
        "cnn": lambda image_size, **kw: ImageCNN(image_size=tuple(image_size), **kw),
        "bag": BagOfTokens,
        "gru": _recurrent("gru"),
        "lstm": _recurrent("lstm"),
        "transformer": TransformerText,
        "pretrained": PretrainedText,
    }


def _recurrent(cell: str) -> Any:
    """The recurrent model with its cell named by the spec's name (a contradicting `cell` is an error)."""

    def build(**kw: Any) -> nn.Module:
        from torchcycle.models.text import RecurrentText

        if kw.setdefault("cell", cell) != cell:
            raise ValueError(f"model '{cell}' given cell '{kw['cell']}'")
        return RecurrentText(**kw)

    return build


def build_model(spec: dict[str, Any]) -> nn.Module:
    builders = _builders()
    if spec["name"] not in builders:
        raise ValueError(f"unknown model '{spec['name']}'; known: {sorted(builders)}")
    return builders[spec["name"]](**spec["kwargs"])
