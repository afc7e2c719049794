"""End to end: the real `dvc repro` on both built-in tasks (shrunken), the MLflow runs it leaves in the
SQLite store, a no-op second run, granular re-runs, experiments, and a DVC remote round trip."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from tests.integration.conftest import Project

pytestmark = pytest.mark.slow

METRIC_KEYS = {"accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"}


@pytest.fixture(scope="module")
def reproduced(project: Project) -> Project:
    proc = project.run("dvc", "repro")
    assert "Running stage 'evaluate@mnist'" in proc.stdout
    project.commit("first run")
    return project


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_stages_write_their_outputs(reproduced: Project) -> None:
    root = reproduced.root
    for task in ("adult", "mnist"):
        metrics = json.loads((root / "reports" / task / "metrics.json").read_text())
        assert METRIC_KEYS <= metrics.keys()
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert set(metrics["per_class"]) == set(json.loads((root / "models" / task / "model_config.json")
                                                           .read_text())["classes"])
        assert len(metrics["confusion_matrix"]) == len(metrics["per_class"])
        for name in ("roc", "precision_recall", "confusion", "calibration"):
            assert (root / "reports" / task / "evaluation" / f"{name}.csv").stat().st_size > 0
        for name in ("roc.png", "confusion_matrix.png", "learning_curves.png"):
            assert (root / "reports" / task / "figures" / name).read_bytes()[:4] == b"\x89PNG"
        validation = json.loads((root / "reports" / task / "validation.json").read_text())
        assert validation["status"] == "passed"
        state = json.loads((root / "data" / "processed" / task / "preprocessor.json").read_text())
        assert state["classes"]
    assert (root / "data" / "raw" / "adult" / "test.parquet").exists()
    manifest = (root / "data" / "raw" / "mnist" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 300
    # the lock file versions every stage output
    lock = (root / "dvc.lock").read_text()
    for stage in ("ingest@adult", "preprocess@mnist", "train@adult", "evaluate@mnist"):
        assert stage in lock


def test_mlflow_holds_one_run_per_task_with_everything(reproduced: Project) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reproduced.root / 'mlflow.db'}")
    for task in ("adult", "mnist"):
        exp = client.get_experiment_by_name(f"torchcycle-{task}")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1
        run = runs[0]
        recorded = json.loads((reproduced.root / "models" / task / "mlflow_run.json").read_text())
        assert run.info.run_id == recorded["run_id"]
        assert run.data.params["train.epochs"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
        assert "test_accuracy" in run.data.metrics and "test_roc_auc" in run.data.metrics
        assert len(run.data.tags["git_commit"]) == 40
        assert run.data.tags["data_version_raw"] and run.data.tags["data_version_processed"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert "figures/roc.png" in artifacts


def test_second_repro_is_a_no_op(reproduced: Project) -> None:
    before = _md5(reproduced.root / "models" / "adult" / "model.pt")
    proc = reproduced.run("dvc", "repro")
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout
    assert _md5(reproduced.root / "models" / "adult" / "model.pt") == before


def test_changing_one_task_learning_rate_reruns_only_its_training(reproduced: Project) -> None:
    params = reproduced.params()
    original = params["adult"]["train"]["lr"]
    params["adult"]["train"]["lr"] = original * 2
    reproduced.write_params(params)
    try:
        status = json.loads(reproduced.run("dvc", "status", "--json").stdout)
        assert set(status) == {"train@adult"}
    finally:
        params["adult"]["train"]["lr"] = original
        reproduced.write_params(params)


def test_experiments_run_with_set_params_and_show(reproduced: Project) -> None:
    reproduced.run("dvc", "exp", "run", "-S", "adult.train.lr=0.003", "-n", "faster-lr")
    shown = reproduced.run("dvc", "exp", "show", "--json").stdout
    assert "faster-lr" in shown
    assert "0.003" in shown
    # the workspace now holds the experiment's result; the metrics file reflects it
    metrics = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "reports/adult/metrics.json" in metrics


def test_push_then_pull_into_a_fresh_clone_restores_data(reproduced: Project, tmp_path) -> None:
    reproduced.run("git", "checkout", "-q", "--", ".")
    reproduced.run("dvc", "checkout", "--force")
    reproduced.commit("state to push")
    reproduced.run("dvc", "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(reproduced.root), str(clone)], check=True)
    reproduced.run("dvc", "remote", "add", "--local", "-f", "storage", str(reproduced.remote), cwd=clone)
    reproduced.run("dvc", "pull", cwd=clone)
    for rel in ("data/raw/adult/train.parquet", "data/processed/mnist/train.npz", "models/adult/model.pt"):
        assert _md5(clone / rel) == _md5(reproduced.root / rel), rel
    status = reproduced.run("dvc", "status", cwd=clone).stdout
    assert "up to date" in status
