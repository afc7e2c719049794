"""Tables (CSV/Parquet or a built-in table): numbers, dates and categories in, an MLP, SHAP per column.

Raw input is the source's own columns; `transform_tabular` with the JSON state turns them into the
model's two inputs (x_num, x_cat) on every path, from training to the served model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.data.splits import split_indices
from torchcycle.errors import PredictionInputError, TorchcycleError
from torchcycle.kinds.tabular.preprocess import (
    MISSING,
    column_types,
    feature_names,
    fit_tabular,
    input_columns,
)
from torchcycle.kinds.tabular.preprocess import transform_tabular as transform
from torchcycle.targets import get_target

INPUTS = ["x_num", "x_cat"]
RECORD_SUFFIXES = (".csv", ".parquet", ".json", ".jsonl")


class _Graph(nn.Module):
    """Named arguments, because the exporter maps dynamic shapes onto the forward's parameters."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x_num, x_cat):  # type: ignore[no-untyped-def]
        return self.head(self.model(x_num, x_cat))


class TabularKind:
    name = "tabular"

    # ------------------------------------------------------------------ ingest
    def ingest(self, cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
        from torchcycle.kinds.tabular.ingest import ingest

        return ingest(cfg, paths, root, seed)

    # ------------------------------------------------------------------ preprocess
    def preprocess(self, cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
        from torchcycle.kinds.tabular.validate import resolve_roles

        src = cfg.source
        train_df = pd.read_parquet(paths.raw / "train.parquet")
        test_file = paths.raw / "test.parquet"
        test_df = pd.read_parquet(test_file) if test_file.exists() else None
        roles = resolve_roles(train_df, src)
        target = get_target(roles.target_type)
        y_all = target.encode(train_df[src.target], target.fit(train_df[src.target], src))
        tr, va, te = split_indices(y_all, target.stratify(y_all), test_df is not None, cfg.split, seed)
        fit_rows = train_df.iloc[tr]
        target_state = target.fit(fit_rows[src.target], src)
        state = fit_tabular(fit_rows, roles.numeric, roles.categorical, cfg.preprocess, roles.dates)
        parts = {"train": (train_df, tr, "train"), "val": (train_df, va, "train")}
        parts["test"] = (test_df, np.arange(len(test_df)), "test") if test_df is not None else (train_df, te, "train")
        counts = {}
        with atomic_dir(paths.processed) as tmp:
            for name, (df, idx, origin) in parts.items():
                rows = df.iloc[idx]
                x_num, x_cat = transform(rows, state)
                y = target.encode(rows[src.target], target_state)
                np.savez(tmp / f"{name}.npz", x_num=x_num, x_cat=x_cat, y=y, row=idx.astype(np.int64),
                         origin=np.array([origin] * len(idx)))
                counts[name] = {"rows": len(idx), **target.summarise(y, target_state)}
            write_json(tmp / "preprocessor.json", state)
            write_json(tmp / "schema.json", schema(state, target_state))
            write_json(tmp / "splits.json", counts)
        return counts

    def raw_inputs(self, paths: Any, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """(raw rows in split order, encoded targets); rows come from train/test.parquet."""
        with np.load(paths.split(split), allow_pickle=False) as z:
            rows, origin, y = z["row"], z["origin"], z["y"]
        pieces, order = [], []  # one take per origin file, then restore the split order
        for name in np.unique(origin):
            file = paths.raw / f"{name}.parquet"
            if not file.exists():
                raise TorchcycleError(f"{file} not found. Run `dvc repro ingest@{paths.task}` first.")
            mask = origin == name
            pieces.append(pd.read_parquet(file).iloc[rows[mask]])
            order.append(np.flatnonzero(mask))
        out = pd.concat(pieces).iloc[np.argsort(np.concatenate(order), kind="stable")]
        return out.reset_index(drop=True), y

    # ------------------------------------------------------------------ model
    def model_spec(self, cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
        m = cfg.model
        edges = None
        if m.numeric_embedding == "ple":
            from torchcycle.models.numeric_embeddings import quantile_bin_edges

            edges = quantile_bin_edges(train.inputs[0], m.numeric_bins)
        return {"name": "mlp", "kwargs": {
            "n_numeric": len(schema["numeric"]),
            "cardinalities": [len(c["categories"]) + 1 for c in schema["categorical"]],
            "n_classes": n_outputs, "hidden_sizes": list(m.hidden_sizes), "activation_name": m.activation,
            "dropout": m.dropout, "batch_norm": m.batch_norm, "embedding_dim": m.embedding_dim,
            "numeric_embedding": m.numeric_embedding, "numeric_embedding_dim": m.numeric_embedding_dim,
            "numeric_bin_edges": edges, "periodic_frequencies": m.periodic_frequencies,
            "periodic_sigma": m.periodic_sigma, "residual": m.residual,
        }}  # fmt: skip

    def explain(self, params: Any, paths: Any, model: nn.Module, target: dict[str, Any]) -> tuple[dict, Any]:
        from torchcycle.kinds.tabular.explain import explain

        return explain(params, paths, model, target)

    # ------------------------------------------------------------------ the model file and predictions
    def input_names(self, state: dict[str, Any]) -> list[str]:
        return list(INPUTS)

    def onnx_module(self, model: nn.Module, head: nn.Module) -> nn.Module:
        return _Graph(model, head)

    def dynamic_axes(self, state: dict[str, Any]) -> dict[str, dict[int, str]]:
        return {}

    def describe_input(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"columns": column_types(state), "x_num": [c["name"] for c in state["numeric"]],
                "x_cat": [c["name"] for c in state["categorical"]],
                "preprocessing": "torchcycle.kinds.tabular.preprocess.transform_tabular with the state in "
                                 "'torchcycle.preprocessor'"}

    def prepare(self, raw: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, ...]:
        return transform(raw, state)

    def read_path(self, path: Path) -> pd.DataFrame:
        return read_records(path)

    def example(self, raw: pd.DataFrame, state: dict[str, Any], rows: int) -> pd.DataFrame:
        return raw[input_columns(state)].head(rows).reset_index(drop=True)

    def any_typed_columns(self, state: dict[str, Any]) -> set[str]:
        return {c for c, role in column_types(state).items() if role == "numeric"}

    def row_labels(self, raw: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(index=range(len(raw)))

    def slice_frame(self, raw: pd.DataFrame, y: np.ndarray, state: dict[str, Any], target_state: dict[str, Any],
                    columns: list[str] | None) -> pd.DataFrame:
        """The listed columns, or every categorical column of the state; a listed numeric column with
        many values in quartile ranges; missing values as MISSING."""
        from torchcycle.errors import ConfigError

        types = column_types(state)
        chosen = list(columns) if columns is not None else [c for c, role in types.items() if role == "categorical"]
        unknown = [c for c in chosen if c not in raw.columns]
        if unknown:
            raise ConfigError(f"slice column(s) {unknown} are not columns of the data; choose from "
                              f"{sorted(map(str, raw.columns))} (`evaluate.slice_columns`)")
        return pd.DataFrame({c: _slice_labels(raw[c].reset_index(drop=True), types.get(c)) for c in chosen},
                            index=range(len(raw)))

    def fingerprint(self, raw: pd.DataFrame) -> bytes:
        digest = pd.util.hash_pandas_object(raw, index=False).to_numpy().tobytes()
        return digest + ",".join(map(str, raw.columns)).encode()

    def new_batches(self) -> Any:
        from torchcycle.kinds.tabular.batches import TabularBatches

        return TabularBatches()


def _slice_labels(values: pd.Series, role: str | None) -> list[str]:
    """Group labels as text: quartile ranges for a number with more than 10 values, else the value."""
    if role == "numeric" and values.nunique() > 10:
        bins = pd.qcut(pd.to_numeric(values, errors="coerce"), 4, duplicates="drop")
        return [MISSING if pd.isna(b) else f"{b.left:g} to {b.right:g}" for b in bins]
    return [MISSING if pd.isna(v) else str(v) for v in values]


def schema(state: dict[str, Any], target_state: dict[str, Any]) -> dict[str, Any]:
    """What a caller must send: raw columns with their type, training range or known categories."""
    out = {
        "kind": "tabular",
        "inputs": list(INPUTS),
        "target": target_state,
        "columns": column_types(state),
        "features": feature_names(state),
        "numeric": [{"name": c["name"], "min": c["min"], "max": c["max"], **({"date": c["date"]} if "date" in c else {})}
                    for c in state["numeric"]],
        "dates": [{"name": d["name"], "reference": d["reference"]} for d in state.get("dates", [])],
        "categorical": [{"name": c["name"], "categories": c["categories"]} for c in state["categorical"]],
    }
    if "classes" in target_state:  # read by older consumers of schema.json
        out["classes"] = target_state["classes"]
        out["positive_class"] = target_state.get("positive_class")
    return out


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


TABULAR = TabularKind()
