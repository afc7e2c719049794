"""Token attributions of text models: integrated gradients on the token embedding (captum), an HTML
highlight of one text, and the tokens that push each class most across many texts. Pure functions: the
explain stage (kinds/text/explain.py) does the reading and writing.

Integrated gradients rather than perturbation (SHAP's text masker, LIME): a text model is differentiable
in its embedding, so `steps` interpolations give exact path gradients in one batched pass, where a masker
needs hundreds of forward passes per text (benchmarks/results/text_explain.md measures the gap)."""

from __future__ import annotations

import html
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

# never shown nor ranked: they carry the structure of the input, not its content ([UNK] is content the
# vocabulary lacks, but it is the same string for every unknown word, so ranking it says nothing)
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>"})
HIDDEN_IN_TEXT = SPECIAL_TOKENS - {"[UNK]", "<unk>"}  # an unknown word still has a place in the sentence
BPE_SUFFIX = "</w>"
WORDPIECE_PREFIX = "##"
NO_SPACE_BEFORE = frozenset(".,!?;:)]}%")
NO_SPACE_AFTER = frozenset("([{$")
POSITIVE_RGB, NEGATIVE_RGB = (0, 158, 115), (213, 94, 0)  # Okabe-Ito bluish green and vermillion


def token_attributions(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target: torch.Tensor | None,
    steps: int = 32,
    pad_id: int = 0,
    batch_size: int = 64,
    keep_ids: Sequence[int] = (),
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients of each row's output `target[i]` (None: output 0, a regression or a single
    readout) with respect to the output of `model.token_embedding()`, summed over the embedding dimension.

    The baseline is the same row with every token replaced by `pad_id` except those in `keep_ids` (the
    special tokens, so the baseline is "a text with no words" rather than "no text"); the attention mask
    stays the row's own, so the path only changes what the words are. `batch_size` bounds the sequences
    in one forward pass (rows × interpolation steps), which is what memory depends on. `progress(n)` is
    called after every n rows. Returns (attributions (N, L), 0 where the mask is 0; convergence deltas
    (N,): the attributions' sum − (output(row) − output(baseline)), small when `steps` is enough and the
    model reads the ids only through the embedding; the bag model's token weights read them directly, so
    there the kept [CLS]/[SEP] leave their own term in the delta, whatever `steps`).

    A model may look the embedding up more than once per forward pass (the bag model's hashed bigrams
    share its table): each lookup is attributed on its own, and a lookup of L − w + 1 positions (w-grams)
    gives each of its w tokens an equal share, so the attributions still add up to the output change.
    The model is put in eval mode (dropout would make the path noisy) and its parameters are frozen for
    the call, so nothing accumulates in their .grad; both are restored afterwards."""
    from captum.attr import LayerIntegratedGradients

    n, length = int(input_ids.shape[0]), int(input_ids.shape[1])
    if n == 0:
        return np.zeros((0, length), np.float32), np.zeros(0, np.float32)
    ids, mask = input_ids.long(), attention_mask.long()
    special = torch.isin(ids, torch.as_tensor(list(keep_ids), dtype=torch.long, device=ids.device))
    baseline = torch.where(special | ~mask.bool(), ids, torch.full_like(ids, pad_id))  # padding stays as it is
    rows = max(1, batch_size // steps)
    was_training = model.training
    grad_state = [(p, p.requires_grad) for p in model.parameters()]
    embedding = model.token_embedding()
    hooks: list[Any] = []
    scores, deltas = [], []
    try:
        model.eval()
        for p, _ in grad_state:
            p.requires_grad_(False)
        taps = _tap_lookups(model, embedding, ids[:1], mask[:1], hooks)
        with warnings.catch_warnings():  # the taps are independent reads of one table, as captum asks
            warnings.filterwarnings("ignore", message="Multiple layers provided")
            lig = LayerIntegratedGradients(model, list(taps))
        with torch.enable_grad():
            for start in range(0, n, rows):
                part = slice(start, min(start + rows, n))
                attrs, delta = lig.attribute(
                    ids[part], baselines=baseline[part], additional_forward_args=(mask[part],),
                    target=0 if target is None else target[part].long(), n_steps=steps,
                    internal_batch_size=max(batch_size, part.stop - part.start), return_convergence_delta=True,
                )  # fmt: skip
                scores.append((_to_tokens(attrs, length) * mask[part]).float().cpu())
                deltas.append(delta.detach().reshape(-1).float().cpu())
                if progress is not None:
                    progress(part.stop - part.start)
    finally:
        for handle in hooks:
            handle.remove()
        for p, flag in grad_state:
            p.requires_grad_(flag)
        model.train(was_training)
    return torch.cat(scores).numpy(), torch.cat(deltas).numpy()


def _tap_lookups(model: nn.Module, embedding: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                 hooks: list[Any]) -> nn.ModuleList:
    """One identity module per embedding lookup in a forward pass, each lookup's output routed through
    its own: captum hooks a layer's single output, so a table read twice needs a layer per read. The
    handles go into `hooks` for the caller to remove."""
    calls: list[int] = []
    probe = embedding.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        with torch.no_grad():
            model(ids, mask)
    finally:
        probe.remove()
    taps = nn.ModuleList(nn.Identity() for _ in range(max(1, len(calls))))
    count = [0]

    def reset(module: nn.Module, args: Any) -> None:
        count[0] = 0

    def route(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        k, count[0] = count[0], count[0] + 1
        return taps[k % len(taps)](out)

    hooks.append(model.register_forward_pre_hook(reset))
    hooks.append(embedding.register_forward_hook(route))
    return taps


def _to_tokens(attrs: Any, length: int) -> torch.Tensor:
    """Each lookup's attributions summed over the embedding dimension, onto the L token positions: a
    lookup of L − w + 1 positions spreads each position's share over the w tokens it covers."""
    parts = attrs if isinstance(attrs, (list, tuple)) else [attrs]
    out = torch.zeros(parts[0].shape[0], length, dtype=torch.float64, device=parts[0].device)
    for a in parts:
        a = a.detach().double()
        a = a.sum(dim=-1) if a.dim() == 3 else a.reshape(a.shape[0], -1)
        width = length - a.shape[1] + 1
        if a.shape[1] == 0 or width < 1:
            continue  # no lookup per position to map back (nothing this module's models do)
        for offset in range(width):
            out[:, offset:offset + a.shape[1]] += a / width
    return out


