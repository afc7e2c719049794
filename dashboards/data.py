"""Cached access to the project's stores for the dashboard: DVC outputs on disk and MLflow.

Files are cached by (path, modification time), so a new `make run` shows up without a restart and an
unchanged file is read once. MLflow queries are cached briefly (runs and aliases move), while models are
cached per registered version (a version never changes). Predictions go through `torchcycle.serving`
and explanations through `torchcycle.explain`, so nothing here re-implements preprocessing.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from torchcycle.paths import TaskPaths

ROOT_ENV = "TORCHCYCLE_ROOT"
UI_ENV = "TORCHCYCLE_MLFLOW_UI"
DEFAULT_UI = "http://127.0.0.1:5000"
SHORT_TTL = 30  # seconds: runs, versions and aliases change while the dashboard is open


# --------------------------------------------------------------------------- the project
def root() -> Path:
    """The project the dashboard reads: $TORCHCYCLE_ROOT, else the checkout it lives in."""
    return Path(os.environ.get(ROOT_ENV) or Path(__file__).resolve().parents[1]).resolve()


def paths(task: str) -> TaskPaths:
    return TaskPaths(task, root())


def _stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


@st.cache_resource(show_spinner=False)
def _params(file: str, stamp: float) -> Any:
    from torchcycle.config import load_params

    return load_params(file)


def params() -> Any:
    file = root() / "params.yaml"
    return _params(str(file), _stamp(file))


def tasks() -> dict[str, str]:
    """Task name -> kind ('tabular' or 'image'), in params order."""
    p = params()
    return {name: p.task(name).kind for name in p.tasks}


def tracking_uri() -> str:
    from torchcycle.tracking.mlflow_run import tracking_uri as resolve

    return resolve(params().tracking.tracking_uri, root())


def mlflow_ui() -> str:
    return os.environ.get(UI_ENV, DEFAULT_UI).rstrip("/")


def run_link(experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------- files
@st.cache_data(show_spinner=False, max_entries=256)
def _read(path: str, stamp: float, how: str) -> Any:
    if how == "json":
        return json.loads(Path(path).read_text())
    if how == "csv":
        return pd.read_csv(path)
    if how == "parquet":
        return pd.read_parquet(path)
    if how == "npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    raise ValueError(how)


def read(path: Path, how: str | None = None) -> Any:
    """The file's content (json/csv/parquet/npz by suffix), or None when it does not exist yet."""
    stamp = _stamp(path)
    if stamp < 0:
        return None
    return _read(str(path), stamp, how or path.suffix.lstrip("."))


# --------------------------------------------------------------------------- MLflow
def store_exists() -> bool:
    """False for an embedded SQLite store that was never created: viewing must not create one."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    return True


@st.cache_resource(show_spinner=False)
def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    from torchcycle.tracking.mlflow_run import disable_telemetry

    disable_telemetry()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(task: str) -> str:
    return f"{params().tracking.experiment_prefix}{task}"


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def runs(uri: str, experiment: str) -> pd.DataFrame:
    """One row per run: ids, status, times, then params.* , metrics.* and tags.* columns."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    rows = []
    for r in c.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"]):
        row = {
            "run_id": r.info.run_id, "run_name": r.info.run_name, "experiment_id": exp.experiment_id,
            "status": r.info.status, "start": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
            "duration_s": ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000,
        }  # fmt: skip
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items() if not k.startswith("mlflow.")})
        rows.append(row)
    return pd.DataFrame(rows)


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def metric_history(uri: str, run_id: str, key: str) -> pd.DataFrame:
    hist = client(uri).get_metric_history(run_id, key)
    return pd.DataFrame({"epoch": [m.step for m in hist], "value": [m.value for m in hist]})


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def versions(uri: str, name: str) -> list[dict]:
    """Registered versions of `name`, newest first, with their aliases and decision tags."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        found = c.search_model_versions(f"name='{name}'")
        aliases = c.get_registered_model(name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    out = [{"version": str(v.version), "run_id": v.run_id, "created": pd.to_datetime(v.creation_timestamp,
            unit="ms", utc=True), "aliases": sorted(by_version.get(str(v.version), [])), "tags": dict(v.tags)}
           for v in found]  # fmt: skip
    return sorted(out, key=lambda v: int(v["version"]), reverse=True)


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def run_info(uri: str, run_id: str) -> dict:
    r = client(uri).get_run(run_id)
    return {"run_id": run_id, "experiment_id": r.info.experiment_id, "status": r.info.status,
            "start": pd.to_datetime(r.info.start_time, unit="ms", utc=True), "metrics": dict(r.data.metrics),
            "params": dict(r.data.params), "tags": dict(r.data.tags)}  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=64)
def run_csv(uri: str, run_id: str, artifact: str) -> pd.DataFrame | None:
    """A CSV artifact of a run (evaluation tables, learning curve); None when the run has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp,
                                                        tracking_uri=uri)
            return pd.read_csv(local)
    except (MlflowException, OSError):
        return None


# --------------------------------------------------------------------------- models
@dataclass
class Served:
    """The model predictions come from: the champion, or the workspace's export before registration."""

    predictor: Any  # torchcycle.serving.Predictor
    label: str
    version: str | None
    run_id: str | None
    task: str


