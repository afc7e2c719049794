"""Resumable training state on disk, outside the DVC outputs.

A checkpoint holds only tensors and plain containers (model, optimiser, scheduler and scaler state,
RNG states as uint8 tensors, position, early-stopping state, history), so it loads with
`torch.load(weights_only=True)`. Its key is a hash of the task's params and data: a checkpoint left by
different params or data is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from torchcycle.atomic import atomic_path


def params_key(seed: int, model_cfg: dict, train_cfg: dict, data_files: list[Path]) -> str:
    """Hash of what determines the result: seed, model and train params (not where or how often
    checkpoints are written), and the bytes of the training data."""
    train_cfg = {k: v for k, v in train_cfg.items() if k not in ("checkpoint", "inspect")}
    h = hashlib.sha256(json.dumps([seed, model_cfg, train_cfg], sort_keys=True, default=str).encode())
    for f in data_files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class Checkpointer:
    """Saves and loads one task's latest checkpoint (`<dir>/checkpoint.pt`), atomically."""

    def __init__(self, directory: Path, key: str, every_steps: int = 0) -> None:
        self.directory, self.key, self.every_steps = Path(directory), key, every_steps
        self.path = self.directory / "checkpoint.pt"
        self.run_id: str | None = None  # the tracking run that writes, so a resumed run can close it

    def load(self) -> dict[str, Any] | None:
        """The saved state when it was written for the same params and data, else None."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt or foreign file is not worth failing the run over
            return None
        return state if state.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, "run_id": self.run_id, **state}, tmp)

    def saved_run_id(self) -> str | None:
        """The tracking run of an interrupted training that a resume would continue."""
        state = self.load()
        return state.get("run_id") if state else None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
