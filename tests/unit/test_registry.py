"""Champion/challenger promotion against a real MLflow registry (SQLite in a temp dir): first version,
better, worse, tie within margin, re-scoring on a changed test split, and a crash in the middle of
registering (the champion's artifacts are gone) that must leave both aliases where they were."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_export_serving import classifier_target, make_tabular, raw_frame
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

    from tests.unit.test_export_serving import OUTPUT
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
