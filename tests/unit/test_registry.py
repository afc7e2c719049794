"""Champion/challenger promotion against a real MLflow registry (SQLite in a temp dir): first version,
better, worse, tie within margin, re-scoring on a changed test split, and a crash in the middle of
registering (the champion's artifacts are gone) that must leave both aliases where they were."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.unit.conftest import classifier_target, make_tabular, raw_frame
from torchcycle.errors import TorchcycleError
from torchcycle.registry import CHALLENGER, CHAMPION, current_alias, decide, register_and_decide
from torchcycle.serving import Predictor, load_registered
from torchcycle.stages.register import score, score_registered

NAME = "torchcycle-unit"
TARGET = classifier_target(["no", "yes"])  # the test split's fitted target: same classes as the model's


@pytest.fixture(scope="module")
def tabular():
    return make_tabular()


# --------------------------------------------------------------------------- the rule alone
@pytest.mark.parametrize(("metric", "challenger", "champion", "promoted", "why"), [
    ("roc_auc", 0.80, None, True, "first version"),
    ("roc_auc", 0.85, 0.80, True, "improves"),
    ("roc_auc", 0.79, 0.80, False, "does not improve"),
    ("roc_auc", 0.8005, 0.80, False, "tie within margin"),
    ("roc_auc", 0.80, 0.80, False, "does not improve"),
    ("log_loss", 0.30, 0.40, True, "improves"),  # lower is better
    ("log_loss", 0.45, 0.40, False, "does not improve"),
    ("roc_auc", float("nan"), 0.80, False, "no finite"),
    ("roc_auc", None, None, True, "first version (its roc_auc is undefined)"),
    ("roc_auc", 0.70, float("nan"), True, "champion has no finite"),
    ("rmse", 95.0, 100.0, True, "improves"),  # regression errors: lower is better
    ("rmse", 100.0005, 100.0, False, "does not improve"),
])  # fmt: skip
def test_decision_rule(metric, challenger, champion, promoted, why) -> None:
    champion_version = None if why.startswith("first version") else "1"
    d = decide(metric, 0.001, "2", challenger, champion_version, champion)
    assert d.promoted is promoted and why in d.reason
    tags = d.tags()
    assert tags["decision.promoted"] == str(promoted).lower() and "at least 0.001" in tags["decision.rule"]


def test_the_target_types_direction_overrides_the_default() -> None:
    # the register stage passes the target type's own direction (r2: higher is better)
    assert decide("r2", 0.01, "2", 0.90, "1", 0.80, higher_is_better=True).promoted
    assert not decide("r2", 0.01, "2", 0.90, "1", 0.80, higher_is_better=False).promoted
    assert "higher is better" in decide("r2", 0.01, "2", 0.9, None, None, higher_is_better=True).rule


# --------------------------------------------------------------------------- a real registry
@pytest.fixture
def client(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, value)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("unit", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    yield MlflowClient(uri, uri)
    mlflow.set_tracking_uri("")
    mlflow.set_registry_uri("")


def _log(blob: bytes):
    import mlflow
    import onnx

    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(onnx.load_from_string(blob), name="onnx", pip_requirements=["onnxruntime"],
                                     save_as_external_data=False)
    return info, run.info.run_id


def _register(client, blob, value, split="A", rescore=None):
    info, run_id = _log(blob)
    _register.last_info = info
    return register_and_decide(client, NAME, info.model_uri, run_id, "roc_auc", 0.001, value, split,
                               rescore=rescore or (lambda uri: pytest.fail("should use the recorded score")),
                               model_id=info.model_id)


def _aliases(client) -> tuple[str | None, str | None]:
    return tuple(None if (v := current_alias(client, NAME, a)) is None else str(v.version)
                 for a in (CHAMPION, CHALLENGER))  # type: ignore[return-value]


def test_first_worse_tie_better_then_a_crash_keeps_the_champion(client, tabular) -> None:
    import mlflow

    blob = tabular[2]
    _, d1 = _register(client, blob, 0.80)
    assert d1.promoted and d1.reason == "first version" and _aliases(client) == ("1", "1")

    _, d2 = _register(client, blob, 0.79)
    assert not d2.promoted and _aliases(client) == ("1", "2")
    assert d2.champion_score == pytest.approx(0.80) and d2.champion_score_source == "recorded on the same test split"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["decision.promoted"] == "false" and tags["decision.champion_version"] == "1"

    _, d3 = _register(client, blob, 0.8005)
    assert not d3.promoted and "tie within margin" in d3.reason and _aliases(client) == ("1", "3")

    _, d4 = _register(client, blob, 0.82)
    champion_info = _register.last_info
    assert d4.promoted and _aliases(client) == ("4", "4")
    assert client.get_model_version(NAME, "4").tags["decision.champion_score"] == "0.800000"

    # a new test split needs the champion re-scored; its artifacts are gone, so registering fails
    champion_model = mlflow.get_logged_model(champion_info.model_id)
    shutil.rmtree(Path(champion_model.artifact_location.removeprefix("file://")))
    frame, y = raw_frame(40, seed=9), np.arange(40) % 2
    with pytest.raises(TorchcycleError, match="cannot re-score the champion models:/torchcycle-unit/4"):
        _register(client, blob, 0.99, split="B",
                  rescore=lambda uri: score_registered(uri, frame, y, TARGET, "roc_auc"))
    assert _aliases(client) == ("4", "4")  # neither alias moved
    crashed = client.get_model_version(NAME, "5")
    assert "decision.promoted" not in crashed.tags


def test_champion_is_rescored_on_a_changed_test_split(client, tabular) -> None:
    blob = tabular[2]
    frame, y = raw_frame(80, seed=4), np.arange(80) % 2
    actual = score(Predictor(blob), frame, y, TARGET, "roc_auc")
    # a model of other classes (or another target) is not scored on these labels
    assert score(Predictor(blob), frame, y, classifier_target(["no", "maybe"]), "roc_auc") is None
    _register(client, blob, 0.99, split="old")  # a score measured on other rows must not be reused

    _, d = _register(client, blob, actual + 0.01, split="new",
                     rescore=lambda uri: score_registered(uri, frame, y, TARGET, "roc_auc"))
    assert d.champion_score_source == "re-scored on this test split"
    assert d.champion_score == pytest.approx(actual) and d.promoted

    predictor, info = load_registered("unit", "champion")  # what `torchcycle predict` loads
    assert info["version"] == "2" and predictor.classes == ["no", "yes"]
    assert math.isfinite(float(predictor.outputs(frame)[0, 1]))


def test_a_regression_champion_is_scored_on_the_splits_targets_in_target_units() -> None:
    from types import SimpleNamespace

    import torch

    from tests.unit.conftest import OUTPUT
    from torchcycle.config import TabularPreprocess
    from torchcycle.export import onnx as X
    from torchcycle.kinds.tabular import TABULAR
    from torchcycle.kinds.tabular import preprocess as pp
    from torchcycle.models.mlp import TabularMLP
    from torchcycle.targets.regression import REGRESSION

    frame = raw_frame(80, seed=5)
    pay = frame["hours"] * 10
    state = pp.fit_tabular(frame, ["age", "hours"], ["city", "plan"], TabularPreprocess())
    champion_target = REGRESSION.fit(pay * 3 + 100, SimpleNamespace(target="pay"))  # trained on other rows
    split_target = REGRESSION.fit(pay, SimpleNamespace(target="pay"))
    torch.manual_seed(0)
    graph = TABULAR.onnx_module(TabularMLP(2, pp.cardinalities(state), 1, [8]).eval(),
                                REGRESSION.head(champion_target)).eval()
    inputs = tuple(torch.from_numpy(a) for a in pp.transform_tabular(frame, state))
    blob = X.export_onnx(graph, inputs, TABULAR.input_names(state), OUTPUT,
                         X.metadata_for(state, champion_target, TABULAR.describe_input(state)))
    predictor = Predictor(blob)
    predicted = predictor.outputs(frame)[:, 0]

    rmse = score(predictor, frame, REGRESSION.encode(pay, split_target), split_target, "rmse")

    assert rmse == pytest.approx(float(np.sqrt(np.mean((predicted - pay.to_numpy()) ** 2))), rel=1e-4)


# --------------------------------------------------------------------------- gates
def test_gate_measures() -> None:
    from torchcycle.registry import ece_gate, fairness_gate, slice_drop_gate

    assert ece_gate(0.05, {"ece": 0.03}).passed and not ece_gate(0.02, {"ece": 0.03}).passed
    skipped = ece_gate(0.05, {"rmse": 3.0})  # a regression target has no ECE
    assert skipped.passed and skipped.skipped and skipped.verdict == "skipped" and "no expected calibration" in skipped.detail

    def report(metric="roc_auc", **levels):
        return {"slices": [{"column": "sex", "level": k, "metrics": {metric: v}} for k, v in levels.items()]}

    champion = report(Female=0.90, Male=0.85)
    drop = slice_drop_gate(0.02, "roc_auc", True, report(Female=0.87, Male=0.86, Other=0.1), champion)
    assert not drop.passed and drop.value == pytest.approx(0.03) and "sex=Female" in drop.detail
    assert slice_drop_gate(0.05, "roc_auc", True, report(Female=0.87, Male=0.86), champion).passed
    # lower is better: a higher error in a slice is the drop
    errors = slice_drop_gate(0.5, "rmse", False, report("rmse", Female=2.0, Male=3.0),
                             report("rmse", Female=1.0, Male=3.0))
    assert not errors.passed and errors.value == pytest.approx(1.0)
    none = slice_drop_gate(0.01, "roc_auc", True, report(Female=0.1), None, "no champion to compare with")
    assert none.passed and none.skipped and "no champion" in none.detail
    assert slice_drop_gate(0.01, "roc_auc", True, report(Female=0.1), report(Male=0.9)).skipped  # nothing in common

    fair = {"fairness": {"sex": {"demographic_parity_difference": 0.18, "equalized_odds_difference": 0.09},
                         "race": {"demographic_parity_difference": 0.11, "equalized_odds_difference": None}}}
    gate = fairness_gate(0.15, fair)
    assert not gate.passed and gate.value == pytest.approx(0.18) and "demographic_parity_difference over sex" in gate.detail
    assert fairness_gate(0.2, fair).passed and fairness_gate(0.1, {"fairness": {}}).skipped


def test_gates_off_are_not_computed() -> None:
    from torchcycle.config import Gates
    from torchcycle.registry import compute_gates

    def no_download():
        raise AssertionError("the champion's slices are fetched only when the slice gate is on")

    assert compute_gates(Gates(), "roc_auc", True, {"ece": 0.5}, {}, no_download) == []
    gates = compute_gates(Gates(max_ece=0.1, max_fairness_difference=0.3), "roc_auc", True, {"ece": 0.05}, {},
                          no_download)
    assert [(g.name, g.verdict) for g in gates] == [("max_ece", "pass"), ("max_fairness_difference", "skipped")]


def test_a_failing_gate_keeps_the_champion_but_not_the_first_version_out() -> None:
    from torchcycle.registry import Gate

    failing = Gate("max_ece", 0.08, 0.05, False, "ECE 0.080000 > limit 0.05")
    passing = Gate("max_fairness_difference", 0.1, 0.2, True, "ok")
    first = decide("roc_auc", 0.001, "1", 0.80, None, None, gates=[failing, passing])
    assert first.promoted and "max_ece" in first.reason and first.warnings == ["gate max_ece failed: ECE 0.080000 > limit 0.05"]
    kept = decide("roc_auc", 0.001, "2", 0.90, "1", 0.80, gates=[failing, passing])
    assert not kept.promoted and kept.reason.startswith("gate(s) failed: max_ece (0.080000 > limit 0.05)")
    assert "max_fairness_difference" not in kept.reason and "every gate passes" in kept.rule
    worse = decide("roc_auc", 0.001, "2", 0.70, "1", 0.80, gates=[failing])
    assert not worse.promoted and "does not improve" in worse.reason and "max_ece" in worse.reason
    assert decide("roc_auc", 0.001, "2", 0.90, "1", 0.80, gates=[passing]).promoted
    as_dict = kept.as_dict()
    assert as_dict["gates"][0] == {"name": "max_ece", "value": 0.08, "limit": 0.05, "passed": False, "detail":
                                   "ECE 0.080000 > limit 0.05", "skipped": False, "verdict": "fail"}
    tags = kept.tags()
    assert tags["gate.max_ece.value"] == "0.080000" and tags["gate.max_ece.passed"] == "false"
    assert tags["gate.max_fairness_difference.passed"] == "true"


def _log_with_slices(blob: bytes, slices: dict | None):
    import mlflow
    import onnx

    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(onnx.load_from_string(blob), name="onnx", pip_requirements=["onnxruntime"],
                                     save_as_external_data=False)
        if slices is not None:
            mlflow.log_dict(slices, "slices/slices.json")
    return info, run.info.run_id


def test_gates_on_a_real_registry(client, tabular) -> None:
    from torchcycle.config import Gates
    from torchcycle.registry import compute_gates
    from torchcycle.stages.register import champion_slices

    def slices(female: float) -> dict:
        return {"slices": [{"column": "sex", "level": "Female", "rows": 50, "metrics": {"roc_auc": female}},
                           {"column": "sex", "level": "Male", "rows": 50, "metrics": {"roc_auc": 0.80}}],
                "fairness": {"sex": {"demographic_parity_difference": 0.1, "equalized_odds_difference": 0.05}}}

    seen = []

    def register(score_value, ece, report):
        info, run_id = _log_with_slices(tabular[2], report)
        cfg = Gates(max_ece=0.05, max_slice_drop=0.02, max_fairness_difference=0.2)

        def gates(champion):
            seen.append(None if champion is None else str(champion.version))
            return compute_gates(cfg, "roc_auc", True, {"ece": ece}, report, lambda: champion_slices(champion, "A"))

        return register_and_decide(client, NAME, info.model_uri, run_id, "roc_auc", 0.001, score_value, "A",
                                   rescore=lambda uri: pytest.fail("recorded"), model_id=info.model_id, gates=gates)

    _, d1 = register(0.80, 0.02, slices(0.85))
    assert d1.promoted and _aliases(client) == ("1", "1")
    assert [(g.name, g.verdict) for g in d1.gates] == [("max_ece", "pass"), ("max_slice_drop", "skipped"),
                                                       ("max_fairness_difference", "pass")]

    # better on the metric, but badly calibrated: the champion stays and the reason names the gate
    _, d2 = register(0.90, 0.09, slices(0.85))
    assert not d2.promoted and _aliases(client) == ("1", "2") and "max_ece" in d2.reason
    assert "max_slice_drop" not in d2.reason  # same slices as the champion's: passes
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.max_ece.value"] == "0.090000" and tags["gate.max_ece.passed"] == "false"
    assert tags["gate.max_slice_drop.passed"] == "true" and tags["gate.max_slice_drop.value"] == "0.000000"
    assert tags["gate.max_fairness_difference.value"] == "0.100000" and tags["decision.promoted"] == "false"

    # better overall, worse on one slice than the champion's same slice (downloaded from its run)
    _, d3 = register(0.90, 0.02, slices(0.80))
    assert not d3.promoted and "max_slice_drop" in d3.reason and _aliases(client) == ("1", "3")
    assert d3.gates[1].value == pytest.approx(0.05) and "sex=Female" in d3.gates[1].detail

    # every gate passes: promoted
    _, d4 = register(0.90, 0.02, slices(0.86))
    assert d4.promoted and _aliases(client) == ("4", "4") and all(g.passed for g in d4.gates)
    assert client.get_model_version(NAME, "4").tags["gate.max_ece.passed"] == "true"

    # a challenger without a slices report: nothing to compare, the slice and fairness gates pass with a note
    _, d5 = register(0.95, 0.02, None)
    assert d5.promoted and [g.verdict for g in d5.gates] == ["pass", "skipped", "skipped"]
    # ... and when it is the champion, the next challenger's slice gate says the champion has none
    _, d6 = register(0.99, 0.02, slices(0.5))
    assert d6.promoted and d6.gates[1].skipped and "champion (version 5) has no slices report" in d6.gates[1].detail
    assert seen == [None, "1", "1", "1", "4", "5"]
