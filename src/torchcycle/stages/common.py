"""Loading what earlier stages wrote: processed splits as tensors and trained models from their spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchcycle.atomic import read_json
from torchcycle.errors import TorchcycleError
from torchcycle.models.factory import build_model
from torchcycle.paths import TaskPaths
from torchcycle.training.loop import TensorData


def load_split(paths: TaskPaths, name: str) -> TensorData:
    file = paths.split(name)
    if not file.exists():
        raise TorchcycleError(f"{file} not found. Run `dvc repro preprocess@{paths.task}` first.")
    with np.load(file, allow_pickle=False) as z:
        if "x" in z:
            inputs = (torch.from_numpy(z["x"]),)
        else:
            inputs = (torch.from_numpy(z["x_num"]), torch.from_numpy(z["x_cat"]))
        return TensorData(inputs, torch.from_numpy(z["y"]))


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
