"""Prefect flows for retraining: `retrain(task)` and `retrain_all()`.

The flow's Prefect tasks are the task's DVC stages, read from dvc.yaml (add a stage there and it
appears here); each runs through `dvc repro --single-item`, so dvc.lock and the DVC cache stay the
record of what ran and unchanged stages are skipped. Before that, the drop zone is checked: bad batches
are quarantined, good ones are versioned and checked for drift, and the thresholds in params.yaml
(`retrain:`) decide whether retraining is worth it.

Every DVC command goes through one workspace lock (`retraining.dvc_lock`), so a data check's `dvc add`
waits for another task's running stage instead of failing on DVC's own lock. In `retrain_all` a task whose
check or stages fail fails alone: the other tasks go on, and the flow then fails with `TasksFailed`,
naming each failed task, the step and the error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from torchcycle import retraining as R
from torchcycle.config import Params, load_params

PROJECT_ROOT = Path(os.environ.get("TORCHCYCLE_ROOT", Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def _pipeline_lock(root: Path) -> Iterator[None]:
    """DVC allows one `repro` per workspace; concurrent flows queue here instead of failing."""
    from filelock import FileLock

    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / "torchcycle-retrain.lock")):
        yield


@task(name="check new data", task_run_name="check new data: {task_name}")
def check_new_data(root: Path, task_name: str, force: bool = False) -> dict[str, Any]:
    """Drop zone → validation → quarantine or versioned batch → drift → retrain decision."""
    logger = get_run_logger()
    params = load_params(root / "params.yaml")
    intake = R.take_in_arrivals(root, params, task_name)
    for left in intake.recovered:
        logger.warning("versioned batch %s, left unversioned by an earlier check", left)
    for bad in intake.quarantined:
        logger.warning("quarantined %s → %s: %s", bad["batch"], bad["where"], "; ".join(bad["errors"]))
    pending, count = R.pending_samples(root, params, task_name)
    drift = None
    if pending:
        drift = R.drift_report(root, params, task_name, pending)
        where = R.save_drift_report(root, task_name, drift)
        _log_drift(root, params, task_name, drift, where)
        logger.info("drift: %d of %d columns drifted", len(drift["drifted_columns"]), len(drift["columns"]))
    go, reason = R.should_retrain(params, count, drift)
    if force and not go:
        go, reason = True, f"forced ({reason})"
    logger.info("%s: %s", "retrain" if go else "no retrain", reason)
    return {
        "task": task_name, "retrain": go, "reason": reason, "accepted": intake.accepted, "recovered": intake.recovered,
        "quarantined": intake.quarantined, "pending_batches": pending, "pending_samples": count,
        "drift": None if drift is None else {
            "drift_share": drift["drift_share"], "drifted_columns": drift["drifted_columns"],
            "report": f"reports/{task_name}/drift/drift.json",
        },
    }  # fmt: skip


def _log_drift(root: Path, params: Params, task_name: str, drift: dict, where: Path) -> None:
    """A drift check is an MLflow run of its own in the task's experiment (tag kind=drift)."""
    import mlflow

    from torchcycle.tracking import mlflow_run

    with mlflow_run.start_run(params, task_name, root, {"kind": "drift", "task": task_name}):
        mlflow.log_metrics({"drift_share": drift["drift_share"], "drifted_columns": len(drift["drifted_columns"]),
                            "batch_rows": drift["batch_rows"]})
        mlflow.log_artifacts(str(where), artifact_path="drift")


@task(name="stage")
def run_stage(root: Path, stage: str) -> dict[str, Any]:
    result = R.run_stage(root, stage)
    get_run_logger().info("%s: %s in %.1fs", stage, "ran" if result["ran"] else "unchanged, skipped", result["seconds"])
    return result


def _stage_task(params: Params, stage: str):
    base = stage.split("@")[0]
    retries = params.retrain.stage_retries.get(base, params.retrain.retries)
    delays = exponential_backoff(backoff_factor=params.retrain.retry_delay_seconds)(retries) if retries else 0
    return run_stage.with_options(name=stage, task_run_name=stage, retries=retries, retry_delay_seconds=delays)


def execute_stages(root: Path, task_name: str) -> list[dict[str, Any]]:
    """Run the task's stages in DAG order; on failure put the last good outputs back and re-raise.

    When the rollback itself fails, `RollbackFailed` is raised instead, with the stage's error and DVC's."""
    params = load_params(root / "params.yaml")
    stages = R.task_stages(root, task_name)
    with _pipeline_lock(root):
        snapshot = R.Snapshot.take(root)
        results = []
        try:
            for stage in stages:
                results.append(_stage_task(params, stage)(root, stage))
        except BaseException as failure:
            try:
                snapshot.restore(stages)
            except R.RollbackFailed as rollback:
                get_run_logger().error("%s", rollback)
                raise R.RollbackFailed(f"{failure}\n\n{rollback}") from failure
            get_run_logger().info("rolled back %s to the last good outputs", task_name)
            raise
    return results


