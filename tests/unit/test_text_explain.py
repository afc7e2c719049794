"""Token attributions of text models: integrated gradients find the token a model reads, padding gets
nothing, the HTML highlight is safe and readable, and the per-class ranking puts a decisive token first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from torchcycle.kinds.text.attributions import highlight_html, token_attributions, top_tokens

SEVEN = 7


class OnlySeven(nn.Module):
    """Logits [0, w · mean-pooled embedding], where every embedding but token 7's is zero: the output
    depends on nothing but whether (and how often) 7 is in the row."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 4, padding_idx=0)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[SEVEN] = torch.tensor([1.0, -0.5, 2.0, 0.25])
        self.w = nn.Parameter(torch.tensor([0.5, 1.0, 1.5, -2.0]))

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        score = pooled @ self.w
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 5, 7, 9, 11, 3, 0, 0],
                        [2, 13, 4, 8, 7, 12, 6, 3],
                        [2, 7, 3, 0, 0, 0, 0, 0]])  # fmt: skip
    return ids, (ids != 0).long()


def test_integrated_gradients_put_the_mass_on_the_token_the_model_reads() -> None:
    model = OnlySeven()
    ids, mask = _rows()
    scores, delta = token_attributions(model, ids, mask, torch.ones(3, dtype=torch.long), steps=16, keep_ids=[2, 3])
    assert scores.shape == (3, 8) and delta.shape == (3,)
    position = (ids == SEVEN).long().argmax(1).numpy()
    mass = np.abs(scores)
    share = mass[np.arange(3), position] / mass.sum(1)
    assert (share > 0.9).all(), share
    # completeness: the attributions add up to the change of the explained logit
    with torch.no_grad():
        change = model(ids, mask)[:, 1].numpy()  # the baseline (no 7) scores 0
    np.testing.assert_allclose(scores.sum(1), change, atol=1e-4)
    assert np.abs(delta).max() < 1e-4


def test_model_is_left_as_it_was() -> None:
    model = OnlySeven().train()
    ids, mask = _rows()
    token_attributions(model, ids, mask, None, steps=4, batch_size=8)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_padding_gets_exactly_zero() -> None:
    torch.manual_seed(0)
    model = OnlySeven()
    with torch.no_grad():
        model.embedding.weight.normal_()  # every token matters now, padding included if it leaked
    ids, mask = _rows()
    scores, _ = token_attributions(model, ids, mask, torch.tensor([1, 0, 1]), steps=8, batch_size=16)
    assert (scores[mask.numpy() == 0] == 0.0).all()
    assert (scores[mask.numpy() == 1] != 0.0).any()


