"""Cached access to the project's stores for the dashboard: DVC outputs on disk and MLflow.

Files are cached by (path, modification time), so a new `make run` shows up without a restart and an
unchanged file is read once. MLflow queries are cached briefly (runs and aliases move), while models are
cached per registered version (a version never changes). Predictions go through `torchcycle.serving`,
raw inputs through the task's kind (`torchcycle.kinds`) and scores through its target type
(`torchcycle.targets`), so nothing here re-implements preprocessing or branches on either.
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
    """Task name -> the name of its kind of data ('tabular', 'image', …), in params order."""
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


@st.cache_data(show_spinner=False, max_entries=64)
def run_json(uri: str, run_id: str, artifact: str) -> dict | None:
    """A JSON artifact of a run (the evaluate stage's metrics.json, the slices report); None when the run
    has none (it ran before that stage existed) or it does not hold a JSON object."""
    text = _run_text(uri, run_id, artifact)
    try:
        found = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


@st.cache_data(ttl=SHORT_TTL, show_spinner=False, max_entries=64)
def run_text(uri: str, run_id: str, artifact: str) -> str | None:
    """A text artifact of a run (a model card); None when the run has none. Cached briefly: the register
    stage creates the version a moment before it logs the card."""
    return _run_text(uri, run_id, artifact)


def _run_text(uri: str, run_id: str, artifact: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp,
                                                        tracking_uri=uri)
            return Path(local).read_text(encoding="utf-8")
    except (MlflowException, OSError, UnicodeDecodeError):
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
    from torchcycle.artifacts import load_model

    return load_model(Path(weights_dir))  # weights_only=True inside


@st.cache_resource(show_spinner="Loading the torch weights…", max_entries=8)
def _run_torch_model(uri: str, run_id: str) -> tuple[Any, dict] | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from torchcycle.artifacts import load_model

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


# --------------------------------------------------------------------------- the task's data
def kind(task: str) -> Any:
    """The task's kind of data (torchcycle.kinds): what differs between tables and images."""
    from torchcycle.kinds import kind_of

    return kind_of(params().task(task))


def raw_split(task: str, split: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The raw inputs behind a processed split, as a client sends them (a table's columns, or an `image`
    column of file paths), in split order, with the encoded targets; None before preprocess ran."""
    p = paths(task)
    if not p.split(split).exists():
        return None
    return _raw_split(str(p.root), task, split, _stamp(p.split(split)))


def raw_test(task: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    return raw_split(task, "test")


@st.cache_data(show_spinner=False, max_entries=8)
def _raw_split(root_dir: str, task: str, split: str, stamp: float) -> tuple[pd.DataFrame, np.ndarray]:
    return kind(task).raw_inputs(TaskPaths(task, Path(root_dir)), split)


def workspace_target(task: str) -> dict | None:
    """The target state the workspace's processed splits were encoded with (schema.json)."""
    schema = read(paths(task).schema)
    return schema.get("target") if schema else None


def target_type(task: str) -> str | None:
    """'classification', 'regression', …: from the processed data, the data report or the trained model."""
    p = paths(task)
    found = workspace_target(task) or (read(p.models / "model_config.json") or {}).get("target") or {}
    return found.get("type") or (read(p.data_report) or {}).get("target_type")


# --------------------------------------------------------------------------- evaluations
WORKSPACE = "workspace"


def model_choices(task: str) -> list[str]:
    """Registered versions (newest first), then the workspace's own evaluation when there is one."""
    out = [v["version"] for v in versions(tracking_uri(), registered_name(task))] if store_exists() else []
    if paths(task).predictions.exists():
        out.append(WORKSPACE)
    return out


def mismatch(task: str, choice: str) -> str | None:
    """Why a registered version cannot be scored on the workspace's test split (it predicts other classes
    or another target), or None when it can."""
    workspace = workspace_target(task)
    if choice == WORKSPACE or workspace is None:
        return None
    predictor = version_predictor(task, choice)
    if predictor.target.same_task(predictor.target_state, workspace):
        return None
    return (f"v{choice} was trained for {describe(predictor.target_state)}, but the workspace's test split holds "
            f"{describe(workspace)}. Its predictions cannot be scored against these labels, so no metrics "
            "are shown for it; pick another version, or re-run the pipeline on the data it was trained on.")


def target_of(state: dict) -> Any:
    """The target type of a target state (torchcycle.targets): which way its metrics are better, …"""
    from torchcycle.targets import target_of as resolve

    return resolve(state)


def describe(state: dict) -> str:
    """A target state in words: its type, and the name and classes when it has them."""
    known = [f"{k} {state[k]!r}" for k in ("name", "classes") if state.get(k) is not None]
    return f"{state['type']} ({', '.join(known)})"


@st.cache_data(show_spinner="Scoring the test split…", max_entries=16)
def _evaluation(task: str, choice: str, stamp: float) -> dict | None:
    from torchcycle.targets import target_of

    if choice == WORKSPACE:  # what the evaluate stage wrote, with the target state it was trained with
        state = (read(paths(task).models / "model_config.json") or {}).get("target")
        table = read(paths(task).predictions)
        if state is None or table is None:
            return None
        target = target_of(state)
        outputs, y = target.outputs_of(table, state), target.encode(table["actual"], state)
    else:  # the registered version's ONNX model on the workspace's raw test inputs
        predictor, raw, workspace = version_predictor(task, choice), raw_test(task), workspace_target(task)
        if raw is None or workspace is None:
            return None
        state, target = predictor.target_state, predictor.target
        outputs = predictor.outputs(raw[0])
        # the labels as values a person reads, encoded the way this version encodes them
        y = target.encode(pd.Series(target_of(workspace).decode(raw[1], workspace)), state)
    return {"state": state, "outputs": outputs, "y": y, "metrics": target.metrics(y, outputs, state),
            "tables": target.tables(y, outputs, state)}


def evaluation(task: str, choice: str) -> dict | None:
    """A model version on the workspace's test split: its target state, outputs, encoded labels, metrics
    and plot tables (the same ones the evaluate stage writes). Check `mismatch` first."""
    p = paths(task)
    return _evaluation(task, choice, _stamp(p.split("test")) + _stamp(p.predictions)
                       + _stamp(p.models / "model_config.json"))


# --------------------------------------------------------------------------- what the stages reported
METRICS_ARTIFACT = "evaluation/metrics.json"  # as the evaluate stage logs them to the training run
EVALUATION_ARTIFACTS = "evaluation"
SLICES_ARTIFACT = "slices/slices.json"
CARD_ARTIFACT = "model_card/model_card.md"
REGISTRY_ARTIFACT = "registry/registry.json"


def stage_reports(task: str, choice: str, tables: tuple[str, ...] = ()) -> dict:
    """What the evaluate and slices stages wrote about a model: `metrics` (metrics.json: calibration,
    threshold, confidence intervals), the named evaluation `tables` (e.g. reliability) and `slices`
    (slices.json); each None (or absent) when that model has none. The workspace's files for WORKSPACE,
    else the artifacts of the version's training run; `origin` says which in words."""
    p = paths(task)
    if choice == WORKSPACE:
        found = {name: read(p.evaluation / f"{name}.csv") for name in tables}
        return {"metrics": read(p.metrics), "tables": {k: v for k, v in found.items() if v is not None},
                "slices": read(p.slices_report), "origin": f"`reports/{task}/` of the last `make run`"}
    uri = tracking_uri()
    run_id = _version(task, choice)["run_id"]
    found = {name: run_csv(uri, run_id, f"{EVALUATION_ARTIFACTS}/{name}.csv") for name in tables}
    return {"metrics": run_json(uri, run_id, METRICS_ARTIFACT),
            "tables": {k: v for k, v in found.items() if v is not None},
            "slices": run_json(uri, run_id, SLICES_ARTIFACT),
            "origin": f"the evaluate and slices stages of v{choice}'s training run (its test split)"}


def _version(task: str, choice: str) -> dict:
    return next(v for v in versions(tracking_uri(), registered_name(task)) if v["version"] == choice)


def registration(task: str, choice: str) -> dict:
    """A model's registration: `version` (None when the workspace's model is not registered), its
    promotion `decision` (the register stage's, with `gates` and `warnings`; None for a version
    registered before decisions were recorded) and its model `card` (Markdown; None for a version
    registered before model cards existed)."""
    from dashboards.reports import decision_from_tags

    if choice == WORKSPACE:
        report = read(paths(task).registry_report) or {}
        run = (read(paths(task).run_info) or {}).get("run_id")
        if not report or report.get("run_id") != run:  # registry.json is of an earlier model
            return {"version": None, "decision": None, "card": None}
        decision = dict(report.get("decision") or {}) or None
        if decision is not None:
            decision.setdefault("gates", report.get("gates") or [])
        return {"version": str(report["version"]), "decision": decision, "card": report.get("model_card")}
    v = _version(task, choice)
    return {"version": choice, "decision": decision_from_tags(v["tags"]),
            "card": run_text(tracking_uri(), v["run_id"], CARD_ARTIFACT)}
