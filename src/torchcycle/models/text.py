"""The text models: a weighted bag of tokens (and hashed bigrams), a (bi)directional GRU/LSTM, a small
Transformer encoder and a fine-tuned pretrained (BERT-like) encoder.

Every model maps `input_ids` and `attention_mask` (both (N, L) int64, padding at the end of each row,
mask 0) to (N, n_outputs) raw outputs; a target's head is applied outside. Padding never changes a
prediction, so a row gives the same output whatever length its batch was padded to, and every forward is
free of data-dependent Python control flow so it exports to ONNX with dynamic batch and sequence axes.
`token_embedding()` names the layer that maps ids to vectors, the one attribution methods hook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

BIGRAM_MULTIPLIER = 1000003


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (what LoRA or freezing saves)."""
    params = list(model.parameters())
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed (length, dim) sine/cosine position table of "Attention is all you need"; odd `dim`
    drops the last cosine column."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequencies)
    table[:, 1::2] = torch.cos(position * frequencies)[:, : dim // 2]
    return table


def _lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Valid tokens per row, at least one, so an all-padding row reads its first position instead of
    dividing by zero or packing an empty sequence (both paths of a model agree on it)."""
    return attention_mask.sum(dim=1).clamp(min=1)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def trimmed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In training, a batch cut to its longest text: padding never changes an output, so the columns
    that are padding in every row are work for nothing (inference keeps the shapes it is given, which
    the exported graph needs)."""
    width = int(attention_mask.sum(dim=1).max().clamp(min=1))
    return input_ids[:, :width], attention_mask[:, :width]


class TextModel(nn.Module):
    """What every text model offers besides forward: the embedding layer and its parameter counts."""

    def token_embedding(self) -> nn.Embedding:
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return parameter_counts(self)["trainable"]

    def total_parameters(self) -> int:
        return parameter_counts(self)["total"]


# --------------------------------------------------------------------------- bag of tokens
class BagOfTokens(TextModel):
    """The average of the token (and hashed bigram) embeddings, then a linear layer — plus, for classes,
    a per-token score channel started from naive-Bayes log-count ratios of the training split and trained
    with the rest (NBSVM, Wang & Manning 2012: the strong linear baseline for short sentiment texts).

    The scores live in the same embedding table as the vectors (its last `n_outputs` columns), so one
    lookup feeds both and attribution methods hooked on `token_embedding()` see every path from a token
    to the output. Channel scores are summed over a text's tokens and divided by the square root of its
    length; bigram buckets (a hashing trick: no bigram vocabulary to store) join the average only."""

    def __init__(
        self,
        vocab_size: int,
        n_outputs: int,
        embedding_dim: int = 64,
        ngrams: int = 1,
        buckets: int = 32768,
        dropout: float = 0.5,
        token_dropout: float = 0.0,
        pad_id: int = 0,
        prior: list[list[float]] | None = None,
        prior_scale: float = 1.5,
    ) -> None:
        super().__init__()
        if ngrams not in (1, 2):
            raise ValueError(f"ngrams must be 1 or 2, got {ngrams}")
        self.vocab_size, self.ngrams, self.buckets = vocab_size, ngrams, buckets
        self.dim, self.token_dropout, self.prior_scale = embedding_dim, token_dropout, prior_scale
        self.channel = n_outputs if prior is not None else 0
        rows = vocab_size + (buckets if ngrams == 2 else 0)
        self.embedding = nn.Embedding(rows, embedding_dim + self.channel, padding_idx=pad_id)
        if prior is not None:
            table = torch.tensor(prior, dtype=torch.float32)
            if table.shape != (vocab_size, n_outputs):
                raise ValueError(f"prior has shape {tuple(table.shape)}, expected ({vocab_size}, {n_outputs})")
            with torch.no_grad():
                self.embedding.weight[:vocab_size, embedding_dim:] = table
                self.embedding.weight[vocab_size:, embedding_dim:] = 0.0
                self.embedding.weight[pad_id] = 0.0  # padding is masked out; its row stays zero
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, n_outputs)

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        if self.training and self.token_dropout > 0:  # dropped tokens leave their bigrams too
            mask = mask * torch.bernoulli(torch.full_like(mask, 1.0 - self.token_dropout))
        ids, weights = input_ids, mask
        if self.ngrams == 2:
            bigrams = self.vocab_size + (input_ids[:, :-1] * BIGRAM_MULTIPLIER + input_ids[:, 1:]) % self.buckets
            ids = torch.cat([input_ids, bigrams], dim=1)
            weights = torch.cat([mask, mask[:, :-1] * mask[:, 1:]], dim=1)
        rows = self.embedding(ids) * weights.unsqueeze(-1)
        pooled = rows[..., : self.dim].sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        out = self.head(self.dropout(pooled))
        if self.channel:
            tokens = rows[:, : input_ids.shape[1], self.dim :]  # unigrams only: bigram scores stay 0
            out = out + self.prior_scale * tokens.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0).sqrt()
        return out


