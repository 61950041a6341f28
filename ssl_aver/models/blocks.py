"""Transformer building blocks of paper 1's encoder (Fig. 2), shared by the heads that reuse it.

Attention runs over time with key padding masks, through PyTorch's fused
`scaled_dot_product_attention` by default; `explicit` computes softmax(QK^T / sqrt(d_k)) V
step by step (same result, for benchmarking and for checking the fused path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("sdpa", "explicit")


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Vaswani et al.'s 1-D sinusoidal positional embedding, [length, dim] (paper 1, Eq. 1)."""
    half = (dim + 1) // 2
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * (-2.0 * math.log(10000.0) / dim))
    table = torch.zeros(length, 2 * half, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table[:, :dim].to(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention over time with a key padding mask (True = padded frame)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, impl: str = "sdpa") -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"model dim {dim} is not divisible by {n_heads} heads")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, got '{impl}'")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        keep = None if padding_mask is None else ~padding_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            weights = F.dropout(torch.softmax(scores, dim=-1), p=p)
            y = weights @ v
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Module):
    """Position-wise two-layer MLP with ReLU."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionLayer(nn.Module):
    """A post-norm transformer encoder layer (Vaswani et al.).

    With `scaled=True` the attention residual becomes LayerNorm(alpha * x + beta * Attn(x)),
    alpha and beta learnable scalars (paper 1, Sec. 3.4); the feed-forward residual is the usual
    LayerNorm(h + FF(h)). The paper does not say where the scales act or how they start: we
    scale the attention residual only and start both at 1 (a plain residual at initialisation);
    `alpha`/`beta` may be passed in so several layers share one pair.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        ff_dim: int,
        residual_dropout: float,
        attention_dropout: float,
        impl: str,
        scaled: bool = False,
        alpha: nn.Parameter | None = None,
        beta: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, n_heads, attention_dropout, impl)
        self.ff = FeedForward(dim, ff_dim, residual_dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.drop = nn.Dropout(residual_dropout)
        self.scaled = scaled
        if scaled:
            self.alpha = alpha if alpha is not None else nn.Parameter(torch.ones(()))
            self.beta = beta if beta is not None else nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.drop(self.attn(x, padding_mask))
        h = self.norm_attn(self.alpha * x + self.beta * a if self.scaled else x + a)
        return self.norm_ff(h + self.drop(self.ff(h)))


def masked_mean(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the valid (unpadded) frames of [B, T, D] -> [B, D]."""
    if padding_mask is None:
        return hidden.mean(dim=1)
    valid = (~padding_mask).to(hidden.dtype)[..., None]
    return (hidden * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


class MLPHead(nn.Module):
    """Two fully connected layers with ReLU (paper 1's prediction head)."""

    def __init__(self, dim: int, hidden: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
