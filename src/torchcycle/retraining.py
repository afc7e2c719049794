"""The steps of a retraining run, free of any orchestrator: read the task's stages from dvc.yaml, run
one stage through DVC, take in new batches, check drift, decide whether to retrain, roll back on failure.
The Prefect flows in pipelines/ wrap these functions as tasks; nothing here imports Prefect."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchcycle.atomic import atomic_dir, read_json, write_json
from torchcycle.config import Params
from torchcycle.data import batches as B
from torchcycle.errors import TorchcycleError
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths


class StageFailed(TorchcycleError):
    """A DVC stage exited non-zero; the message carries the stage's own error output."""


class RollbackFailed(TorchcycleError):
    """`dvc checkout` could not put the last good outputs back after a failed run; the message carries
    DVC's own error output. The workspace may hold outputs of the failed run."""


class TasksFailed(StageFailed):
    """Some tasks of a multi-task run failed (their data check or their stages); the others went on.

    `failures` maps each failed task to {"step", "error"}; `summaries` holds every task's summary,
    the failed ones with status "failed"."""

    def __init__(self, message: str, failures: dict[str, dict[str, str]] | None = None,
                 summaries: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or {}
        self.summaries = summaries or {}

    def __reduce__(self):  # survives pickling (Prefect may persist a flow's exception)
        return (type(self), (str(self), self.failures, self.summaries))


# --------------------------------------------------------------------------- the DAG, from dvc.yaml
def task_stages(root: Path, task: str) -> list[str]:
    """The task's stages (`name@task`) in the order DVC would run them, read from dvc.yaml by DVC."""
    import networkx as nx
    from dvc.repo import Repo

    with dvc_lock(root), Repo(str(root)) as repo:  # reads .dvc files that a concurrent `dvc add` writes
        graph = repo.index.graph
        order = [s.name for s in reversed(list(nx.topological_sort(graph))) if getattr(s, "name", None)]
    return [name for name in order if name.endswith(f"@{task}")]


# --------------------------------------------------------------------------- one DVC command at a time
# DVC holds one lock per workspace and gives up after a few seconds when another DVC command holds it
# ("Unable to acquire lock"). A training stage holds it for minutes, so the flows' own DVC commands
# (parallel data checks, stages, rollbacks, other flows) queue on one file lock instead: flock(2) on a
# file under .dvc/tmp, which excludes other threads (each opens its own descriptor) and other processes,
# and is released by the kernel if a process dies. Retrying on DVC's error alone would need a back-off
# longer than the longest stage. Only DVC commands started outside torchcycle (a `dvc` typed in a shell)
# can still hold DVC's lock: add and checkout retry those briefly (`retry_on_lock`).
DVC_LOCK_FILE = "torchcycle-dvc.lock"
DVC_LOCK_ERROR = "Unable to acquire lock"
LOCK_RETRY_DELAYS: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
_held = threading.local()


@contextlib.contextmanager
def dvc_lock(root: Path) -> Iterator[None]:
    """Hold the workspace's DVC lock (reentrant within a thread; blocks until other holders finish)."""
    path = Path(root).resolve() / ".dvc" / "tmp" / DVC_LOCK_FILE
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    key = str(path)
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dvc() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else ["dvc"]


def run_dvc(root: Path, *args: str, retry_on_lock: bool = False) -> subprocess.CompletedProcess:
    """One `dvc` command under the workspace's DVC lock; `retry_on_lock`: when a DVC process outside
    torchcycle holds DVC's own lock, try again after LOCK_RETRY_DELAYS (not holding ours meanwhile)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for delay in (*(LOCK_RETRY_DELAYS if retry_on_lock else ()), None):
        with dvc_lock(root):
            proc = subprocess.run([*_dvc(), *args], cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode == 0 or delay is None or not is_lock_error(proc):
            return proc
        time.sleep(delay)
    raise AssertionError("unreachable")


def is_lock_error(proc: subprocess.CompletedProcess) -> bool:
    return DVC_LOCK_ERROR in (proc.stderr or "") + (proc.stdout or "")


def run_stage(root: Path, stage: str) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: DVC skips it when nothing it depends on changed."""
    start = time.perf_counter()
    proc = run_dvc(root, "repro", "--single-item", stage)
    seconds = round(time.perf_counter() - start, 2)
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage} failed:\n{_error_lines(proc)}")
    ran = f"Running stage '{stage}'" in proc.stdout
    return {"stage": stage, "ran": ran, "seconds": seconds}


def _dvc_output(proc: subprocess.CompletedProcess, last: int = 20) -> str:
    """DVC's own report, verbatim (its error names the targets on the lines after ERROR)."""
    lines = [ln for ln in ((proc.stderr or "") + "\n" + (proc.stdout or "")).splitlines() if ln.strip()]
    return "\n".join(lines[-last:])


def _error_lines(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or "") + "\n" + (proc.stdout or "")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "  - ")) or "Error" in ln]
    return "\n".join(errors or lines[-15:])


