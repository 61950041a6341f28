"""Paper 4's context summarizer and the cross-modal / self-attention layers that follow it.

`ContextSummarizer` (Sec. III-B, Fig. 1b) is a stack of transformer decoder layers whose queries
are N_ctx learnable tokens: each layer lets the tokens attend to each other, then "pull"
information from the modality's frames by cross-attention with a key padding mask, then applies
a feed-forward block. Missing or masked frames are never attended, so their values cannot change
the summary. `CrossModalLayer` (Tsai et al.'s MulT, Sec. III-C) lets one modality's context
query the other's; `SelfAttentionLayer` is the same block with queries, keys and values from one
modality.

Choices where the paper is vague:
- Layers are pre-norm (LayerNorm before each sub-layer, residual around it), with a final
  LayerNorm after each stack; the feed-forward width is `ff_mult` x d_model with ReLU.
- A row whose key set has NO valid position (the modality is entirely missing) gets a zero
  cross-attention output, so the residual keeps the query unchanged: the summary of a missing
  modality is the learned tokens passed through the layers without any frame information, and
  in a cross-modal layer a missing source makes a zero update (the paper's "near-zero update
  ... preserves the representation of the available modality").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedAttention(nn.Module):
    """Multi-head attention of queries [B, Q, D] over keys/values [B, K, D] with a valid mask [B, K].

    Positions with valid=False get zero weight; rows without any valid key output zeros.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"model dim {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        batch, n_q, dim = query.shape
        n_k = memory.shape[1]
        q = self.q(query).view(batch, n_q, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(batch, n_k, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        any_valid = None
        if valid is not None:
            any_valid = valid.any(dim=1)
            # a row with no valid key attends everywhere (finite softmax) and is zeroed below
            mask = (valid | ~any_valid[:, None])[:, None, None, :]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.out(y.transpose(1, 2).reshape(batch, n_q, dim))
        if any_valid is not None:
            y = y * any_valid.to(y.dtype)[:, None, None]
        return y


def _feed_forward(dim: int, ff_mult: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))


class SummarizerLayer(nn.Module):
    """Decoder layer: self-attention among the tokens, cross-attention to the frames, feed-forward."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = MaskedAttention(dim, n_heads, dropout)
        self.cross_attn = MaskedAttention(dim, n_heads, dropout)
        self.ff = _feed_forward(dim, ff_mult, dropout)
        self.norm_self, self.norm_cross, self.norm_memory, self.norm_ff = (nn.LayerNorm(dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(tokens)
        tokens = tokens + self.drop(self.self_attn(h, h))
        tokens = tokens + self.drop(self.cross_attn(self.norm_cross(tokens), self.norm_memory(frames), valid))
        return tokens + self.drop(self.ff(self.norm_ff(tokens)))


class ContextSummarizer(nn.Module):
    """N_ctx learnable query tokens summarise a frame sequence [B, T, D] (+ valid [B, T]) into [B, N_ctx, D]."""

    def __init__(self, dim: int, n_ctx: int = 128, n_layers: int = 6, n_heads: int = 8, ff_mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self.queries = nn.Parameter(torch.randn(n_ctx, dim) * dim**-0.5)
        self.layers = nn.ModuleList(SummarizerLayer(dim, n_heads, ff_mult, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def n_ctx(self) -> int:
        return self.queries.shape[0]

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        tokens = self.queries.unsqueeze(0).expand(frames.shape[0], -1, -1).to(frames.dtype)
        for layer in self.layers:
            tokens = layer(tokens, frames, valid)
        return self.norm(tokens)


class CrossModalLayer(nn.Module):
    """MulT cross-modal block: the target context queries the source context (valid rows only)."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = MaskedAttention(dim, n_heads, dropout)
        self.ff = _feed_forward(dim, ff_mult, dropout)
        self.norm_target, self.norm_source, self.norm_ff = (nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, source: torch.Tensor, source_valid: torch.Tensor | None = None) -> torch.Tensor:
        target = target + self.drop(self.attn(self.norm_target(target), self.norm_source(source), source_valid))
        return target + self.drop(self.ff(self.norm_ff(target)))


class SelfAttentionLayer(nn.Module):
    """The same block with queries, keys and values from one modality."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = MaskedAttention(dim, n_heads, dropout)
        self.ff = _feed_forward(dim, ff_mult, dropout)
        self.norm_attn, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.drop(self.attn(h, h, valid))
        return x + self.drop(self.ff(self.norm_ff(x)))
