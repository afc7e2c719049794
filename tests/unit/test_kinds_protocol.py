"""The `Kind` protocol is the only place a kind of data lives: a kind the stages have never heard of,
registered at run time, goes through ingest, preprocess, train, evaluate, explain, export and register (classifier
and regressor alike) with no change to any stage, and the stage-level code never branches on a kind or
a target type by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import torchcycle.kinds as kinds
from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import MLPConfig, SplitConfig, TrainConfig, parse_params
from torchcycle.data.splits import stratified_split
from torchcycle.errors import ConfigError, DataValidationError, PredictionInputError
from torchcycle.paths import TaskPaths
from torchcycle.targets import get_target

REPO = Path(__file__).resolve().parents[2]
FEATURES = ["v0", "v1", "v2", "v3"]
TASK = "vec"
INPUTS = ["x_num", "x_cat"]  # the MLP's two inputs; a vector has no categories, so x_cat is (N, 0)


# --------------------------------------------------------------------------- a kind the library does not know
class VectorSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    target: str = "label"
    target_type: Literal["classification", "regression"] = "classification"
    target_transform: Literal["none", "log"] = "none"
    interval_coverage: float = 0.9
    positive_class: str | None = None


class VectorTask(BaseModel):
    """A task section as a plug-in would declare it: `kind` names the kind, the rest is its own."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["vector"] = "vector"
    source: VectorSource
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: MLPConfig = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: None = None


class _Graph(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x_num, x_cat):  # type: ignore[no-untyped-def]
        return self.head(self.model(x_num, x_cat))


