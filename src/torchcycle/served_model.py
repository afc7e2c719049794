"""The registered model as MLflow serves it: raw records in, predictions with probabilities out.

The model directory is the one `mlflow.onnx.save_model` writes (ONNX flavour, signature, input example,
pinned requirements), so `mlflow.onnx.load_model` still returns the graph. Only its `python_function`
flavour points here instead of at mlflow.onnx, so `mlflow models serve` and `mlflow.pyfunc.load_model`
apply the preprocessing stored in the model through `torchcycle.serving.Predictor`, like the CLI and
the dashboard: an HTTP client sends raw records (a table's columns, or base64-encoded image files in an
`image` column), never tensors, and gets back what the target type predicts (a class with its
probabilities, or a number with its interval). The loader is imported from the installed package; nothing from the
model directory is unpickled or executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd


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
    loose = predictor.kind.any_typed_columns(predictor.state)
    columns = [ColSpec(AnyType(), c.name) if c.name in loose else c for c in inferred.inputs.inputs]
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
            return self.predictor.predict(frame)
        except PredictionInputError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from err
