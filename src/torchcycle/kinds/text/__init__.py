"""Text (a table with a text column, or the built-in reviews): tokenised with Hugging Face `tokenizers`,
sequence models (bag of tokens, GRU/LSTM, transformer, a pretrained encoder with LoRA), token attributions.

Raw input is a DataFrame with the text column (`text` for the built-in task; whatever `source.text_column`
names otherwise). The tokenizer's JSON rides in the preprocessing state, so the exported model carries
everything a consumer needs to turn strings into `input_ids` and `attention_mask`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from torchcycle.errors import PredictionInputError, TorchcycleError
from torchcycle.kinds.text import tokenizer as T

INPUTS = ["input_ids", "attention_mask"]
SEQUENCE = "sequence"
RECORD_SUFFIXES = (".csv", ".parquet", ".json", ".jsonl", ".txt")
SLICE_COLUMNS = ("class", "length")
LENGTHS = ("short", "medium", "long", "longest")


class _Graph(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
        return self.head(self.model(input_ids, attention_mask))


class TextKind:
    name = "text"

    # ------------------------------------------------------------------ stages
    def ingest(self, cfg: Any, paths: Any, root: Path, seed: int) -> dict[str, Any]:
        from torchcycle.kinds.text.ingest import ingest

        return ingest(cfg, paths, root, seed)

    def preprocess(self, cfg: Any, paths: Any, seed: int) -> dict[str, Any]:
        from torchcycle.kinds.text.preprocess import preprocess

        return preprocess(cfg, paths, seed)

    def raw_inputs(self, paths: Any, split: str) -> tuple[pd.DataFrame, np.ndarray]:
        """(texts in split order as a one-column frame named like the source's column, encoded targets)."""
        with np.load(paths.split(split), allow_pickle=False) as z:
            rows, origin, y = z["row"], z["origin"], z["y"]
        from torchcycle.atomic import read_json

        column = read_json(paths.preprocessor)["text_column"]
        texts = np.empty(len(rows), dtype=object)
        for name in np.unique(origin):
            file = paths.raw / f"{name}.parquet"
            if not file.exists():
                raise TorchcycleError(f"{file} not found. Run `dvc repro ingest@{paths.task}` first.")
            mask = origin == name
            texts[mask] = pd.read_parquet(file, columns=[column])[column].to_numpy()[rows[mask]]
        return pd.DataFrame({column: texts}), y

    def model_spec(self, cfg: Any, schema: dict[str, Any], train: Any, n_outputs: int) -> dict[str, Any]:
        from torchcycle.kinds.text.preprocess import model_spec

        return model_spec(cfg, schema, train, n_outputs)

    def explain(self, params: Any, paths: Any, model: nn.Module, target: dict[str, Any]) -> tuple[dict, Any]:
        from torchcycle.kinds.text.explain import explain

        return explain(params, paths, model, target)

    # ------------------------------------------------------------------ the model file and predictions
    def input_names(self, state: dict[str, Any]) -> list[str]:
        return list(INPUTS)

    def onnx_module(self, model: nn.Module, head: nn.Module) -> nn.Module:
        return _Graph(model, head)

    def dynamic_axes(self, state: dict[str, Any]) -> dict[str, dict[int, str]]:
        return {name: {1: SEQUENCE} for name in INPUTS}

    def describe_input(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"raw": f"column '{state['text_column']}': text (one string per row)",
                "input_ids": "int64 (batch, sequence) token ids, padded at the end",
                "attention_mask": "int64 (batch, sequence): 1 for tokens, 0 for padding",
                "tokenizer": f"{state['tokenizer_kind']} ({state['vocab_size']} pieces), JSON in "
                             "'torchcycle.preprocessor' → tokenizer", "max_length": state["max_length"]}

    def prepare(self, raw: pd.DataFrame, state: dict[str, Any]) -> tuple[np.ndarray, ...]:
        ids, mask, _ = T.encode(texts_of(raw, state), state["tokenizer"], state["max_length"])
        return ids, mask

    def read_path(self, path: Path) -> pd.DataFrame:
        return read_records(path)

    def example(self, raw: pd.DataFrame, state: dict[str, Any], rows: int) -> pd.DataFrame:
        return raw[[state["text_column"]]].head(rows).reset_index(drop=True)

    def any_typed_columns(self, state: dict[str, Any]) -> set[str]:
        return set()

    def row_labels(self, raw: pd.DataFrame) -> pd.DataFrame:
        column = raw.columns[0] if len(raw.columns) == 1 else None
        if column is None:
            return pd.DataFrame(index=range(len(raw)))
        return pd.DataFrame({"text": [_short(str(t)) for t in raw[column]]})

    def slice_frame(self, raw: pd.DataFrame, y: np.ndarray, state: dict[str, Any], target_state: dict[str, Any],
                    columns: list[str] | None) -> pd.DataFrame:
        """`class` (the true class, classification) and `length` (quartiles of the token count within `raw`):
        per-length-bucket scores."""
        from torchcycle.errors import ConfigError

        default = [c for c in SLICE_COLUMNS if c != "class" or "classes" in target_state]
        chosen = list(columns) if columns is not None else default
        unknown = [c for c in chosen if c not in SLICE_COLUMNS]
        if unknown:
            raise ConfigError(f"slice column(s) {unknown} are not known for text; choose from {list(SLICE_COLUMNS)} "
                              "(`evaluate.slice_columns`)")
        out: dict[str, Any] = {}
        if "class" in chosen:
            out["class"] = [str(v) for v in np.asarray(target_state["classes"], dtype=object)[np.asarray(y, np.int64)]]
        if "length" in chosen:
            _, _, tokens = T.encode(texts_of(raw, state), state["tokenizer"], state["max_length"])
            out["length"] = length_buckets(tokens)
        return pd.DataFrame({c: out[c] for c in chosen}, index=range(len(raw)))

    def fingerprint(self, raw: pd.DataFrame) -> bytes:
        return pd.util.hash_pandas_object(raw.astype(str), index=False).to_numpy().tobytes()

    def new_batches(self) -> Any:
        from torchcycle.kinds.text.batches import TextBatches

        return TextBatches()


def length_buckets(tokens: np.ndarray) -> list[str]:
    """Quartiles of the token count, labelled with the counts they hold ("short: 3–14 tokens"): bucket i
    holds [edge i, edge i+1), the last one also its upper edge, so no count matches two labels."""
    tokens = np.asarray(tokens)
    if not len(tokens):
        return []
    edges = np.unique(np.quantile(tokens, [0, 0.25, 0.5, 0.75, 1.0]).round().astype(int))
    n_buckets = max(len(edges) - 1, 1)
    which = np.clip(np.searchsorted(edges, tokens, side="right") - 1, 0, n_buckets - 1)
    labels = []
    for i in range(n_buckets):
        lo, hi = edges[i], (edges[i + 1] - 1 if i + 1 < n_buckets else edges[-1])
        labels.append(f"{LENGTHS[min(i, 3)]}: {lo}–{hi} tokens")
    return [labels[int(w)] for w in which]


def texts_of(raw: pd.DataFrame, state: dict[str, Any]) -> list[str]:
    """The text column as strings; a missing column, a missing value or a non-text value is an error that
    names the row."""
    column = state["text_column"]
    if column not in raw.columns:
        if len(raw.columns) == 1 and raw.columns[0] in ("text", 0):
            column = raw.columns[0]
        else:
            raise PredictionInputError(f"text models take a column '{column}' of strings; got columns "
                                       f"{list(map(str, raw.columns))}")
    values = raw[column].tolist()
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise PredictionInputError(f"column '{column}', row {i}: expected text, got {type(v).__name__} {v!r}. "
                                       "Send every row's text as a string.")
    if not values:
        raise PredictionInputError("no texts to predict")
    return values


def read_records(path: str | Path) -> pd.DataFrame:
    """Texts to predict: a CSV/Parquet/JSON records file, or a .txt file with one text per line."""
    path = Path(path)
    if not path.is_file():
        raise PredictionInputError(f"{path}: no such file")
    if path.suffix.lower() == ".txt":
        try:
            lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise PredictionInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
        return pd.DataFrame({"text": lines})
    from torchcycle.kinds.tabular import read_records as read_table_records

    return read_table_records(path)


def _short(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


TEXT = TextKind()
