"""Real Prefect flow runs against a Prefect server on loopback, on a shrunken copy of the project:
full retrain, no-op, quarantine, retry of a transient failure, and the scheduled deployment."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.conftest import Project, copy_project, free_port, project_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """`prefect server start` on 127.0.0.1, with its SQLite home in a temporary directory."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = project_env({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_UI_ENABLED": "false"})
    log = open(home / "server.log", "w")  # noqa: SIM115 (held by the server process)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        raise RuntimeError(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
        yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """adult only, 600 rows of which 200 are held back for simulated arrivals; a first `dvc repro`."""
    project = copy_project(tmp_path_factory.mktemp("flow"))
    params = project.params()
    params["tasks"] = ["adult"]
    params["adult"]["source"]["holdback_rows"] = 200
    params["retrain"] = {"min_new_samples": 50, "retries": 0, "retry_delay_seconds": 2.0,
                         "stage_retries": {"ingest": 2}}
    project.write_params(params)
    project.commit("flow test params")
    project.run("dvc", "repro")
    project.commit("first model")
    return project


def _champion_version(project: Project) -> str | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{project.root / 'mlflow.db'}")
    try:
        return client.get_model_version_by_alias("torchcycle-adult", "champion").version
    except Exception:
        return None


def test_stages_come_from_dvc_yaml(flow_project: Project) -> None:
    from torchcycle.retraining import task_stages

    stages = task_stages(flow_project.root, "adult")
    assert stages[0] == "ingest@adult"
    assert stages.index("preprocess@adult") < stages.index("train@adult") < stages.index("evaluate@adult")
    assert all(s.endswith("@adult") for s in stages)


def test_no_new_data_finishes_fast_without_retraining(prefect_api: str, flow_project: Project) -> None:
    from pipelines.retrain import retrain

    start = time.perf_counter()
    summary = retrain("adult", root=str(flow_project.root))
    assert summary["status"] == "skipped"
    assert summary["reason"] == "no new data"
    assert summary["stages"] == []
    assert time.perf_counter() - start < 30


def test_bad_batch_is_quarantined_and_training_data_untouched(prefect_api: str, flow_project: Project) -> None:
    from pipelines.retrain import retrain

    root = flow_project.root
    raw_before = (root / "data" / "raw" / "adult" / "train.parquet").read_bytes()
    champion = _champion_version(flow_project)
    zone = root / "data" / "incoming" / "adult"
    zone.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"age": [30, 40], "income": [">50K", "<=50K"]}).to_csv(zone / "partial.csv", index=False)
    summary = retrain("adult", root=str(root))
    assert summary["status"] == "skipped"
    assert len(summary["quarantined"]) == 1
    assert "missing column(s)" in summary["quarantined"][0]["errors"][0]
    folder = root / summary["quarantined"][0]["where"]
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "failed" and (folder / "partial.csv").exists()
    assert not list(zone.glob("*.csv"))
    assert (root / "data" / "raw" / "adult" / "train.parquet").read_bytes() == raw_before
    assert _champion_version(flow_project) == champion


def test_new_batch_is_validated_versioned_checked_for_drift_and_retrained(
    prefect_api: str, flow_project: Project
) -> None:
    from pipelines.retrain import retrain

    root = flow_project.root
    flow_project.run("torchcycle", "simulate-arrival", "adult", "--slices", "2")
    assert list((root / "data" / "incoming" / "adult").glob("arrival-01.csv"))
    before_run = json.loads((root / "models" / "adult" / "mlflow_run.json").read_text())["run_id"]
    summary = retrain("adult", root=str(root))
    assert summary["status"] == "retrained", summary
    assert summary["accepted"] and summary["drift"] is not None
    ran = {s["stage"] for s in summary["stages"] if s["ran"]}
    assert {"ingest@adult", "preprocess@adult", "train@adult", "evaluate@adult"} <= ran
    assert summary["mlflow_run"]["run_id"] != before_run
    assert summary["mlflow_run"]["url"].endswith(summary["mlflow_run"]["run_id"])
    assert (root / "reports" / "adult" / "drift" / "drift.json").exists()
    # the accepted batch is versioned by DVC and now part of the raw data
    assert len(list((root / "data" / "batches" / "adult").glob("*.parquet.dvc"))) == 1
    report = json.loads((root / "data" / "raw" / "adult" / "data_report.json").read_text())
    assert len(report["batches"]) == 1


