"""One package per kind of input data (tabular, image, …), each behind the `Kind` protocol.

Everything that differs by the kind of input lives in its package: reading and validating a source,
splitting and fitting preprocessing, the raw inputs a consumer sends, building the model spec, the
explanations, the ONNX wrapper, the predictor's input side, new batches and their drift, and what the
dashboard shows. Stages, `serving.Predictor`, the served model, the flows and the dashboard call
`kind_of(...)` and never branch on the kind. A new kind is one package and one entry in `_KINDS`.

Raw input is always a pandas DataFrame as a client sends it: a table's own columns, or an `image`
column of file paths / file bytes / base64 text. That is what the CLI reads, what the dashboard builds
from a form or an upload and what `mlflow models serve` receives as `dataframe_records`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from torch import nn

from torchcycle.errors import ConfigError

Writer = Callable[[Path], None]


class Kind(Protocol):
    name: str

    # ------------------------------------------------------------------ stages
    def ingest(self, cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
        """Read and validate the source; write data/raw/<task>/ atomically; return the validation report."""
        ...

    def preprocess(self, cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
        """Split, fit preprocessing and the target on the training split; write data/processed/<task>/."""
        ...

    def raw_inputs(self, paths: Any, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """The raw records behind a processed split (as a client would send them) and the encoded targets."""
        ...

    def model_spec(self, cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
        """The model's name and JSON kwargs; `train` (TensorData: inputs and encoded targets) is what an
        initialisation may learn from (quantile bins, token statistics)."""
        ...

    def explain(self, params: Any, paths: Any, model: nn.Module, target: dict[str, Any]) -> tuple[dict, Writer]:
        """A summary and a writer of the explanation files (SHAP tables, Grad-CAM overlays, …)."""
        ...

    # ------------------------------------------------------------------ the model file and predictions
    def input_names(self, state: dict[str, Any]) -> list[str]: ...

    def onnx_module(self, model: nn.Module, head: nn.Module) -> nn.Module:
        """`head(model(*inputs))` with the kind's named inputs (the exporter maps dynamic axes by name)."""
        ...

    def dynamic_axes(self, state: dict[str, Any]) -> dict[str, dict[int, str]]:
        """Input axes besides the batch that vary between calls (a text's length): name -> axis -> dim name."""
        ...

    def describe_input(self, state: dict[str, Any]) -> dict[str, Any]: ...

    def prepare(self, raw: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Raw records -> model inputs; bad input raises PredictionInputError naming the column/row."""
        ...

    def read_path(self, path: Path) -> pd.DataFrame:
        """What `torchcycle predict PATH` reads: a records file, or an image file/folder."""
        ...

    def example(self, raw: pd.DataFrame, state: dict[str, Any], rows: int) -> pd.DataFrame:
        """A few rows as a client sends them over HTTP (the registered model's input example)."""
        ...

    def any_typed_columns(self, state: dict[str, Any]) -> set[str]:
        """Columns whose values the signature must not type strictly (numbers sent as int, float or text)."""
        ...

    def fingerprint(self, raw: pd.DataFrame) -> bytes: ...

    def row_labels(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Columns that identify each input in a table of predictions (an image's path); may be empty."""
        ...

    def slice_frame(self, raw: pd.DataFrame, y: np.ndarray, state: dict[str, Any], target_state: dict[str, Any],
                    columns: list[str] | None) -> pd.DataFrame:
        """The groups the slices report scores separately: one row per input, one column per slicing
        variable (`columns`, or the kind's default), values the group labels as text."""
        ...

    # ------------------------------------------------------------------ new data
    def new_batches(self) -> Any:
        """The kind's batch handling (find, validate, accept, count, drift): torchcycle.data.batches.BatchKind."""
        ...


def _kinds() -> dict[str, Kind]:
    from torchcycle.kinds.image import IMAGE
    from torchcycle.kinds.tabular import TABULAR
    from torchcycle.kinds.text import TEXT

    return {k.name: k for k in (TABULAR, IMAGE, TEXT)}


def get_kind(name: str) -> Kind:
    kinds = _kinds()
    if name not in kinds:
        raise ConfigError(f"unknown kind of data '{name}'; choose one of {sorted(kinds)}")
    return kinds[name]


def kind_of(obj: Any) -> Kind:
    """The kind of a task config, a preprocessing state (dict) or a kind name."""
    if isinstance(obj, str):
        return get_kind(obj)
    if isinstance(obj, dict):
        return get_kind(obj["kind"])
    return get_kind(obj.kind)


def register_kind(kind: Kind) -> None:
    """Add a kind at run time (a plug-in, or a test proving the stages need no change)."""
    global _kinds
    previous = _kinds

    def extended() -> dict[str, Kind]:
        return {**previous(), kind.name: kind}

    _kinds = extended
