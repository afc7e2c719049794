"""The text kind: the tokenizer (fitted on the training split only, kept as JSON), validation of text sources
and bad input (clear errors, nothing overwritten), prediction input, length slices, the naive Bayes prior
and text drift. Stages run in-process on tiny projects under tmp_path (ingest and preprocess use no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer

from torchcycle.config import Params, TextPreprocess, TextSource, parse_params
from torchcycle.errors import ConfigError, DataValidationError, PredictionInputError
from torchcycle.kinds.text import TEXT, length_buckets, read_records
from torchcycle.kinds.text import tokenizer as T
from torchcycle.kinds.text.preprocess import fit_text, naive_bayes_prior
from torchcycle.kinds.text.validate import validate_text
from torchcycle.monitoring.drift import text_drift
from torchcycle.paths import TaskPaths
from torchcycle.stages import ingest, preprocess

TASK = "txt"
CSV = "data/texts.csv"
TRAIN = ["the film was great and lovely", "the plot was dull and poor", "great actors in a lovely film",
         "a dull film with poor actors", "the actors were fine"] * 4  # fmt: skip


# --------------------------------------------------------------------------- helpers
def text_params(**preprocess: object) -> Params:
    """A one-task params with a text task reading CSV (column `review`, label `label`)."""
    return parse_params({
        "seed": 7, "tasks": [TASK],
        TASK: {"kind": "text", "split": {}, "preprocess": {"vocab_size": 2000, **preprocess},
               "model": {"embedding_dim": 8}, "train": {},
               "source": {"path": CSV, "text_column": "review", "target": "label", "positive_class": "yes"}},
    })  # fmt: skip


def distinct_words(n: int, seed: int = 0) -> list[str]:
    """n random 8-letter words: none is a prefix of another, so no merge learnt from one is another."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 8)) for _ in range(n)]
    assert len(set(words)) == n
    return words


def word_rows(n: int = 60) -> pd.DataFrame:
    """Row i holds its own word twice (frequent enough to become one piece if the tokenizer sees it); every
    third row is long (truncated at max_length 8), the rest are 6 tokens when the word is one piece."""
    label = ["yes" if i % 2 else "no" for i in range(n)]
    texts = [f"{w} {w} {'great film' if y == 'yes' else 'dull film'}"
             + (" and the plot was long and the actors were fine" if i % 3 == 0 else "")
             for i, (w, y) in enumerate(zip(distinct_words(n), label))]  # fmt: skip
    return pd.DataFrame({"review": texts, "label": label})


def good_rows(n: int = 40) -> pd.DataFrame:
    label = ["yes" if i % 2 else "no" for i in range(n)]
    texts = [f"review {i} {'great' if y == 'yes' else 'dull'} film" for i, y in enumerate(label)]
    return pd.DataFrame({"review": texts, "label": label})


def project(root: Path, frame: pd.DataFrame) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / CSV, index=False)
    return root


def state_for(texts: list[str] = TRAIN, algorithm: str = "wordpiece", max_length: int = 64) -> dict:
    pp = TextPreprocess(tokenizer=algorithm, vocab_size=100, min_frequency=1, max_length=max_length)
    return fit_text(texts, "review", pp, Path("."))


def pieces(tokenizer_json: str, text: str) -> list[str]:
    """Tokens of `text` without [CLS]/[SEP], from a tokenizer read straight from the JSON (no truncation)."""
    return Tokenizer.from_str(tokenizer_json).encode(text).tokens[1:-1]


def failing_ingest(root: Path, bad: bytes) -> str:
    """Ingest a good file, replace it with `bad`, ingest again: the error message, after checking that the
    last good data/raw/<task>/train.parquet is left byte for byte."""
    params = text_params()
    project(root, good_rows())
    ingest.run(params, TASK, root)
    kept = (TaskPaths(TASK, root).raw / "train.parquet").read_bytes()
    (root / CSV).write_bytes(bad)
    with pytest.raises(DataValidationError) as info:
        ingest.run(params, TASK, root)
    assert (TaskPaths(TASK, root).raw / "train.parquet").read_bytes() == kept
    assert "Nothing was overwritten" in str(info.value)
    assert json.loads(TaskPaths(TASK, root).validation_failed.read_text())["status"] == "failed"
    return str(info.value)


