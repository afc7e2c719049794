"""New text batches: one CSV/Parquet file in the drop zone is one batch of (text, label) rows, validated
with ingest's rules, stored as Parquet, and compared with the training texts for drift: lengths,
out-of-vocabulary words, labels, and the model's pooled embeddings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from torchcycle.atomic import read_json
from torchcycle.data import batches as B
from torchcycle.data.sources import read_table
from torchcycle.data.validate import Report
from torchcycle.kinds.tabular.batches import TabularBatches
from torchcycle.paths import TaskPaths

_WORD = re.compile(r"\w+", re.UNICODE)


class TextBatches(TabularBatches):
    def validate(self, arrival: B.Arrival, cfg: Any, root: Path) -> tuple[Report, Any]:
        """Same rules as ingest; the target type is the training data's, labels must be known classes."""
        from torchcycle.kinds.text.validate import validate_text
        from torchcycle.targets import get_target

        paths = TaskPaths(arrival.task, root)
        reference = pd.read_parquet(paths.raw / "train.parquet")
        src, file = cfg.source, arrival.paths[0]
        report = Report(kind="text")
        try:
            df = read_table(file, sep=src.csv_sep, na_values=src.na_values, keep_default_na=False)
        except Exception as exc:  # DataValidationError from read_table names the file
            report.fail("readable", str(exc))
            return report, None
        target_type = read_json(paths.data_report)["target_type"]
        pinned = src.model_copy(update={"target_type": target_type})
        report, cleaned, _ = validate_text({"train": (file, df)}, pinned, batch=True)
        if report.errors:
            return report, None
        batch = cleaned["train"][list(reference.columns)]
        unknown = get_target(target_type).unseen(batch[src.target], reference[src.target])
        if unknown:
            report.fail("labels", f"{file}: labels {unknown} are not classes of this task "
                                  f"({sorted(set(map(str, reference[src.target])))}).")
            return report, None
        return report, batch

    def drift(self, root: Path, task: str, cfg: Any, stored: list[Path], r: Any) -> dict[str, Any]:
        from torchcycle.monitoring import drift as D

        paths = TaskPaths(task, root)
        src = cfg.source
        reference = pd.read_parquet(paths.raw / "train.parquet")
        batch = pd.concat([pd.read_parquet(p) for p in stored], ignore_index=True)
        state = read_json(paths.preprocessor)
        vocabulary = {w for t in reference[src.text_column] for w in _words(t)}
        layer = _token_embedding(paths)
        ref_frame, ref_emb = _profile(reference, src, state, vocabulary, layer)
        new_frame, new_emb = _profile(batch, src, state, vocabulary, layer)
        label = src.target if src.target in batch.columns else None
        report = D.text_drift(ref_frame, new_frame, ref_emb, new_emb, label, r.psi_threshold, r.p_value)
        report["columns"]["oov_share"]["note"] = "share of a text's words never seen in the training texts"
        return report


def _words(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def _profile(df: pd.DataFrame, src: Any, state: dict[str, Any], vocabulary: set[str], layer: Any,
             ) -> tuple[pd.DataFrame, np.ndarray]:
    """Per text: its token count, its out-of-vocabulary share and the model's pooled embedding."""
    from torchcycle.kinds.text.tokenizer import encode

    texts = df[src.text_column].astype(str).tolist()
    ids, mask, tokens = encode(texts, state["tokenizer"], state["max_length"])
    oov = [np.mean([w not in vocabulary for w in ws]) if ws else 0.0 for ws in map(_words, texts)]
    frame = pd.DataFrame({"tokens": tokens, "oov_share": oov})
    if src.target in df.columns:
        frame[src.target] = df[src.target].astype(str).to_numpy()
    return frame, pooled_embeddings(layer, ids, mask)


def _token_embedding(paths: TaskPaths) -> Any:
    from torchcycle.artifacts import load_model

    return load_model(paths.models)[0].token_embedding()


def pooled_embeddings(layer: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The trained model's token embeddings averaged over each text (what its input layer sees)."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(ids), 1024):
            i, m = torch.from_numpy(ids[s : s + 1024]), torch.from_numpy(mask[s : s + 1024]).float()
            e = layer(i) * m.unsqueeze(-1)
            out.append((e.sum(1) / m.sum(1, keepdim=True).clamp_min(1)).numpy())
    return np.concatenate(out) if out else np.zeros((0, layer.embedding_dim), dtype=np.float32)
