"""Options no other test reaches, each end to end on ONE shared shrunken project: a user's `;`-separated
CSV with its own test file and a feature list (ingest), `scaling: quantile` from preprocessing to the
exported model, `shap_method: gradient`, `tracking.log_figures: false`, an export that fails on parity or
on `min_speedup` and keeps the previous export, and for a tiny image task `train.channels_last`,
`train.compile`, image holdback and `torchcycle simulate-arrival`.

The stages run in this process (as `torchcycle <stage>` runs them, without the start-up cost); the CLI
runs only where the command itself is what is tested."""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import Project, copy_project

pytestmark = pytest.mark.slow

TABLE, IMAGES = "orders", "shapes"
FEATURES = ["amount", "age", "plan"]  # "note" and "noise" are in the file but not features
TRAIN_ROWS, TEST_ROWS = 600, 200
PER_CLASS, HELD_BACK = 16, 8


def _orders(n: int, seed: int) -> pd.DataFrame:
    """Purchases driven by a heavily skewed amount (and the plan); free text with commas in it, so only
    `;` splits the columns right."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(4.0, 1.2, n).round(2)
    plan = rng.choice(["basic", "plus", "pro"], n)
    score = np.log(amount) + 0.8 * (plan == "pro") + rng.normal(0, 0.4, n)
    return pd.DataFrame({
        "amount": amount,
        "age": rng.integers(18, 80, n),
        "plan": plan,
        "note": [f"order {i}, {'gift' if i % 3 else 'self'}" for i in range(n)],
        "noise": rng.normal(size=n).round(4),
        "bought": np.where(score > 4.3, "yes", "no"),
    })  # fmt: skip


def _shapes(root: Path) -> None:
    """Bright and dark RGB squares of a few sizes, PER_CLASS of each."""
    rng = np.random.default_rng(0)
    for label, base in (("bright", 200), ("dark", 50)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            size = int(rng.integers(14, 24))
            pixels = np.clip(rng.normal(base, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / label / f"img{i:02d}.png")


def _set(raw: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    node = raw
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value


@dataclass
class Options:
    project: Project
    raw: dict  # params.yaml as written
    eager_shapes: dict[str, torch.Tensor]  # the image model trained one epoch without channels_last/compile

    @property
    def root(self) -> Path:
        return self.project.root

    def params(self, **changes: object):
        """The project's params with dotted-key changes (`export__parity_tolerance=...` style keys use
        `__` for dots), validated as torchcycle validates params.yaml."""
        from torchcycle.config import parse_params

        raw = copy.deepcopy(self.raw)
        for key, value in changes.items():
            _set(raw, key.replace("__", "."), value)
        return parse_params(raw)

    def stage(self, name: str, task: str, params=None, **kwargs: object) -> dict:
        module = importlib.import_module(f"torchcycle.stages.{name}")
        return module.run(params or self.params(), task, self.root, **kwargs)

    def json(self, rel: str) -> dict:
        return json.loads((self.root / rel).read_text())


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory, module_mlflow_env: None) -> Iterator[Options]:
    project = copy_project(tmp_path_factory.mktemp("options"))
    external = project.root / "data" / "external"
    _orders(TRAIN_ROWS, 0).to_csv(external / "orders.csv", sep=";", index=False)
    _orders(TEST_ROWS, 1).to_csv(external / "orders_test.csv", sep=";", index=False)
    _shapes(external / "shapes")
    raw = project.params()
    raw["tasks"] = [TABLE, IMAGES]
    raw[TABLE] = {
        "kind": "tabular",
        "source": {"path": "data/external/orders.csv", "test_path": "data/external/orders_test.csv",
                   "csv_sep": ";", "target": "bought", "positive_class": "yes", "features": FEATURES},
        "split": {"val_size": 0.2},
        "preprocess": {"scaling": "quantile"},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 8, "batch_size": 32, "lr": 0.01, "num_threads": 1},
    }  # fmt: skip
    raw[IMAGES] = {
        "kind": "image",
        "source": {"path": "data/external/shapes", "holdback_images": HELD_BACK},
        "split": {"test_size": 0.25, "val_size": 0.2},
        "preprocess": {"size": [16, 16], "channels": 3},
        "model": {"name": "cnn", "channels": [4, 8], "hidden": 8, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "num_threads": 1, "scheduler": "none"},
    }  # fmt: skip
    raw["tracking"]["log_figures"] = False
    raw["explain"].update(shap_method="gradient", max_rows=80, background_rows=40, local_examples=1,
                          examples_per_class=1)
    raw["evaluate"]["bootstrap_samples"] = 20
    raw["export"].update(benchmark_repeats=10, benchmark_seconds=0.01, min_speedup=0)
    project.write_params(raw)
    project.commit("a user's table and image folder")

    torch_state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.random.get_rng_state())
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlflow.db'}"  # module_mlflow_env undoes it
    try:
        opts = Options(project, raw, {})
        for name in ("ingest", "preprocess", "train", "evaluate", "slices", "explain", "export"):
            opts.stage(name, TABLE, **({"progress": False} if name == "train" else {}))
        for name in ("ingest", "preprocess", "train"):
            opts.stage(name, IMAGES, **({"progress": False} if name == "train" else {}))
        opts.eager_shapes.update(torch.load(project.root / "models" / IMAGES / "model.pt", weights_only=True))
        yield opts
    finally:
        threads, deterministic, warn_only, rng = torch_state
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.random.set_rng_state(rng)


# --------------------------------------------------------------------------- a user's CSV through ingest
def test_semicolon_csv_with_its_own_test_file_and_feature_list(options: Options) -> None:
    """`csv_sep: ";"` splits the columns (a note holds commas), `test_path` becomes the test split row for
    row, and `features` decides which columns the model gets."""
    raw = options.root / "data" / "raw" / TABLE
    train, test = pd.read_parquet(raw / "train.parquet"), pd.read_parquet(raw / "test.parquet")
    assert list(train.columns) == list(test.columns) == [*FEATURES, "bought"]  # no note, no noise
    source_train, source_test = _orders(TRAIN_ROWS, 0), _orders(TEST_ROWS, 1)
    pd.testing.assert_frame_equal(train, source_train[[*FEATURES, "bought"]], check_dtype=False)
    pd.testing.assert_frame_equal(test, source_test[[*FEATURES, "bought"]], check_dtype=False)
    assert train["amount"].dtype == train["age"].dtype == np.float64  # numbers, not text

    schema = options.json(f"data/processed/{TABLE}/schema.json")
    assert schema["columns"] == {"amount": "numeric", "age": "numeric", "plan": "categorical"}
    splits = options.json(f"data/processed/{TABLE}/splits.json")
    assert splits["test"]["rows"] == TEST_ROWS and splits["train"]["rows"] + splits["val"]["rows"] == TRAIN_ROWS
    with np.load(options.root / "data" / "processed" / TABLE / "test.npz") as z:
        assert set(z["origin"]) == {"test"} and (z["row"] == np.arange(TEST_ROWS)).all()
    report = options.json(f"reports/{TABLE}/validation.json")
    assert report["status"] == "passed"
    assert set(report["summary"]["columns"]) >= set(FEATURES)


# --------------------------------------------------------------------------- scaling: quantile
def test_quantile_scaling_from_preprocessing_to_the_exported_model(options: Options) -> None:
    from torchcycle.serving import Predictor

    state = options.json(f"data/processed/{TABLE}/preprocessor.json")
    amount = next(c for c in state["numeric"] if c["name"] == "amount")
    assert len(amount["quantiles"]) == 101 and (amount["center"], amount["scale"]) == (0.0, 1.0)
    with np.load(options.root / "data" / "processed" / TABLE / "train.npz") as z:
        scaled = z["x_num"][:, [c["name"] for c in state["numeric"]].index("amount")]
    raw_amount = pd.read_parquet(options.root / "data" / "raw" / TABLE / "train.parquet")["amount"]
    assert raw_amount.skew() > 2 and abs(pd.Series(scaled).skew()) < 0.2  # skew gone: a normal shape
    assert abs(scaled.mean()) < 0.1 and abs(scaled.std() - 1) < 0.1

    # the consumer path (raw rows -> the stored quantiles -> ONNX) gives what evaluate scored
    report = options.json(f"reports/{TABLE}/export.json")
    assert report["parity_from_raw_input"]["passed"]
    test = pd.read_parquet(options.root / "data" / "raw" / TABLE / "test.parquet")
    served = Predictor(options.root / "exports" / TABLE / "model.onnx").predict(test.drop(columns="bought"))
    evaluated = pd.read_csv(options.root / "reports" / TABLE / "predictions.csv")
    np.testing.assert_allclose(served["proba_yes"], evaluated["proba_yes"], atol=1e-5)
    assert options.json(f"reports/{TABLE}/metrics.json")["roc_auc"] > 0.8  # it learned from the amount


# --------------------------------------------------------------------------- shap_method: gradient
def test_gradient_shap_explains_the_column_that_drives_the_target(options: Options) -> None:
    summary = options.json(f"reports/{TABLE}/explain/summary.json")
    assert summary["method"] == "gradient" and summary["rows"] == 80
    assert summary["top_features"][0]["feature"] == "amount"
    values = pd.read_parquet(options.root / "reports" / TABLE / "explain" / "shap_values.parquet")
    shap_cols = [f"shap.{c}" for c in FEATURES]
    assert set(shap_cols) <= set(values.columns) and not values[shap_cols].isna().any().any()
    # expected gradients are additive only on average: the mean explained difference is close
    explained = values[shap_cols].sum(axis=1) + values["expected_value"]
    assert abs(float((explained - values["model_output"]).mean())) < 0.1 * float(values["model_output"].std())
    # a higher amount pushes towards "yes" (SHAP rises with the amount)
    assert np.corrcoef(values["value.amount"].rank(), values["shap.amount"])[0, 1] > 0.8


# --------------------------------------------------------------------------- export that fails
@pytest.mark.parametrize(("change", "needle"), [
    ({"export__parity_tolerance": 1e-12}, "parity failed"),
    ({"export__min_speedup": 1e6}, "latency is only"),
])  # fmt: skip
def test_export_that_misses_its_floor_fails_and_keeps_the_previous_export(options: Options, change: dict,
                                                                          needle: str) -> None:
    from torchcycle.errors import TorchcycleError

    kept = {p: p.read_bytes() for p in [options.root / "exports" / TABLE / "model.onnx",
                                        options.root / "reports" / TABLE / "export.json"]}
    before = options.json(f"reports/{TABLE}/export.json")
    if "export__parity_tolerance" in change:  # a real difference exists for the tolerance to catch
        assert before["parity"]["max_abs_diff"] > change["export__parity_tolerance"]
    with pytest.raises(TorchcycleError) as failed:
        options.stage("export", TABLE, options.params(**change))
    message = str(failed.value)
    assert f"export@{TABLE} failed; the previous export is kept" in message and needle in message, message
    for path, content in kept.items():
        assert path.read_bytes() == content, f"{path} changed"


def test_a_zero_parity_tolerance_is_a_params_error(options: Options) -> None:
    from torchcycle.errors import ConfigError

    with pytest.raises(ConfigError, match=r"export\.parity_tolerance"):
        options.params(export__parity_tolerance=0)


# --------------------------------------------------------------------------- tracking.log_figures: false
def _artifacts(client, run_id: str, folder: str | None = None) -> list[str]:
    out = []
    for entry in client.list_artifacts(run_id, folder):
        out.extend(_artifacts(client, run_id, entry.path) if entry.is_dir else [entry.path])
    return out


def test_log_figures_false_keeps_evaluation_figures_out_of_the_run(options: Options) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{options.root / 'mlflow.db'}")
    run_id = options.json(f"models/{TABLE}/mlflow_run.json")["run_id"]
    logged = _artifacts(client, run_id)
    assert "evaluation/metrics.json" in logged and "slices/slices.json" in logged  # the run has the rest
    assert not any(p.startswith("figures/") for p in logged), logged
    assert not any(p.startswith("slices/") and p.endswith(".png") for p in logged), logged
    # the files themselves are still written for DVC and the dashboard
    assert (options.root / "reports" / TABLE / "figures" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_log_figures_false_logs_no_figure_at_all(options: Options) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{options.root / 'mlflow.db'}")
    run_id = options.json(f"models/{TABLE}/mlflow_run.json")["run_id"]
    logged = _artifacts(client, run_id)
    assert "explain/summary.json" in logged
    assert not [p for p in logged if p.endswith(".png")]


# --------------------------------------------------------------------------- images: holdback, arrivals
def test_image_holdback_is_kept_out_of_training_and_released_by_simulate_arrival(options: Options) -> None:
    raw = options.root / "data" / "raw" / IMAGES
    held = sorted(p for p in (raw / "holdback").rglob("*") if p.is_file())
    assert len(held) == HELD_BACK and {p.parent.name for p in held} == {"bright", "dark"}
    manifest = pd.read_csv(raw / "manifest.csv")
    assert len(manifest) == 2 * PER_CLASS - HELD_BACK
    trained_on = {(Path(p).parent.name, Path(p).name) for p in manifest["path"]}
    assert not trained_on & {(p.parent.name, p.name) for p in held}  # none of them is trained on
    splits = options.json(f"data/processed/{IMAGES}/splits.json")
    assert sum(s["rows"] for s in splits.values()) == 2 * PER_CLASS - HELD_BACK

    zone = options.root / "data" / "incoming" / IMAGES
    released = []
    for batch in (1, 2):
        out = options.project.run("torchcycle", "simulate-arrival", IMAGES, "--slices", "2").stdout
        assert f"released batch {batch}/2 of '{IMAGES}': {HELD_BACK // 2} file(s)" in out, out
        arrived = sorted(zone.glob(f"*/arrival-{batch:02d}-*"))
        assert len(arrived) == HELD_BACK // 2 and {p.parent.name for p in arrived} <= {"bright", "dark"}
        released += arrived
    # every held-back image arrives once, in its class folder, byte for byte
    assert sorted((p.parent.name, p.name.split("-", 2)[2], p.read_bytes()) for p in released) == \
        sorted((p.parent.name, p.name, p.read_bytes()) for p in held)
    out = options.project.run("torchcycle", "simulate-arrival", IMAGES, "--slices", "2").stdout
    assert "have been released already" in out


# --------------------------------------------------------------------------- train.channels_last, compile
@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_image_training_option_trains_the_same_model(options: Options, option: str) -> None:
    """One epoch with `train.<option>` on: the same weights as the plain run (up to float rounding),
    saved as the plain model (no compile wrapper in the names), evaluated, exported and tracked."""
    from mlflow.tracking import MlflowClient

    params = options.params(**{f"{IMAGES}__train__{option}": True})
    result = options.stage("train", IMAGES, params, progress=False)
    weights = torch.load(options.root / "models" / IMAGES / "model.pt", weights_only=True)
    assert list(weights) == list(options.eager_shapes)
    for name, value in weights.items():
        torch.testing.assert_close(value, options.eager_shapes[name], atol=1e-4, rtol=1e-4, msg=name)
    assert options.stage("evaluate", IMAGES, params)["n_samples"] > 0  # the saved model loads and scores
    run = MlflowClient(tracking_uri=f"sqlite:///{options.root / 'mlflow.db'}").get_run(result["run_id"])
    assert run.data.params[f"train.{option}"] == "True"
