"""Fixtures and helpers shared by the unit tests (test modules import helpers from here, never from one
another)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from torchcycle.config import TabularPreprocess
from torchcycle.export import onnx as X
from torchcycle.kinds.image import IMAGE
from torchcycle.kinds.tabular import TABULAR
from torchcycle.kinds.tabular import preprocess as pp
from torchcycle.models.cnn import ImageCNN
from torchcycle.models.mlp import TabularMLP
from torchcycle.targets.classification import CLASSIFICATION


@pytest.fixture
def torch_globals():
    """One intra-op thread (tiny tensors train far faster than with threads fighting over a few cores), and
    the global settings seed_everything changes put back afterwards so other test modules are unaffected."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng_state = torch.random.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.random.set_rng_state(rng_state)


# --------------------------------------------------------------------------- small exported models
OUTPUT = "outputs"


def classifier_target(classes: list[str], name: str | None = "y") -> dict:
    """The target state the train stage writes for a classifier with these classes."""
    return {"type": "classification", "name": name, "classes": classes,
            "positive_class": classes[1] if len(classes) == 2 else None}


def export(kind, model, state: dict, target_state: dict, example: tuple) -> tuple[torch.nn.Module, bytes]:
    """The graph the export stage builds (model + softmax head, the kind's named inputs) and its ONNX file."""
    graph = kind.onnx_module(model, CLASSIFICATION.head(target_state)).eval()
    blob = X.export_onnx(graph, example, kind.input_names(state), OUTPUT,
                         X.metadata_for(state, target_state, kind.describe_input(state)))
    return graph, blob


def raw_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(18, 90, n).astype(float),
        "hours": rng.normal(40, 10, n),
        "city": rng.choice(["rome", "paris", "oslo"], n),
        "plan": rng.choice(["a", "b"], n),
    })  # fmt: skip


def make_tabular() -> tuple[torch.nn.Module, dict, bytes]:
    """A small periodic-embedding MLP on raw_frame() columns with its softmax head (the exported graph),
    its preprocessing state, and the ONNX file carrying that state and the fitted target."""
    frame = raw_frame()
    state = pp.fit_tabular(frame, ["age", "hours"], ["city", "plan"], TabularPreprocess())
    torch.manual_seed(0)
    model = TabularMLP(2, pp.cardinalities(state), 2, [16], numeric_embedding="periodic",
                       numeric_embedding_dim=4, periodic_frequencies=3).eval()
    example = tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state))
    graph, blob = export(TABULAR, model, state, classifier_target(["no", "yes"]), example)
    return graph, state, blob


@pytest.fixture(scope="module")
def tabular() -> tuple[torch.nn.Module, dict, bytes]:
    return make_tabular()


@pytest.fixture(scope="module")
def image() -> tuple[torch.nn.Module, dict, bytes]:
    state = {"kind": "image", "size": [12, 12], "channels": 1, "mean": [0.3], "std": [0.2],
             "value_range": [0, 255]}
    torch.manual_seed(0)
    model = ImageCNN(1, (12, 12), 3, [4, 8], hidden=8, batch_norm=True).eval()
    graph, blob = export(IMAGE, model, state, classifier_target(["0", "1", "2"], name=None),
                         (torch.randn(3, 1, 12, 12),))
    return graph, state, blob
