"""Conformer encoder (Gulati et al., Interspeech 2020) attending over TIME, with padding masks.

Paper 2 (VAVL) builds its acoustic, visual and shared encoders from conformer blocks:
    x = x + 1/2 FFN(x);  x = x + MHSA(x);  x = x + Conv(x);  x = x + 1/2 FFN(x);  y = LayerNorm(x)
with pre-norm sub-modules: FFN = LN-Linear(4d)-Swish-Dropout-Linear-Dropout, MHSA = LN-attention-
Dropout, Conv = LN-pointwise(2d)-GLU-depthwise(k)-BatchNorm-Swish-pointwise-Dropout.

Inputs are batch-first [B, T, D] and `padding_mask` [B, T] is True at padded frames (the public
VAVL code fed [T, B, D] into batch-first blocks, attending across the clips of a batch; here
every operation runs along each clip's own time axis). Padded frames are zeroed before the
depthwise convolution and the batch norm takes its statistics from valid frames only, so a
clip's output does not depend on how much padding the batch adds. Output rows are zero at
padded frames.

Choices where the papers are vague: no relative positional encoding (the convolution module
and the VAVL temporal Conv1d projection give the blocks their sense of order); depthwise
kernel 31 and FFN expansion 4 as in Gulati et al. (both config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aver.models.blocks import SelfAttention


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [B, C, T] whose training statistics come from valid frames only."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if valid is None or not self.training:
            return super().forward(x)
        weights = valid.to(x.dtype).unsqueeze(1)
        count = weights.sum().clamp_min(1.0)
        mean = (x * weights).sum(dim=(0, 2)) / count
        var = (((x - mean[None, :, None]) ** 2) * weights).sum(dim=(0, 2)) / count
        with torch.no_grad():
            unbiased = var * count / (count - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
            self.num_batches_tracked += 1
        y = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class ConformerFeedForward(nn.Module):
    """Pre-norm macaron feed-forward module with Swish."""

    def __init__(self, dim: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, expansion * dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(expansion * dim, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConformerConvModule(nn.Module):
    """LN -> pointwise conv (2d) -> GLU -> depthwise conv over time -> BN -> Swish -> pointwise -> dropout."""

    def __init__(self, dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conformer conv kernel must be odd (same-length output), got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.batch_norm = MaskedBatchNorm1d(dim)
        self.pointwise_out = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)
        h = F.glu(self.pointwise_in(h), dim=1)
        if valid is not None:
            h = h * valid.unsqueeze(1).to(h.dtype)
        h = F.silu(self.batch_norm(self.depthwise(h), valid))
        return self.dropout(self.pointwise_out(h).transpose(1, 2))


class ConformerBlock(nn.Module):
    """FFN/2 + MHSA + conv module + FFN/2 + LayerNorm, each with a residual connection."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.1, kernel_size: int = 31, ff_expansion: int = 4) -> None:
        super().__init__()
        self.ff1 = ConformerFeedForward(dim, ff_expansion, dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.conv = ConformerConvModule(dim, kernel_size, dropout)
        self.ff2 = ConformerFeedForward(dim, ff_expansion, dropout)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        valid = None if padding_mask is None else ~padding_mask
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_drop(self.attn(self.attn_norm(x), padding_mask))
        x = x + self.conv(x, valid)
        x = self.out_norm(x + 0.5 * self.ff2(x))
        return x if valid is None else x * valid.unsqueeze(-1).to(x.dtype)


class Conformer(nn.Module):
    """A stack of conformer blocks over [B, T, D] with a key padding mask (True = padded)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, dropout: float = 0.1, kernel_size: int = 31, ff_expansion: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConformerBlock(dim, n_heads, dropout, kernel_size, ff_expansion) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if padding_mask is not None:
            # a row without any valid frame would make attention softmax over nothing (NaN):
            # let it attend over its (zero) frames; its output is zeroed by the block anyway
            empty = padding_mask.all(dim=1, keepdim=True)
            attend = padding_mask & ~empty
        for block in self.blocks:
            x = block(x, None if padding_mask is None else attend)
            if padding_mask is not None:
                x = x * (~padding_mask).unsqueeze(-1).to(x.dtype)
        return x
