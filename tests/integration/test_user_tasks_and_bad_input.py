"""A user's own tasks through params alone (a CSV file and an image folder), and bad input stopping the
real pipeline with a message that names the problem while the last good outputs stay intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.integration.conftest import Project, copy_project

pytestmark = pytest.mark.slow


def _tree_digest(path: Path) -> str:
    h = hashlib.md5()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _churn_csv(path: Path, n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    plan = rng.choice(["basic", "plus", "pro"], n)
    charges = rng.normal(50, 15, n).round(2)
    churned = np.where((tenure < 20) | (plan == "basic"), "yes", "no")
    df = pd.DataFrame({"tenure": tenure, "plan": plan, "monthly_charges": charges, "churned": churned})
    df.loc[::17, "plan"] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def _shapes_folder(root: Path, per_class: int = 12, seed: int = 0) -> None:
    """Two classes of colour images of various sizes: bright squares vs dark ones."""
    rng = np.random.default_rng(seed)
    for label, base in (("bright", 200), ("dark", 40)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(20, 48))
            arr = np.clip(rng.normal(base, 20, (size, size + 3, 3)), 0, 255).astype(np.uint8)
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(arr, "RGB").save(folder / f"img{i}{ext}")


@pytest.fixture(scope="module")
def user_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = copy_project(tmp_path_factory.mktemp("user"))
    _churn_csv(project.root / "data" / "external" / "churn.csv")
    _shapes_folder(project.root / "data" / "external" / "shapes")
    params = project.params()
    params["tasks"] = ["churn", "shapes"]
    params["churn"] = {
        "kind": "tabular",
        "source": {"path": "data/external/churn.csv", "target": "churned", "positive_class": "yes"},
        "split": {},
        "preprocess": {},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 2, "batch_size": 32},
    }
    params["shapes"] = {
        "kind": "image",
        "source": {"path": "data/external/shapes"},
        "split": {"test_size": 0.25, "val_size": 0.2},
        "preprocess": {"size": [16, 16], "channels": 3},
        "model": {"name": "cnn", "channels": [4, 8], "hidden": 8},
        "train": {"epochs": 2, "batch_size": 8},
    }
    project.write_params(params)
    project.commit("user tasks")
    project.run("dvc", "repro")
    return project


def test_user_csv_and_image_folder_tasks_run_through_params_alone(user_project: Project) -> None:
    root = user_project.root
    for task in ("churn", "shapes"):
        assert (root / "reports" / task / "metrics.json").exists(), task
    raw = pd.read_parquet(root / "data" / "raw" / "churn" / "train.parquet")
    assert len(raw) == 240 and raw["plan"].isna().sum() > 0  # missing values kept for the explicit policy
    manifest = pd.read_csv(root / "data" / "raw" / "shapes" / "manifest.csv")
    assert sorted(manifest["label"].unique()) == ["bright", "dark"] and len(manifest) == 24
    x = np.load(root / "data" / "processed" / "shapes" / "train.npz")["x"]
    assert x.shape[1:] == (3, 16, 16)


def _expect_failure(project: Project, target: str, *needles: str) -> str:
    proc = project.run("dvc", "repro", target, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return out


def test_missing_target_column_stops_ingest_and_keeps_earlier_data(user_project: Project) -> None:
    root = user_project.root
    csv = root / "data" / "external" / "churn.csv"
    good = csv.read_bytes()
    before = _tree_digest(root / "data" / "raw" / "churn")
    try:
        pd.read_csv(csv).drop(columns="churned").to_csv(csv, index=False)
        _expect_failure(user_project, "ingest@churn", "target column 'churned' not found", "source.target")
        assert _tree_digest(root / "data" / "raw" / "churn") == before
        assert (root / "reports" / "churn" / "validation-failed.json").exists()
    finally:
        csv.write_bytes(good)


def test_one_class_target_is_rejected(user_project: Project) -> None:
    root = user_project.root
    csv = root / "data" / "external" / "churn.csv"
    good = csv.read_bytes()
    before = _tree_digest(root / "data" / "raw" / "churn")
    try:
        df = pd.read_csv(csv)
        df["churned"] = "no"
        df.to_csv(csv, index=False)
        _expect_failure(user_project, "ingest@churn", "single class ('no')", "at least two")
        assert _tree_digest(root / "data" / "raw" / "churn") == before
    finally:
        csv.write_bytes(good)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n this is not really a png", "cannot be decoded as an image"),
        ("notes.txt", b"not an image at all", "not an image file"),
    ],
)
def test_bad_file_in_image_folder_is_named_and_earlier_images_stay(
    user_project: Project, name: str, content: bytes, needle: str
) -> None:
    root = user_project.root
    bad = root / "data" / "external" / "shapes" / "dark" / name
    before = _tree_digest(root / "data" / "raw" / "shapes")
    bad.write_bytes(content)
    try:
        out = _expect_failure(user_project, "ingest@shapes", needle, name)
        assert "data/raw/shapes/ still holds the last good data" in out
        assert _tree_digest(root / "data" / "raw" / "shapes") == before
    finally:
        bad.unlink()


def test_params_typo_is_a_clear_error_and_outputs_stay(user_project: Project) -> None:
    root = user_project.root
    before = _tree_digest(root / "models" / "churn")
    text = user_project.params_file.read_text()
    try:
        user_project.params_file.write_text(text.replace("batch_size: 32", "batch_sise: 32", 1))
        proc = user_project.run("torchcycle", "train", "churn", check=False)
        assert proc.returncode == 2
        assert "churn.train.batch_sise: unknown key" in proc.stderr
        assert "did you mean 'batch_size'" in proc.stderr
        assert _tree_digest(root / "models" / "churn") == before
    finally:
        user_project.params_file.write_text(text)