def test_highlight_escapes_text_and_joins_word_pieces() -> None:
    tokens = ["[CLS]", "<script>", "un", "##believ", "##able", "film", ".", "[SEP]", "[PAD]"]
    scores = np.array([0.9, 0.5, -1.0, 0.2, 0.1, 0.0, 0.05, 0.7, 0.3])
    page = highlight_html(tokens, scores, title="true <b>fresh</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;fresh&lt;/b&gt;" in page
    assert "[CLS]" not in page and "[SEP]" not in page and "[PAD]" not in page and "##" not in page
    assert ">un</span><span" in page and ">believ</span><span" in page  # one word, no spaces between pieces
    assert "film</span><span" in page  # the full stop hugs the word before it
    assert "rgba(213, 94, 0, 1.000)" in page  # the largest |score| among shown tokens is fully opaque, red
    assert 'title="un: -1.0000"' in page


def test_highlight_joins_bpe_pieces_until_end_of_word() -> None:
    page = highlight_html(["[CLS]", "wonder", "ful</w>", "cast</w>", "[SEP]"], np.array([0, 1.0, 0.5, -0.2, 0]))
    assert ">wonder</span><span" in page and ">ful</span> <span" in page  # "wonderful cast"
    assert "&lt;/w&gt;" not in page and ">cast</span>" in page


def test_top_tokens_ranks_a_decisive_token_first() -> None:
    rng = np.random.default_rng(0)
    token_lists, score_lists, groups = [], [], []
    for i in range(20):
        group = "fresh" if i % 2 == 0 else "rotten"
        words = ["[CLS]", "the", "film", "was", "superb" if group == "fresh" else "dull", "[SEP]"]
        scores = rng.normal(0, 0.1, len(words))
        scores[4] = 2.0 + rng.normal(0, 0.1)
        scores[0] = 5.0  # special tokens never rank
        token_lists.append(words)
        score_lists.append(scores)
        groups.append(group)
    table = top_tokens(token_lists, score_lists, groups, k=3, min_count=3)
    assert list(table.columns) == ["group", "token", "mean_attribution", "count"]
    assert table[table["group"] == "fresh"].iloc[0]["token"] == "superb"
    assert table[table["group"] == "rotten"].iloc[0]["token"] == "dull"
    assert "[CLS]" not in set(table["token"]) and (table.groupby("group").size() <= 3).all()
    assert table[table["group"] == "fresh"].iloc[0]["count"] == 10


def test_top_tokens_needs_min_count() -> None:
    table = top_tokens([["a", "b"], ["a"]], [np.array([1.0, 9.0]), np.array([1.0])], ["x", "x"], min_count=2)
    assert list(table["token"]) == ["a"]
    assert table["mean_attribution"].iloc[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- the explain stage, end to end
class MeanPool(nn.Module):
    """A tiny text model with the text models' interface."""

    def __init__(self, vocab: int, n_outputs: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 4, padding_idx=0)
        self.head = nn.Linear(4, n_outputs)

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.embedding(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0))


WORDS = ["a great film", "a dull film", "great acting <script>alert(1)</script>", "dull and slow",
         "great great fun", "slow, dull plot", "the cast is great", "it was dull"]  # fmt: skip


def _toy_task(root, labels: list, target_state: dict):  # type: ignore[no-untyped-def]
    from torchcycle.atomic import write_json
    from torchcycle.kinds.text import tokenizer as T
    from torchcycle.paths import TaskPaths

    paths = TaskPaths("toy", root)
    texts = WORDS * 3
    tok = T.train_tokenizer(texts, "wordpiece", 60, 1, True)
    ids, mask, _ = T.encode(texts, tok, 16, pad_to=16)
    paths.raw.mkdir(parents=True)
    paths.processed.mkdir(parents=True)
    pd.DataFrame({"review": texts}).to_parquet(paths.raw / "train.parquet")
    np.savez(paths.split("test"), input_ids=ids, attention_mask=mask, y=np.asarray(labels * 3),
             row=np.arange(len(texts)), origin=np.array(["train"] * len(texts)))
    write_json(paths.schema, {"inputs": ["input_ids", "attention_mask"], "text_column": "review", "target": target_state})
    write_json(paths.preprocessor, {"tokenizer": tok, "max_length": 16, "text_column": "review",
                                    "pad_id": T.pad_id(tok)})
    return paths, T.vocab_size(tok)


@pytest.mark.parametrize("kind", ["binary", "three classes", "regression"])
def test_explain_writes_the_page_the_tables_and_the_examples(tmp_path, kind: str) -> None:  # type: ignore[no-untyped-def]
    import json
    from types import SimpleNamespace

    from torchcycle.kinds.text.explain import explain

    if kind == "regression":
        state = {"type": "regression", "name": "score", "transform": "none", "mean": 5.0, "std": 2.0,
                 "coverage": 0.9, "halfwidth": 0.5}
        labels, n_out = [0.5, -1.0, 1.2, -0.7, 0.9, -1.1, 0.3, -0.2], 1
    else:
        classes = ["fresh", "rotten"] if kind == "binary" else ["fresh", "mixed", "rotten"]
        state = {"type": "classification", "name": "label", "classes": classes, "positive_class": classes[-1]}
        labels, n_out = [0, 1, 0, 1, 0, 1, 0, len(classes) - 1], len(classes)
    paths, vocab = _toy_task(tmp_path, labels, state)
    torch.manual_seed(1)
    model = MeanPool(vocab, n_out)
    params = SimpleNamespace(seed=0, explain=SimpleNamespace(max_rows=20, text_examples=4, ig_steps=4))
    summary, write = explain(params, paths, model, state)
    assert summary["method"] == "integrated_gradients" and summary["texts_explained"] == 20
    assert summary["ig_steps"] == 4 and summary["mean_abs_convergence_delta"] < 1e-3
    assert summary["mean_abs_output_change"] > 0
    out = tmp_path / "out"
    out.mkdir()
    write(out)
    assert {p.name for p in out.iterdir()} == {"attributions.html", "top_tokens.csv", "top_tokens.png",
                                                "examples.json"}
    examples = json.loads((out / "examples.json").read_text())
    assert len(examples) == 4
    assert {"text", "tokens", "scores", "true", "predicted", "probability"} <= set(examples[0])
    assert all(len(x["tokens"]) == len(x["scores"]) for x in examples)
    page = (out / "attributions.html").read_text()
    assert "<script>alert" not in page and page.startswith("<!DOCTYPE html>")
    table = pd.read_csv(out / "top_tokens.csv")
    assert list(table.columns) == ["group", "token", "mean_attribution", "count"] and len(table)
    if kind == "regression":
        assert set(table["group"]) <= {"raises the prediction", "lowers the prediction"}
        assert all(x["probability"] is None for x in examples)
    else:
        assert set(table["group"]) <= set(state["classes"])
        assert all(0 <= x["probability"] <= 1 for x in examples)
        cases = [x["case"] for x in examples]
        wrong = cases.count("misclassified")
        assert cases == ["misclassified"] * wrong + ["correct"] * (4 - wrong)



class TwoLookups(nn.Module):
    """Reads its embedding table twice, as the bag model's hashed bigrams do."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 4, padding_idx=0)
        self.head = nn.Linear(4, 2)

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pairs = (input_ids[:, :-1] * 3 + input_ids[:, 1:]) % 20 * attention_mask[:, 1:]
        vectors = torch.cat([self.embedding(input_ids), self.embedding(pairs)], dim=1)
        return self.head(torch.tanh(vectors).sum(1))


def test_a_table_read_twice_is_attributed_in_full() -> None:
    torch.manual_seed(0)
    model = TwoLookups()
    ids, mask = _rows()
    scores, delta = token_attributions(model, ids, mask, torch.tensor([0, 1, 1]), steps=64, batch_size=64)
    assert scores.shape == (3, 8) and (scores[mask.numpy() == 0] == 0).all()
    with torch.no_grad():
        change = model(ids, mask) - model(torch.where(mask.bool(), 0, ids), mask)
    np.testing.assert_allclose(scores.sum(1), change[torch.arange(3), torch.tensor([0, 1, 1])].numpy(), atol=1e-3)
    assert np.abs(delta).max() < 1e-3
