"""What the benchmark scripts share: the model to measure and the machine it was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def model_for(task: str) -> tuple[nn.Module, str]:
    """The trained model in models/<task> when there is one, else the architecture from params.yaml
    with its initial weights (what the benchmarks time does not depend on the weight values)."""
    from torchcycle.artifacts import load_model, load_split, read_schema
    from torchcycle.config import load_params
    from torchcycle.kinds import kind_of
    from torchcycle.models.factory import build_model
    from torchcycle.paths import TaskPaths
    from torchcycle.targets import target_of

    paths = TaskPaths(task, ROOT)
    if paths.weights.exists():
        model, _ = load_model(paths.models)
        return model.eval(), f"trained (models/{task})"
    torch.manual_seed(0)
    cfg, schema = load_params(ROOT / "params.yaml").task(task), read_schema(paths)
    n_outputs = target_of(schema["target"]).n_outputs(schema["target"])
    spec = kind_of(cfg).model_spec(cfg, schema, load_split(paths, "train"), n_outputs)
    return build_model(spec).eval(), "initial (no trained model found)"


def machine_now() -> dict[str, Any]:
    """The machine and its load at the moment of measuring."""
    from torchcycle.machine import machine

    return {**machine(), "load_average_1m": os.getloadavg()[0], "torch": torch.__version__,
            "platform": platform.platform()}
