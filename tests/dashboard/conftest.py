"""A trained copy of the project for the dashboard tests: the real pipeline (`dvc repro`) on shrunken
params for every built-in task (adult and diamonds: tables with classes and with a number to predict;
mnist: images; reviews: texts), run twice for adult (a second learning rate) so there are runs to compare
and a challenger."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project, copy_project

TASKS = ("adult", "mnist", "diamonds", "reviews")


def dashboard_params(params: dict) -> dict:
    """Fewer explained rows and no latency floor: a busy test machine must not fail the export. diamonds
    (a regression task the shared `shrink` leaves alone) is shrunken like adult. Promotion gates that
    always pass, so registered versions carry gates; slices of a few rows, so mnist's tiny test split has some."""
    params["diamonds"]["source"]["max_rows"] = 800
    params["diamonds"]["train"]["epochs"] = 2
    params["reviews"]["source"]["max_rows"] = 400  # a few hundred snippets and a small vocabulary
    params["reviews"]["preprocess"]["vocab_size"] = 500
    params["reviews"]["train"]["epochs"] = 2
    params["explain"].update({"max_rows": 150, "background_rows": 50, "local_examples": 2})
    params["export"].update({"benchmark_repeats": 10, "min_speedup": 0})
    # every promotion gate on, with limits no model can fail (a value is at most 1 for a classifier; the
    # slice drop is measured against a champion, which only adult's second run has): the Model page shows them
    params["registry"]["gates"] = {"max_ece": 1.0, "max_slice_drop": 1.0, "max_fairness_difference": 1.0}
    params["evaluate"]["min_slice_rows"] = 5  # mnist's 60 test images: 6 per class, 15 per brightness quartile
    return params


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Project:
    reuse = os.environ.get("TORCHCYCLE_DASHBOARD_PROJECT")  # a project this fixture built, when iterating
    if reuse:
        return Project(Path(reuse), Path(reuse).parent / "dvc-remote")
    project = copy_project(tmp_path_factory.mktemp("dashboard"))
    project.write_params(dashboard_params(project.params()))
    project.run("dvc", "repro")
    params = project.params()
    params["adult"]["train"]["lr"] = params["adult"]["train"]["lr"] * 3
    project.write_params(params)
    project.run("dvc", "repro")  # adult only: a second run and registered version
    for task in TASKS:
        assert (project.root / "reports" / task / "registry.json").exists(), f"register@{task} did not run"
    return project


@pytest.fixture
def empty_project(tmp_path: Path) -> Path:
    """A checkout before `make run`: params only, no data, no models, no MLflow store."""
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    return tmp_path


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Point the dashboard at a project for in-process AppTest runs, with the embedded MLflow store."""

    def use(root: Path) -> None:
        monkeypatch.setenv("TORCHCYCLE_ROOT", str(root))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        monkeypatch.setenv("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")

    yield use
