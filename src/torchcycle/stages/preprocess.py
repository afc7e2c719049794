"""preprocess@<task>: split (seeded; stratified for classes), fit preprocessing and the target on the
training split only, and write data/processed/<task>/: train/val/test arrays (.npz, no pickle),
preprocessor.json and schema.json (which arrays are inputs, the fitted target)."""

from __future__ import annotations

from pathlib import Path

from torchcycle.config import Params
from torchcycle.errors import TorchcycleError
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths


def run(params: Params, task: str, root: Path) -> dict:
    cfg = params.task(task)
    paths = TaskPaths(task, root)
    if not paths.raw.exists():
        raise TorchcycleError(f"{paths.raw} not found. Run `dvc repro ingest@{task}` first.")
    return kind_of(cfg).preprocess(cfg, paths, params.seed)