def readable(token: str) -> str:
    """A token as a reader would write it: without WordPiece's "##" and BPE's "</w>"."""
    if token.startswith(WORDPIECE_PREFIX) and len(token) > len(WORDPIECE_PREFIX):
        token = token[len(WORDPIECE_PREFIX):]
    if token.endswith(BPE_SUFFIX) and len(token) > len(BPE_SUFFIX):
        token = token[: -len(BPE_SUFFIX)]
    return token


def _ranked(token: str) -> str:
    return token[: -len(BPE_SUFFIX)] if token.endswith(BPE_SUFFIX) and len(token) > len(BPE_SUFFIX) else token


def _pieces(tokens: list[str]) -> list[tuple[int, str, bool]]:
    """(position, text, space before) of each shown token: "##" pieces and the pieces of a BPE word
    whose previous piece had no "</w>" join the word before them; punctuation hugs its neighbour."""
    bpe = any(t.endswith(BPE_SUFFIX) for t in tokens)
    out: list[tuple[int, str, bool]] = []
    previous = ""
    for i, token in enumerate(tokens):
        if token in HIDDEN_IN_TEXT:
            continue
        text = readable(token)
        continues = token.startswith(WORDPIECE_PREFIX) and len(token) > len(WORDPIECE_PREFIX)
        continues = continues or (bpe and bool(out) and not previous.endswith(BPE_SUFFIX))
        hugs = text in NO_SPACE_BEFORE or (bool(out) and out[-1][1] in NO_SPACE_AFTER)
        space = bool(out) and not continues and not hugs
        out.append((i, text, space))
        previous = token
    return out


def highlight_html(tokens: list[str], scores: np.ndarray, title: str = "") -> str:
    """One text as an HTML fragment: each token a span shaded green (pushes towards the explained output)
    or red (pushes away), its opacity |score| / the text's largest |score|, the score in a tooltip.
    Subword pieces are joined so words read normally; special tokens are left out; all text is escaped."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pieces = _pieces(list(tokens))
    top = max((abs(scores[i]) for i, _, _ in pieces), default=0.0)
    spans = []
    for i, text, space in pieces:
        s = float(scores[i])
        alpha = abs(s) / top if top > 0 else 0.0
        r, g, b = POSITIVE_RGB if s >= 0 else NEGATIVE_RGB
        spans.append(
            (" " if space else "")
            + f'<span class="tok" style="background-color: rgba({r}, {g}, {b}, {alpha:.3f})" '
            + f'title="{html.escape(text, quote=True)}: {s:+.4f}">{html.escape(text)}</span>'
        )
    heading = f'<div class="title">{html.escape(title)}</div>' if title else ""
    return f'<div class="explained-text">{heading}<p>{"".join(spans)}</p></div>'


def top_tokens(token_lists: list[list[str]], score_lists: list[np.ndarray], groups: list[str], k: int = 15,
               min_count: int = 3) -> pd.DataFrame:
    """Per group (the class a text was predicted as), the `k` tokens with the highest mean attribution
    over their occurrences in that group's texts, among tokens seen at least `min_count` times there (a
    word seen once says more about that text than about the class). BPE's end-of-word "</w>" is dropped
    for reading; WordPiece's "##" stays, since "##ly" (a suffix) is not the word "ly". Special tokens are
    left out."""
    records: list[tuple[str, str, float]] = []
    for tokens, scores, group in zip(token_lists, score_lists, groups):
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        records += [(group, _ranked(t), float(s)) for t, s in zip(tokens, scores) if t not in SPECIAL_TOKENS]
    columns = ["group", "token", "mean_attribution", "count"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records, columns=["group", "token", "score"])
    stats = frame.groupby(["group", "token"], sort=False)["score"].agg(["mean", "size"]).reset_index()
    stats.columns = columns
    stats = stats[stats["count"] >= min_count]
    order = list(dict.fromkeys(groups))
    stats = stats.sort_values(["mean_attribution", "token"], ascending=[False, True])
    out = [stats[stats["group"] == g].head(k) for g in order]
    out = [part for part in out if len(part)]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)
