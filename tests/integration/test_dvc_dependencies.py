"""dvc.yaml's dependencies, checked by the real `dvc repro`: on a copy of the project running the shrunken
adult task alone, change one params key at a time and check from `dvc repro`'s own report exactly which
stages ran. A stage runs when one of its declared params or deps changed; a later stage runs only when
the bytes of one of its deps changed (DVC skips it otherwise), so each expectation below says why each
stage must run. tests/unit/test_stage_params.py checks the declarations against what the stages read."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import Project, copy_project

pytestmark = pytest.mark.slow

TASK = "adult"
ALL = {"ingest", "preprocess", "train", "evaluate", "slices", "explain", "export", "register"}
AFTER_TRAIN = ALL - {"ingest", "preprocess", "train"}  # every stage that reads models/adult


def repro(project: Project) -> set[str]:
    """The stages `dvc repro` ran, from its report ("Running stage 'train@adult':")."""
    out = project.run("dvc", "repro").stdout
    return set(re.findall(rf"Running stage '(\w+)@{TASK}'", out))


@pytest.fixture(scope="module")
def adult(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = copy_project(tmp_path_factory.mktemp("dvc-deps"))
    params = project.params()
    params["tasks"] = [TASK]  # shrink(): 600 rows per file, 2 epochs
    params["evaluate"]["bootstrap_samples"] = 20
    params["explain"].update(max_rows=60, background_rows=20)
    params["export"].update(benchmark_repeats=10, benchmark_seconds=0.01)
    project.write_params(params)
    project.commit("adult only")
    assert repro(project) == ALL
    assert repro(project) == set(), "a second `dvc repro` found the pipeline out of date"
    return project


def _set(params: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    assert node.get(last) != value, f"{dotted} is already {value!r}: the case changes nothing"
    node[last] = value


CASES = [
    # read by no stage: the retraining flow's thresholds and the search space of `torchcycle tune`
    # (train logs its task's config without `tune`)
    pytest.param("retrain.min_new_samples", 123, set(), id="retrain.min_new_samples"),
    pytest.param(f"{TASK}.tune.trials", 3, set(), id="tune.trials"),
    # register is the last stage: nothing reads what it writes
    pytest.param("registry.margin", 0.5, {"register"}, id="registry.margin"),
    # export.json records the tolerance with its parity result (and fresh timings), and register reads it
    pytest.param("export.parity_tolerance", 1e-3, {"export", "register"}, id="export.parity_tolerance"),
    # slices.json records `min_rows` (and which groups were too small), and register reads it (its gates
    # and the model card); evaluate shares the `evaluate` section but does not read this key
    pytest.param("evaluate.min_slice_rows", 10, {"slices", "register"}, id="evaluate.min_slice_rows"),
    # metrics.json holds the expected calibration error binned this way, and register reads metrics.json;
    # slices shares the `evaluate` section but does not read this key
    pytest.param("evaluate.ece_bins", 10, {"evaluate", "register"}, id="evaluate.ece_bins"),
    # reports/adult/explain holds SHAP values of this many test rows, and register reads its summary
    pytest.param("explain.max_rows", 40, {"explain", "register"}, id="explain.max_rows"),
    # new weights and a new MLflow run id in models/adult: every stage that reads the model reruns; the
    # data stages do not read train's params
    pytest.param(f"{TASK}.train.lr", 0.01, {"train"} | AFTER_TRAIN, id="train.lr"),
    # preprocess does not rerun for ingest's bytes (they do not change: ingest does not use the positive
    # class) but for its own declared `source` section; ingest declares the section too, since its keys
    # with defaults cannot be declared one by one. The fitted target in data/processed names the new
    # positive class (ROC AUC scores it), so train and everything after it reruns.
    pytest.param(f"{TASK}.source.positive_class", "<=50K", ALL, id="source.positive_class"),
]


@pytest.mark.parametrize(("key", "value", "expected"), CASES)
def test_changing_one_key_reruns_exactly_the_stages_that_read_it_or_its_results(adult, key, value,
                                                                                  expected) -> None:
    repro(adult)  # up to date first, whatever an earlier case left behind
    params = adult.params()
    _set(params, key, value)
    adult.write_params(params)
    ran = repro(adult)
    assert ran == expected, f"changing {key} reran {sorted(ran)}; expected {sorted(expected)}"
