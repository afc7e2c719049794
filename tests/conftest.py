"""Helpers every test folder shares: a real copy of the project in a temporary directory, with shrunken
params, driven through the real `dvc` and `torchcycle` command lines (the same ones `make run` uses).

Test modules import these from here (`from tests.conftest import Project, copy_project`), never from one
another, so no test module depends on another module's import side effects."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASKS = ("adult", "mnist", "diamonds", "reviews")


def free_port() -> int:
    """A free TCP port on loopback, for servers the tests start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # mlflow.set_tracking_uri/set_registry_uri also export these: in-process tests must not leak them
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.update({
        "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
    })  # fmt: skip
    env.update(extra or {})
    return env


@dataclass
class Project:
    root: Path
    remote: Path

    def run(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=cwd or self.root, env=project_env(), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict:
        return yaml.safe_load(self.params_file.read_text())

    def write_params(self, params: dict) -> None:
        self.params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message, "--allow-empty")


def shrink(params: dict) -> dict:
    """An epoch or two on a few hundred rows: the real code paths, in seconds."""
    params["adult"]["source"]["max_rows"] = 600
    params["mnist"]["source"]["max_images"] = 300
    params["diamonds"]["source"]["max_rows"] = 1500
    params["reviews"]["source"]["max_rows"] = 500
    params["reviews"]["preprocess"]["vocab_size"] = 600
    for task in TASKS:
        params[task]["train"]["epochs"] = 2
    params.setdefault("explain", {}).update(max_rows=150, background_rows=40, local_examples=2, examples_per_class=1)
    # timings on a busy test machine are reported, not gated (the floor is checked on the real run)
    params.setdefault("export", {}).update(benchmark_repeats=20, benchmark_seconds=0.05, min_speedup=0)
    return params


def copy_project(dest: Path) -> Project:
    """Copy the files git knows about (tracked or new, not ignored) into a fresh git repository."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    repo = dest / "repo"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/raw/", "data/processed/", "models/", "reports/")) \
                and rel != "dvc.lock":
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    project = Project(repo, dest / "dvc-remote")
    project.write_params(shrink(project.params()))
    project.run("git", "init", "-q", "-b", "main")
    project.run("dvc", "remote", "add", "--local", "-f", "storage", str(project.remote))
    project.commit("copy of the project")
    return project


MLFLOW_STORE_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_store_restored() -> Iterator[None]:
    """mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI: put
    MLflow's store and those variables back as they were when the block started."""
    saved = {k: os.environ.get(k) for k in MLFLOW_STORE_KEYS}
    try:
        yield
    finally:
        if {k: os.environ.get(k) for k in MLFLOW_STORE_KEYS} != saved:
            if "mlflow" in sys.modules:
                import mlflow

                mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
                mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def module_mlflow_env() -> Iterator[None]:
    """In-process stages point MLflow at their project's store: later modules see their own store."""
    with mlflow_store_restored():
        yield


@pytest.fixture(autouse=True)
def _mlflow_store_not_leaked() -> Iterator[None]:
    """A test that points MLflow at its own store must not send later tests' subprocesses — `dvc repro`
    run by a flow — to it."""
    with mlflow_store_restored():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (what `make test` runs) a worker takes a whole test module, so
    a module's fixtures are built once; the dashboard's modules share one trained project (a session
    fixture) and go to one worker together."""
    for item in items:
        module = item.nodeid.split("::")[0]
        group = "dashboard" if module.startswith("tests/dashboard/") else module
        item.add_marker(pytest.mark.xdist_group(group))
