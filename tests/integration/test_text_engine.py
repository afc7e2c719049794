"""The training engine on text, through the `torchcycle` command line in a scratch project: a GRU on
packed sequences with clipping, accumulation, bfloat16 autocast, early stopping and step checkpoints;
torchrun with 2 gloo processes matching one process; and `torchcycle tune` over the text model's params."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import BIN, REPO
from tests.integration.test_training_engine import DDP_TOLERANCE, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text-engine")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = ["reviews"]
    reviews = params["reviews"]
    reviews["source"]["max_rows"] = 400
    reviews["preprocess"].update(vocab_size=500, max_length=24)
    reviews["model"] = {"name": "gru", "embedding_dim": 16, "hidden": 16, "layers": 2, "dropout": 0.0}
    reviews["train"].update(epochs=3, batch_size=16, lr=0.003, num_threads=1, grad_clip_norm=1.0,
                            grad_accumulation=2, monitor="val_loss", checkpoint={"every_steps": 5},
                            early_stopping={"enabled": True, "patience": 1})
    reviews["tune"] = {"trials": 2, "epochs": 1, "metric": "val_loss",
                       "space": {"model.hidden": {"type": "categorical", "choices": [8, 16]}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, str(BIN / "torchcycle"), "ingest", "reviews")
    sh(root, str(BIN / "torchcycle"), "preprocess", "reviews")
    return root


def weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "reviews" / "model.pt", weights_only=True)


def curve(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "reports" / "reviews" / "training" / "learning_curve.csv")


def test_gru_trains_with_the_engines_options_and_ddp_matches_one_process(root: Path) -> None:
    sh(root, str(BIN / "torchcycle"), "train", "reviews")
    single_w, single_curve = weights(root), curve(root)
    assert single_curve["val_loss"].notna().all() and not (root / ".checkpoints" / "reviews" / "checkpoint.pt").exists()

    proc = sh(root, str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python",
              str(BIN / "torchcycle"), "train", "reviews", "--no-progress")
    assert proc.stdout.count("MLflow run") == 1
    ddp_w, ddp_curve = weights(root), curve(root)
    assert len(ddp_curve) == len(single_curve)
    assert (ddp_curve["val_loss"] - single_curve["val_loss"]).abs().max() <= DDP_TOLERANCE
    assert max(float((ddp_w[k] - single_w[k]).abs().max()) for k in single_w) <= DDP_TOLERANCE


def test_mixed_precision_gru_and_the_search(root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    original = yaml.safe_dump(params, sort_keys=False)
    params["reviews"]["train"]["mixed_precision"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        sh(root, str(BIN / "torchcycle"), "train", "reviews")
    finally:
        (root / "params.yaml").write_text(original)
    assert curve(root)["val_loss"].notna().all()

    proc = sh(root, str(BIN / "torchcycle"), "tune", "reviews")
    assert "after 2 trials" in proc.stdout
    best = yaml.safe_load((root / "reports" / "reviews" / "tune" / "best_params.yaml").read_text())
    assert best["reviews"]["model"]["hidden"] in (8, 16)
