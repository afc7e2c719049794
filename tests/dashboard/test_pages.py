"""Every dashboard page through streamlit's AppTest: an empty project, a trained one (a classifier and a
regression model on tables, a classifier on images), predictions through the form, the CSV upload and the
image upload equal to the CLI's, and bad input answered in the page."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import TASKS

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
PAGES = ("overview", "experiments", "model", "explain", "predict", "dataset")
TITLES = {"overview": "Overview", "experiments": "Experiments", "model": "Model", "explain": "Explain",
          "predict": "Predict", "dataset": "Data"}


def open_page(page: str, task: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    at.session_state["task"] = task
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == TITLES[page]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def form_record(at: AppTest) -> dict:
    """What the Predict page's form holds, column by column, as a CSV for the CLI would."""
    record = {w.key.removeprefix("num_"): w.value for w in at.number_input if w.key.startswith("num_")}
    record.update({w.key.removeprefix("cat_"): w.value for w in at.selectbox if w.key.startswith("cat_")})
    record.update({w.key.removeprefix("date_"): w.value.isoformat() for w in at.date_input if w.key.startswith("date_")})
    return record


def cli_predict(project, task: str, file: Path) -> pd.DataFrame:
    out = project.run("torchcycle", "predict", "--task", task, "--input", str(file))
    return pd.read_csv(io.StringIO(out.stdout))


# --------------------------------------------------------------------------- before `make run`
def test_every_page_says_what_to_run_in_an_empty_project(empty_project: Path, at_root) -> None:
    at_root(empty_project)
    for task in TASKS:
        for page in PAGES:
            at = open_page(page, task)
            assert "make run" in texts(at.info), (task, page, texts(at.info))
            assert not at.error
    assert not (empty_project / "mlflow.db").exists(), "viewing must not create an MLflow store"


# --------------------------------------------------------------------------- a trained project
@pytest.mark.slow
def test_every_page_renders_with_a_trained_project(trained, at_root) -> None:
    at_root(trained.root)
    for task in TASKS:
        for page in PAGES:
            at = open_page(page, task)
            assert not at.error, (task, page, texts(at.error))
            assert "make run" not in texts(at.info), (task, page)
        overview = open_page("overview", task)
        champions = [m.value for m in overview.metric if m.label == "Champion"]
        assert champions and all(v.startswith("v") for v in champions)
    model = open_page("model", "adult")
    accuracy = next(m.value for m in model.metric if m.label == "accuracy")
    # the champion scored now on the test split equals what its own evaluate stage recorded on that split
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{trained.root / 'mlflow.db'}"
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("torchcycle-adult",
                                                                                           "champion")
    recorded = MlflowClient(tracking_uri=uri).get_run(champion.run_id).data.metrics["test_accuracy"]
    assert float(accuracy) == pytest.approx(recorded, abs=6e-4)  # shown with three decimals
    assert "misclassified of" in texts(model.caption)
    experiments = open_page("experiments", "adult")
    assert "Pick at least two" not in texts(experiments.info), "adult has two runs to compare"
    assert len(experiments.multiselect(key="exp_compare").value) == 2


@pytest.mark.slow
def test_form_prediction_equals_the_cli(trained, at_root, tmp_path: Path) -> None:
    at_root(trained.root)
    at = open_page("predict", "adult")
    record = form_record(at)
    at.number_input(key="num_age").set_value(47.0)
    record["age"] = 47.0
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert "Prediction:" in texts(at.success)
    shown = at.dataframe[0].value.set_index("outcome")["probability"]

    file = tmp_path / "row.csv"
    pd.DataFrame([record]).to_csv(file, index=False)
    cli = cli_predict(trained, "adult", file)
    for name, p in shown.items():
        assert cli.loc[0, f"proba_{name}"] == pytest.approx(p, abs=2e-6)
    assert f"**{cli.loc[0, 'predicted']}**" in texts(at.success)


