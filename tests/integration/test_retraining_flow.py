"""Real Prefect flow runs against a Prefect server on loopback, on a shrunken copy of the project:
full retrain, no-op, quarantine, retry of a transient failure, rollback (and a rollback DVC cannot do),
`retrain_all` over two tasks while DVC is busy, and the scheduled deployment."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import Project, copy_project, free_port, project_env

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
    """adult (600 rows, 200 held back for simulated arrivals) and diamonds (1500 rows, 300 held back);
    a first `dvc repro`."""
    project = copy_project(tmp_path_factory.mktemp("flow"))
    params = project.params()
    params["tasks"] = ["adult", "diamonds"]
    params["adult"]["source"]["holdback_rows"] = 200
    params["diamonds"]["source"]["holdback_rows"] = 300
    params["retrain"] = {"min_new_samples": 50, "retries": 0, "retry_delay_seconds": 2.0,
                         "stage_retries": {"ingest": 2}}
    project.write_params(params)
    project.commit("flow test params")
    project.run("dvc", "repro")
    project.commit("first model")
    return project


def _registry(project: Project):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}",
                        registry_uri=f"sqlite:///{project.root / 'mlflow.db'}")


def _champion_version(project: Project) -> str | None:
    try:
        return _registry(project).get_model_version_by_alias("torchcycle-adult", "champion").version
    except Exception:
        return None


def _versions(project: Project, task: str) -> set[str]:
    """Every registered version of the task's model."""
    return {str(v.version) for v in _registry(project).search_model_versions(f"name='torchcycle-{task}'")}


def _digest(folder: Path) -> dict[str, str]:
    """Each file under `folder` and the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _diverging_train_after_a_new_scaling(project: Project) -> None:
    """preprocess@adult reruns and rewrites data/processed/adult (another scaling); train@adult then
    diverges: a permanent failure that comes after a stage that changed its outputs."""
    params = project.params()
    assert params["adult"]["preprocess"]["scaling"] != "minmax"
    params["adult"]["preprocess"]["scaling"] = "minmax"
    params["adult"]["train"]["lr"] = 1.0e12
    params["adult"]["train"]["optimizer"] = "sgd"
    project.write_params(params)


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


def test_failing_stage_fails_the_flow_and_restores_the_outputs_of_the_stages_before_it(
    prefect_api: str, flow_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """preprocess@adult reruns and changes data/processed/adult, then train@adult fails: the rollback puts
    the processed data of the last good run back (and dvc.lock), so the last good model still matches
    the data it was trained on. (The model alone proves nothing: train writes it atomically on success.)"""
    from pipelines.retrain import retrain

    from torchcycle import retraining as R

    root = flow_project.root
    processed = root / "data" / "processed" / "adult"
    processed_before, lock_before = _digest(processed), (root / "dvc.lock").read_text()
    weights_before = (root / "models" / "adult" / "model.pt").read_bytes()
    champion = _champion_version(flow_project)
    after_preprocess: dict[str, str] = {}
    real_stage = R.run_stage

    def run_stage(root_: Path, stage: str) -> dict:
        result = real_stage(root_, stage)
        if stage == "preprocess@adult":
            after_preprocess.update(_digest(processed))
        return result

    monkeypatch.setattr(R, "run_stage", run_stage)
    params_text = flow_project.params_file.read_text()
    _diverging_train_after_a_new_scaling(flow_project)
    try:
        with pytest.raises(Exception) as info:
            retrain("adult", force=True, root=str(root))
        assert "train@adult" in str(info.value)
        assert "diverged" in str(info.value) or "lower the learning rate" in str(info.value).lower()
        assert "rollback failed" not in str(info.value)
    finally:
        flow_project.params_file.write_text(params_text)
    assert after_preprocess and after_preprocess != processed_before, "preprocess@adult should have changed its outputs"
    assert _digest(processed) == processed_before
    assert (root / "dvc.lock").read_text() == lock_before
    assert (root / "models" / "adult" / "model.pt").read_bytes() == weights_before
    assert _champion_version(flow_project) == champion
    # (only preprocess@adult: earlier tests leave train@adult's params different from its dvc.lock entry)
    status = flow_project.run("dvc", "status", "preprocess@adult").stdout
    assert "up to date" in status, status


def _hide_cache_objects(project: Project, stage: str, out: str, aside: Path) -> list[tuple[Path, Path]]:
    """Move the cache objects of one directory output of the last good run out of the DVC cache."""
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    (entry,) = [o for o in lock["stages"][stage]["outs"] if o["path"] == out]
    cache = project.root / ".dvc" / "cache" / "files" / "md5"
    listing = cache / entry["md5"][:2] / entry["md5"][2:]
    objects = [listing] + [cache / f["md5"][:2] / f["md5"][2:] for f in json.loads(listing.read_text())]
    aside.mkdir(parents=True, exist_ok=True)
    moved = []
    for i, obj in enumerate(objects):
        if obj.exists():
            moved.append((obj, aside / str(i)))
            shutil.move(obj, aside / str(i))
    return moved


def test_a_rollback_dvc_cannot_do_is_reported_with_dvcs_error(
    prefect_api: str, flow_project: Project, tmp_path: Path
) -> None:
    """As above, but the cache objects of the last good processed data are gone, so `dvc checkout` cannot
    put them back: the flow fails with RollbackFailed carrying the stage's error and DVC's, instead of
    reporting the rollback as done."""
    from pipelines.retrain import retrain

    from torchcycle.retraining import RollbackFailed

    root = flow_project.root
    processed = root / "data" / "processed" / "adult"
    processed_before = _digest(processed)
    moved = _hide_cache_objects(flow_project, "preprocess@adult", "data/processed/adult", tmp_path / "aside")
    params_text = flow_project.params_file.read_text()
    _diverging_train_after_a_new_scaling(flow_project)
    try:
        with pytest.raises(RollbackFailed) as info:
            retrain("adult", force=True, root=str(root))
    finally:
        flow_project.params_file.write_text(params_text)
        for obj, hidden in moved:
            obj.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(hidden, obj)
    message = str(info.value)
    assert "stage train@adult failed" in message  # the failure that started the rollback
    assert "rollback failed" in message and "dvc checkout --force" in message
    assert "Checkout failed for following targets" in message and "data/processed/adult" in message  # DVC's own
    assert _digest(processed) != processed_before  # the workspace really is not rolled back
    flow_project.run("dvc", "checkout", "--force", "preprocess@adult")  # with the cache back, it can be
    assert _digest(processed) == processed_before


def test_a_task_whose_check_fails_fails_alone_and_its_batch_is_versioned_by_the_next_check(
    prefect_api: str, flow_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `dvc` started outside torchcycle holds DVC's lock, so adult's `dvc add` fails (after its retries):
    adult fails alone, diamonds is still checked, and the flow names the task, the step and DVC's error.
    The batch adult accepted stays in data/batches without its .dvc file; the next check versions it."""
    from dvc.lock import make_lock
    from pipelines.retrain import retrain_all

    from torchcycle import retraining as R
    from torchcycle.config import load_params
    from torchcycle.data import batches as B

    root = flow_project.root
    monkeypatch.setattr(R, "LOCK_RETRY_DELAYS", (0.5,))
    zone = root / "data" / "incoming" / "adult"
    zone.mkdir(parents=True, exist_ok=True)
    pd.read_parquet(root / "data" / "raw" / "adult" / "holdback.parquet").tail(60).to_csv(zone / "late.csv", index=False)
    tmp = str(root / ".dvc" / "tmp")
    lock = make_lock(os.path.join(tmp, "lock"), tmp_dir=tmp, hardlink_lock=False)
    lock.lock()
    try:
        with pytest.raises(R.TasksFailed) as info:
            retrain_all(root=str(root))
    finally:
        lock.unlock()
    failed = info.value
    assert list(failed.failures) == ["adult"], failed.failures
    assert failed.failures["adult"]["step"] == "check new data"
    assert "could not version batch" in failed.failures["adult"]["error"]
    assert "Unable to acquire lock" in failed.failures["adult"]["error"]
    assert "adult (check new data)" in str(failed) and "Unable to acquire lock" in str(failed)
    assert failed.summaries["adult"]["status"] == "failed"
    assert failed.summaries["diamonds"]["status"] == "skipped"  # checked, nothing new
    (left,) = B.unversioned_batches(root, "adult")
    assert not (zone / "late.csv").exists()

    intake = R.take_in_arrivals(root, load_params(root / "params.yaml"), "adult")
    assert intake.recovered == [B.batch_id(left)] and intake.accepted == []
    assert left.with_name(f"{left.name}.dvc").exists() and not B.unversioned_batches(root, "adult")
    status = flow_project.run("dvc", "status", str(left.relative_to(root)) + ".dvc").stdout
    assert "up to date" in status, status