def _summarise(root: Path, check: dict[str, Any], stages: list[dict[str, Any]] | None) -> dict[str, Any]:
    task_name = check["task"]
    summary = {**check, "status": "retrained" if stages is not None else "skipped", "stages": stages or []}
    if stages is not None:
        summary["mlflow_run"] = R.mlflow_run_link(root, task_name)
        summary["registry"] = R.registry_decision(root, task_name)
    return summary


def _failed(task_name: str, step: str, exc: BaseException, check: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a task that failed in `step` ("check new data" or "stages")."""
    base = check or {"task": task_name, "retrain": False, "reason": f"{step} failed", "accepted": [],
                     "recovered": [], "quarantined": [], "pending_batches": [], "pending_samples": 0, "drift": None}
    return {**base, "status": "failed", "failed_step": step, "error": f"{type(exc).__name__}: {exc}",
            "rolled_back": not isinstance(exc, R.RollbackFailed) if step == "stages" else None, "stages": []}


def _publish(summary: dict[str, Any]) -> None:
    lines = [f"# Retraining `{summary['task']}`: {summary['status']}", "", f"Decision: {summary['reason']}", ""]
    if summary["status"] == "failed":
        lines += [f"Failed in {summary['failed_step']}:", "", "```", summary["error"], "```", ""]
    if summary["quarantined"]:
        lines += ["Quarantined batches:"] + [f"- {q['batch']}: {'; '.join(q['errors'])}" for q in summary["quarantined"]]
    if summary.get("drift"):
        lines.append(f"Drift share {summary['drift']['drift_share']:.2f}: {summary['drift']['drifted_columns']}")
    for s in summary["stages"]:
        lines.append(f"- {s['stage']}: {'ran' if s['ran'] else 'skipped'} ({s['seconds']} s)")
    if summary.get("mlflow_run"):
        lines.append(f"\nMLflow run: [{summary['mlflow_run']['run_id']}]({summary['mlflow_run']['url']})")
    if summary.get("registry"):
        lines.append(f"\nRegistry: `{summary['registry']}`")
    create_markdown_artifact("\n".join(lines), key=f"retrain-{summary['task']}".lower().replace("_", "-"))


@flow(name="retrain", flow_run_name="retrain-{task_name}")
def retrain(task_name: str, force: bool = False, root: str | None = None) -> dict[str, Any]:
    """Retrain one task when new data or drift warrant it (or when forced)."""
    project = Path(root) if root else PROJECT_ROOT
    check = check_new_data(project, task_name, force)
    stages = execute_stages(project, task_name) if check["retrain"] else None
    summary = _summarise(project, check, stages)
    _publish(summary)
    return summary


@flow(name="retrain-all", task_runner=ThreadPoolTaskRunner(max_workers=4))
def retrain_all(force: bool = False, root: str | None = None) -> dict[str, dict[str, Any]]:
    """Every task in params.yaml: data checks run in parallel; DVC stages run one task at a time
    (DVC holds a workspace lock, and training already uses every core)."""
    project = Path(root) if root else PROJECT_ROOT
    params = load_params(project / "params.yaml")
    futures = {t: check_new_data.submit(project, t, force) for t in params.tasks}
    summaries: dict[str, dict[str, Any]] = {}
    for task_name, future in futures.items():
        # a task that fails (its check or its stages) fails alone: keep going, fail the flow at the end
        try:
            check = future.result()
        except Exception as exc:
            summaries[task_name] = _failed(task_name, "check new data", exc)
        else:
            try:
                stages = execute_stages(project, task_name) if check["retrain"] else None
            except Exception as exc:
                summaries[task_name] = _failed(task_name, "stages", exc, check)
            else:
                summaries[task_name] = _summarise(project, check, stages)
        _publish(summaries[task_name])
    failures = {t: {"step": s["failed_step"], "error": s["error"]} for t, s in summaries.items()
                if s["status"] == "failed"}
    if failures:
        listed = "\n".join(f"- {t} ({f['step']}): {f['error']}" for t, f in failures.items())
        raise R.TasksFailed(f"retraining failed for {len(failures)} of {len(summaries)} task(s):\n{listed}",
                            failures, summaries)
    return summaries


if __name__ == "__main__":
    import sys

    print(retrain(sys.argv[1]) if len(sys.argv) > 1 else retrain_all())
