"""Loading what earlier stages wrote: processed splits as tensors, the fitted target, and trained
models from their spec. Library code (stages, tuning, benchmarks and the dashboard all read through it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from torchcycle.atomic import read_json
from torchcycle.errors import TorchcycleError
from torchcycle.models.factory import build_model
from torchcycle.paths import TaskPaths
from torchcycle.training.loop import TensorData


def read_schema(paths: TaskPaths) -> dict[str, Any]:
    if not paths.schema.exists():
        raise TorchcycleError(f"{paths.schema} not found. Run `dvc repro preprocess@{paths.task}` first.")
    return read_json(paths.schema)


def load_split(paths: TaskPaths, name: str) -> TensorData:
    """A processed split as tensors; which arrays are the model's inputs is recorded in schema.json."""
    file = paths.split(name)
    if not file.exists():
        raise TorchcycleError(f"{file} not found. Run `dvc repro preprocess@{paths.task}` first.")
    names = read_schema(paths)["inputs"]
    with np.load(file, allow_pickle=False) as z:
        return TensorData(tuple(torch.from_numpy(z[n]) for n in names), torch.from_numpy(z["y"]))


def load_model(model_dir: Path) -> tuple[nn.Module, dict]:
    """Rebuild the architecture from model_config.json and load the state_dict (weights only)."""
    config_file, weights = model_dir / "model_config.json", model_dir / "model.pt"
    if not weights.exists():
        raise TorchcycleError(f"{weights} not found. Run the train stage first (`dvc repro`).")
    config = read_json(config_file)
    model = build_model(config["spec"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return model, config


def fingerprint(raw: pd.DataFrame, y: np.ndarray, kind: Any) -> str:
    """Identity of a test split as raw input + targets, so scores from different runs are comparable
    only when they were measured on the same rows."""
    h = hashlib.sha256()
    h.update(kind.fingerprint(raw))
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]
