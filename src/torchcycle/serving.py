"""The one prediction path: raw records or image files in, class probabilities out, through the ONNX
model and the preprocessing state stored inside it. The CLI, the dashboard, the flows and the register
stage's re-scoring all call this, so no consumer re-implements preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.data.preprocess import load_image, transform_images, transform_tabular
from torchcycle.errors import PredictionInputError, TorchcycleError
from torchcycle.export.onnx import (
    METADATA_CLASSES,
    METADATA_PREPROCESSOR,
    ort_session,
    read_metadata,
    run_session,
)

MODEL_FILE = "model.onnx"
RECORD_SUFFIXES = (".csv", ".parquet", ".json", ".jsonl")


def registered_name(task: str) -> str:
    return f"torchcycle-{task}"


class Predictor:
    """An onnxruntime session plus the preprocessing state and class names read from the model file."""

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        self.session = ort_session(model if isinstance(model, bytes) else str(model), threads)
        meta = read_metadata(self.session)
        if METADATA_PREPROCESSOR not in meta:
            raise TorchcycleError("the ONNX model carries no preprocessing state; export it with `torchcycle export`")
        self.state: dict[str, Any] = json.loads(meta[METADATA_PREPROCESSOR])
        self.classes: list[str] = json.loads(meta[METADATA_CLASSES])
        self.kind: str = self.state["kind"]

    @classmethod
    def from_dir(cls, directory: str | Path, threads: int = 1) -> Predictor:
        files = sorted(Path(directory).rglob(MODEL_FILE))
        if not files:
            raise TorchcycleError(f"no {MODEL_FILE} under {directory}")
        return cls(files[0], threads)

    # ------------------------------------------------------------------ raw inputs -> probabilities
    def proba_records(self, frame: pd.DataFrame) -> np.ndarray:
        self._expect("tabular")
        return run_session(self.session, transform_tabular(frame, self.state))

    def proba_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) as decoded by `load_image`."""
        self._expect("image")
        return run_session(self.session, (transform_images(pixels, self.state),))

    def load_images(self, files: list[Path]) -> np.ndarray:
        size, channels = tuple(self.state["size"]), self.state["channels"]
        return np.stack([load_image(f, size, channels) for f in files])

    # ------------------------------------------------------------------ tables for people
    def predict_records(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self._table(self.proba_records(frame))

    def predict_pixels(self, pixels: np.ndarray) -> pd.DataFrame:
        return self._table(self.proba_pixels(pixels))

    def predict_images(self, files: list[Path]) -> pd.DataFrame:
        table = self.predict_pixels(self.load_images(files))
        table.insert(0, "path", [str(f) for f in files])
        return table

    def _table(self, proba: np.ndarray) -> pd.DataFrame:
        table = pd.DataFrame(proba, columns=[f"proba_{c}" for c in self.classes])
        table.insert(0, "predicted", [self.classes[i] for i in proba.argmax(1)])
        return table

    def _expect(self, kind: str) -> None:
        if self.kind != kind:
            raise PredictionInputError(f"this is an {self.kind} model; it cannot take {kind} input")


# --------------------------------------------------------------------------- reading inputs
def read_records(path: str | Path) -> pd.DataFrame:
    """Raw records from CSV, Parquet or JSON (lines); an unreadable file is a PredictionInputError."""
    path = Path(path)
    if not path.is_file():
        raise PredictionInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, skipinitialspace=True, na_values=["?", ""])
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".json", ".jsonl"):
            return pd.read_json(path, lines=suffix == ".jsonl")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise PredictionInputError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from None
    raise PredictionInputError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(RECORD_SUFFIXES)}")


def image_files(path: str | Path, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> list[Path]:
    """One image file, or every image file under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            raise PredictionInputError(f"{path}: folder holds no image files ({', '.join(extensions)})")
        return files
    raise PredictionInputError(f"{path}: no such file or folder")


def predict_path(predictor: Predictor, path: str | Path) -> pd.DataFrame:
    """Predictions for a records file (tabular models) or an image file/folder (image models)."""
    if predictor.kind == "tabular":
        return predictor.predict_records(read_records(path))
    return predictor.predict_images(image_files(path))


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