@dataclass
class Snapshot:
    """dvc.lock as it was before a run: restoring it and checking out puts the last good outputs back."""

    root: Path
    lock: str | None

    @classmethod
    def take(cls, root: Path) -> Snapshot:
        lock = root / "dvc.lock"
        with dvc_lock(root):
            return cls(root, lock.read_text() if lock.exists() else None)

    def restore(self, stages: list[str]) -> None:
        """Put dvc.lock back and check the stages' outputs out from the cache; RollbackFailed (with DVC's
        error output) when DVC cannot, e.g. a cache object is missing or an output is not writable."""
        if self.lock is None:
            return
        with dvc_lock(self.root):
            (self.root / "dvc.lock").write_text(self.lock)
            proc = run_dvc(self.root, "checkout", "--force", *stages, retry_on_lock=True)
        if proc.returncode != 0:
            raise RollbackFailed(
                f"rollback failed: `dvc checkout --force {' '.join(stages)}` exited {proc.returncode}, so the "
                f"last good outputs are not all back (dvc.lock is):\n{_dvc_output(proc)}\n"
                "Fix the cause (e.g. `dvc pull` missing cache objects, or make the outputs writable) and run "
                "`dvc checkout --force` before trusting the workspace."
            )


# --------------------------------------------------------------------------- new data
@dataclass
class Intake:
    accepted: list[str] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)  # stored earlier but left unversioned, versioned now


def _version(root: Path, stored: Path) -> None:
    """`dvc add` an accepted batch. On failure the batch stays in data/batches without its .dvc file and
    the next check versions it (B.unversioned_batches) before anything else."""
    proc = run_dvc(root, "add", str(stored.relative_to(root)), retry_on_lock=True)
    if proc.returncode != 0:
        raise StageFailed(f"could not version batch {stored.relative_to(root)} with `dvc add`; the next check "
                          f"retries it:\n{_error_lines(proc)}")


def take_in_arrivals(root: Path, params: Params, task: str) -> Intake:
    """Validate every batch in the drop zone: good ones join data/batches (a new DVC version), bad ones
    go to quarantine with their report. The training data is never touched by a bad batch."""
    cfg = params.task(task)
    intake = Intake()
    for left in B.unversioned_batches(root, task):  # accepted by a check that failed before `dvc add`
        _version(root, left)
        intake.recovered.append(B.batch_id(left))
    arrivals = B.find_arrivals(root, task, cfg)
    if not arrivals:
        return intake
    handler = kind_of(cfg).new_batches()
    for arrival in arrivals:
        report, batch = handler.validate(arrival, cfg, root)
        ok = batch is not None and not report.errors
        stored = handler.accept(root, arrival, batch) if ok else None
        if ok:
            _version(root, stored)
            intake.accepted.append(arrival.batch_id)
        else:
            where = B.quarantine(root, arrival, report)
            intake.quarantined.append({"batch": arrival.batch_id, "where": str(where.relative_to(root)),
                                       "errors": report.errors})
    return intake


def pending_samples(root: Path, params: Params, task: str) -> tuple[list[str], int]:
    """Accepted batches the current model has not seen, and how many rows/images they hold."""
    handler = kind_of(params.task(task)).new_batches()
    pending = B.pending_batches(root, task)
    return [B.batch_id(p) for p in pending], sum(handler.count(p) for p in pending)


def drift_report(root: Path, params: Params, task: str, pending: list[str]) -> dict[str, Any]:
    """Compare the pending batches with the training rows/images the current model was trained on."""
    cfg = params.task(task)
    paths = [p for p in B.stored_batches(root, task) if B.batch_id(p) in set(pending)]
    report = kind_of(cfg).new_batches().drift(root, task, cfg, paths, params.retrain)
    report["batches"] = pending
    report["task"] = task
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return report


def save_drift_report(root: Path, task: str, report: dict[str, Any]) -> Path:
    """reports/<task>/drift/ holds the latest report (JSON + PNG), which the dashboard shows."""
    from torchcycle.monitoring.drift import drift_figure

    target = TaskPaths(task, root).drift
    with atomic_dir(target) as tmp:
        write_json(tmp / "drift.json", report)
        drift_figure(report).savefig(tmp / "drift.png", dpi=110, bbox_inches="tight")
    return target


def should_retrain(params: Params, pending_count: int, drift: dict[str, Any] | None) -> tuple[bool, str]:
    r = params.retrain
    if drift is not None and drift["drift_share"] >= r.drift_share:
        return True, f"drift in {len(drift['drifted_columns'])} column(s) (share {drift['drift_share']:.2f} >= {r.drift_share})"
    if pending_count >= r.min_new_samples:
        return True, f"{pending_count} new rows/images >= {r.min_new_samples}"
    if pending_count:
        return False, f"{pending_count} new rows/images < {r.min_new_samples} and no drift: waiting for more"
    return False, "no new data"


def mlflow_run_link(root: Path, task: str) -> dict[str, str] | None:
    info_file = TaskPaths(task, root).run_info
    if not info_file.exists():
        return None
    info = read_json(info_file)
    ui = os.environ.get("TORCHCYCLE_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")
    return {"run_id": info["run_id"],
            "url": f"{ui}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"}


def registry_decision(root: Path, task: str) -> dict[str, Any] | None:
    file = TaskPaths(task, root).registry_report
    return read_json(file) if file.exists() else None
