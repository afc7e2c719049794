"""The registered model as MLflow serves it: raw records in, predictions with probabilities out.

The model directory is the one `mlflow.onnx.save_model` writes (ONNX flavour, signature, input example,
pinned requirements), so `mlflow.onnx.load_model` still returns the graph. Only its `python_function`
flavour points here instead of at mlflow.onnx, so `mlflow models serve` and `mlflow.pyfunc.load_model`
apply the preprocessing stored in the model through `torchcycle.serving.Predictor`, like the CLI and
the dashboard: an HTTP client sends the source file's columns (tabular) or base64-encoded image files
(an `image` column), never tensors. The loader is imported from the installed package; nothing from the
model directory is unpickled or executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

IMAGE_COLUMN = "image"


def save_model(onnx_model: Any, path: str, mlflow_model: Any = None, **kwargs: Any) -> None:
    """`mlflow.onnx.save_model`, then the pyfunc loader switched to this module (what `Model.log` calls)."""
    import mlflow.onnx
    from mlflow.models import Model

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.onnx.save_model(onnx_model, path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


def signature(predictor: Any, example: pd.DataFrame, output: pd.DataFrame) -> Any:
    """The signature inferred from a raw example, with numeric columns typed `any`: MLflow refuses an
    integer for a float column (and a float or a null for an integer one), while the preprocessing
    takes integers, floats, numeric text and nulls alike, and names the column of anything else."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inferred = infer_signature(example, output)
    if predictor.kind != "tabular":
        return inferred
    numeric = {c["name"] for c in predictor.state["numeric"]}
    columns = [ColSpec(AnyType(), c.name) if c.name in numeric else c for c in inferred.inputs.inputs]
    return ModelSignature(Schema(columns), inferred.outputs)


def _load_pyfunc(data_path: str, model_config: Any = None) -> RawInputModel:
    from torchcycle.serving import Predictor

    return RawInputModel(Predictor(Path(data_path)))


class RawInputModel:
    """What `mlflow.pyfunc` wraps: a Predictor taking data frames as the scoring server builds them."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Bad input raises MlflowException, so the scoring server answers 400 with our message rather
        than "an unexpected error" and a stack trace."""
        from mlflow.exceptions import MlflowException

        from torchcycle.errors import PredictionInputError

        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        try:
            if self.predictor.kind == "tabular":
                return self.predictor.predict_records(frame)
            return self.predictor.predict_pixels(decode_images(frame, self.predictor))
        except PredictionInputError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from err


def decode_images(frame: pd.DataFrame, predictor: Any) -> np.ndarray:
    """uint8 pixels from the `image` column's file bytes (base64 over HTTP; MLflow decodes it)."""
    import base64

    from torchcycle.data.preprocess import load_image
    from torchcycle.errors import PredictionInputError

    if IMAGE_COLUMN not in frame.columns:
        raise PredictionInputError(
            f"image models take a column '{IMAGE_COLUMN}' of PNG/JPEG file bytes (base64-encoded in JSON); "
            f"got columns {list(frame.columns)}"
        )
    size, channels = tuple(predictor.state["size"]), predictor.state["channels"]
    images = []
    for i, value in enumerate(frame[IMAGE_COLUMN]):
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else bytes(value)
            images.append(load_image(raw, size, channels))
        except (ValueError, TypeError) as err:  # binascii.Error is a ValueError
            raise PredictionInputError(f"column '{IMAGE_COLUMN}', row {i}: not base64-encoded file bytes ({err})") from None
        except PredictionInputError as err:
            raise PredictionInputError(f"column '{IMAGE_COLUMN}', row {i}: {err}") from None
    return np.stack(images)