class VectorKind:
    """Rows of plain numbers and a target column in one CSV file: standardised numbers in, an MLP."""

    name = "vector"

    def ingest(self, cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
        df = pd.read_csv(root / cfg.source.path)
        bad = [c for c in df.columns if c != cfg.source.target and not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataValidationError(f"{cfg.source.path}: column(s) {bad} are not numbers")
        with atomic_dir(paths.raw) as tmp:
            df.to_parquet(tmp / "vectors.parquet", index=False)
        return {"status": "passed", "rows": len(df), "columns": list(df.columns)}

    def preprocess(self, cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
        src = cfg.source
        df = pd.read_parquet(paths.raw / "vectors.parquet")
        target = get_target(src.target_type)
        y_all = target.encode(df[src.target], target.fit(df[src.target], src))
        stratify = target.stratify(y_all) is not None
        pool, test = stratified_split(y_all, cfg.split.test_size, seed, stratify=stratify)
        keep, val = stratified_split(y_all[pool], cfg.split.val_size, seed, stratify=stratify)
        parts = {"train": pool[keep], "val": pool[val], "test": test}
        fit_rows = df.iloc[parts["train"]]
        target_state = target.fit(fit_rows[src.target], src)
        x = fit_rows[FEATURES].to_numpy(np.float64)
        state = {"kind": self.name, "columns": FEATURES, "mean": x.mean(0).tolist(),
                 "std": np.where(x.std(0) > 0, x.std(0), 1.0).tolist()}
        counts = {}
        with atomic_dir(paths.processed) as tmp:
            for name, idx in parts.items():
                x_num, x_cat = self.prepare(df.iloc[idx], state)
                y = target.encode(df.iloc[idx][src.target], target_state)
                np.savez(tmp / f"{name}.npz", x_num=x_num, x_cat=x_cat, y=y, row=idx.astype(np.int64))
                counts[name] = {"rows": len(idx)}
            write_json(tmp / "preprocessor.json", state)
            write_json(tmp / "schema.json", {"kind": self.name, "inputs": INPUTS, "target": target_state,
                                             "columns": FEATURES})
            write_json(tmp / "splits.json", counts)
        return counts

    def raw_inputs(self, paths: Any, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        with np.load(paths.split(split), allow_pickle=False) as z:
            rows, y = z["row"], z["y"]
        df = pd.read_parquet(paths.raw / "vectors.parquet")
        return df.iloc[rows][FEATURES].reset_index(drop=True), y

    def model_spec(self, cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
        assert train.inputs[0].shape[1] == len(schema["columns"])
        return {"name": "mlp", "kwargs": {
            "n_numeric": len(schema["columns"]), "cardinalities": [], "n_classes": n_outputs,
            "hidden_sizes": list(cfg.model.hidden_sizes), "dropout": cfg.model.dropout,
            "batch_norm": cfg.model.batch_norm,
        }}  # fmt: skip

    def explain(self, params: Any, paths: Any, model: nn.Module, target: dict[str, Any]) -> tuple[dict, Any]:
        """|gradient x input| of the target's readout per column, averaged over the test rows."""
        from torchcycle.artifacts import load_split
        from torchcycle.targets import target_of

        readout, words = target_of(target).readout(target)
        x_num, x_cat = load_split(paths, "test").inputs
        x_num = x_num.clone().requires_grad_()
        out = readout(model(x_num, x_cat)).sum()
        (grad,) = torch.autograd.grad(out, x_num)
        importance = (grad * x_num).abs().mean(0).detach().numpy()
        table = pd.DataFrame({"feature": FEATURES, "importance": importance})

        def write(folder: Path) -> None:
            table.to_csv(folder / "importance.csv", index=False)

        return {"explained": words, "rows": len(x_num), "top_feature": table["feature"][importance.argmax()]}, write

    def input_names(self, state: dict[str, Any]) -> list[str]:
        return list(INPUTS)

    def onnx_module(self, model: nn.Module, head: nn.Module) -> nn.Module:
        return _Graph(model, head)

    def dynamic_axes(self, state: dict[str, Any]) -> dict[str, dict[int, str]]:
        return {}

    def describe_input(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"columns": state["columns"], "normalisation": "(value - mean) / std per column"}

    def prepare(self, raw: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, ...]:
        missing = [c for c in state["columns"] if c not in raw.columns]
        if missing:
            raise PredictionInputError(f"input is missing column(s) {missing}")
        x = raw[state["columns"]].to_numpy(np.float64)
        x_num = ((x - np.asarray(state["mean"])) / np.asarray(state["std"])).astype(np.float32)
        return x_num, np.zeros((len(raw), 0), np.int64)

    def read_path(self, path: Path) -> pd.DataFrame:
        return pd.read_csv(path)

    def example(self, raw: pd.DataFrame, state: dict[str, Any], rows: int) -> pd.DataFrame:
        return raw[state["columns"]].head(rows).reset_index(drop=True)

    def any_typed_columns(self, state: dict[str, Any]) -> set[str]:
        return set(state["columns"])

    def fingerprint(self, raw: pd.DataFrame) -> bytes:
        return pd.util.hash_pandas_object(raw, index=False).to_numpy().tobytes()

    def row_labels(self, raw: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(index=range(len(raw)))

    def slice_frame(self, raw: pd.DataFrame, y: np.ndarray, state: dict, target_state: dict,
                    columns: list[str] | None) -> pd.DataFrame:
        return pd.DataFrame({"v0_sign": np.where(raw["v0"] > 0, "positive", "negative")})

    def new_batches(self) -> Any:
        raise NotImplementedError("vectors arrive in one file")


VECTOR = VectorKind()


# --------------------------------------------------------------------------- a tiny project
def vectors(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """label/price driven by v0 and v1 only; v2, v3 are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    df = pd.DataFrame(x, columns=FEATURES)
    df["label"] = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "up", "down")
    df["price"] = 50 + 10 * x[:, 0] + 5 * x[:, 1] + rng.normal(0, 1, n)
    return df


@pytest.fixture
def vector_kind(monkeypatch):
    """VECTOR registered for this test only (monkeypatch puts the original lookup back)."""
    monkeypatch.setattr(kinds, "_kinds", kinds._kinds)
    kinds.register_kind(VECTOR)
    yield VECTOR


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """MLflow in a SQLite file of this test, telemetry off; the global tracking URI is reset afterwards."""
    import mlflow

    from torchcycle.tracking.mlflow_run import TELEMETRY_OFF

    for key, value in TELEMETRY_OFF.items():
        monkeypatch.setenv(key, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # mlflow exports both; monkeypatch removes them after
    yield uri
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def vector_params(target: str, target_type: str):
    """Params as parse_params builds them (a tabular task stands in while validating), with the task's
    config swapped for the vector kind's own section."""
    params = parse_params({
        "tasks": [TASK],
        TASK: {"kind": "tabular", "source": {"path": "vectors.csv", "target": target}, "split": {},
               "preprocess": {}, "model": {}, "train": {}},
        "explain": {"max_rows": 20, "background_rows": 10},
        "export": {"benchmark_repeats": 10, "benchmark_seconds": 0.01, "parity_tolerance": 1e-4},
    })  # fmt: skip
    task = VectorTask(
        source=VectorSource(path="vectors.csv", target=target, target_type=target_type),
        model=MLPConfig(hidden_sizes=[16], dropout=0.0, batch_norm=False),
        train=TrainConfig(epochs=25, batch_size=32, lr=0.01, scheduler="none", num_threads=1,
                          device="cpu", distributed="off", checkpoint={"enabled": False}),
    )  # fmt: skip
    return params.model_copy(update={"task_configs": {TASK: task}})


# --------------------------------------------------------------------------- the protocol
def test_a_registered_kind_is_found_by_name_config_and_state(vector_kind) -> None:
    cfg = VectorTask(source=VectorSource(path="x.csv"))
    assert kinds.get_kind("vector") is VECTOR
    assert kinds.kind_of(cfg) is VECTOR and kinds.kind_of({"kind": "vector"}) is VECTOR
    assert kinds.kind_of("tabular").name == "tabular"  # the built-in kinds are still there


def test_registration_does_not_outlive_the_test() -> None:
    with pytest.raises(ConfigError, match=r"unknown kind of data 'vector'; choose one of \['image', 'tabular', 'text'\]"):
        kinds.get_kind("vector")


@pytest.mark.parametrize(("target", "target_type"), [("label", "classification"), ("price", "regression")])
def test_stages_run_a_new_kind_unchanged(vector_kind, tracking, tmp_path, torch_globals, target, target_type) -> None:
    from torchcycle.serving import Predictor
    from torchcycle.stages import evaluate, explain, export, ingest, preprocess, register, slices, train

    vectors()[[*FEATURES, target]].to_csv(tmp_path / "vectors.csv", index=False)
    params = vector_params(target, target_type)
    paths = TaskPaths(TASK, tmp_path)

    assert ingest.run(params, TASK, tmp_path)["rows"] == 240
    counts = preprocess.run(params, TASK, tmp_path)
    assert sum(c["rows"] for c in counts.values()) == 240
    assert read_json(paths.schema)["target"]["type"] == target_type

    trained = train.run(params, TASK, tmp_path, progress=False)
    assert trained["run_id"] and paths.weights.exists() and paths.learning_curve.exists()
    config = read_json(paths.model_config)
    assert config["spec"]["name"] == "mlp" and config["target"]["type"] == target_type

    metrics = evaluate.run(params, TASK, tmp_path)
    assert read_json(paths.metrics).keys() == metrics.keys()
    predictions = pd.read_csv(paths.predictions)
    assert len(predictions) == counts["test"]["rows"] and {"actual", "predicted"} <= set(predictions.columns)
    assert any(paths.figures.glob("*.png")) and any(paths.evaluation.glob("*.csv"))
    if target_type == "classification":  # a separable rule on v0, v1: learnt well in a few epochs
        assert metrics["accuracy"] > 0.8 and metrics["roc_auc"] > 0.9
        assert set(predictions["predicted"]) <= {"down", "up"}
    else:  # price = 50 + 10 v0 + 5 v1 + noise (sd 1): far better than predicting the mean
        assert metrics["r2"] > 0.8 and metrics["rmse"] < 5.0
        assert (predictions["lower"] <= predictions["predicted"]).all()
        assert (predictions["predicted"] <= predictions["upper"]).all()

    small = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"min_slice_rows": 5})})
    sliced = slices.run(small, TASK, tmp_path)
    assert sliced["columns"] == ["v0_sign"] and sliced["slices"] == 2
    assert paths.slices_report.exists()

    summary = explain.run(params, TASK, tmp_path)
    assert summary["top_feature"] in ("v0", "v1") and (paths.explain / "importance.csv").exists()

    report = export.run(params, TASK, tmp_path)
    assert report["parity"]["passed"] and report["parity_from_raw_input"]["passed"]
    assert report["inputs"] == INPUTS and paths.onnx_model.exists()

    registered = register.run(params, TASK, tmp_path)  # registry.metric `auto`: the target type's default
    assert registered["decision"]["promoted"] and registered["decision"]["reason"] == "first version"
    assert registered["decision"]["metric"] == {"classification": "roc_auc", "regression": "rmse"}[target_type]

    predictor = Predictor(paths.onnx_model)  # the served side finds the kind from the model file's state
    assert predictor.kind is VECTOR and predictor.target.name == target_type
    table = predictor.predict(vectors(5, seed=9)[FEATURES])
    assert len(table) == 5 and table.columns[0] == "predicted"
    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['v3'\]"):
        predictor.predict(vectors(2)[FEATURES[:3]])


# --------------------------------------------------------------------------- no branching on names
SCANNED = [REPO / "src/torchcycle/stages", REPO / "src/torchcycle/serving.py", REPO / "src/torchcycle/served_model.py",
           REPO / "src/torchcycle/retraining.py", REPO / "pipelines"]
FORBIDDEN = [r"kind ==", r"\"tabular\"", r"\"image\"", r"\"text\"", r"TabularTask", r"ImageTask", r"TextTask",
             r"\"classification\"",
             r"\"regression\"", r"'tabular'", r"'image'", r"'classification'", r"'regression'"]


def _python_files() -> list[Path]:
    files = []
    for path in SCANNED:
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_stage_level_code_never_names_a_kind_or_a_target_type() -> None:
    files = _python_files()
    assert len(files) > 10 and all(f.exists() for f in files)
    found = [f"{f.relative_to(REPO)}:{i}: {line.strip()}"
             for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
             if any(re.search(p, line) for p in FORBIDDEN)]  # fmt: skip
    assert not found, "kind/target names outside torchcycle.kinds / torchcycle.targets:\n" + "\n".join(found)