class RecurrentText(TextModel):
    """Embedding, a stacked (bi)directional GRU or LSTM, pooling over valid positions, a linear layer.

    Two paths with the same weights and the same math. Training packs the sequences (one fused call, no
    work spent on padding). Evaluation and export run each layer and direction as a single-layer,
    unidirectional recurrence over the padded batch (`torch.gru`/`torch.lstm` on the stacked module's
    own weights), which torch.export handles with a dynamic sequence length: padding sits at the end, so
    a forward pass never lets it reach a valid position, and the backward direction reverses each row's
    valid part with a gather, runs forward and reverses back. `packed` forces a path (None: packed in
    training only; the other path applies no dropout between layers); export always takes the second."""

    def __init__(
        self,
        vocab_size: int,
        n_outputs: int,
        cell: str = "gru",
        embedding_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.3,
        pooling: str = "max",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"unknown cell '{cell}'; choose gru or lstm")
        if pooling not in ("max", "mean", "last"):
            raise ValueError(f"unknown pooling '{pooling}'; choose max, mean or last")
        self.cell, self.pooling, self.hidden, self.layers = cell, pooling, hidden, layers
        self.directions = 2 if bidirectional else 1
        self.packed: bool | None = None
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(embedding_dim, hidden, layers, batch_first=True, bidirectional=bidirectional,
                       dropout=dropout if layers > 1 else 0.0)  # fmt: skip
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * self.directions, n_outputs)

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = _lengths(attention_mask)
        x = self.embedding(input_ids)
        packed = self.training if self.packed is None else self.packed
        if torch.compiler.is_exporting():
            _forget_rnn_dispatch()
            out = self._run_unrolled_layers(x, lengths)
        elif packed:
            out = self._run_packed(x, lengths)
        else:
            out = self._run_unrolled_layers(x, lengths)
        return self.head(self.dropout(self._pool(out, lengths)))

    def _run_packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def _run_unrolled_layers(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        position = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        last = lengths.unsqueeze(1) - 1
        reverse = torch.where(position <= last, last - position, position)  # its own inverse
        for layer in range(self.layers):
            outputs = [self._run_one(x, layer, "")]
            if self.directions == 2:
                index = reverse.unsqueeze(-1).expand(-1, -1, x.shape[2])
                backward = self._run_one(x.gather(1, index), layer, "_reverse")
                outputs.append(backward.gather(1, reverse.unsqueeze(-1).expand(-1, -1, self.hidden)))
            x = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
        return x

    def _run_one(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One layer and direction of the stacked module, as a unidirectional single-layer recurrence."""
        weights = [
            getattr(self.rnn, f"{name}_l{layer}{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        h0 = x.new_zeros((1, x.shape[0], self.hidden))
        # `train` only tells cuDNN to keep what backward needs (one layer, no dropout: same numbers), so
        # gradients through an eval-mode model, as attribution methods take them, work on a GPU too
        train = torch.is_grad_enabled() and not torch.compiler.is_exporting()
        if self.cell == "gru":
            return torch.gru(x, h0, weights, True, 1, 0.0, train, False, True)[0]
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, train, False, True)[0]

    def _pool(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(out.shape[1], device=out.device).unsqueeze(0) < lengths.unsqueeze(1)
        if self.pooling == "max":
            return out.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)
        if self.pooling == "mean":
            return _masked_mean(out, valid)
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
        forward = out.gather(1, index).squeeze(1)[:, : self.hidden]
        if self.directions == 1:
            return forward
        return torch.cat([forward, out[:, 0, self.hidden :]], dim=1)


def _forget_rnn_dispatch() -> None:
    """Clear the Python dispatch cache of aten.gru/aten.lstm while being exported.

    The ONNX exporter (torch 2.13) swaps in a while_loop decomposition of these ops for the duration of
    an export by editing their `py_kernels` without clearing the cache, so the second export in a
    process reuses the unrolled decomposition cached by the first and silently fixes the sequence length
    to the example's. The cache is only a lookup shortcut: clearing it costs one re-resolution."""
    for op in (torch.ops.aten.gru.input, torch.ops.aten.lstm.input):
        cache = getattr(op, "_dispatch_cache", None)
        if cache is not None:
            cache.clear()


# --------------------------------------------------------------------------- transformer
class TransformerText(TextModel):
    """A small pre-norm Transformer encoder trained from scratch: scaled token embeddings plus learned or
    sinusoidal positions, key padding masked in attention, then a masked mean or a prepended [CLS]
    vector, LayerNorm, dropout and a linear layer."""

    def __init__(
        self,
        vocab_size: int,
        n_outputs: int,
        max_length: int,
        d_model: int = 128,
        heads: int = 4,
        layers: int = 2,
        feedforward: int = 256,
        dropout: float = 0.1,
        positions: str = "learned",
        pooling: str = "mean",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"unknown positions '{positions}'; choose learned or sinusoidal")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling '{pooling}'; choose mean or cls")
        self.pooling, self.scale = pooling, math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        # one row more than max_length: room for the [CLS] vector
        if positions == "learned":
            self.positions: nn.Embedding | None = nn.Embedding(max_length + 1, d_model)
        else:
            self.positions = None
            self.register_buffer("sinusoids", sinusoidal_positions(max_length + 1, d_model), persistent=False)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02) if pooling == "cls" else None
        layer = nn.TransformerEncoderLayer(
            d_model, heads, feedforward, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_outputs)

    def token_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            input_ids, attention_mask = trimmed(input_ids, attention_mask)
        x = self.embedding(input_ids) * self.scale
        valid = attention_mask > 0
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)
            valid = torch.cat([valid.new_ones((x.shape[0], 1)), valid], dim=1)
        position = torch.arange(x.shape[1], device=x.device)
        x = x + (self.positions(position) if self.positions is not None else self.sinusoids[: x.shape[1]])
        # position 0 always attendable: an all-padding row gets numbers rather than NaN (a row with a
        # token has it valid anyway, padding sitting at the end)
        padding = ~valid & (position > 0).unsqueeze(0)
        h = self.encoder(x, src_key_padding_mask=padding)
        pooled = h[:, 0] if self.cls is not None else _masked_mean(h, ~padding)
        return self.head(self.dropout(self.norm(pooled)))