@pytest.mark.slow
def test_out_of_range_form_value_gets_a_message_and_the_page_keeps_working(trained, at_root) -> None:
    at_root(trained.root)
    at = open_page("predict", "adult")
    at.number_input(key="num_age").set_value(500.0)
    at.button[0].click().run()
    assert not at.exception
    assert "outside the training range" in texts(at.error) and "age" in texts(at.error)
    assert not at.success
    at.number_input(key="num_age").set_value(40.0)
    at.button[0].click().run()
    assert not at.error and "Prediction:" in texts(at.success)


@pytest.mark.slow
def test_csv_batch_upload_and_bad_files(trained, at_root) -> None:
    at_root(trained.root)
    raw = pd.read_parquet(trained.root / "data" / "raw" / "adult" / "test.parquet").head(5)
    at = open_page("predict", "adult")

    def upload(name: str, blob: bytes) -> AppTest:
        at.file_uploader(key="predict_csv").set_value((name, blob, "text/csv"))
        return at.run()

    upload("good.csv", raw.to_csv(index=False).encode())  # with the target column, which is ignored
    assert not at.exception and not at.error, texts(at.error)
    assert "5 row(s) predicted" in texts(at.success)
    assert at.get("download_button"), "the result can be downloaded"
    result = at.dataframe[-1].value
    assert list(result.columns[-3:]) == ["predicted", "proba_<=50K", "proba_>50K"]

    upload("missing.csv", raw.drop(columns=["age"]).to_csv(index=False).encode())
    assert "missing column(s) ['age']" in texts(at.error)
    upload("extra.csv", raw.assign(shoe_size=42).to_csv(index=False).encode())
    assert "unexpected column(s) ['shoe_size']" in texts(at.error)
    upload("notcsv.csv", b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe")
    assert at.error and not at.exception
    upload("text.csv", raw.assign(age="old").to_csv(index=False).encode())
    assert "not a number" in texts(at.error)
    upload("huge.csv", b"a" * (21 * 1024 * 1024))
    assert "limit" in texts(at.error)
    upload("range.csv", raw.assign(age=[30, 40, 500, 50, 60]).to_csv(index=False).encode())
    assert "1 row(s) hold values outside the training range" in texts(at.warning)
    assert not at.error and "5 row(s) predicted" in texts(at.success)


@pytest.mark.slow
def test_uploaded_image_gets_the_cli_prediction_and_bad_images_get_messages(trained, at_root) -> None:
    at_root(trained.root)
    image = min((trained.root / "data" / "raw" / "mnist").rglob("*.png"))
    at = open_page("predict", "mnist")

    def upload(name: str, blob: bytes) -> AppTest:
        at.file_uploader(key="predict_image").set_value((name, blob, "image/png"))
        return at.run()

    upload(image.name, image.read_bytes())
    assert not at.exception and not at.error, texts(at.error)
    cli = cli_predict(trained, "mnist", image)
    assert f"Prediction: **{cli.loc[0, 'predicted']}**" in texts(at.success)
    captions = [c for img in at.get("image") for c in img.captions]
    assert f"Grad-CAM for '{cli.loc[0, 'predicted']}'" in captions and "as the model sees it" in captions

    for name, blob in (("notes.png", b"these are not pixels"), ("cut.png", image.read_bytes()[:60])):
        upload(name, blob)
        assert "not a readable PNG or JPEG" in texts(at.error) and not at.exception
    upload("big.png", b"\x89PNG" + b"\0" * (6 * 1024 * 1024))
    assert "limit" in texts(at.error)
    upload(image.name, image.read_bytes())
    assert not at.error and "Prediction:" in texts(at.success)


@pytest.mark.slow
def test_local_shap_adds_up_to_the_served_models_log_odds(trained, at_root) -> None:
    """The explanation is of the model that predicts: SHAP values + expected value = the ONNX model's
    log-odds for the same row (torch weights and ONNX graph of one registered version)."""
    at_root(trained.root)
    from dashboards import context, data

    from torchcycle.kinds.tabular.dashboard import local_shap

    model = data.served("adult")
    assert model is not None and model.version is not None
    records, _ = data.raw_test("adult")
    row = records.iloc[[7]]
    shap = local_shap(context.page("adult", model), row)
    p = model.predictor.outputs(row)[0]
    assert shap.values.sum() + shap.expected == pytest.approx(shap.output, abs=1e-3)
    assert shap.output == pytest.approx(np.log(p[1] / p[0]), abs=1e-3)
    at = open_page("explain", "adult")
    at.number_input(key="explain_row").set_value(7).run()
    assert not at.exception and "Actual" in texts(at.markdown)


# --------------------------------------------------------------------------- what the stages reported
def report(project, task: str, name: str) -> dict:
    import json

    return json.loads((project.root / "reports" / task / name).read_text())


def shown_slices(at: AppTest) -> pd.DataFrame:
    """The Model page's table of the chosen slice column (level, rows, metrics and gaps)."""
    return next(df.value for df in at.dataframe if {"level", "rows"} <= set(df.value.columns)
                and any(c.startswith("gap ") for c in df.value.columns))


@pytest.mark.slow
def test_model_page_shows_calibration_threshold_and_confidence_intervals(trained, at_root) -> None:
    at_root(trained.root)
    metrics = report(trained, "adult", "metrics.json")
    at = open_page("model", "adult")
    at.selectbox(key="model_version").set_value("workspace").run()
    assert not at.exception and not at.error, texts(at.error)
    markdown = texts(at.markdown)
    assert f"**{metrics['ece_before']:.4f} → {metrics['ece']:.4f}**" in markdown, "ECE before → after"
    assert metrics["calibration"]["method"] in markdown
    threshold = metrics["threshold"]
    assert f"Decision threshold **{threshold['value']:.3f}**" in markdown
    at_threshold = next(df.value for df in at.dataframe if "at the threshold" in df.value.columns).set_index("metric")
    assert at_threshold.loc["accuracy", "at the threshold"] == pytest.approx(threshold["accuracy_at_threshold"])
    assert at_threshold.loc["accuracy", "at 0.5"] == pytest.approx(threshold["accuracy_at_0.5"])
    captions = texts(at.caption)
    for metric in ("accuracy", "roc_auc", "log_loss"):
        ci = metrics["confidence_intervals"][metric]
        assert f"95% CI {ci['low']:.3f}–{ci['high']:.3f}" in captions, metric

    diamonds = report(trained, "diamonds", "metrics.json")
    regression = open_page("model", "diamonds")
    regression.selectbox(key="model_version").set_value("workspace").run()
    assert not regression.exception
    ci = diamonds["confidence_intervals"]["rmse"]
    assert f"95% CI {number(ci['low'])}–{number(ci['high'])}" in texts(regression.caption)
    assert "Expected calibration error" not in texts(regression.markdown)


@pytest.mark.slow
def test_model_page_shows_slices_and_fairness(trained, at_root) -> None:
    at_root(trained.root)
    slices = report(trained, "adult", "slices.json")
    at = open_page("model", "adult")
    at.selectbox(key="model_version").set_value("workspace").run()
    assert at.selectbox(key="slice_column").options == slices["columns"] == ["sex", "race"]
    at.selectbox(key="slice_column").set_value("sex").run()
    assert not at.exception
    table = shown_slices(at).set_index("level")
    levels = [s["level"] for s in slices["slices"] if s["column"] == "sex"]
    assert list(table.index) == levels and {"Female", "Male"} <= set(levels)
    female = next(s for s in slices["slices"] if s["column"] == "sex" and s["level"] == "Female")
    assert table.loc["Female", "rows"] == female["rows"]
    assert table.loc["Female", "gap roc_auc"] == pytest.approx(female["gap"]["roc_auc"])
    fairness = slices["fairness"]["sex"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["demographic parity difference"] == f"{fairness['demographic_parity_difference']:.3f}"
    assert shown["equalized odds difference"] == f"{fairness['equalized_odds_difference']:.3f}"
    rates = next(df.value for df in at.dataframe if "selection_rate" in df.value.columns).set_index("level")
    assert rates.loc["Male", "selection_rate"] == pytest.approx(fairness["by_group"]["Male"]["selection_rate"])
    largest = slices["largest_gap"]
    assert f"Largest gap: **{largest['column']} = {largest['level']}**" in texts(at.warning)

    for task, expected in (("mnist", ["class", "brightness"]), ("diamonds", ["cut", "color", "clarity"])):
        page = open_page("model", task)  # the champion
        assert not page.error, (task, texts(page.error))
        written = report(trained, task, "slices.json")
        assert page.selectbox(key="slice_column").options == written["columns"] == expected, task
        for column in expected:
            page.selectbox(key="slice_column").set_value(column).run()
            assert not page.exception, (task, column)
            levels = [s["level"] for s in written["slices"] if s["column"] == column]
            assert shown_slices(page)["level"].tolist() == levels, (task, column)
        assert "demographic parity difference" not in {m.label for m in page.metric}, "no fairness: not binary"


@pytest.mark.slow
def test_model_page_shows_the_champions_model_card_and_gates(trained, at_root, monkeypatch) -> None:
    from dashboards import data

    from torchcycle.model_card import SECTIONS

    at_root(trained.root)
    registry = report(trained, "adult", "registry.json")
    champion = registry["aliases"]["champion"]
    at = open_page("model", "adult")
    assert at.selectbox(key="model_version").value == champion, "the champion is shown first"
    label = next(e.label for e in at.expander if e.label.startswith("Model card"))
    assert label == f"Model card of v{champion}"
    card = next(str(m.value) for m in at.markdown if str(m.value).startswith("# Model card"))
    assert card.startswith(f"# Model card: {registry['registered_model']} version {champion}")
    for title in SECTIONS:
        assert f"\n## {title}\n" in card, title
    gates = next(df.value for df in at.dataframe if "gate" in df.value.columns).set_index("gate")
    assert set(gates.index) == {"max_ece", "max_slice_drop", "max_fairness_difference"}
    assert (gates["limit"] == 1.0).all() and gates.loc["max_ece", "verdict"] == "pass"
    if champion == registry["version"]:  # the last registration's gates, as registry.json has them
        ece = next(g for g in registry["gates"] if g["name"] == "max_ece")
        assert gates.loc["max_ece", "value"] == pytest.approx(ece["value"], abs=1e-6)
    assert f"**v{champion}** was promoted to champion" in texts(at.markdown)

    other = next(v for v in ("1", "2") if v != champion)
    at.selectbox(key="model_version").set_value(other).run()
    assert f"Model card of v{other}" in [e.label for e in at.expander]
    monkeypatch.setattr(data, "run_text", lambda *args: None)  # a version registered before model cards
    at.run()
    assert not at.exception and f"v{other} has no model card" in texts(at.info)


# --------------------------------------------------------------------------- a regression task
def number(value: float) -> str:
    from dashboards.ui import number as shown

    return shown(value)


@pytest.mark.slow
def test_regression_form_shows_the_clis_value_and_interval(trained, at_root, tmp_path: Path) -> None:
    at_root(trained.root)
    at = open_page("predict", "diamonds")
    at.number_input(key="num_carat").set_value(0.9)
    record = form_record(at)
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)

    file = tmp_path / "row.csv"
    pd.DataFrame([record]).to_csv(file, index=False)
    cli = cli_predict(trained, "diamonds", file)
    predicted, lower, upper = (float(cli.loc[0, c]) for c in ("predicted", "lower", "upper"))
    assert lower < predicted < upper
    expected = f"price ≈ **{number(predicted)}** (90% interval {number(lower)} – {number(upper)})"
    assert expected in texts(at.success), texts(at.success)
    assert {m.label: m.value for m in at.metric}["predicted price"] == number(predicted)
    assert f"The interval ({number(lower)} – {number(upper)}) is split-conformal" in texts(at.caption)
    assert at.get("image"), "the local SHAP waterfall of the row"


@pytest.mark.slow
def test_regression_csv_batch_equals_the_cli(trained, at_root, tmp_path: Path) -> None:
    at_root(trained.root)
    from dashboards import data

    raw = data.raw_test("diamonds")[0].head(6)
    file = tmp_path / "rows.csv"
    raw.to_csv(file, index=False)
    at = open_page("predict", "diamonds")
    at.file_uploader(key="predict_csv").set_value(("rows.csv", file.read_bytes(), "text/csv")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert "6 row(s) predicted" in texts(at.success)
    result = at.dataframe[-1].value
    assert list(result.columns[-3:]) == ["predicted", "lower", "upper"]
    cli = cli_predict(trained, "diamonds", file)
    for col in ("predicted", "lower", "upper"):
        np.testing.assert_allclose(result[col].to_numpy(), cli[col].to_numpy(), rtol=1e-5)


@pytest.mark.slow
def test_regression_model_page_shows_rmse_and_largest_errors(trained, at_root) -> None:
    import json

    at_root(trained.root)
    metrics = json.loads((trained.root / "reports" / "diamonds" / "metrics.json").read_text())
    at = open_page("model", "diamonds")
    at.selectbox(key="model_version").set_value("workspace").run()
    assert not at.exception and not at.error
    shown = {m.label: m.value for m in at.metric}
    assert shown["RMSE"] == number(metrics["rmse"]) and shown["MAE"] == number(metrics["mae"])
    assert shown["coverage (90% nominal)"] == f"{metrics['interval_coverage']:.1%}"
    assert "accuracy" not in shown
    worst = at.dataframe[-1].value
    assert list(worst.columns[:6]) == ["test row", "actual", "predicted", "lower", "upper", "error"]
    errors = worst["error"].abs().to_numpy()
    assert (np.diff(errors) <= 1e-9).all(), "largest errors first"
    assert "outside their 90% interval" in texts(at.caption)
    champion = open_page("model", "diamonds")  # the registered champion, scored now through ONNX Runtime
    assert float(next(m.value for m in champion.metric if m.label == "RMSE").replace(",", "")) > 0


@pytest.mark.slow
def test_regression_explain_and_data_pages(trained, at_root) -> None:
    at_root(trained.root)
    explain = open_page("explain", "diamonds")
    assert "explained output: predicted log(price)" in texts(explain.caption)
    verdict = texts(explain.markdown)
    assert "Actual price **" in verdict and "90% interval" in verdict
    data_page = open_page("dataset", "diamonds")
    assert not data_page.error
    roles = data_page.dataframe[0].value.set_index("column")
    assert roles.loc["price", "role"] == "target" and roles.loc["carat", "role"] == "numeric"
    assert roles.loc["cut", "role"] == "categorical"
    assert "50%" in texts(data_page.caption), "the target's quantiles under its histogram"
    overview = open_page("overview", "diamonds")
    assert {"rmse", "r2"} <= {m.label for m in overview.metric}


@pytest.mark.slow
def test_a_version_for_another_target_is_not_scored(trained, at_root, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered version whose classes differ from the workspace's test labels gets a clear message,
    not metrics computed against the wrong labels."""
    at_root(trained.root)
    from dashboards import data

    monkeypatch.setattr(data, "workspace_target",
                        lambda task: {"type": "classification", "name": "income", "classes": ["no", "yes"]})
    at = open_page("model", "adult")
    assert "cannot be scored" in texts(at.warning) and "['no', 'yes']" in texts(at.warning)
    assert not at.metric and not at.exception


@pytest.mark.slow
def test_pages_read_a_remote_mlflow_server(trained, at_root, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_URI pointing at an MLflow server (on loopback) instead of the embedded store."""
    import socket
    import subprocess
    import time
    import urllib.request

    from tests.conftest import BIN, project_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{trained.root / 'mlflow.db'}",
         "--artifacts-destination", str(trained.root / "mlartifacts")],
        cwd=trained.root, env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        at_root(trained.root)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        overview = open_page("overview", "adult")
        assert f"http://127.0.0.1:{port}" in texts(overview.caption)
        assert next(m.value for m in overview.metric if m.label == "Champion").startswith("v")
        experiments = open_page("experiments", "adult")
        assert len(experiments.multiselect(key="exp_compare").value) == 2
        predict = open_page("predict", "adult")
        predict.button[0].click().run()
        assert not predict.exception and "Prediction:" in texts(predict.success)
    finally:
        server.terminate()
        server.wait(timeout=20)
