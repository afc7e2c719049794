"""MLflow hand-off between stages: train opens one run per task per pipeline execution and writes its
id; evaluate (and later stages) reopen that run, so one run holds params, curves, metrics and models.

mlflow is imported inside functions: it costs over a second and most commands never need it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchcycle.atomic import read_json, write_json
from torchcycle.errors import TorchcycleError
from torchcycle.paths import TaskPaths

TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
}


def disable_telemetry() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def tracking_uri(configured: str | None, root: Path) -> str:
    """MLFLOW_TRACKING_URI wins, then params, then the embedded SQLite store in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def configure(params, root: Path) -> str:
    import mlflow

    disable_telemetry()
    uri = tracking_uri(params.tracking.tracking_uri, root)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:"):
        mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    """Experiment id for `name`; with a local store its artifacts live in <root>/mlartifacts."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    location = (root / "mlartifacts").resolve().as_uri() if uri.startswith(("sqlite:", "file:")) else None
    return mlflow.create_experiment(name, artifact_location=location)


def experiment_name(params, task: str) -> str:
    return f"{params.tracking.experiment_prefix}{task}"


def start_run(params, task: str, root: Path, tags: dict[str, str]) -> Any:
    """Open the task's run for this pipeline execution and record its id for later stages."""
    import mlflow

    configure(params, root)
    exp_id = ensure_experiment(experiment_name(params, task), root)
    run = mlflow.start_run(experiment_id=exp_id, tags=tags)
    return run


def close_interrupted(run_id: str, successor: str) -> None:
    """A training killed mid-run leaves its run RUNNING for ever; the run that resumes its checkpoint
    marks it KILLED and points to itself."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "resumed_by", successor)
            client.set_terminated(run_id, status="KILLED")
    except mlflow.exceptions.MlflowException:  # deleted or from another store: nothing to close
        pass


def save_run_info(paths: TaskPaths, run: Any, directory: Path | None = None) -> None:
    target = (directory / paths.run_info.name) if directory else paths.run_info
    write_json(target, {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": _mlflow_uri(),
    })  # fmt: skip


def _mlflow_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def reopen_run(params, paths: TaskPaths, root: Path) -> Iterator[Any]:
    """Reopen the run that train recorded; a missing record is a clear error, not a new orphan run."""
    import mlflow

    if not paths.run_info.exists():
        raise TorchcycleError(
            f"{paths.run_info} not found: the train stage records its MLflow run there. "
            f"Run `dvc repro train@{paths.task}` first."
        )
    info = read_json(paths.run_info)
    configure(params, root)
    # a process that set another experiment earlier (a flow or a dashboard running several tasks) would
    # make MLflow refuse to reopen a run of this one: the run's own experiment becomes the active one
    mlflow.set_experiment(experiment_id=mlflow.get_run(info["run_id"]).info.experiment_id)
    with mlflow.start_run(run_id=info["run_id"]) as run:
        yield run


# --------------------------------------------------------------------------- provenance
def git_commit(root: Path) -> dict[str, str]:
    """The commit the code was at, and whether the work tree had uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": sha.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}


def data_version(task: str, root: Path) -> dict[str, str]:
    """DVC hashes of the task's raw and processed data, read from dvc.lock (written stage by stage)."""
    import yaml

    lock = root / "dvc.lock"
    out: dict[str, str] = {}
    if not lock.exists():
        return out
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage, key in ((f"ingest@{task}", "data_version_raw"), (f"preprocess@{task}", "data_version_processed")):
        for entry in stages.get(stage, {}).get("outs", []):
            if entry.get("path", "").startswith(("data/raw", "data/processed")):
                out[key] = entry.get("md5", "")
    return out