# --------------------------------------------------------------------------- pretrained encoder
class PretrainedText(TextModel):
    """A Hugging Face encoder (BERT-like, built from its config dict, weights read from safetensors, never
    pickle or remote code) with a masked-mean or [CLS] pooling, dropout and a linear layer.

    `finetune`: "frozen" trains the head only, "full" everything, "lora" low-rank adapters on
    `lora_target_modules` plus the head. `merge_adapters()` folds the adapters into the encoder's weights
    for serving; `merged=True` rebuilds that plain architecture (its encoder frozen, like an unmerged
    LoRA model's base) so the merged state dict loads without peft."""

    def __init__(
        self,
        encoder_config: dict[str, Any],
        n_outputs: int,
        finetune: str = "frozen",
        pooling: str = "mean",
        dropout: float = 0.1,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: Sequence[str] = ("query", "key", "value", "dense"),
        weights: str | None = None,
        merged: bool = False,
    ) -> None:
        super().__init__()
        import transformers

        if finetune not in ("frozen", "full", "lora"):
            raise ValueError(f"unknown finetune '{finetune}'; choose frozen, full or lora")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"unknown pooling '{pooling}'; choose mean or cls")
        self.finetune, self.pooling, self.merged = finetune, pooling, merged
        config = transformers.AutoConfig.for_model(**encoder_config)
        encoder = transformers.AutoModel.from_config(config)
        if getattr(encoder, "pooler", None) is not None:  # unused: its parameters would never get a gradient
            encoder.pooler = None
        if weights is not None:
            load_encoder_weights(encoder, weights, config.model_type)
        if finetune == "frozen" or (finetune == "lora" and merged):
            encoder.requires_grad_(False)
        if finetune == "lora" and not merged:
            import peft

            lora = peft.LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                   target_modules=list(lora_target_modules), bias="none")  # fmt: skip
            encoder = peft.get_peft_model(encoder, lora)
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, n_outputs)

    def token_embedding(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            input_ids, attention_mask = trimmed(input_ids, attention_mask)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else _masked_mean(hidden, attention_mask > 0)
        return self.head(self.dropout(pooled))

    def merge_adapters(self) -> dict[str, Any]:
        """Fold LoRA adapters into the encoder in place; the spec kwargs that rebuild what remains."""
        if self.finetune != "lora" or self.merged:
            return {"weights": None}
        self.encoder = self.encoder.merge_and_unload()
        self.merged = True
        return {"merged": True, "weights": None}


_IGNORED_KEYS = ("pooler.", "embeddings.position_ids")


def load_encoder_weights(encoder: nn.Module, path: str, model_type: str) -> None:
    """Load a `model.safetensors` into `encoder`. A checkpoint of a task model (keys under "bert.",
    "model." or the model type) contributes its encoder keys only; a pooler is optional either way.
    Any other missing or unexpected key is an error: a silently half-loaded encoder trains from noise."""
    from safetensors.torch import load_file

    state = load_file(path)
    for prefix in (f"{model_type}.", "bert.", "model."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_IGNORED_KEYS)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(_IGNORED_KEYS)]
    if missing or unexpected:
        raise ValueError(f"weights {path} do not fit the encoder config: missing keys {missing[:10]}"
                         f"{' …' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                         f"{' …' if len(unexpected) > 10 else ''}")  # fmt: skip


__all__ = [
    "BagOfTokens",
    "PretrainedText",
    "RecurrentText",
    "TextModel",
    "TransformerText",
    "load_encoder_weights",
    "parameter_counts",
    "sinusoidal_positions",
]
