"""preprocess for text: split, fit the tokenizer on the training split only (or take the pretrained
encoder's), encode every split to token ids and masks, and count what `max_length` truncates. Also the
model spec, which reads the vocabulary and, for the bag model, token statistics of the training split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import atomic_dir, write_json
from torchcycle.data.splits import split_indices
from torchcycle.kinds.text import tokenizer as T
from torchcycle.targets import get_target


def preprocess(cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
    from torchcycle.atomic import read_json

    src, pp = cfg.source, cfg.preprocess
    train_df = pd.read_parquet(paths.raw / "train.parquet")
    test_file = paths.raw / "test.parquet"
    test_df = pd.read_parquet(test_file) if test_file.exists() else None
    target_type = read_json(paths.data_report)["target_type"]
    target = get_target(target_type)
    y_all = target.encode(train_df[src.target], target.fit(train_df[src.target], src))
    tr, va, te = split_indices(y_all, target.stratify(y_all), test_df is not None, cfg.split, seed)
    target_state = target.fit(train_df[src.target].iloc[tr], src)
    state = fit_text(train_df[src.text_column].iloc[tr].tolist(), src.text_column, pp, paths.root)
    parts = {"train": (train_df, tr, "train"), "val": (train_df, va, "train")}
    parts["test"] = (test_df, np.arange(len(test_df)), "test") if test_df is not None else (train_df, te, "train")
    counts: dict[str, Any] = {}
    truncated: dict[str, int] = {}
    with atomic_dir(paths.processed) as tmp:
        for name, (df, idx, origin) in parts.items():
            rows = df.iloc[idx]
            ids, mask, tokens = T.encode(rows[src.text_column].tolist(), state["tokenizer"], pp.max_length)
            y = target.encode(rows[src.target], target_state)
            np.savez(tmp / f"{name}.npz", input_ids=ids, attention_mask=mask, y=y, row=idx.astype(np.int64),
                     origin=np.array([origin] * len(idx)), tokens=tokens)
            truncated[name] = int((tokens > pp.max_length).sum())
            counts[name] = {"rows": len(idx), "truncated": truncated[name],
                            "median_tokens": float(np.median(tokens)) if len(tokens) else 0.0,
                            **target.summarise(y, target_state)}
        (tmp / "tokenizer.json").write_text(state["tokenizer"])
        write_json(tmp / "preprocessor.json", state)
        write_json(tmp / "schema.json", schema(state, target_state, truncated))
        write_json(tmp / "splits.json", counts)
    if any(truncated.values()):
        print(f"max_length {pp.max_length} truncates " + ", ".join(f"{v} {k}" for k, v in truncated.items())
              + " text(s)")
    return counts


def fit_text(train_texts: list[str], text_column: str, pp: Any, root: Path) -> dict[str, Any]:
    """The preprocessing state: the tokenizer (JSON) and how to apply it."""
    state: dict[str, Any] = {"kind": "text", "text_column": text_column, "max_length": pp.max_length,
                             "tokenizer_kind": pp.tokenizer}
    if pp.tokenizer == "pretrained":
        from torchcycle.kinds.text.encoder import resolve, verify_weights

        encoder = resolve(pp.encoder, root)
        state["tokenizer"] = encoder.tokenizer_json()
        config = encoder.config()
        state["encoder"] = {"name": pp.encoder, "sha256": verify_weights(encoder), "config": config,
                            "max_positions": config.get("max_position_embeddings")}
        limit = config.get("max_position_embeddings")
        if limit and pp.max_length > limit:
            from torchcycle.errors import ConfigError

            raise ConfigError(f"preprocess.max_length {pp.max_length} exceeds the encoder's {limit} positions")
    else:
        state["tokenizer"] = T.train_tokenizer(train_texts, pp.tokenizer, pp.vocab_size, pp.min_frequency, pp.lowercase)
    state["vocab_size"] = T.vocab_size(state["tokenizer"])
    state["pad_id"] = T.pad_id(state["tokenizer"])
    return state


def schema(state: dict[str, Any], target_state: dict[str, Any], truncated: dict[str, int]) -> dict[str, Any]:
    out = {"kind": "text", "inputs": ["input_ids", "attention_mask"], "target": target_state,
           "text_column": state["text_column"], "max_length": state["max_length"], "vocab_size": state["vocab_size"],
           "pad_id": state["pad_id"], "tokenizer": state["tokenizer_kind"], "truncated": truncated}
    if "encoder" in state:
        out["encoder"] = {k: v for k, v in state["encoder"].items() if k != "config"}
    if "classes" in target_state:
        out["classes"] = target_state["classes"]
    return out


def model_spec(cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
    m = cfg.model
    common = {"vocab_size": schema["vocab_size"], "n_outputs": n_outputs, "pad_id": schema["pad_id"]}
    if m.name == "bag":
        ids, mask = (t.numpy() for t in train.inputs[:2])
        prior = None
        if m.prior and np.issubdtype(train.y.numpy().dtype, np.integer):
            prior = naive_bayes_prior(ids, mask, train.y.numpy(), schema["vocab_size"], n_outputs)
        return {"name": "bag", "kwargs": {**common, "embedding_dim": m.embedding_dim, "ngrams": m.ngrams,
                "buckets": m.buckets, "dropout": m.dropout, "token_dropout": m.token_dropout, "prior": prior,
                "prior_scale": m.prior_scale}}  # fmt: skip
    if m.name in ("gru", "lstm"):
        return {"name": m.name, "kwargs": {**common, "cell": m.name, "embedding_dim": m.embedding_dim,
                "hidden": m.hidden, "layers": m.layers, "bidirectional": m.bidirectional, "dropout": m.dropout,
                "pooling": m.pooling}}  # fmt: skip
    if m.name == "transformer":
        return {"name": "transformer", "kwargs": {**common, "max_length": schema["max_length"], "d_model": m.d_model,
                "heads": m.heads, "layers": m.layers, "feedforward": m.feedforward, "dropout": m.dropout,
                "positions": m.positions, "pooling": m.pooling}}  # fmt: skip
    from torchcycle.kinds.text.encoder import resolve  # pretrained: the encoder preprocess chose and checked

    folder = resolve(schema["encoder"]["name"], Path.cwd())
    config = folder.config()
    return {"name": "pretrained", "kwargs": {"encoder_config": config, "n_outputs": n_outputs, "finetune": m.finetune,
            "pooling": m.pooling, "dropout": m.dropout, "lora_r": m.lora_r, "lora_alpha": m.lora_alpha,
            "lora_dropout": m.lora_dropout, "lora_target_modules": list(m.lora_target_modules),
            "weights": str(folder.weights)}}  # fmt: skip


def naive_bayes_prior(ids: np.ndarray, mask: np.ndarray, y: np.ndarray, vocab_size: int, n_classes: int,
                      alpha: float = 1.0) -> list[list[float]]:
    """Per token and class, the centred log-probability of the token appearing in a text of that class
    (multinomial naive Bayes on binarised counts, Laplace-smoothed): the starting point of the bag
    model's prior channel, as in NBSVM (Wang & Manning, 2012). Learnt from the training split only."""
    counts = np.full((vocab_size, n_classes), alpha)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])[mask.reshape(-1) == 1]
    tokens = ids.reshape(-1)[mask.reshape(-1) == 1]
    pairs = np.unique(rows * vocab_size + tokens)  # each token once per text
    np.add.at(counts, (pairs % vocab_size, y[pairs // vocab_size]), 1.0)
    logp = np.log(counts / counts.sum(0, keepdims=True))
    return np.round(logp - logp.mean(1, keepdims=True), 5).tolist()
