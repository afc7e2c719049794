"""Trust end to end on adult (shrunken): the real `dvc repro register@adult` writes a model card into the
run, the version's description and registry.json; then an impossible calibration gate keeps the champion
even though a clearly better challenger would win on the registry metric alone."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import Project, copy_project
from torchcycle.model_card import SECTIONS, num

pytestmark = pytest.mark.slow

UNTRAINED_LR = 1e-7  # the first model barely moves from its initial weights: the second one beats it clearly


def _client(project: Project):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project.root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _read(project: Project, rel: str) -> dict:
    return json.loads((project.root / rel).read_text())


def _card_artifact(project: Project, run_id: str) -> str:
    import mlflow

    uri = f"sqlite:///{project.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/model_card/model_card.md")
    finally:
        mlflow.set_tracking_uri("")


def _section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.M | re.S)
    assert match, f"no section {title!r} in:\n{card}"
    return match.group(1)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = copy_project(tmp_path_factory.mktemp("trust"))
    params = project.params()
    params["tasks"] = ["adult"]
    params["adult"]["train"]["lr"] = UNTRAINED_LR
    project.write_params(params)
    project.commit("adult only, a barely trained first model")
    project.run("dvc", "repro", "register@adult")
    project.commit("first model")
    return project


def test_the_first_version_carries_its_model_card(first: Project) -> None:
    report = _read(first, "reports/adult/registry.json")
    metrics = _read(first, "reports/adult/metrics.json")
    assert report["version"] == "1" and report["decision"]["promoted"] and report["gates"] == []
    card = report["model_card"]
    positions = [card.index(f"\n## {title}\n") for title in SECTIONS]
    assert positions == sorted(positions)
    # the run's artifact is the same text, and the version's description points to it
    assert _card_artifact(first, report["run_id"]) == card
    version = _client(first).get_model_version("torchcycle-adult", "1")
    assert report["model_card_uri"] in version.description and "Promoted to champion" in version.description
    # what the card says comes from the files
    assert re.search(rf"Test ECE {re.escape(num(metrics['ece']))}\b", _section(card, "Calibration"))
    assert "Teaching and benchmarking" in _section(card, "Intended use and limits")
    lock = yaml.safe_load((first.root / "dvc.lock").read_text())["stages"]
    raw_md5 = next(o["md5"] for o in lock["ingest@adult"]["outs"] if o["path"].startswith("data/raw"))
    assert raw_md5 in _section(card, "Data")
    slices = _read(first, "reports/adult/slices.json")
    if slices.get("largest_gap"):
        assert f"gap {num(slices['largest_gap']['gap'])}" in _section(card, "Slices and fairness")
    export = _read(first, "reports/adult/export.json")
    assert f"ONNX Runtime {num(export['benchmark']['batch1']['onnxruntime_ms'])} ms" in _section(card, "Export")


def test_an_impossible_calibration_gate_keeps_the_champion(first: Project) -> None:
    params = first.params()
    params["registry"]["gates"]["max_ece"] = 1e-9
    params["registry"]["margin"] = 0.0  # any improvement would do on the metric alone
    params["adult"]["train"]["lr"] = 0.00066  # a real training run: a new, far better challenger
    first.write_params(params)
    proc = first.run("dvc", "repro", "register@adult")
    assert "Running stage 'train@adult'" in proc.stdout and "Running stage 'register@adult'" in proc.stdout

    report = _read(first, "reports/adult/registry.json")
    metrics = _read(first, "reports/adult/metrics.json")
    decision = report["decision"]
    assert report["version"] == "2" and not decision["promoted"]
    assert report["aliases"] == {"challenger": "2", "champion": "1"}
    assert decision["challenger_score"] > decision["champion_score"], "the metric alone should promote"
    assert decision["reason"].startswith("gate(s) failed: max_ece") and "the metric alone would promote" in decision["reason"]
    (gate,) = report["gates"]
    assert gate["name"] == "max_ece" and gate["verdict"] == "fail" and not gate["passed"]
    assert gate["value"] == pytest.approx(metrics["ece"]) and gate["limit"] == 1e-9

    client = _client(first)
    assert str(client.get_model_version_by_alias("torchcycle-adult", "champion").version) == "1"
    tags = client.get_model_version("torchcycle-adult", "2").tags
    assert tags["gate.max_ece.passed"] == "false" and float(tags["gate.max_ece.value"]) == pytest.approx(metrics["ece"], abs=1e-6)

    card = report["model_card"]
    for title in SECTIONS:
        assert f"\n## {title}\n" in card
    assert re.search(rf"Test ECE {re.escape(num(metrics['ece']))}\b", _section(card, "Calibration"))
    promotion = _section(card, "Promotion decision")
    assert re.search(rf"\| max_ece \| {re.escape(num(metrics['ece']))} \| 1e-09 \| fail \|", promotion)
    assert "Outcome: not promoted" in promotion
    assert _card_artifact(first, report["run_id"]) == card