@st.cache_resource(show_spinner="Loading the model…", max_entries=16)
def _registered_predictor(uri: str, name: str, version: str) -> Any:
    import mlflow

    from torchcycle.serving import Predictor

    # resolved through our own client: a models:/ URI would be looked up in the process-wide registry
    location = client(uri).get_model_version_download_uri(name, version)
    directory = mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri)
    return Predictor.from_dir(directory)


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _file_predictor(path: str, stamp: float) -> Any:
    from torchcycle.serving import Predictor

    return Predictor(path)


def registered_name(task: str) -> str:
    from torchcycle.serving import registered_name as name

    return name(task)


def version_predictor(task: str, version: str) -> Any:
    return _registered_predictor(tracking_uri(), registered_name(task), version)


def champion(task: str) -> dict | None:
    if not store_exists():
        return None
    for v in versions(tracking_uri(), registered_name(task)):
        if "champion" in v["aliases"]:
            return v
    return None


def served(task: str) -> Served | None:
    """The champion through ONNX Runtime; before anything is registered, the workspace's ONNX export."""
    champ = champion(task)
    if champ is not None:
        pred = version_predictor(task, champ["version"])
        return Served(pred, f"champion v{champ['version']}", champ["version"], champ["run_id"], task)
    onnx = paths(task).onnx_model
    if onnx.exists():
        info = read(paths(task).run_info) or {}
        return Served(_file_predictor(str(onnx), _stamp(onnx)), "workspace export (not registered yet)", None,
                      info.get("run_id"), task)
    return None


@st.cache_resource(show_spinner="Loading the torch weights…", max_entries=8)
def _torch_model(weights_dir: str, stamp: float) -> tuple[Any, dict]:
    from torchcycle.stages.common import load_model

    return load_model(Path(weights_dir))  # weights_only=True inside


@st.cache_resource(show_spinner="Loading the torch weights…", max_entries=8)
def _run_torch_model(uri: str, run_id: str) -> tuple[Any, dict] | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from torchcycle.stages.common import load_model

    try:
        directory = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="torch_state_dict",
                                                        tracking_uri=uri)
    except (MlflowException, OSError):
        return None
    return load_model(Path(directory))


def torch_model(model: Served) -> tuple[Any, dict]:
    """The torch weights behind the served model (explanations need gradients, ONNX has none): the
    registered run's state_dict, else the workspace's models/<task>/."""
    if model.version is not None and model.run_id:
        found = _run_torch_model(tracking_uri(), model.run_id)
        if found is not None:
            return found
    folder = paths(model.task).models
    return _torch_model(str(folder), _stamp(folder / "model.pt"))


def raw_test(task: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The raw test records (tabular) in split order, with labels; None before preprocess ran."""
    p = paths(task)
    if not p.split("test").exists():
        return None
    return _raw_split(str(p.root), task, "test", _stamp(p.split("test")))


@st.cache_data(show_spinner=False, max_entries=8)
def _raw_split(root_dir: str, task: str, split: str, stamp: float) -> tuple[pd.DataFrame, np.ndarray]:
    from torchcycle.stages.raw_split import raw_records

    return raw_records(TaskPaths(task, Path(root_dir)), split)


def test_images(task: str) -> tuple[list[Path], np.ndarray] | None:
    from torchcycle.stages.raw_split import image_files

    p = paths(task)
    return image_files(p, "test") if p.split("test").exists() else None


@st.cache_data(show_spinner="Scoring the test split…", max_entries=16)
def version_test_proba(task: str, version: str | None, stamp: float) -> np.ndarray | None:
    """Probabilities of a registered version on the workspace's raw test split (its own preprocessing)."""
    s = served(task) if version is None else Served(version_predictor(task, version), "", version, None, task)
    if s is None:
        return None
    if tasks()[task] == "tabular":
        raw = raw_test(task)
        return None if raw is None else s.predictor.proba_records(raw[0])
    files = test_images(task)
    return None if files is None else s.predictor.proba_pixels(s.predictor.load_images(files[0]))


# --------------------------------------------------------------------------- evaluations
WORKSPACE = "workspace"


def model_choices(task: str) -> list[str]:
    """Registered versions (newest first), then the workspace's own evaluation when there is one."""
    out = [v["version"] for v in versions(tracking_uri(), registered_name(task))] if store_exists() else []
    if paths(task).predictions.exists():
        out.append(WORKSPACE)
    return out


@st.cache_data(show_spinner="Scoring the test split…", max_entries=16)
def _evaluation(task: str, choice: str, stamp: float) -> dict | None:
    from torchcycle.evaluation.metrics import classification_metrics, curve_tables

    if choice == WORKSPACE:
        pred = read(paths(task).predictions)
        classes = [c.removeprefix("proba_") for c in pred.columns if c.startswith("proba_")]
        proba = pred[[f"proba_{c}" for c in classes]].to_numpy()
        y = np.asarray([classes.index(str(a)) for a in pred["actual"]])
    else:
        predictor = version_predictor(task, choice)
        classes = list(predictor.classes)
        proba = version_test_proba(task, choice, stamp)
        labels = raw_test(task) if tasks()[task] == "tabular" else test_images(task)
        if proba is None or labels is None:
            return None
        y = labels[1]
    return {"classes": classes, "proba": proba, "y": y, "metrics": classification_metrics(y, proba, classes),
            "tables": curve_tables(y, proba, classes)}


def evaluation(task: str, choice: str) -> dict | None:
    """Metrics, curve tables, probabilities and labels of a model version on the workspace's test split."""
    return _evaluation(task, choice, _stamp(paths(task).split("test")) + _stamp(paths(task).predictions))
