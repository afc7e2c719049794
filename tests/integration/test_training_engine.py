"""The train stage for real, in a scratch project driven through the `torchcycle` command line: resume
after a SIGKILL mid-epoch ends bit-identical to an uninterrupted run, torchrun with 2 gloo processes
matches a single process, a diverging run fails cleanly, and the overfit check and the search work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import BIN, REPO, project_env

pytestmark = pytest.mark.slow

DDP_TOLERANCE = 1e-4  # max |difference| of per-epoch val loss and of every weight, 2 gloo ranks vs 1 process


def sh(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=root, env=project_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Params of the repository with adult only, shrunk; raw and processed data made by the real stages."""
    root = tmp_path_factory.mktemp("engine")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = ["adult"]
    adult = params["adult"]
    adult["source"]["max_rows"] = 800
    adult["model"].update(dropout=0.0, hidden_sizes=[32])
    adult["train"].update(epochs=2, batch_size=8, num_threads=1, checkpoint={"every_steps": 5})
    adult["tune"] = {"trials": 2, "epochs": 1, "space": {"train.lr": {"low": 0.0005, "high": 0.005, "log": True}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, str(BIN / "torchcycle"), "ingest", "adult")
    sh(root, str(BIN / "torchcycle"), "preprocess", "adult")
    return root


@pytest.fixture
def trained_root(root: Path) -> Path:
    """The scratch project with a trained model, whichever tests ran before (or none)."""
    if not (root / "models" / "adult" / "model.pt").exists():
        sh(root, str(BIN / "torchcycle"), "train", "adult")
    return root


def weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "adult" / "model.pt", weights_only=True)


def curve(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "reports" / "adult" / "training" / "learning_curve.csv").drop(columns="train_seconds")


def test_sigkill_mid_epoch_then_rerun_ends_bit_identical(root: Path):
    sh(root, str(BIN / "torchcycle"), "train", "adult")
    reference_w, reference_curve = weights(root), curve(root)
    checkpoint = root / ".checkpoints" / "adult" / "checkpoint.pt"
    assert not checkpoint.exists()  # cleared once the model is written

    proc = subprocess.Popen([str(BIN / "torchcycle"), "train", "adult"], cwd=root, env=project_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be interrupted"
    position = torch.load(checkpoint, weights_only=True)["position"]
    assert position["step"] > 0  # the kill came mid-epoch, after a step checkpoint

    killed_run = torch.load(checkpoint, weights_only=True)["run_id"]
    out = sh(root, str(BIN / "torchcycle"), "train", "adult").stdout
    assert f"resumed from checkpoint at epoch {position['epoch']}" in out
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    killed = client.get_run(killed_run)
    assert killed.info.status == "KILLED"  # not left RUNNING for ever
    assert client.get_run(killed.data.tags["resumed_by"]).data.tags["resumed_from_run"] == killed_run
    resumed = weights(root)
    assert all(torch.equal(reference_w[k], resumed[k]) for k in reference_w)
    pd.testing.assert_frame_equal(curve(root), reference_curve, check_exact=True)


def test_torchrun_two_gloo_processes_match_one_process(root: Path):
    sh(root, str(BIN / "torchcycle"), "train", "adult")
    single_w, single_curve = weights(root), curve(root)

    proc = sh(root, str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python",
              str(BIN / "torchcycle"), "train", "adult", "--no-progress")
    assert proc.stdout.count("MLflow run") == 1  # rank 0 alone reports and tracks
    ddp_w, ddp_curve = weights(root), curve(root)
    assert len(ddp_curve) == len(single_curve)
    assert (ddp_curve["val_loss"] - single_curve["val_loss"]).abs().max() <= DDP_TOLERANCE
    assert max(float((ddp_w[k] - single_w[k]).abs().max()) for k in single_w) <= DDP_TOLERANCE


def test_diverging_run_fails_cleanly_and_keeps_the_last_good_model(trained_root: Path):
    import mlflow

    root = trained_root

    good = (root / "models" / "adult" / "model.pt").read_bytes()
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = yaml.safe_dump(params, sort_keys=False)
    params["adult"]["train"].update(optimizer="sgd", lr=1e12, scheduler="none")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = sh(root, str(BIN / "torchcycle"), "train", "adult", check=False)
    finally:
        (root / "params.yaml").write_text(original)
    assert proc.returncode == 2
    assert "training diverged" in proc.stderr and "Lower the learning rate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (root / "models" / "adult" / "model.pt").read_bytes() == good
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["torchcycle-adult"], order_by=["start_time DESC"], max_results=1)
    assert runs.iloc[0]["status"] == "FAILED"
    assert "diverged" in runs.iloc[0]["tags.failure"]


def test_overfit_check_and_search_command(root: Path):
    proc = sh(root, str(BIN / "torchcycle"), "train", "adult", "--overfit-batches", "1")
    assert "reached ~zero loss" in proc.stdout

    proc = sh(root, str(BIN / "torchcycle"), "tune", "adult")
    assert "after 2 trials" in proc.stdout
    best = yaml.safe_load((root / "reports" / "adult" / "tune" / "best_params.yaml").read_text())
    assert 0.0005 <= best["adult"]["train"]["lr"] <= 0.005
    report = (root / "reports" / "adult" / "tune" / "report.md").read_text()
    assert "torchcycle tune adult --trials 2" in report and report.count("| complete |") == 2
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    parent = mlflow.search_runs(experiment_names=["torchcycle-adult"], filter_string="tags.stage = 'tune'")
    children = mlflow.search_runs(experiment_names=["torchcycle-adult"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.iloc[0]['run_id']}'")
    assert len(children) == 2
