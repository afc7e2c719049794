"""The steps of a retraining run, free of any orchestrator: read the task's stages from dvc.yaml, run
one stage through DVC, take in new batches, check drift, decide whether to retrain, roll back on failure.
The Prefect flows in pipelines/ wrap these functions as tasks; nothing here imports Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- the DAG, from dvc.yaml
def task_stages(root: Path, task: str) -> list[str]:
    """The task's stages (`name@task`) in the order DVC would run them, read from dvc.yaml by DVC."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        order = [s.name for s in reversed(list(nx.topological_sort(graph))) if getattr(s, "name", None)]
    return [name for name in order if name.endswith(f"@{task}")]


def _dvc() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.exists() else ["dvc"]


def run_dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([*_dvc(), *args], cwd=root, env=env, capture_output=True, text=True)


def run_stage(root: Path, stage: str) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: DVC skips it when nothing it depends on changed."""
    start = time.perf_counter()
    proc = run_dvc(root, "repro", "--single-item", stage)
    seconds = round(time.perf_counter() - start, 2)
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage} failed:\n{_error_lines(proc)}")
    ran = f"Running stage '{stage}'" in proc.stdout
    return {"stage": stage, "ran": ran, "seconds": seconds}


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
        return cls(root, lock.read_text() if lock.exists() else None)

    def restore(self, stages: list[str]) -> None:
        if self.lock is None:
            return
        (self.root / "dvc.lock").write_text(self.lock)
        run_dvc(self.root, "checkout", "--force", *stages)


# --------------------------------------------------------------------------- new data
@dataclass
class Intake:
    accepted: list[str] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def take_in_arrivals(root: Path, params: Params, task: str) -> Intake:
    """Validate every batch in the drop zone: good ones join data/batches (a new DVC version), bad ones
    go to quarantine with their report. The training data is never touched by a bad batch."""
    cfg = params.task(task)
    intake = Intake()
    arrivals = B.find_arrivals(root, task, cfg)
    if not arrivals:
        return intake
    handler = kind_of(cfg).new_batches()
    for arrival in arrivals:
        report, batch = handler.validate(arrival, cfg, root)
        ok = batch is not None and not report.errors
        stored = handler.accept(root, arrival, batch) if ok else None
        if ok:
            proc = run_dvc(root, "add", str(stored.relative_to(root)))
            if proc.returncode != 0:
                raise StageFailed(f"could not version batch {stored}: {_error_lines(proc)}")
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
