"""What the trained built-in models do, in the spirit of behavioural test suites (CheckList, Ribeiro et al.
2020): invariance (a feature the model must ignore barely moves its answer), directional expectations
(more of something that helps never hurts on average) and minimum functionality (each task's champion
clearly beats a trivial baseline on its test split).

The models are the real ones: `dvc repro` on a copy of the project, adult on all of its rows for a few
epochs, mnist and diamonds shrunken, queried through each task's registered champion (the ONNX model and
its preprocessing, as served)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TASKS, Project, copy_project

pytestmark = pytest.mark.slow

# minimum functionality: by how much each champion must beat the trivial model on the test split
ACCURACY_MARGIN = {"adult": 0.05, "mnist": 0.5, "reviews": 0.1}  # accuracy above the majority class's share
RMSE_SHARE = {"diamonds": 0.5}  # RMSE at most this share of the mean predictor's RMSE
INVARIANCE_TOLERANCE = 0.01  # mean |change in P(>50K)| when fnlwgt moves by 5%


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, module_mlflow_env: None) -> Iterator[Project]:
    project = copy_project(tmp_path_factory.mktemp("behaviour"))
    params = project.params()
    del params["adult"]["source"]["max_rows"]  # every row of both official files
    params["adult"]["train"]["epochs"] = 3
    params["mnist"]["source"]["max_images"] = 1500
    params["mnist"]["train"]["epochs"] = 4
    params["diamonds"]["source"]["max_rows"] = 4000
    params["diamonds"]["train"]["epochs"] = 6
    del params["reviews"]["source"]["max_rows"]  # every snippet: the default model trains in seconds
    params["reviews"]["preprocess"]["vocab_size"] = 12000
    for task in TASKS:
        params[task]["train"]["num_threads"] = 1
    params["explain"].update(max_rows=20, background_rows=10, local_examples=0, examples_per_class=0)
    params["evaluate"]["bootstrap_samples"] = 0
    params["export"].update(benchmark_repeats=10, benchmark_seconds=0.01)
    project.write_params(params)
    project.commit("behaviour params")
    project.run("dvc", "repro")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlflow.db'}"  # module_mlflow_env undoes it
    yield project


def champion(project: Project, task: str):
    from torchcycle.serving import load_registered

    predictor, info = load_registered(task, tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}")
    assert info["alias"] == "champion"
    return predictor


def split_rows(project: Project, task: str, split: str = "test") -> tuple[pd.DataFrame, np.ndarray]:
    """A split's raw rows (or image paths) and encoded targets, as the evaluate stage scored them."""
    from torchcycle.config import load_params
    from torchcycle.kinds import kind_of
    from torchcycle.paths import TaskPaths

    kind = kind_of(load_params(project.params_file).task(task))
    return kind.raw_inputs(TaskPaths(task, project.root), split)


@pytest.fixture(scope="module")
def adult(trained: Project) -> tuple:
    rows, y = split_rows(trained, "adult")
    return champion(trained, "adult"), rows.drop(columns="income"), y


def p_high(predictor, rows: pd.DataFrame) -> np.ndarray:
    return predictor.predict(rows)["proba_>50K"].to_numpy()


# --------------------------------------------------------------------------- invariance
@pytest.mark.xfail(strict=False, reason="model finding: the high-frequency periodic embedding also reacts to "
                   "fnlwgt; measured mean |change| 0.0115 for -5% (3 epochs), max 0.18")
def test_fnlwgt_noise_barely_moves_the_income_prediction(adult: tuple) -> None:
    """fnlwgt is the census sampling weight, not a property of the person: a 5% change either way
    must not change the answer."""
    predictor, rows, _ = adult
    base = p_high(predictor, rows)
    for factor in (0.95, 1.05):
        moved = rows.assign(fnlwgt=(rows["fnlwgt"] * factor).round())
        change = np.abs(p_high(predictor, moved) - base)
        assert change.mean() < INVARIANCE_TOLERANCE, (factor, change.mean(), change.max())


