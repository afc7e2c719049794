"""Team mode for real: MLflow on a PostgreSQL server started on loopback, a shrunken pipeline tracking
and registering against that MLflow server, and two clones sharing one DVC remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Project, copy_project, free_port, project_env

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing: `make postgres` installs it (the test target does this).")
    return found


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; drop to the `postgres` account when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run_pg(cmd: list[str]) -> None:
    proc = subprocess.run(_as_postgres_user(cmd), capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        pytest.fail(f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="module")
def postgres():
    # not under pytest's tmp dir: that is private to root (0700), and PostgreSQL runs as `postgres`
    base = Path(tempfile.mkdtemp(prefix="torchcycle-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    _run_pg([_pg_bin("initdb"), "-D", str(data), "-U", "torchcycle", "--auth=trust", "-E", "UTF8"])
    port = free_port()
    log = base / "postgres.log"
    if os.geteuid() == 0:
        log.touch()
        shutil.chown(log, "postgres")
    _run_pg([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
             "-o", f"-h 127.0.0.1 -p {port} -k {sock}"])
    _run_pg([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "torchcycle", "mlflow"])
    yield f"postgresql+psycopg2://torchcycle@127.0.0.1:{port}/mlflow"
    subprocess.run(_as_postgres_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                   capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory):
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    port = free_port()
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115 (held by the server process)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", postgres, "--artifacts-destination", str(artifacts), "--workers", "1"],
        env=project_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.terminate()
    if proc.poll() is not None:
        log.close()
        pytest.fail(f"mlflow server did not start:\n{(artifacts.parent / 'mlflow-server.log').read_text()[-3000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_pipeline_tracks_and_registers_against_mlflow_on_postgres(mlflow_server: str, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    project = copy_project(tmp_path)
    params = project.params()
    params["tasks"] = ["adult"]
    project.write_params(params)
    project.commit("adult only")
    env = project_env({"MLFLOW_TRACKING_URI": mlflow_server})
    proc = subprocess.run(["dvc", "repro"], cwd=project.root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (project.root / "mlflow.db").exists(), "tracking must go to the server, not the embedded store"

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    exp = client.get_experiment_by_name("torchcycle-adult")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'train'")
    assert len(runs) == 1
    run = runs[0]
    assert "test_accuracy" in run.data.metrics
    recorded = json.loads((project.root / "models" / "adult" / "mlflow_run.json").read_text())
    assert recorded["run_id"] == run.info.run_id
    champion = client.get_model_version_by_alias("torchcycle-adult", "champion")
    assert champion.run_id == run.info.run_id
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts, "artifacts must be stored through the server"


def test_two_clones_share_data_through_one_dvc_remote(tmp_path) -> None:
    """Clone A changes the data and pushes; clone B pulls and reproduces the same metrics."""
    a = copy_project(tmp_path / "a")
    params = a.params()
    params["tasks"] = ["adult"]
    a.write_params(params)
    a.commit("adult only")
    remote = tmp_path / "shared-remote"
    a.run("dvc", "remote", "add", "--local", "-f", "storage", str(remote))
    a.run("dvc", "repro", "evaluate@adult")  # the data and the metrics are what the clones share
    a.commit("first version")
    a.run("dvc", "push")

    b_root = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(a.root), str(b_root)], check=True)
    b = Project(b_root, remote)
    b.run("dvc", "remote", "add", "--local", "-f", "storage", str(remote))
    b.run("dvc", "pull", "--with-deps", "evaluate@adult")
    assert (b_root / "reports" / "adult" / "metrics.json").read_text() == \
        (a.root / "reports" / "adult" / "metrics.json").read_text()

    # A changes the data: a different sample of rows
    params = a.params()
    params["adult"]["source"]["max_rows"] = 500
    a.write_params(params)
    a.run("dvc", "repro", "evaluate@adult")
    a.commit("smaller sample")
    a.run("dvc", "push")

    b.run("git", "pull", "-q", str(a.root), "main")
    b.run("dvc", "pull", "--with-deps", "evaluate@adult")
    assert "up to date" in b.run("dvc", "status", "evaluate@adult").stdout
    metrics_a = json.loads((a.root / "reports" / "adult" / "metrics.json").read_text())
    # B reproduces from the pulled data: forcing train and evaluate gives the same metrics
    b.run("dvc", "repro", "--force", "--single-item", "train@adult")
    b.run("dvc", "repro", "--force", "--single-item", "evaluate@adult")
    metrics_b = json.loads((b_root / "reports" / "adult" / "metrics.json").read_text())
    assert metrics_b["accuracy"] == metrics_a["accuracy"]
    assert metrics_b["roc_auc"] == metrics_a["roc_auc"]