def validate(df: pd.DataFrame, **source: object) -> tuple:
    src = TextSource(path="texts.csv", text_column="review", target="label", **source)
    return validate_text({"train": (Path("texts.csv"), df)}, src)


def check(report, name: str) -> dict:
    (found,) = [c for c in report.checks if c["check"] == name]
    return found


# --------------------------------------------------------------------------- tokenizer through the stages
@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """ingest + preprocess run in-process on word_rows() with max_length 8."""
    root = project(tmp_path_factory.mktemp("text-stages"), word_rows())
    params = text_params(max_length=8)
    ingest.run(params, TASK, root)
    preprocess.run(params, TASK, root)
    return root, pd.read_parquet(TaskPaths(TASK, root).raw / "train.parquet")


def split_rows(root: Path, split: str) -> np.ndarray:
    with np.load(TaskPaths(TASK, root).split(split), allow_pickle=False) as z:
        return z["row"]


def test_tokenizer_is_fitted_on_the_training_split_only(processed: tuple[Path, pd.DataFrame]) -> None:
    root, raw = processed
    paths = TaskPaths(TASK, root)
    tokenizer_json = paths.processed.joinpath("tokenizer.json").read_text()
    tok = Tokenizer.from_str(tokenizer_json)
    words = [t.split()[0] for t in raw["review"]]
    held_out = np.r_[split_rows(root, "val"), split_rows(root, "test")]
    assert len(split_rows(root, "train")) and len(held_out)
    for i in split_rows(root, "train"):
        assert tok.token_to_id(words[i]) is not None and pieces(tokenizer_json, words[i]) == [words[i]]
    for i in held_out:
        assert tok.token_to_id(words[i]) is None, f"held-out row {i}'s word '{words[i]}' is in the vocabulary"
        split = pieces(tokenizer_json, words[i])
        assert split == [T.UNK] or len(split) > 1


def test_tokenizer_travels_as_json_in_the_state_never_as_a_pickle(processed: tuple[Path, pd.DataFrame]) -> None:
    root, _ = processed
    paths = TaskPaths(TASK, root)
    text = paths.processed.joinpath("tokenizer.json").read_text()
    state = json.loads(paths.preprocessor.read_text())
    assert state["tokenizer"] == text and json.loads(text)["model"]["type"] == "WordPiece"
    assert state["vocab_size"] == Tokenizer.from_str(text).get_vocab_size()
    assert state["pad_id"] == Tokenizer.from_str(text).token_to_id(T.PAD)
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".pickle")]
    for split in ("train", "val", "test"):
        with np.load(paths.split(split), allow_pickle=False) as z:  # plain arrays only
            assert z["input_ids"].dtype == np.int64 and z["input_ids"].shape == z["attention_mask"].shape


def test_preprocess_counts_what_max_length_truncates(processed: tuple[Path, pd.DataFrame]) -> None:
    root, raw = processed
    paths = TaskPaths(TASK, root)
    text = paths.processed.joinpath("tokenizer.json").read_text()
    splits = json.loads(paths.splits.read_text())
    full = np.array([len(pieces(text, t)) + 2 for t in raw["review"]])
    for split in ("train", "val", "test"):
        rows = split_rows(root, split)
        expected = int((full[rows] > 8).sum())
        assert splits[split]["truncated"] == expected, split
        with np.load(paths.split(split), allow_pickle=False) as z:
            assert z["input_ids"].shape[1] <= 8
            assert np.array_equal(z["tokens"], full[rows])
    assert 0 < splits["train"]["truncated"] < splits["train"]["rows"]
    assert json.loads(paths.schema.read_text())["truncated"] == {s: splits[s]["truncated"] for s in splits}


