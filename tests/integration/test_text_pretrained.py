"""A pretrained encoder through the real pipeline, offline: a tiny BERT built from a config in the test
(random weights in model.safetensors, a WordPiece tokenizer.json) stands in for all-MiniLM-L6-v2.
LoRA adapters train, merge before the model is saved, and the exported ONNX model matches torch on the
whole test split from raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import Project, copy_project

pytestmark = pytest.mark.slow

ENCODER = "data/external/tiny-bert"


def tiny_bert(folder: Path, texts: list[str]) -> dict:
    """config.json, model.safetensors and tokenizer.json of a 2-layer, 32-wide BERT."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    from torchcycle.kinds.text.tokenizer import train_tokenizer, vocab_size

    folder.mkdir(parents=True)
    tokenizer = train_tokenizer(texts, "wordpiece", 400, 1, True)
    (folder / "tokenizer.json").write_text(tokenizer)
    config = BertConfig(vocab_size=vocab_size(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    (folder / "config.json").write_text(config.to_json_string())
    model = BertModel(config, add_pooling_layer=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return config.to_dict()


@pytest.fixture(scope="module")
def lora_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from torchcycle.kinds.text.sources import load_reviews

    project = copy_project(tmp_path_factory.mktemp("text-pretrained"))
    tiny_bert(project.root / ENCODER, load_reviews().train["text"].head(400).tolist())
    params = project.params()
    params["tasks"] = ["reviews"]
    reviews = params["reviews"]
    reviews["source"]["max_rows"] = 300
    reviews["preprocess"] = {"tokenizer": "pretrained", "encoder": ENCODER, "max_length": 32}
    reviews["model"] = {"name": "pretrained", "finetune": "lora", "lora_r": 4, "lora_alpha": 8,
                        "lora_target_modules": ["query", "value"]}
    reviews["train"].update({"epochs": 2, "batch_size": 32, "lr": 0.003})
    project.write_params(params)
    project.run("dvc", "repro", "register@reviews")
    return project


def test_lora_trains_only_adapters_and_saves_a_merged_encoder(lora_project: Project) -> None:
    import mlflow
    import torch

    root = lora_project.root
    config = json.loads((root / "models" / "reviews" / "model_config.json").read_text())
    kwargs = config["spec"]["kwargs"]
    assert config["spec"]["name"] == "pretrained" and kwargs["finetune"] == "lora"
    assert kwargs["merged"] is True and kwargs["weights"] is None  # the served model needs no encoder folder
    weights = torch.load(root / "models" / "reviews" / "model.pt", weights_only=True)
    assert not [k for k in weights if "lora" in k]
    state = json.loads((root / "data" / "processed" / "reviews" / "preprocessor.json").read_text())
    assert state["tokenizer"] == (root / ENCODER / "tokenizer.json").read_text()  # the encoder's own tokenizer
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        run = mlflow.get_run(json.loads((root / "models" / "reviews" / "mlflow_run.json").read_text())["run_id"])
    finally:
        mlflow.set_tracking_uri("")
    trainable, total = int(run.data.params["n_trainable_parameters"]), int(run.data.params["n_parameters"])
    assert 0 < trainable < total / 10  # adapters and the head only


def test_merged_lora_model_exports_with_parity_from_raw_text(lora_project: Project) -> None:
    from torchcycle.serving import Predictor

    root = lora_project.root
    report = json.loads((root / "reports" / "reviews" / "export.json").read_text())
    for key in ("parity", "parity_from_raw_input"):
        assert report[key]["passed"] and report[key]["max_abs_diff"] <= 1e-4
    assert report["inputs"] == ["input_ids", "attention_mask"]
    predictor = Predictor(root / "exports" / "reviews" / "model.onnx")
    short, long = predictor.predict(pd.DataFrame({"text": ["Fine.", "A long and winding review " * 3]})).itertuples()
    assert {short.predicted, long.predicted} <= {"fresh", "rotten"}
    registry = json.loads((root / "reports" / "reviews" / "registry.json").read_text())
    assert registry["version"] == "1"


def test_a_wrong_encoder_folder_fails_with_the_fix(lora_project: Project) -> None:
    before = lora_project.params()
    params = lora_project.params()
    params["reviews"]["preprocess"]["encoder"] = "data/external/no-such-encoder"
    lora_project.write_params(params)
    try:
        proc = lora_project.run("dvc", "repro", "preprocess@reviews", check=False)
        assert proc.returncode != 0
        assert "not a folder under the project and not in the local Hugging Face cache" in proc.stdout + proc.stderr
        assert (lora_project.root / "data" / "processed" / "reviews" / "preprocessor.json").exists()  # kept
    finally:
        lora_project.write_params(before)