def test_stage_failing_once_succeeds_on_retry(prefect_api: str, flow_project: Project) -> None:
    """Another process holds DVC's workspace lock when the flow starts: ingest@adult fails with DVC's
    own 'Unable to acquire lock', a real transient failure. The lock is released once Prefect shows the
    stage waiting for its retry, and the retry succeeds."""
    import threading

    from dvc.lock import make_lock
    from pipelines.retrain import retrain

    root = flow_project.root
    tmp = str(root / ".dvc" / "tmp")
    lock = make_lock(os.path.join(tmp, "lock"), tmp_dir=tmp, hardlink_lock=False)
    lock.lock()
    retrying = threading.Event()

    class ReleaseOnRetry(logging.Handler):
        """Prefect logs 'Retry 1/N will start …' when the first attempt failed: free the lock then."""

        def emit(self, record: logging.LogRecord) -> None:
            if "Retry 1/" in record.getMessage() and not retrying.is_set():
                retrying.set()
                lock.unlock()

    handler = ReleaseOnRetry()
    logging.getLogger("prefect.task_runs").addHandler(handler)
    try:
        summary = retrain("adult", force=True, root=str(root))
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(handler)
        if not retrying.is_set():
            lock.unlock()
    assert retrying.is_set(), "the first attempt should have failed on the held lock"
    assert summary["status"] == "retrained"
    assert summary["reason"].startswith("forced")
    assert _flow_task_states(prefect_api, "ingest@adult") >= 2  # the first attempt failed, a retry succeeded


def _flow_task_states(api: str, task_run_name: str) -> int:
    """How many attempts the latest task run with this name took, from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async def attempts() -> int:
        async with get_client() as client:
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[task_run_name])))
            latest = max(runs, key=lambda r: r.created)
            return latest.run_count

    return asyncio.run(attempts())


def test_worse_model_is_registered_as_challenger_but_not_promoted(prefect_api: str, flow_project: Project) -> None:
    from pipelines.retrain import retrain

    root = flow_project.root
    champion = _champion_version(flow_project)
    assert champion is not None
    params_text = flow_project.params_file.read_text()
    params = flow_project.params()
    params["adult"]["train"].update({"epochs": 1, "lr": 1.0e-6})  # barely trained: a worse model
    flow_project.write_params(params)
    try:
        summary = retrain("adult", force=True, root=str(root))
    finally:
        flow_project.params_file.write_text(params_text)
    decision = summary["registry"]["decision"]
    assert summary["status"] == "retrained"
    assert decision["promoted"] is False, decision
    assert decision["challenger_score"] < decision["champion_score"]
    assert summary["registry"]["aliases"]["challenger"] == summary["registry"]["version"] != champion
    assert _champion_version(flow_project) == champion


def test_failing_stage_fails_the_flow_and_keeps_the_last_good_model(prefect_api: str, flow_project: Project) -> None:
    from pipelines.retrain import retrain

    root = flow_project.root
    weights_before = (root / "models" / "adult" / "model.pt").read_bytes()
    champion = _champion_version(flow_project)
    params_text = flow_project.params_file.read_text()
    params = flow_project.params()
    params["adult"]["train"]["lr"] = 1.0e12  # diverges: a permanent failure of train@adult
    params["adult"]["train"]["optimizer"] = "sgd"
    flow_project.write_params(params)
    try:
        with pytest.raises(Exception) as info:
            retrain("adult", force=True, root=str(root))
        assert "train@adult" in str(info.value)
        assert "diverged" in str(info.value) or "lower the learning rate" in str(info.value).lower()
    finally:
        flow_project.params_file.write_text(params_text)
    assert (root / "models" / "adult" / "model.pt").read_bytes() == weights_before
    assert _champion_version(flow_project) == champion


def test_deployment_is_created_with_the_cron_from_params(prefect_api: str, flow_project: Project) -> None:
    import asyncio

    from pipelines.retrain import retrain_all
    from pipelines.schedule import build_deployment
    from prefect.client.orchestration import get_client

    params = flow_project.params()
    params["retrain"]["cron"] = "15 4 * * 1"
    flow_project.write_params(params)
    deployment = build_deployment(flow_project.root)
    deployment_id = deployment.apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    stored = asyncio.run(read())
    assert stored.name == params["retrain"].get("deployment", "nightly-retrain")
    assert stored.schedules and stored.schedules[0].schedule.cron == "15 4 * * 1"
    assert stored.parameters.get("root") == str(flow_project.root)
    assert retrain_all.name == "retrain-all"
    os.environ.pop("TORCHCYCLE_ROOT", None)
