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


# The serving limits, read from the environment of `mlflow models serve` when the model loads.
MAX_ROWS_ENV, MAX_BYTES_ENV, ORT_THREADS_ENV = "TORCHCYCLE_MAX_ROWS", "TORCHCYCLE_MAX_BYTES", "TORCHCYCLE_ORT_THREADS"
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 2**20  # the request's records in memory (pandas' deep memory usage)
DEFAULT_ORT_THREADS = 1


def _env_int(name: str, default: int) -> int:
    from torchcycle.errors import ConfigError

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive whole number")
    return value


def _load_pyfunc(data_path: str, model_config: Any = None) -> RawInputModel:
    from torchcycle.serving import Predictor

    return RawInputModel(Predictor(Path(data_path), threads=_env_int(ORT_THREADS_ENV, DEFAULT_ORT_THREADS)))


class RawInputModel:
    """What `mlflow.pyfunc` wraps: a Predictor taking data frames as the scoring server builds them.

    A request over `max_rows` records (TORCHCYCLE_MAX_ROWS, default 10,000) or `max_bytes` of records in
    memory (TORCHCYCLE_MAX_BYTES, default 64 MiB; base64 images count here) is refused with a 400 naming
    the limit, before any preprocessing allocates tensors for it. The scoring server has by then read and
    parsed the whole body (MLflow sets no cap on it), so a cap on the body itself belongs to a proxy in front.
    """

    def __init__(self, predictor: Any, max_rows: int | None = None, max_bytes: int | None = None) -> None:
        self.predictor = predictor
        self.max_rows = max_rows if max_rows is not None else _env_int(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)
        self.max_bytes = max_bytes if max_bytes is not None else _env_int(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Bad input raises MlflowException(INVALID_PARAMETER_VALUE), so the scoring server answers 400 with
        our message rather than "an unexpected error" and a stack trace."""
        from mlflow.exceptions import MlflowException

        from torchcycle.errors import PredictionInputError

        try:
            frame = self.checked(data)
            return self.predictor.predict(frame)
        except PredictionInputError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from err

    def checked(self, data: Any) -> pd.DataFrame:
        """`data` as a DataFrame within the limits, or a PredictionInputError naming the limit."""
        from torchcycle.errors import PredictionInputError

        if not isinstance(data, pd.DataFrame):
            try:
                data = pd.DataFrame(data)
            except (ValueError, TypeError) as err:
                raise PredictionInputError(f"the input is not a table of records ({err})") from None
        if len(data) > self.max_rows:
            raise PredictionInputError(
                f"the request holds {len(data):,} records; the limit is {self.max_rows:,} per request "
                f"({MAX_ROWS_ENV}). Send them in smaller requests."
            )
        size = int(data.memory_usage(index=False, deep=True).sum())
        if size > self.max_bytes:
            raise PredictionInputError(
                f"the request's records take {size / 2**20:.1f} MiB; the limit is {self.max_bytes / 2**20:.1f} MiB "
                f"per request ({MAX_BYTES_ENV}). Send them in smaller requests."
            )
        return data
