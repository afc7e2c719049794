"""End to end: the real `dvc repro` on both built-in tasks (shrunken), the MLflow runs it leaves in the
SQLite store, explanations, the ONNX export, the model registry with `torchcycle predict` and
`mlflow models serve`, a no-op second run, granular re-runs, experiments, and a DVC remote round trip."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import BIN, TASKS, Project, copy_project, free_port

pytestmark = pytest.mark.slow

METRIC_KEYS = {"accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = copy_project(tmp_path_factory.mktemp("project"))
    proc = project.run("dvc", "repro")
    assert "Running stage 'evaluate@mnist'" in proc.stdout
    for stage in ("explain", "export", "register"):
        for task in TASKS:
            assert f"Running stage '{stage}@{task}'" in proc.stdout
    project.commit("first run")
    return project


@pytest.fixture
def restored(reproduced: Project, tmp_path: Path) -> Iterator[Project]:
    """The reproduced project for a test that changes it (params, outputs, runs, registry versions): put
    back as it was after the first run when the test ends, so no other test depends on running before or
    after it. git restores params.yaml, dvc.lock (which `dvc repro` also stages) and the uncached metrics;
    DVC the cached outputs; a copy of the SQLite store the MLflow runs and the registry."""
    store = reproduced.root / "mlflow.db"
    backup = tmp_path / "mlflow.db.before-test"  # outside the repository: a test may commit
    shutil.copyfile(store, backup)
    try:
        yield reproduced
    finally:
        reproduced.run("git", "reset", "-q", "--hard", "HEAD")
        reproduced.run("dvc", "checkout", "--force", "--quiet")
        shutil.copyfile(backup, store)  # into the same file: open SQLite connections see the old state
        assert "up to date" in reproduced.run("dvc", "status").stdout, "the project was not restored"


def _stages_run(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_stages_write_their_outputs(reproduced: Project) -> None:
    root = reproduced.root
    for task in ("adult", "mnist"):
        metrics = json.loads((root / "reports" / task / "metrics.json").read_text())
        assert metrics.keys() >= METRIC_KEYS
        classes = json.loads((root / "models" / task / "model_config.json").read_text())["target"]["classes"]
        assert set(metrics["per_class"]) == set(classes)
        # the accuracy is that of the written test predictions (the argmax of their probabilities)
        predictions = pd.read_csv(root / "reports" / task / "predictions.csv", dtype={"actual": str})
        argmax = np.asarray(classes)[predictions[[f"proba_{c}" for c in classes]].to_numpy().argmax(axis=1)]
        assert metrics["n_samples"] == len(predictions) > 0
        assert metrics["accuracy"] == pytest.approx(float((predictions["actual"] == argmax).mean()), abs=1e-12)
        assert np.trace(metrics["confusion_matrix"]) == (predictions["actual"] == argmax).sum()
        assert len(metrics["confusion_matrix"]) == len(metrics["per_class"])
        for name in ("roc", "precision_recall", "confusion", "calibration"):
            assert (root / "reports" / task / "evaluation" / f"{name}.csv").stat().st_size > 0
        for name in ("roc.png", "confusion_matrix.png", "learning_curves.png"):
            assert (root / "reports" / task / "figures" / name).read_bytes()[:4] == b"\x89PNG"
        validation = json.loads((root / "reports" / task / "validation.json").read_text())
        assert validation["status"] == "passed"
        schema = json.loads((root / "data" / "processed" / task / "schema.json").read_text())
        assert schema["target"]["type"] == "classification" and schema["target"]["classes"]
    assert (root / "data" / "raw" / "adult" / "test.parquet").exists()
    manifest = (root / "data" / "raw" / "mnist" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 300
    # the lock file versions every stage output
    lock = (root / "dvc.lock").read_text()
    for stage in ("ingest@adult", "preprocess@mnist", "train@adult", "evaluate@mnist", "register@diamonds"):
        assert stage in lock


def test_calibration_thresholds_and_confidence_intervals(reproduced: Project) -> None:
    """Calibrated probabilities (the ONNX model applies the fitted temperature), the decision threshold
    chosen on validation and used by predict, and bootstrap intervals for every task."""
    adult = json.loads((reproduced.root / "reports" / "adult" / "metrics.json").read_text())
    calibration = adult["calibration"]
    assert calibration["method"] == "temperature" and calibration["temperature"] > 0
    assert adult["ece"] == calibration["after"]["ece"] and adult["ece_before"] == calibration["before"]["ece"]
    assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"] + 1e-9  # fitted to lower NLL
    threshold = adult["threshold"]
    assert threshold["objective"] == "f1" and 0 < threshold["value"] < 1
    assert threshold["accuracy_at_0.5"] == pytest.approx(adult["accuracy"])
    reliability = pd.read_csv(reproduced.root / "reports" / "adult" / "evaluation" / "reliability.csv")
    assert {"confidence", "accuracy_before", "accuracy_after"} <= set(reliability.columns)
    # the served decisions use the threshold: the written predictions follow it, not the argmax
    predictions = pd.read_csv(reproduced.root / "reports" / "adult" / "predictions.csv")
    expected = np.where(predictions["proba_>50K"] >= threshold["value"], ">50K", "<=50K")
    assert (predictions["predicted"] == expected).all()
    for task, metric in (("adult", "roc_auc"), ("mnist", "accuracy"), ("diamonds", "rmse")):
        m = json.loads((reproduced.root / "reports" / task / "metrics.json").read_text())
        ci = m["confidence_intervals"][metric]
        assert ci["low"] <= ci["high"] and ci["level"] == 0.95 and ci["samples"] == 200


def test_slices_and_fairness(reproduced: Project) -> None:
    adult = json.loads((reproduced.root / "reports" / "adult" / "slices.json").read_text())
    assert adult["columns"] == ["sex", "race"]
    levels = {(s["column"], s["level"]) for s in adult["slices"]}
    assert ("sex", "Male") in levels and ("sex", "Female") in levels
    for s in adult["slices"]:
        assert s["rows"] >= adult["min_rows"]
        assert s["gap"]["accuracy"] == pytest.approx(s["metrics"]["accuracy"] - adult["overall"]["accuracy"])
    sex = adult["fairness"]["sex"]
    rates = [g["selection_rate"] for g in sex["by_group"].values()]
    assert sex["demographic_parity_difference"] == pytest.approx(max(rates) - min(rates))
    mnist = json.loads((reproduced.root / "reports" / "mnist" / "slices.json").read_text())
    assert set(mnist["columns"]) == {"class", "brightness"} and not mnist["fairness"]
    assert (reproduced.root / "reports" / "adult" / "slices" / "slices.csv").exists()


def test_regression_task_writes_regression_outputs(reproduced: Project) -> None:
    root = reproduced.root / "reports" / "diamonds"
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics.keys() >= {"rmse", "mae", "r2", "mape", "interval_coverage", "interval_mean_width"}
    predictions = pd.read_csv(root / "predictions.csv")
    assert list(predictions.columns) == ["actual", "predicted", "lower", "upper"]
    assert (predictions["lower"] <= predictions["predicted"]).all()
    assert (predictions["predicted"] <= predictions["upper"]).all()
    # the metrics are those of the written predictions, in dollars (the log transform undone)
    err = predictions["actual"] - predictions["predicted"]
    assert metrics["rmse"] == pytest.approx(float(np.sqrt((err**2).mean())), rel=1e-6)
    inside = (predictions["actual"] >= predictions["lower"]) & (predictions["actual"] <= predictions["upper"])
    assert metrics["interval_coverage"] == pytest.approx(float(inside.mean()))
    assert predictions["actual"].min() > 100  # prices, not log-prices or standard scores
    for name in ("predicted_vs_actual", "residuals", "residual_histogram"):
        assert (root / "evaluation" / f"{name}.csv").stat().st_size > 0
        assert (root / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (root / "evaluation" / "roc.csv").exists()
    validation = json.loads((root / "validation.json").read_text())["summary"]
    assert validation["target_type"] == "regression"
    config = json.loads((reproduced.root / "models" / "diamonds" / "model_config.json").read_text())
    assert config["target"]["transform"] == "log" and config["target"]["halfwidth"] > 0
    explain = json.loads((root / "explain" / "summary.json").read_text())
    assert explain["explained_output"] == "predicted log(price)" and explain["additivity_error"] < 1e-3
    registry = json.loads((root / "registry.json").read_text())
    assert registry["decision"]["metric"] == "rmse" and not registry["decision"]["higher_is_better"]


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


# --------------------------------------------------------------------------- explain, export, register
def _client(project: Project):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project.root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _json(project: Project, rel: str) -> dict:
    return json.loads((project.root / rel).read_text())


def test_explain_outputs(reproduced: Project) -> None:
    adult = reproduced.root / "reports" / "adult" / "explain"
    summary = json.loads((adult / "summary.json").read_text())
    assert summary["rows"] == 150 and summary["additivity_error"] < 1e-3
    values = pd.read_parquet(adult / "shap_values.parquet")
    assert len(values) == 150
    assert {"test_index", "actual", "predicted", "output.proba_>50K", "value.education", "shap.education"} <= set(values)
    assert not any(c.startswith("shap.education_") for c in values)  # summed back to the original column
    shap_cols = [c for c in values if c.startswith("shap.")]
    total = values[shap_cols].sum(axis=1) + values["expected_value"]
    np.testing.assert_allclose(total, values["model_output"], atol=1e-3)
    for name in ("importance.png", "beeswarm.png"):
        assert (adult / name).read_bytes()[:4] == b"\x89PNG"
    assert any("misclassified" in p.name for p in (adult / "local").iterdir())

    mnist = reproduced.root / "reports" / "mnist" / "explain"
    with np.load(mnist / "gradcam.npz") as cams:
        assert cams["class_average"].shape == (10, 28, 28)
        assert cams["maps"].shape[1:] == (28, 28) and len(cams["maps"]) == len(cams["actual"]) > 0
        assert cams["maps"].min() >= 0.0 and cams["maps"].max() <= 1.0
    assert (mnist / "overlays_correct.png").exists() and (mnist / "class_average.png").exists()

    reviews = reproduced.root / "reports" / "reviews" / "explain"
    summary = json.loads((reviews / "summary.json").read_text())
    assert summary["method"] == "integrated_gradients" and summary["texts_explained"] > 0
    examples = json.loads((reviews / "examples.json").read_text())
    assert examples and all(len(e["tokens"]) == len(e["scores"]) for e in examples)
    assert {"correct", "misclassified"} & {e["case"] for e in examples}
    top = pd.read_csv(reviews / "top_tokens.csv")
    assert set(top["group"]) <= {"fresh", "rotten"} and len(top) > 0
    assert '<span class="tok"' in (reviews / "attributions.html").read_text()


def test_export_parity_and_benchmark(reproduced: Project) -> None:
    diamonds = _json(reproduced, "reports/diamonds/export.json")
    assert diamonds["output"]["columns"] == ["prediction", "lower", "upper"]
    for key in ("parity", "parity_from_raw_input"):
        assert diamonds[key]["passed"] and diamonds[key]["max_rel_diff"] <= 1e-4
    for task in ("adult", "mnist", "reviews"):
        report = _json(reproduced, f"reports/{task}/export.json")
        for key in ("parity", "parity_from_raw_input"):
            assert report[key]["passed"] and report[key]["max_abs_diff"] <= 1e-4
            assert report[key]["class_mismatches"] == 0
        assert report["benchmark"]["batch1"]["onnxruntime_ms"] > 0 and report["benchmark"]["batch256"]["speedup"] > 0
        assert (reproduced.root / "exports" / task / "model.onnx").stat().st_size > 1000
    metrics = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "reports/adult/export.json" in metrics


def test_registry_aliases_tags_and_run(reproduced: Project) -> None:
    client = _client(reproduced)
    for task in ("adult", "mnist"):
        name = f"torchcycle-{task}"
        champion = client.get_model_version_by_alias(name, "champion")
        challenger = client.get_model_version_by_alias(name, "challenger")
        assert champion.version == challenger.version
        assert champion.tags["decision.promoted"] == "true" and champion.tags["decision.reason"] == "first version"
        report = _json(reproduced, f"reports/{task}/registry.json")
        assert report["version"] == str(champion.version) and report["decision"]["promoted"]
        run_id = _json(reproduced, f"models/{task}/mlflow_run.json")["run_id"]
        assert champion.run_id == run_id  # the same run as training
        run = client.get_run(run_id)
        assert "onnx_parity_max_abs_diff" in run.data.metrics and "test_roc_auc" in run.data.metrics
        logged = {a.path for folder in ("torch_state_dict", "explain", "export", "registry")
                  for a in client.list_artifacts(run_id, folder)}
        assert {"torch_state_dict/model.pt", "torch_state_dict/signature.json", "explain/summary.json",
                "export/export.json", "registry/registry.json"} <= logged
        # the registered ONNX model: raw-record signature and example, pinned requirements, both flavours
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{reproduced.root / 'mlflow.db'}")
        mlflow.set_registry_uri(f"sqlite:///{reproduced.root / 'mlflow.db'}")
        model = mlflow.models.get_model_info(f"models:/{name}@champion")
        assert model.flavors["python_function"]["loader_module"] == "torchcycle.served_model" and "onnx" in model.flavors
        state = _json(reproduced, f"data/processed/{task}/preprocessor.json")
        expected = ([c["name"] for c in state["numeric"] + state["categorical"]] if task == "adult" else ["image"])
        assert model.signature.inputs.input_names() == expected
        assert model.signature.outputs.input_names()[0] == "predicted"
        folder = mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
        requirements = (Path(folder) / "requirements.txt").read_text()
        assert "onnxruntime==" in requirements and "torchcycle==" in requirements
        assert (Path(folder) / "serving_input_example.json").exists()


def test_predict_cli_uses_the_champion(reproduced: Project, tmp_path) -> None:
    raw = pd.read_parquet(reproduced.root / "data" / "raw" / "adult" / "test.parquet").head(5)
    raw.drop(columns="income").to_csv(tmp_path / "rows.csv", index=False)
    reproduced.run("torchcycle", "predict", "--task", "adult", "--input", str(tmp_path / "rows.csv"),
                "--output", str(tmp_path / "preds.csv"))
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 5 and set(preds["predicted"]) <= {"<=50K", ">50K"}
    np.testing.assert_allclose(preds[["proba_<=50K", "proba_>50K"]].sum(axis=1), 1.0, atol=1e-5)

    raw.drop(columns=["income", "age"]).to_csv(tmp_path / "bad.csv", index=False)
    bad = reproduced.run("torchcycle", "predict", "--task", "adult", "--input", str(tmp_path / "bad.csv"), check=False)
    assert bad.returncode == 2 and "missing column(s) ['age']" in bad.stderr and "Traceback" not in bad.stderr

    images = sorted((reproduced.root / "data" / "raw" / "mnist" / "images").rglob("*.png"))[:3]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, f in enumerate(images):
        (folder / f"{i}.png").write_bytes(f.read_bytes())
    out = reproduced.run("torchcycle", "predict", "--task", "mnist", "--input", str(folder)).stdout
    assert len(out.strip().splitlines()) == 1 + 3 and out.startswith("path,predicted,proba_0")

    gems = pd.read_parquet(reproduced.root / "data" / "raw" / "diamonds" / "train.parquet").head(4)
    gems.drop(columns="price").to_csv(tmp_path / "gems.csv", index=False)
    reproduced.run("torchcycle", "predict", "--task", "diamonds", "--input", str(tmp_path / "gems.csv"),
                   "--output", str(tmp_path / "prices.csv"))
    prices = pd.read_csv(tmp_path / "prices.csv")
    assert list(prices.columns) == ["predicted", "lower", "upper"] and len(prices) == 4
    assert ((prices["lower"] < prices["predicted"]) & (prices["predicted"] < prices["upper"])).all()
    assert prices["predicted"].between(100, 50_000).all()
    # an unreadable image is the same PredictionInputError (tests/unit/test_export_serving.py)


def test_re_registering_the_same_model_never_moves_the_champion(restored: Project) -> None:
    reproduced = restored
    client = _client(reproduced)
    before = client.get_model_version_by_alias("torchcycle-adult", "champion").version
    reproduced.run("dvc", "repro", "--force", "--single-item", "register@adult")
    report = _json(reproduced, "reports/adult/registry.json")
    assert report["version"] != str(before) and not report["decision"]["promoted"]
    assert report["decision"]["champion_score_source"] == "recorded on the same test split"
    assert client.get_model_version_by_alias("torchcycle-adult", "champion").version == before
    assert str(client.get_model_version_by_alias("torchcycle-adult", "challenger").version) == report["version"]


@pytest.mark.parametrize(("task", "bad_column", "bad_value", "message"), [
    ("adult", "age", "forty", "column 'age', row 1: 'forty' is not a number"),
    ("diamonds", "carat", "forty", "column 'carat', row 1: 'forty' is not a number"),
    ("reviews", "text", None, "column 'text', row 1: expected text"),
])  # fmt: skip
def test_mlflow_models_serve_answers_on_localhost(reproduced: Project, task: str, bad_column: str, bad_value,
                                                  message: str) -> None:
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": f"sqlite:///{reproduced.root / 'mlflow.db'}"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/torchcycle-{task}@champion", "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=reproduced.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the model server did not come up"
                time.sleep(0.5)
        from torchcycle.serving import Predictor

        # raw records, as they appear in the source file (the target column is ignored)
        split = "test" if task == "adult" else "train"
        rows = pd.read_parquet(reproduced.root / "data" / "raw" / task / f"{split}.parquet").head(3)
        if task == "reviews":  # what a client sends: the text column only
            rows = rows[["text"]]
        body = {"dataframe_records": json.loads(rows.to_json(orient="records"))}
        answer = _post_json(f"http://127.0.0.1:{port}/invocations", body)
        served = pd.DataFrame(answer["predictions"])
        expected = Predictor(reproduced.root / "exports" / task / "model.onnx").predict(rows)
        assert list(served.columns) == list(expected.columns)
        np.testing.assert_allclose(served.iloc[:, 1:].to_numpy(float), expected.iloc[:, 1:].to_numpy(float), atol=1e-5)
        assert (served["predicted"] == expected["predicted"]).all()

        body["dataframe_records"][1][bad_column] = bad_value
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post_json(f"http://127.0.0.1:{port}/invocations", body)
        assert bad.value.code == 400
        assert message in json.loads(bad.value.read())["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def test_registered_image_model_takes_image_files_through_pyfunc(reproduced: Project) -> None:
    import mlflow.pyfunc

    from torchcycle.serving import Predictor

    files = sorted((reproduced.root / "data" / "raw" / "mnist" / "images").rglob("*.png"))[:3]
    mlflow.set_tracking_uri(f"sqlite:///{reproduced.root / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{reproduced.root / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/torchcycle-mnist@champion").predict(
        pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    expected = Predictor(reproduced.root / "exports" / "mnist" / "model.onnx").predict(pd.DataFrame({"image": files}))
    np.testing.assert_allclose(served.iloc[:, 1:].to_numpy(float), expected.iloc[:, 1:].to_numpy(float), atol=1e-5)


def test_text_task_outputs_and_predictions(reproduced: Project, tmp_path: Path) -> None:
    """reviews: the tokenizer as JSON, truncation counted, length buckets and confident mistakes with their
    text, and the champion predicting raw text from a .txt file as the exported model does."""
    from torchcycle.serving import Predictor

    root = reproduced.root
    processed = root / "data" / "processed" / "reviews"
    state = json.loads((processed / "preprocessor.json").read_text())
    assert state["tokenizer"] == (processed / "tokenizer.json").read_text()
    assert not list(processed.glob("*.pkl"))
    splits = json.loads((processed / "splits.json").read_text())
    assert all("truncated" in s for s in splits.values())
    slices = _json(reproduced, "reports/reviews/slices.json")
    assert set(slices["columns"]) == {"class", "length"}
    mistakes = pd.read_csv(root / "reports" / "reviews" / "slices" / "mistakes.csv")
    assert len(mistakes) > 0 and (mistakes["actual"] != mistakes["predicted"]).all()
    assert mistakes["error"].is_monotonic_decreasing and mistakes["text"].str.len().gt(0).all()

    texts = tmp_path / "texts.txt"
    texts.write_text("A warm, funny and moving film.\nA dull, tedious mess.\n")
    out = tmp_path / "predictions.csv"
    reproduced.run(str(BIN / "torchcycle"), "predict", "-t", "reviews", "-i", str(texts), "-o", str(out))
    printed = pd.read_csv(out)
    expected = Predictor(root / "exports" / "reviews" / "model.onnx").predict(
        pd.DataFrame({"text": ["A warm, funny and moving film.", "A dull, tedious mess."]}))
    assert list(printed["text"]) == ["A warm, funny and moving film.", "A dull, tedious mess."]
    assert list(printed["predicted"]) == list(expected["predicted"])
    np.testing.assert_allclose(printed["proba_fresh"], expected["proba_fresh"], atol=1e-5)


def test_second_repro_is_a_no_op(reproduced: Project) -> None:
    before = _md5(reproduced.root / "models" / "adult" / "model.pt")
    proc = reproduced.run("dvc", "repro")
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout
    assert _md5(reproduced.root / "models" / "adult" / "model.pt") == before


def test_changing_one_task_learning_rate_reruns_only_its_training(restored: Project) -> None:
    """Only adult's training and the stages after it rerun, for real; every other output stays."""
    root = restored.root
    before = {rel: _md5(root / rel) for rel in
              ["models/adult/model.pt", "data/processed/adult/train.npz", "data/raw/adult/train.parquet"]
              + [f"models/{task}/model.pt" for task in TASKS if task != "adult"]}
    metrics_before = json.loads((root / "reports" / "adult" / "metrics.json").read_text())
    params = restored.params()
    params["adult"]["train"]["lr"] = params["adult"]["train"]["lr"] * 2
    restored.write_params(params)
    status = json.loads(restored.run("dvc", "status", "--json").stdout)
    assert set(status) == {"train@adult"}  # the only stage whose own params changed

    ran = _stages_run(restored.run("dvc", "repro").stdout)
    downstream = {f"{stage}@adult" for stage in ("train", "evaluate", "slices", "explain", "export", "register")}
    assert {"train@adult", "evaluate@adult", "export@adult"} <= ran <= downstream, ran
    assert _md5(root / "models" / "adult" / "model.pt") != before.pop("models/adult/model.pt")
    for rel, digest in before.items():
        assert _md5(root / rel) == digest, f"{rel} changed"
    metrics_after = json.loads((root / "reports" / "adult" / "metrics.json").read_text())
    assert metrics_after["log_loss"] != metrics_before["log_loss"]  # evaluated the retrained model
    assert "Running stage" not in restored.run("dvc", "repro").stdout  # and now up to date


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name or baseline branch: its data (params, metrics)}."""
    found: dict[str, dict] = {}

    def visit(node: object) -> None:
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                found.setdefault(node["name"], node["data"])
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(shown)
    return found


def test_experiments_run_with_set_params_and_show(restored: Project) -> None:
    """`dvc exp run -S` trains with the new learning rate: the experiment records it and different test
    metrics from the baseline's, and its results land in the workspace."""
    root = restored.root
    baseline_metrics = json.loads((root / "reports" / "adult" / "metrics.json").read_text())
    baseline_lr = restored.params()["adult"]["train"]["lr"]
    assert baseline_lr != 0.003
    ran = _stages_run(restored.run("dvc", "exp", "run", "-S", "adult.train.lr=0.003", "-n", "faster-lr",
                                   "evaluate@adult").stdout)
    assert {"train@adult", "evaluate@adult"} <= ran and all(s.endswith("@adult") for s in ran), ran
    experiments = _experiments(json.loads(restored.run("dvc", "exp", "show", "--json").stdout))
    assert {"faster-lr", "main"} <= set(experiments), sorted(experiments)

    def lr(data: dict) -> float:
        return data["params"]["params.yaml"]["data"]["adult"]["train"]["lr"]

    def metrics(data: dict) -> dict:
        return data["metrics"]["reports/adult/metrics.json"]["data"]

    assert lr(experiments["faster-lr"]) == 0.003 and lr(experiments["main"]) == baseline_lr
    assert metrics(experiments["main"])["log_loss"] == pytest.approx(baseline_metrics["log_loss"])
    assert metrics(experiments["faster-lr"])["log_loss"] != pytest.approx(baseline_metrics["log_loss"], rel=1e-9)
    # the workspace holds the experiment's result
    assert restored.params()["adult"]["train"]["lr"] == 0.003
    workspace = json.loads((root / "reports" / "adult" / "metrics.json").read_text())
    assert workspace["log_loss"] == pytest.approx(metrics(experiments["faster-lr"])["log_loss"])


def test_push_then_pull_into_a_fresh_clone_restores_data(restored: Project, tmp_path) -> None:
    reproduced = restored
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
