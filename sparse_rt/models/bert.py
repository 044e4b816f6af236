"""BERT-style encoder (``bert_encoder``) with HuggingFace ``transformers`` parameter names.

Layout followed: huggingface/transformers ``src/transformers/models/bert/modeling_bert.py``
(``BertModel`` = ``embeddings`` + ``encoder`` + optional ``pooler``). Confirmed there, per layer
N (``BertLayer``), all projections ``nn.Linear`` with bias, weights ``[out, in]``:

* ``encoder.layer.N.attention.self.{query,key,value}``           hidden -> hidden
* ``encoder.layer.N.attention.output.dense``                     hidden -> hidden
* ``encoder.layer.N.attention.output.LayerNorm`` (eps 1e-12)     note the capitalised name
* ``encoder.layer.N.intermediate.dense``                         hidden -> intermediate
  (followed by exact, erf-form GELU)
* ``encoder.layer.N.output.dense``                               intermediate -> hidden
* ``encoder.layer.N.output.LayerNorm``
* post-LN residuals: ``LN(x + dropout(dense(attn)))``, ``LN(h + dropout(dense(gelu(dense(h)))))``;
  scores scaled by 1/sqrt(head_dim), softmax over keys.
* optional ``embeddings.{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm}``
  and ``pooler.dense`` (+ tanh on the first token).

Keys carry no ``bert.`` prefix: they match a bare ``BertModel`` state dict; a task-model
checkpoint (``BertForSequenceClassification`` etc.) must be stripped of ``bert.`` and its head.

Input contract (what sparse_rt benchmarks): ``forward(hidden_states)`` takes a *float* tensor
``[batch, seq, hidden]`` -- already embedded -- and returns ``[batch, seq, hidden]``. There is no
attention mask (all positions attend to all), which keeps the forward free of
data-dependent branches for ``torch.fx`` / export.
Embeddings are optional: pass ``vocab_size`` to build ``model.embeddings`` and call
``model.embed(input_ids, token_type_ids=None)`` to get the float input for ``forward``.
``embeddings.position_ids`` is a non-persistent buffer, as in transformers >= 4.31; checkpoints
written by older versions store it -- pass ``legacy_position_ids=True`` to keep it in the
state dict. The pooler (``pooler=True``) is built for checkpoint compatibility and is
reachable via ``model.pool(hidden_states)``; ``forward`` does not use it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ._common import MAX_DEPTH, check_int, check_prob
from ._registry import register

__all__ = ["BertEncoderModel", "bert_encoder"]


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, max_position: int, type_vocab_size: int,
                 eps: float, dropout: float, legacy_position_ids: bool) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_position, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("position_ids", torch.arange(max_position).expand((1, -1)),
                             persistent=legacy_position_ids)

    def forward(self, input_ids: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        seq = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        emb = (self.word_embeddings(input_ids)
               + self.token_type_embeddings(token_type_ids)
               + self.position_embeddings(self.position_ids[:, :seq]))
        return self.dropout(self.LayerNorm(emb))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.softmax = nn.Softmax(dim=-1)
        self.scale = 1.0 / math.sqrt(self.attention_head_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, S, H] -> [B, heads, S, head_dim]
        return x.unflatten(-1, (self.num_attention_heads, self.attention_head_size)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.query(x))
        k = self._heads(self.key(x))
        v = self._heads(self.value(x))
        probs = self.dropout(self.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale))
        ctx = torch.matmul(probs, v)                      # [B, heads, S, head_dim]
        return ctx.transpose(1, 2).flatten(2)             # [B, S, H]


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float, dropout: float,
                 attention_dropout: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, attention_dropout)
        self.output = BertSelfOutput(hidden, eps, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)
        self.intermediate_act_fn = nn.GELU()  # exact (erf) GELU, HF "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, hidden: int, intermediate: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, dropout: float,
                 attention_dropout: float) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, heads, eps, dropout, attention_dropout)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(hidden, intermediate, eps, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, **kw) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**kw) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertPooler(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.activation = nn.Tanh()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(h[:, 0]))


class BertEncoderModel(nn.Module):
    """``[B, S, hidden]`` float in, ``[B, S, hidden]`` float out; see the module docstring."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12,
                 intermediate: int = 3072, vocab_size: Optional[int] = None,
                 max_position: int = 512, type_vocab_size: int = 2, dropout: float = 0.1,
                 attention_dropout: float = 0.1, layer_norm_eps: float = 1e-12,
                 pooler: bool = False, legacy_position_ids: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        if vocab_size is not None:
            self.embeddings = BertEmbeddings(vocab_size, hidden, max_position, type_vocab_size,
                                             layer_norm_eps, dropout, legacy_position_ids)
        else:
            self.embeddings = None
        self.encoder = BertEncoder(layers, hidden=hidden, heads=heads, intermediate=intermediate,
                                   eps=layer_norm_eps, dropout=dropout,
                                   attention_dropout=attention_dropout)
        self.pooler = BertPooler(hidden) if pooler else None

        for m in self.modules():  # BERT's init: N(0, 0.02) weights, zero biases, LN 1/0
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.encoder(hidden_states)

    def embed(self, input_ids: torch.Tensor,
              token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids ``[B, S]`` -> float ``[B, S, hidden]`` (needs ``vocab_size``)."""
        if self.embeddings is None:
            raise RuntimeError("this bert_encoder was built without embeddings; "
                               "pass vocab_size=... to create() to get them")
        return self.embeddings(input_ids, token_type_ids)

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """First-token pooler output ``[B, hidden]`` (needs ``pooler=True``)."""
        if self.pooler is None:
            raise RuntimeError("this bert_encoder was built without a pooler; pass pooler=True")
        return self.pooler(hidden_states)


def _embedded_tokens(*, hidden: int = 768, **_) -> tuple:
    """128 tokens of embedded input: what the encoder's forward takes."""
    return (128, hidden)


@register("bert_encoder", input_shape=_embedded_tokens)
def bert_encoder(*, layers: int = 12, hidden: int = 768, heads: int = 12,
                 intermediate: int = 3072, vocab_size: Optional[int] = None,
                 max_position: int = 512, type_vocab_size: int = 2, dropout: float = 0.1,
                 attention_dropout: float = 0.1, layer_norm_eps: float = 1e-12,
                 pooler: bool = False, legacy_position_ids: bool = False) -> BertEncoderModel:
    """BERT encoder, HF names (defaults: BERT-base 12 layers / 768 / 12 heads / 3072)."""
    check_int("layers", layers, maximum=MAX_DEPTH)
    check_int("hidden", hidden)
    check_int("heads", heads)
    if hidden % heads != 0:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    check_int("intermediate", intermediate)
    if vocab_size is not None:
        check_int("vocab_size", vocab_size)
    check_int("max_position", max_position)
    check_int("type_vocab_size", type_vocab_size)
    if isinstance(layer_norm_eps, bool) or not isinstance(layer_norm_eps, (int, float)) \
            or layer_norm_eps <= 0:
        raise ValueError(f"layer_norm_eps must be a positive float, got {layer_norm_eps!r}")
    return BertEncoderModel(layers, hidden, heads, intermediate, vocab_size, max_position,
                            type_vocab_size, check_prob("dropout", dropout),
                            check_prob("attention_dropout", attention_dropout),
                            float(layer_norm_eps), bool(pooler), bool(legacy_position_ids))