def test_fit_text_maps_an_unseen_word_to_unk_or_sub_pieces() -> None:
    state = state_for()
    assert pieces(state["tokenizer"], "lovely") == ["lovely"]
    unseen = pieces(state["tokenizer"], "zyzzyva")
    assert unseen == [T.UNK] or (len(unseen) > 1 and "zyzzyva" not in unseen)


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe"])
def test_wordpiece_and_bpe_round_trip(algorithm: str) -> None:
    state = state_for(algorithm=algorithm)
    tok = Tokenizer.from_str(state["tokenizer"])
    for text in ["the film was great and lovely", "a dull plot", "lovelyactors were dull"]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.decode(tok.encode("The FILM was Great").ids) == "the film was great"  # lowercased
    assert state["tokenizer_kind"] == algorithm and state["vocab_size"] == tok.get_vocab_size()


def test_encode_pads_to_the_longest_text_and_counts_tokens_before_truncation() -> None:
    js = state_for()["tokenizer"]
    pad = T.pad_id(js)
    ids, mask, tokens = T.encode(["great", "the film was great"], js, 64)
    assert ids.shape == mask.shape == (2, 6) and ids.dtype == mask.dtype == np.int64
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert ids[0, 3:].tolist() == [pad] * 3
    assert tokens.tolist() == [3, 6]
    long = " ".join(["great film"] * 20)
    ids, mask, tokens = T.encode([long, "great"], js, 8)
    assert ids.shape == (2, 8) and tokens.tolist() == [42, 3]
    assert T.tokens_of(ids[0], js)[0] == T.CLS and T.tokens_of(ids[0], js)[-1] == T.SEP
    assert T.encode(["great"], js, 8, pad_to=10)[0].shape == (1, 10)


# --------------------------------------------------------------------------- bad sources: clear errors, nothing overwritten
def test_an_empty_text_column_is_an_error_naming_the_column(tmp_path: Path) -> None:
    bad = pd.DataFrame({"review": [""] * 20, "label": ["yes", "no"] * 10}).to_csv(index=False).encode()
    message = failing_ingest(tmp_path, bad)
    assert "every value of column 'review' is empty" in message and "source.text_column" in message


def test_a_column_of_numbers_is_not_text(tmp_path: Path) -> None:
    bad = pd.DataFrame({"review": range(20), "label": ["yes", "no"] * 10}).to_csv(index=False).encode()
    message = failing_ingest(tmp_path, bad)
    assert "column 'review' holds int64 values, not text" in message and "source.text_column" in message


def test_an_undecodable_file_names_utf8_and_the_line(tmp_path: Path) -> None:
    bad = b"review,label\n" + "café,yes\n".encode("latin-1") + b"\xff\xfe broken,no\n" + b"fine film,yes\n" * 20
    message = failing_ingest(tmp_path, bad)
    assert "not UTF-8" in message and "Save the file as UTF-8" in message
    assert "line 2" in message and "offset 16" in message  # where in the file, not in pandas' buffer


def test_a_missing_text_column_names_the_columns(tmp_path: Path) -> None:
    bad = good_rows().rename(columns={"review": "body"}).to_csv(index=False).encode()
    message = failing_ingest(tmp_path, bad)
    assert "['review'] not found" in message and "['body', 'label']" in message and "text_column" in message


def test_a_few_empty_texts_are_dropped_and_counted() -> None:
    df = good_rows(20)
    df.loc[[3, 7], "review"] = [np.nan, "   "]
    report, cleaned, _ = validate(df, max_empty_fraction=0.2)
    assert report.errors == [] and len(cleaned["train"]) == 18
    assert report.summary["dropped"]["train"]["empty_text"] == 2
    empty = check(report, "empty_texts")
    assert not empty["passed"] and "2 empty text(s) dropped" in empty["detail"] and "line(s) 5, 9" in empty["detail"]
    report, _, _ = validate(df, max_empty_fraction=0.05)
    assert report.errors and "more than `source.max_empty_fraction`" in report.errors[0]


