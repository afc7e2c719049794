"""Tokenisation with Hugging Face `tokenizers` (Rust): a WordPiece or BPE vocabulary trained on the
training split only, or a pretrained encoder's own `tokenizer.json`. The tokenizer travels as its JSON
(never a pickle): in data/processed/<task>/tokenizer.json, in the preprocessing state and so inside the
exported model's metadata, where every consumer reads it back."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL = [PAD, UNK, CLS, SEP]


def train_tokenizer(texts: Iterable[str], algorithm: str, vocab_size: int, min_frequency: int, lowercase: bool) -> str:
    """A WordPiece or BPE tokenizer fitted on `texts` (the training split), as JSON. Both normalise like
    BERT, split on whitespace and punctuation first and wrap each text in [CLS] … [SEP].

    WordPiece's vocabulary is counted here, deterministically: every character (alone and as a
    continuation), the frequent whole words, then word-initial and `##` suffix pieces of the rarer words,
    ranked by how often they occur (ties by the piece itself). `tokenizers`' own trainers break ties between equally frequent
    merges in hash order, so their vocabulary changes from run to run; BPE keeps its trainer (see README)."""
    from tokenizers import Tokenizer, decoders, models, trainers

    if algorithm == "wordpiece":
        tok = _with_text_handling(Tokenizer(models.WordPiece({UNK: 0}, unk_token=UNK)), lowercase)
        vocab = wordpiece_vocabulary(word_counts(texts, tok), vocab_size, min_frequency)
        tok.model = models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token=UNK)
        tok.add_special_tokens(SPECIAL)  # already in the vocabulary: marked special (never split, skipped in decode)
        tok.decoder = decoders.WordPiece()
    elif algorithm == "bpe":
        tok = _with_text_handling(Tokenizer(models.BPE(unk_token=UNK)), lowercase)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL,
                                      end_of_word_suffix="</w>")
        tok.train_from_iterator(texts, trainer)
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ValueError(f"unknown tokenizer algorithm '{algorithm}': wordpiece or bpe")
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tok.to_str()


def _with_text_handling(tok: Any, lowercase: bool) -> Any:
    from tokenizers import normalizers, pre_tokenizers

    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def word_counts(texts: Iterable[str], tok: Any) -> Counter[str]:
    """How often each normalised, pre-tokenised word occurs (what the vocabulary is counted from)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    return counts


def wordpiece_vocabulary(words: Counter[str], vocab_size: int, min_frequency: int, longest: int = 12) -> list[str]:
    """Special tokens and the alphabet (so any word can be spelled); then whole words seen at least
    `min_frequency` times, most frequent first; then, in the room left, the most frequent word-initial
    pieces and `##` suffix pieces of the other words (ties always by the piece itself)."""
    alphabet = sorted({c for w in words for c in w})
    base = [*SPECIAL, *alphabet, *(f"##{c}" for c in alphabet)]
    taken = set(base)
    whole = sorted((w for w, n in words.items() if n >= min_frequency and w not in taken), key=lambda w: (-words[w], w))
    pieces: Counter[str] = Counter()
    kept = set(whole)
    for w, n in words.items():
        if w in kept:
            continue
        for k in range(2, min(len(w), longest + 1)):
            pieces[w[:k]] += n
        for k in range(max(1, len(w) - longest), len(w) - 1):
            pieces[f"##{w[k:]}"] += n
    kept |= taken
    ranked = sorted((p for p, n in pieces.items() if n >= min_frequency and p not in kept), key=lambda p: (-pieces[p], p))
    return (base + whole + ranked)[:max(vocab_size, len(base))]


@functools.lru_cache(maxsize=8)
def load_tokenizer(tokenizer_json: str, max_length: int) -> Any:
    """A ready tokenizer truncating at `max_length`; parsed once per process and state, because
    prediction calls it for every request."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def encode(texts: list[str], tokenizer_json: str, max_length: int, pad_to: int | None = None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids int64 (N, L), attention_mask int64 (N, L), tokens each text had before truncation).
    L is the longest text of the call, or `pad_to`: padding never changes a prediction, so a batch is
    only as wide as its longest text."""
    tok = load_tokenizer(tokenizer_json, max_length)
    encodings = tok.encode_batch(list(texts))
    lengths = np.array([len(e.ids) + sum(len(o.ids) - 2 for o in e.overflowing) for e in encodings], dtype=np.int64)
    width = pad_to or max((len(e.ids) for e in encodings), default=1)
    ids = np.full((len(encodings), width), pad_id(tokenizer_json), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for i, e in enumerate(encodings):
        n = min(len(e.ids), width)
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = 1
    return ids, mask, lengths


def tokens_of(ids: np.ndarray, tokenizer_json: str) -> list[str]:
    """The token strings of one row of ids (for highlighted explanations)."""
    tok = load_tokenizer(tokenizer_json, 10**6)
    return [tok.id_to_token(int(i)) or UNK for i in ids]


def vocab_size(tokenizer_json: str) -> int:
    return load_tokenizer(tokenizer_json, 10**6).get_vocab_size()


@functools.lru_cache(maxsize=8)
def pad_id(tokenizer_json: str) -> int:
    tok = load_tokenizer(tokenizer_json, 10**6)
    pid = tok.token_to_id(PAD)
    return 0 if pid is None else int(pid)
