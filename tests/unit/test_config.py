"""params.yaml schema: the shipped file parses, and every kind of mistake fails with an actionable ConfigError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from torchcycle.config import ImageTask, TabularTask, load_params, parse_params
from torchcycle.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO_ROOT / "params.yaml"


@pytest.fixture(scope="module")
def shipped_raw() -> dict:
    return yaml.safe_load(PARAMS_YAML.read_text())


@pytest.fixture
def raw(shipped_raw) -> dict:
    """A fresh, mutable copy of the shipped params for each test to break in its own way."""
    return copy.deepcopy(shipped_raw)


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


def minimal_params(**extra) -> dict:
    """One tabular task with every section present; the others are empty and take the defaults."""
    section = {
        "kind": "tabular",
        "source": {"builtin": "adult", "target": "income"},
        "split": {},
        "preprocess": {},
        "model": {"name": "mlp"},
        "train": {},
    }
    return {"tasks": ["adult"], "adult": section, **extra}


# --------------------------------------------------------------------------- the shipped file
def test_shipped_params_yaml_parses_with_its_values(shipped_raw):
    params = load_params(PARAMS_YAML)

    assert params.tasks == shipped_raw["tasks"]
    assert params.seed == shipped_raw["seed"]
    adult, mnist = params.task("adult"), params.task("mnist")
    assert isinstance(adult, TabularTask)
    assert isinstance(mnist, ImageTask)
    assert adult.train.lr == shipped_raw["adult"]["train"]["lr"]
    assert adult.model.hidden_sizes == shipped_raw["adult"]["model"]["hidden_sizes"]
    assert adult.source.positive_class == shipped_raw["adult"]["source"]["positive_class"]
    assert mnist.preprocess.size == tuple(shipped_raw["mnist"]["preprocess"]["size"])
    assert mnist.train.early_stopping.enabled == shipped_raw["mnist"]["train"]["early_stopping"]["enabled"]
    assert mnist.train.augment.elastic_alpha == shipped_raw["mnist"]["train"]["augment"]["elastic_alpha"]


def test_unknown_task_name_lookup_lists_the_defined_tasks():
    params = parse_params(minimal_params())
    with pytest.raises(ConfigError, match=r"unknown task 'iris'.*adult"):
        params.task("iris")


def test_tabular_target_is_required_even_for_a_builtin_table():
    raw = minimal_params()
    del raw["adult"]["source"]["target"]

    assert "adult.source.target: Field required" in config_error(raw)


def test_new_tabular_and_registry_settings_have_their_documented_defaults():
    params = parse_params(minimal_params())
    source, pre = params.task("adult").source, params.task("adult").preprocess

    assert (source.target_type, source.target_transform, source.interval_coverage) == ("auto", "none", 0.9)
    assert source.dates is None and pre.max_categories == 200
    assert params.task("adult").train.regression_loss == "mse" and params.registry.metric == "auto"


# --------------------------------------------------------------------------- unknown keys
def test_typo_in_nested_key_names_dotted_key_and_suggests_fix(raw):
    raw["adult"]["train"]["lrr"] = raw["adult"]["train"].pop("lr")

    message = config_error(raw)

    assert "adult.train.lrr" in message
    assert "did you mean 'lr'" in message
    assert "weight_decay" in message  # the allowed keys of the train section are listed


def test_typo_in_deeply_nested_key_suggests_fix(raw):
    raw["mnist"]["train"]["early_stopping"]["patiance"] = 3

    message = config_error(raw)

    assert "mnist.train.early_stopping.patiance" in message
    assert "did you mean 'patience'" in message


def test_typo_in_model_section_suggests_fix(raw):
    raw["adult"]["model"]["hiden_sizes"] = raw["adult"]["model"].pop("hidden_sizes")

    message = config_error(raw)

    assert "adult.model.hiden_sizes" in message
    assert "did you mean 'hidden_sizes'" in message
    assert "embedding_dim" in message


def test_unknown_top_level_key_is_rejected_with_suggestion(raw):
    raw["sed"] = 1

    message = config_error(raw)

    assert "unknown top-level key" in message
    assert "'sed'" in message
    assert "did you mean 'seed'" in message


@pytest.mark.parametrize("line", ["on: true", "42: answer"])
def test_non_string_top_level_key_is_a_config_error(tmp_path, line):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(minimal_params()) + line + "\n")

    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_params(path)


# --------------------------------------------------------------------------- wrong values
def test_wrong_type_names_the_key_and_the_value(raw):
    raw["adult"]["train"]["epochs"] = "ten"

    message = config_error(raw)

    assert "adult.train.epochs" in message
    assert "'ten'" in message


def test_out_of_range_value_names_the_key(raw):
    raw["mnist"]["train"]["early_stopping"]["patience"] = 0

    message = config_error(raw)

    assert "mnist.train.early_stopping.patience" in message


def test_unknown_optimizer_lists_allowed_values(raw):
    raw["adult"]["train"]["optimizer"] = "adamx"

    message = config_error(raw)

    assert "adult.train.optimizer" in message
    assert "'adamx'" in message
    for allowed in ("'adam'", "'adamw'", "'sgd'"):
        assert allowed in message


# --------------------------------------------------------------------------- task sections
def test_task_listed_without_section_is_rejected(raw):
    raw["tasks"].append("iris")

    message = config_error(raw)

    assert "'iris'" in message
    assert "no section" in message


def test_top_level_mapping_that_is_not_a_task_section_is_rejected(raw):
    raw["iris"] = {"source": {"path": "iris.csv"}}  # no `kind`, not in `tasks`

    message = config_error(raw)

    assert "unknown top-level key" in message
    assert "'iris'" in message


def test_task_section_not_listed_in_tasks_is_validated_but_not_run(raw):
    raw["tasks"] = ["adult"]

    params = parse_params(raw)

    assert params.tasks == ["adult"]
    assert isinstance(params.task("mnist"), ImageTask)


def test_typo_in_task_section_not_listed_in_tasks_is_still_an_error(raw):
    raw["tasks"] = ["adult"]
    raw["mnist"]["train"]["optimizer"] = "adamx"

    assert "mnist.train.optimizer" in config_error(raw)


def test_task_without_one_of_its_sections_is_rejected(raw):
    del raw["adult"]["train"]

    message = config_error(raw)

    assert "task 'adult' has no train section" in message


@pytest.mark.parametrize("task", ["adult", "mnist"])
def test_empty_model_section_uses_the_defaults(raw, task):
    raw[task]["model"] = {}

    model = parse_params(raw).task(task).model

    assert model.name == {"adult": "mlp", "mnist": "cnn"}[task]


@pytest.mark.parametrize("tasks", [[], "adult", None])
def test_tasks_must_be_a_non_empty_list(tasks):
    raw = minimal_params()
    raw["tasks"] = tasks

    assert "`tasks` must be a non-empty list" in config_error(raw)


def test_source_with_both_builtin_and_path_is_rejected(raw):
    raw["adult"]["source"]["path"] = "data/mine.csv"

    message = config_error(raw)

    assert "adult.source" in message
    assert "exactly one of `builtin`" in message


def test_source_with_neither_builtin_nor_path_is_rejected(raw):
    del raw["mnist"]["source"]["builtin"]

    message = config_error(raw)

    assert "mnist.source" in message
    assert "exactly one of `builtin`" in message


# --------------------------------------------------------------------------- the file itself
def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 42\ntasks: [adult\nadult:\n  kind: tabular\n")

    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_empty_yaml_file_is_a_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")

    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(path)


def test_missing_params_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_valid_params_file_round_trips_through_yaml(tmp_path, shipped_raw):
    path = tmp_path / "params.yaml"
    edited = copy.deepcopy(shipped_raw)
    edited["adult"]["train"]["optimizer"] = "sgd"
    edited["adult"]["train"]["momentum"] = 0.5
    path.write_text(yaml.safe_dump(edited))

    train = load_params(path).task("adult").train

    assert (train.optimizer, train.momentum) == ("sgd", 0.5)