def test_duplicates_and_encoding_problems_are_reported_but_do_not_fail() -> None:
    df = good_rows(20)
    df.loc[0:1, "review"] = "same text"
    df.loc[0:1, "label"] = "yes"
    df.loc[2:3, "review"] = ["twice", "twice"]
    df.loc[2:3, "label"] = ["yes", "no"]
    df.loc[5, "review"] = "broken \ufffd character"
    df.loc[6, "review"] = "cafÃ© mojibake"
    report, cleaned, _ = validate(df)
    assert report.errors == [] and len(cleaned["train"]) == 20
    dup = check(report, "duplicates")
    assert not dup["passed"] and "2 duplicated text(s), 1 of them with different labels" in dup["detail"]
    assert "same text" in dup["detail"]
    enc = check(report, "encoding")
    assert not enc["passed"] and "2 text(s)" in enc["detail"] and "cafÃ© mojibake" in enc["detail"]
    clean, _, _ = validate(good_rows(20))
    assert check(clean, "encoding")["passed"] and check(clean, "duplicates")["passed"]


def test_texts_that_look_like_missing_values_stay_text(tmp_path: Path) -> None:
    df = good_rows()
    df.loc[[0, 1, 2], "review"] = ["None", "NA", "null"]
    project(tmp_path, df)
    report = ingest.run(text_params(), TASK, tmp_path)
    assert report["summary"]["dropped"]["train"]["empty_text"] == 0


# --------------------------------------------------------------------------- prediction input
def test_prepare_names_the_missing_column_and_the_row_that_is_not_text() -> None:
    state = state_for()
    ids, mask = TEXT.prepare(pd.DataFrame({"review": ["great film", "dull"]}), state)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    with pytest.raises(PredictionInputError, match=r"column 'review'.*got columns \['body', 'id'\]"):
        TEXT.prepare(pd.DataFrame({"body": ["great"], "id": [1]}), state)
    with pytest.raises(PredictionInputError, match=r"row 1: expected text, got NoneType"):
        TEXT.prepare(pd.DataFrame({"review": ["great", None]}, dtype=object), state)
    with pytest.raises(PredictionInputError, match=r"row 0: expected text, got float nan"):
        TEXT.prepare(pd.DataFrame({"review": [np.nan, "great"]}), state)
    with pytest.raises(PredictionInputError, match=r"row 2: expected text, got int 5"):
        TEXT.prepare(pd.DataFrame({"review": ["great", "dull", 5]}, dtype=object), state)


def test_a_txt_file_holds_one_text_per_line(tmp_path: Path) -> None:
    file = tmp_path / "texts.txt"
    file.write_text("great film\n\nthe plot was dull, café\nlovely actors\n", encoding="utf-8")
    frame = read_records(file)
    assert frame["text"].tolist() == ["great film", "the plot was dull, café", "lovely actors"]
    ids, _ = TEXT.prepare(frame, state_for())  # the state's column is `review`: a lone `text` column is taken
    assert ids.shape[0] == 3
    file.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(PredictionInputError, match="UTF-8"):
        read_records(file)


# --------------------------------------------------------------------------- slices
def test_length_buckets_are_quartiles_labelled_with_the_counts_they_hold() -> None:
    tokens = np.arange(1, 21)
    buckets = length_buckets(tokens)
    labels = list(dict.fromkeys(buckets))
    assert [lab.split(":")[0] for lab in labels] == ["short", "medium", "long", "longest"]
    assert all(4 <= buckets.count(lab) <= 6 for lab in labels)

    def span(label: str) -> range:
        lo, hi = map(int, label.split(": ")[1].removesuffix(" tokens").split("–"))
        return range(lo, hi + 1)

    for n, label in zip(tokens, buckets):  # each count matches its own label's range and no other
        assert [lab for lab in labels if n in span(lab)] == [label]
    assert length_buckets(np.array([5, 5, 5])) == ["short: 5–5 tokens"] * 3
    assert length_buckets(np.array([], dtype=int)) == []


