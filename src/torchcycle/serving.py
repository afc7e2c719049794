"""The one prediction path: raw records in (a table's columns, or an `image` column), the model's
outputs out (class probabilities, or a number with its interval), through the ONNX model and the
preprocessing state stored inside it. The CLI, the dashboard, the flows, the served model and the
register stage's re-scoring all call this, so no consumer re-implements preprocessing, and none of
them branches on the kind of data or of target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.errors import TorchcycleError
from torchcycle.export.onnx import (
    METADATA_CLASSES,
    METADATA_PREPROCESSOR,
    METADATA_TARGET,
    ort_session,
    read_metadata,
    run_session,
)
from torchcycle.kinds import kind_of
from torchcycle.targets import target_of

MODEL_FILE = "model.onnx"


def registered_name(task: str) -> str:
    return f"torchcycle-{task}"


class Predictor:
    """An onnxruntime session plus the preprocessing state and the fitted target read from the model file."""

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        self.session = ort_session(model if isinstance(model, bytes) else str(model), threads)
        meta = read_metadata(self.session)
        if METADATA_PREPROCESSOR not in meta:
            raise TorchcycleError("the ONNX model carries no preprocessing state; export it with `torchcycle export`")
        self.state: dict[str, Any] = json.loads(meta[METADATA_PREPROCESSOR])
        if METADATA_TARGET in meta:
            self.target_state: dict[str, Any] = json.loads(meta[METADATA_TARGET])
        else:  # exported before targets had a type: a classifier
            self.target_state = {"type": target_of({}).name, "classes": json.loads(meta[METADATA_CLASSES])}
        self.kind = kind_of(self.state)
        self.target = target_of(self.target_state)

    @classmethod
    def from_dir(cls, directory: str | Path, threads: int = 1) -> Predictor:
        files = sorted(Path(directory).rglob(MODEL_FILE))
        if not files:
            raise TorchcycleError(f"no {MODEL_FILE} under {directory}")
        return cls(files[0], threads)

    @property
    def classes(self) -> list[str]:
        """Class names of a classifier ([] for a regression model)."""
        return list(self.target_state.get("classes", []))

    @property
    def output_columns(self) -> list[str]:
        return self.target.output_columns(self.target_state)

    # ------------------------------------------------------------------ raw inputs -> outputs
    def outputs(self, raw: pd.DataFrame) -> np.ndarray:
        """The graph's outputs for raw records: (N, K) probabilities, or (N, 3) prediction, lower, upper."""
        return run_session(self.session, self.kind.prepare(raw, self.state))

    def predict(self, raw: pd.DataFrame) -> pd.DataFrame:
        """The table a person reads: `predicted` first, then probabilities or the interval."""
        return self.target.predictions(self.outputs(raw), self.target_state)

    def predict_path(self, path: str | Path) -> pd.DataFrame:
        """Predictions for a records file (tables) or an image file/folder (images)."""
        raw = self.kind.read_path(Path(path))
        return pd.concat([self.kind.row_labels(raw), self.predict(raw)], axis=1)

    def score(self, raw: pd.DataFrame, y: np.ndarray, metric: str) -> float | None:
        value = self.target.metrics(y, self.outputs(raw), self.target_state).get(metric)
        return None if value is None else float(value)


# --------------------------------------------------------------------------- the registry
def load_registered(task: str, alias: str = "champion", tracking_uri: str | None = None) -> tuple[Predictor, dict]:
    """The model version behind `alias` of torchcycle-<task>, as a Predictor, and its version info.

    Only the ONNX file is read (graph, weights and preprocessing state); nothing is unpickled.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = registered_name(task)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise TorchcycleError(
            f"no '{alias}' version of registered model '{name}' in {client._registry_uri}. "
            f"Run `dvc repro register@{task}` first."
        ) from None
    directory = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version.version}", tracking_uri=tracking_uri
    )
    info = {"name": name, "version": str(version.version), "alias": alias, "run_id": version.run_id}
    return Predictor.from_dir(directory), info