# --------------------------------------------------------------------------- directional expectations
@pytest.mark.parametrize(("column", "step", "cap"), [
    ("education-num", 2, 16),
    pytest.param("capital-gain", 5_000, None, marks=pytest.mark.xfail(strict=True, reason=(
        "model finding: adult's periodic numeric embedding (sigma 12.8) memorises exact capital-gain values "
        "(5013 and 4865: never >50K; 5178: always), so +$5,000 lowers P(>50K) by 6 points on average"))),
])  # fmt: skip
def test_more_education_or_capital_gain_never_lowers_the_income_prediction(adult: tuple, column: str, step: int,
                                                                         cap: int | None) -> None:
    predictor, rows, _ = adult
    if cap is not None:  # stay inside the scale the model was trained on (education-num: 1 to 16)
        rows = rows[rows[column] + step <= cap]
    change = p_high(predictor, rows.assign(**{column: rows[column] + step})) - p_high(predictor, rows)
    assert change.mean() > 0, (column, change.mean())
    assert (change < -0.05).mean() < 0.05, (column, "rows whose P(>50K) falls by over 5 points")


def test_a_larger_diamond_is_predicted_to_cost_more(trained: Project) -> None:
    predictor = champion(trained, "diamonds")
    rows, _ = split_rows(trained, "diamonds")
    rows = rows.drop(columns="price")
    base = predictor.predict(rows)["predicted"].to_numpy()
    heavier = predictor.predict(rows.assign(carat=rows["carat"] * 1.2))["predicted"].to_numpy()
    assert (heavier - base).mean() > 0 and np.median(heavier / base) > 1.0
    assert (heavier < base).mean() < 0.1, "diamonds predicted cheaper when 20% heavier"


# --------------------------------------------------------------------------- minimum functionality
@pytest.fixture(scope="module")
def reviews(trained: Project) -> tuple:
    rows, y = split_rows(trained, "reviews")
    return champion(trained, "reviews"), rows, y


def p_fresh(predictor, texts: list[str]) -> np.ndarray:
    return predictor.predict(pd.DataFrame({"text": texts}))["proba_fresh"].to_numpy()


def test_praise_raises_and_scorn_lowers_the_fresh_probability(reviews: tuple) -> None:
    """Directional: a sentence of praise appended to a review never makes it read as more rotten on
    average, a sentence of scorn never as more fresh."""
    predictor, rows, _ = reviews
    texts = rows["text"].head(400).tolist()
    base = p_fresh(predictor, texts)
    praised = p_fresh(predictor, [f"{t} A moving, beautifully acted film." for t in texts])
    scorned = p_fresh(predictor, [f"{t} A dull, tedious mess." for t in texts])
    assert (praised - base).mean() > 0.05 and (praised < base - 0.05).mean() < 0.05
    assert (scorned - base).mean() < -0.05 and (scorned > base + 0.05).mean() < 0.05


def test_case_and_spacing_do_not_change_a_review(reviews: tuple) -> None:
    """Invariance: the tokenizer lowercases and splits on whitespace, so shouting or extra spaces
    leave the answer as it was."""
    predictor, rows, _ = reviews
    texts = rows["text"].head(400).tolist()
    base = p_fresh(predictor, texts)
    np.testing.assert_allclose(p_fresh(predictor, [t.upper() for t in texts]), base, atol=1e-5)
    np.testing.assert_allclose(p_fresh(predictor, ["  " + t.replace(" ", "   ") for t in texts]), base, atol=1e-5)


@pytest.mark.parametrize("task", ["adult", "mnist", "reviews"])
def test_champion_beats_the_majority_class(trained: Project, task: str) -> None:
    predictor = champion(trained, task)
    rows, y = split_rows(trained, task)
    outputs = predictor.outputs(rows.drop(columns=[c for c in ("income",) if c in rows]))
    accuracy = float((outputs.argmax(axis=1) == y).mean())
    majority = float(np.bincount(y).max() / len(y))
    assert accuracy >= majority + ACCURACY_MARGIN[task], (task, accuracy, majority)


def test_diamonds_champion_beats_the_mean_price(trained: Project) -> None:
    predictor = champion(trained, "diamonds")
    rows, _ = split_rows(trained, "diamonds")
    mean_price = float(split_rows(trained, "diamonds", "train")[0]["price"].mean())
    actual = rows["price"].to_numpy(float)
    predicted = predictor.predict(rows.drop(columns="price"))["predicted"].to_numpy(float)
    rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
    baseline = float(np.sqrt(np.mean((actual - mean_price) ** 2)))
    assert rmse <= RMSE_SHARE["diamonds"] * baseline, (rmse, baseline)