def test_slice_frame_defaults_to_class_and_length() -> None:
    state = state_for()
    raw = pd.DataFrame({"review": ["great", "the film was great", "dull plot", "a dull film with poor actors"]})
    target = {"type": "classification", "classes": ["no", "yes"]}
    frame = TEXT.slice_frame(raw, np.array([1, 1, 0, 0]), state, target, None)
    assert list(frame.columns) == ["class", "length"]
    assert frame["class"].tolist() == ["yes", "yes", "no", "no"]
    _, _, tokens = T.encode(raw["review"].tolist(), state["tokenizer"], 64)
    assert frame["length"].tolist() == length_buckets(tokens)
    regression = TEXT.slice_frame(raw, np.zeros(4), state, {"type": "regression"}, None)
    assert list(regression.columns) == ["length"]
    with pytest.raises(ConfigError, match="slice column"):
        TEXT.slice_frame(raw, np.zeros(4), state, target, ["words"])


# --------------------------------------------------------------------------- naive Bayes prior
def test_naive_bayes_prior_favours_the_class_a_token_appears_in() -> None:
    # token 5 only in class 1, token 8 only in class 0, token 6 in both; id 0 is padding (mask 0), class 0 only
    ids = np.array([[2, 5, 6, 3, 0], [2, 5, 7, 3, 0], [2, 8, 6, 3, 0], [2, 8, 7, 8, 3]])
    mask = (ids != 0).astype(np.int64)
    prior = np.array(naive_bayes_prior(ids, mask, np.array([1, 1, 0, 0]), 10, 2))
    assert prior.shape == (10, 2)
    assert prior[5, 1] > prior[5, 0] and prior[8, 0] > prior[8, 1]
    assert prior[6, 0] == pytest.approx(prior[6, 1]) and prior[0, 0] == pytest.approx(prior[0, 1])  # padding ignored
    assert np.allclose(prior.sum(1), 0, atol=1e-4)


# --------------------------------------------------------------------------- drift
def drift_frame(n: int, lo: int, hi: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"tokens": rng.integers(lo, hi, n), "oov_share": rng.uniform(0, 0.1, n),
                         "label": rng.choice(["no", "yes"], n)})


def test_text_drift_same_distribution_then_shifted_embeddings_then_longer_texts() -> None:
    rng = np.random.default_rng(0)
    ref, ref_emb = drift_frame(300, 5, 30, 0), rng.normal(size=(300, 8))
    new, new_emb = drift_frame(100, 5, 30, 1), rng.normal(size=(100, 8))
    same = text_drift(ref, new, ref_emb, new_emb, "label")
    assert same["kind"] == "text" and same["drifted_columns"] == []
    assert set(same["columns"]) == {"tokens", "oov_share", "label", "embedding"}
    assert abs(same["columns"]["embedding"]["auc"] - 0.5) < 0.12
    shifted = text_drift(ref, new, ref_emb, new_emb + 1.0, "label")
    assert shifted["drifted_columns"] == ["embedding"] and shifted["columns"]["embedding"]["auc"] > 0.9
    longer = text_drift(ref, drift_frame(100, 40, 80, 2), ref_emb, new_emb, "label")
    assert longer["drifted_columns"] == ["tokens"]
    assert longer["columns"]["tokens"]["batch_mean"] > longer["columns"]["tokens"]["reference_mean"] + 20
    assert "label" not in text_drift(ref, new, ref_emb, new_emb, None)["columns"]


def test_the_wordpiece_vocabulary_is_the_same_on_every_run() -> None:
    """Counted in order (frequency, then the piece), not by a trainer that breaks ties in hash order: the
    same texts give the same vocabulary and ids, so a pipeline rerun reproduces its model."""
    import json

    from torchcycle.kinds.text.tokenizer import train_tokenizer

    texts = [f"{a} {b} film number {i}" for i, (a, b) in enumerate(zip(["good", "bad", "fine"] * 40, ["plot", "cast"] * 60))]
    first, second = (json.loads(train_tokenizer(texts, "wordpiece", 200, 2, True)) for _ in range(2))
    assert first["model"]["vocab"] == second["model"]["vocab"]
    vocab = first["model"]["vocab"]
    assert {"good", "plot", "film", "number"} <= set(vocab)  # frequent words are whole pieces
    assert len(vocab) <= 200 and vocab["[PAD]"] == 0