def test_retrain_all_versions_and_retrains_two_tasks_while_a_stage_holds_dvc(
    prefect_api: str, flow_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New batches for adult and diamonds. diamonds' data check is held until train@adult is running, so
    its `dvc add` comes while adult's `dvc repro` holds DVC's lock (the race that failed `dvc add` with
    "Unable to acquire lock"): both batches end up versioned, both tasks retrained and registered."""
    import threading

    from pipelines.retrain import retrain_all

    from torchcycle import retraining as R
    from torchcycle.data import batches as B

    root = flow_project.root
    tasks = ("adult", "diamonds")
    for task in tasks:
        flow_project.run("torchcycle", "simulate-arrival", task, "--slices", "2")
        assert list((root / "data" / "incoming" / task).glob("arrival-*.csv")), task
    versions_before = {t: _versions(flow_project, t) for t in tasks}
    adult_training = threading.Event()
    waited: dict[str, bool] = {}
    real_stage, real_take = R.run_stage, R.take_in_arrivals

    def run_stage(root_: Path, stage: str) -> dict:
        if stage == "train@adult":
            threading.Timer(2.0, adult_training.set).start()  # `dvc repro` has started by then
        return real_stage(root_, stage)

    def take_in_arrivals(root_: Path, params, task: str):
        if task == "diamonds":
            waited[task] = adult_training.wait(timeout=600)
        return real_take(root_, params, task)

    monkeypatch.setattr(R, "run_stage", run_stage)
    monkeypatch.setattr(R, "take_in_arrivals", take_in_arrivals)
    summaries = retrain_all(root=str(root))
    assert waited == {"diamonds": True}
    assert {t: s["status"] for t, s in summaries.items()} == dict.fromkeys(tasks, "retrained"), summaries
    for task in tasks:
        assert summaries[task]["accepted"], task
        stored = B.stored_batches(root, task)
        dvc_files = sorted((root / "data" / "batches" / task).glob("*.dvc"))
        assert stored and not B.unversioned_batches(root, task) and len(dvc_files) == len(stored)
        status = flow_project.run("dvc", "status", *(str(f.relative_to(root)) for f in dvc_files)).stdout
        assert "up to date" in status, status
        assert B.pending_batches(root, task) == []  # ingest took every batch in
        new_versions = _versions(flow_project, task) - versions_before[task]
        assert str(summaries[task]["registry"]["version"]) in new_versions, (task, new_versions)


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
