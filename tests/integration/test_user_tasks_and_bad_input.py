"""A user's own tasks through params alone (a CSV file and an image folder), and bad input stopping the
real pipeline with a message that names the problem while the last good outputs stay intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import Project, copy_project

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


def _rides_csv(path: Path, n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A numeric target (ride minutes) with a date column, an ID column and a text column with very many
    levels: the columns users really have."""
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 3.0, n).round(2)
    day = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    weekend = day.dayofweek >= 5
    zone = rng.choice(["north", "south", "centre"], n)
    minutes = 4 + 2.5 * distance + np.where(weekend, -3, 2) + np.where(zone == "centre", 5, 0) + rng.normal(0, 1, n)
    df = pd.DataFrame({
        "ride_id": [f"R-{i:06d}" for i in rng.permutation(n)],
        "pickup_date": day.strftime("%Y-%m-%d"),
        "distance_km": distance,
        "zone": zone,
        "street": [f"street {i}" for i in rng.integers(0, 400, n)],
        "minutes": minutes.round(2),
    })  # fmt: skip
    df.loc[::29, "pickup_date"] = None
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
    _rides_csv(project.root / "data" / "external" / "rides.csv")
    params = project.params()
    params["tasks"] = ["churn", "shapes", "rides"]
    params["rides"] = {
        "kind": "tabular",
        "source": {"path": "data/external/rides.csv", "target": "minutes"},  # target_type auto: a number
        "split": {},
        "preprocess": {"max_categories": 50},
        "model": {"name": "mlp", "hidden_sizes": [32]},
        "train": {"epochs": 30, "batch_size": 64, "lr": 0.01, "monitor": "val_rmse"},
    }
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
    for task in ("churn", "shapes", "rides"):
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


def test_numeric_target_with_dates_ids_and_many_levels_runs_through_register(user_project: Project, tmp_path) -> None:
    """A user's regression table: the inferred type and every column's fate are in the validation report;
    dates become numbers, the ID column is dropped, the many-level column is capped; the model learns;
    predict returns a value with an interval."""
    import json

    root = user_project.root
    report = json.loads((root / "reports" / "rides" / "validation.json").read_text())["summary"]
    assert report["target_type"] == "regression" and "auto" in report["target_type_reason"]
    columns = report["columns"]
    assert columns["ride_id"]["role"] == "dropped" and "ID-like" in columns["ride_id"]["detail"]
    assert columns["pickup_date"]["role"] == "date"
    assert columns["street"]["role"] == "categorical" and "capped to the 50 most frequent" in columns["street"]["detail"]
    schema = json.loads((root / "data" / "processed" / "rides" / "schema.json").read_text())
    assert schema["columns"] == {"distance_km": "numeric", "pickup_date": "date", "zone": "categorical",
                                 "street": "categorical"}
    assert "pickup_date.day_of_week" in schema["features"]
    street = next(c for c in schema["categorical"] if c["name"] == "street")
    assert len(street["categories"]) == 50
    metrics = json.loads((root / "reports" / "rides" / "metrics.json").read_text())
    target_std = pd.read_csv(root / "data" / "external" / "rides.csv")["minutes"].std()
    assert metrics["rmse"] < 0.5 * target_std, metrics  # far better than predicting the mean
    assert 0.6 <= metrics["interval_coverage"] <= 1.0
    export = json.loads((root / "reports" / "rides" / "export.json").read_text())
    assert export["parity"]["passed"] and export["parity_from_raw_input"]["passed"]
    registry = json.loads((root / "reports" / "rides" / "registry.json").read_text())
    assert registry["decision"]["metric"] == "rmse" and registry["decision"]["higher_is_better"] is False

    rows = pd.read_csv(root / "data" / "external" / "rides.csv").head(4).drop(columns=["minutes", "ride_id"])
    rows.loc[1, "street"] = "a street never seen"
    rows.to_csv(tmp_path / "rides.csv", index=False)
    user_project.run("torchcycle", "predict", "--task", "rides", "--input", str(tmp_path / "rides.csv"),
                     "--output", str(tmp_path / "out.csv"))
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["predicted", "lower", "upper"] and len(out) == 4
    assert (out["lower"] < out["predicted"]).all() and (out["predicted"] < out["upper"]).all()

    rows.loc[2, "pickup_date"] = "not a date"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    bad = user_project.run("torchcycle", "predict", "--task", "rides", "--input", str(tmp_path / "bad.csv"),
                           check=False)
    assert bad.returncode == 2 and "column 'pickup_date', row 2" in bad.stderr and "Traceback" not in bad.stderr


def test_regression_target_that_is_not_a_number_is_rejected(user_project: Project) -> None:
    root = user_project.root
    csv = root / "data" / "external" / "rides.csv"
    good = csv.read_bytes()
    before = _tree_digest(root / "data" / "raw" / "rides")
    params = user_project.params_file.read_text()
    try:
        df = pd.read_csv(csv)
        df["minutes"] = df["minutes"].astype(str)
        df.loc[5, "minutes"] = "twelve"
        df.to_csv(csv, index=False)
        p = user_project.params()
        p["rides"]["source"]["target_type"] = "regression"
        user_project.write_params(p)
        _expect_failure(user_project, "ingest@rides", "'twelve'", "must be a number for regression")
        assert _tree_digest(root / "data" / "raw" / "rides") == before
    finally:
        csv.write_bytes(good)
        user_project.params_file.write_text(params)


def test_many_numeric_classes_suggest_regression(user_project: Project) -> None:
    params = user_project.params_file.read_text()
    try:
        p = user_project.params()
        p["rides"]["source"]["target_type"] = "classification"
        user_project.write_params(p)
        _expect_failure(user_project, "ingest@rides", "too many to be classes", "target_type: regression")
    finally:
        user_project.params_file.write_text(params)
