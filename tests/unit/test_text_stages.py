"""Every stage on a user's own text table, in-process with a real MLflow store: a class target with the
default bag model, a number target with a GRU, a class target with a transformer. The stages are the
ones every kind runs; the text kind plugs in without a branch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.unit.test_kinds_protocol import tracking  # noqa: F401  (the fixture)
from torchcycle.atomic import read_json
from torchcycle.config import parse_params
from torchcycle.errors import PredictionInputError
from torchcycle.paths import TaskPaths

TASK = "notes"
GOOD, BAD = ["great", "lovely", "superb", "charming"], ["awful", "dull", "tedious", "clumsy"]
FILLER = ["the", "film", "plot", "cast", "was", "a", "and", "story", "music", "ending"]


def notes(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Texts whose label (and score) follows the count of praising minus scolding words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.integers(0, 3), rng.integers(0, 3)
        words = [*rng.choice(FILLER, rng.integers(3, 12)), *rng.choice(GOOD, good), *rng.choice(BAD, bad)]
        rng.shuffle(words)
        rows.append({"note": " ".join(words), "label": "up" if good >= bad else "down",
                     "score": round(float(10 * (good - bad) + rng.normal(0, 1)), 2)})
    return pd.DataFrame(rows)


def params_for(target: str, model: dict, epochs: int):
    return parse_params({
        "tasks": [TASK],
        TASK: {"kind": "text", "source": {"path": "notes.csv", "text_column": "note", "target": target},
               "split": {}, "preprocess": {"vocab_size": 100, "max_length": 24}, "model": model,
               "train": {"epochs": epochs, "batch_size": 16, "lr": 0.01, "num_threads": 1, "device": "cpu",
                         "distributed": "off", "checkpoint": {"enabled": False},
                         "monitor": "val_loss", "scheduler": "none"}},
        "explain": {"max_rows": 20, "text_examples": 4, "ig_steps": 8},
        "evaluate": {"bootstrap_samples": 10, "min_slice_rows": 5},
        "export": {"benchmark_repeats": 10, "benchmark_seconds": 0.01},
    })  # fmt: skip


@pytest.mark.parametrize(("target", "model", "epochs"), [
    ("label", {"name": "bag", "embedding_dim": 16}, 20),
    ("score", {"name": "gru", "embedding_dim": 16, "hidden": 16}, 30),
    ("label", {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1, "feedforward": 32}, 20),
])  # fmt: skip
def test_every_stage_runs_on_a_text_table(tracking, tmp_path, torch_globals, target, model, epochs) -> None:  # noqa: F811
    from torchcycle.serving import Predictor
    from torchcycle.stages import evaluate, explain, export, ingest, preprocess, register, slices, train

    notes().to_csv(tmp_path / "notes.csv", index=False)
    params = params_for(target, model, epochs)
    paths = TaskPaths(TASK, tmp_path)
    regression = target == "score"

    report = ingest.run(params, TASK, tmp_path)
    assert report["summary"]["target_type"] == ("regression" if regression else "classification")
    preprocess.run(params, TASK, tmp_path)
    train.run(params, TASK, tmp_path, progress=False)
    assert read_json(paths.model_config)["spec"]["name"] == model["name"]
    metrics = evaluate.run(params, TASK, tmp_path)
    if regression:  # score = 10 (praise - scorn) + noise: words decide it
        assert metrics["r2"] > 0.6, metrics["r2"]
    else:
        assert metrics["accuracy"] > 0.75 and metrics["roc_auc"] > 0.8, metrics

    sliced = slices.run(params, TASK, tmp_path)
    assert "length" in sliced["columns"]
    mistakes = pd.read_csv(paths.slices / "mistakes.csv")
    assert list(mistakes.columns[:2]) == ["test_row", "text"]  # the worst answers, with their text
    if not regression:
        assert (mistakes["actual"] != mistakes["predicted"]).all()

    summary = explain.run(params, TASK, tmp_path)
    assert summary["texts_explained"] == 20 and (paths.explain / "attributions.html").exists()
    top = pd.read_csv(paths.explain / "top_tokens.csv")
    decisive = set(GOOD + BAD)
    assert decisive & set(top.groupby("group").head(3)["token"]), top  # the words that decide lead

    exported = export.run(params, TASK, tmp_path)
    assert exported["parity"]["passed"] and exported["parity_from_raw_input"]["passed"]
    registered = register.run(params, TASK, tmp_path)
    assert registered["decision"]["promoted"]

    predictor = Predictor(paths.onnx_model)
    table = predictor.predict(pd.DataFrame({"note": ["a great superb lovely film", "an awful dull tedious plot"]}))
    if regression:
        assert table["predicted"][0] > table["predicted"][1]
        assert (table["lower"] <= table["predicted"]).all() and (table["predicted"] <= table["upper"]).all()
    else:
        assert list(table["predicted"]) == ["up", "down"]
    with pytest.raises(PredictionInputError, match="column 'note'"):
        predictor.predict(pd.DataFrame({"body": ["hello"]}))
