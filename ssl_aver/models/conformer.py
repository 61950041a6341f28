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

`ConvSubsampling` is Gulati et al.'s convolutional front end, made mask-aware: 1 (identity), 2
or 4x shorter sequences from Conv2d(k=3, stride 2, no padding) + ReLU blocks over the
(time, feature) plane, then Linear(channels x reduced feature dim -> d_model) + dropout. Mask
rules (they make a clip's output independent of its batch companions and padding):
- masked input frames (padding, and holes such as frames without a face) are zeroed before the
  first convolution, so their values never reach the output;
- a clip's length L is its last valid frame + 1; each block maps it to L' = (L - 3) // 2 + 1,
  the frames whose window lies inside the clip, except that a clip shorter than the 3-frame
  window keeps one frame (its window reads the clip's frames and zeros); a clip without any
  valid frame keeps none (length 0: the conformer then gives zeros, finite);
- output frame j (window = input frames 2j..2j+2) is valid when it lies within L' AND its
  window holds at least one valid frame (a window of holes only carries no information); each
  block's output is zeroed at its invalid frames before the next block.
A trailing valid frame outside every window (L - 3 odd) is dropped by the conv arithmetic, as in
any unpadded strided convolution; a clip whose only valid frame is dropped that way ends with no
valid subsampled frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aver.models.blocks import SelfAttention


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [B, C, T] whose training statistics come from valid frames only (computed
    in float32, also under bf16/fp16 autocast, so the running statistics stay float32)."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if valid is None or not self.training:
            return super().forward(x)
        dtype, x = x.dtype, x.float()
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
        return (y * self.weight[None, :, None] + self.bias[None, :, None]).to(dtype)


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


SUBSAMPLE_FACTORS = (1, 2, 4)


def subsampled_lengths(lengths: torch.Tensor, blocks: int) -> torch.Tensor:
    """Valid lengths [B] after `blocks` unpadded k=3, stride-2 convolutions: L' = (L - 3) // 2 + 1
    per block, at least 1 for a clip with any frame (shorter than the window), 0 for an empty one."""
    for _ in range(blocks):
        lengths = torch.where(lengths > 0, (torch.div(lengths - 3, 2, rounding_mode="floor") + 1).clamp_min(1), 0)
    return lengths


def valid_extent(valid: torch.Tensor) -> torch.Tensor:
    """Index of each row's last valid frame + 1 (0 for a row without one): [B, T] bool -> [B]."""
    steps = torch.arange(1, valid.shape[1] + 1, device=valid.device)
    return (valid.long() * steps).amax(dim=1) if valid.shape[1] else valid.new_zeros(valid.shape[0], dtype=torch.long)


class ConvSubsampling(nn.Module):
    """Gulati et al.'s convolutional subsampling over [B, T, F] -> [B, T', d_model] with its mask.

    factor 1 is the identity (no parameters; `in_dim` must equal `d_model`); 2 and 4 stack one or
    two Conv2d(k=3, stride 2) + ReLU blocks with `d_model` channels over the (time, feature) plane,
    then Linear(d_model x reduced feature dim -> d_model) and dropout. Mask rules: module docstring.
    """

    def __init__(self, in_dim: int, d_model: int, factor: int, dropout: float = 0.1) -> None:
        super().__init__()
        if factor not in SUBSAMPLE_FACTORS:
            raise ValueError(f"subsampling factor must be one of {SUBSAMPLE_FACTORS}, got {factor}")
        self.factor = factor
        self.blocks = {1: 0, 2: 1, 4: 2}[factor]
        if self.blocks == 0:
            if in_dim != d_model:
                raise ValueError(f"without subsampling the input width ({in_dim}) must equal d_model ({d_model})")
            return
        reduced = in_dim
        for _ in range(self.blocks):
            reduced = (reduced - 3) // 2 + 1
        if reduced < 1:
            raise ValueError(f"{factor}x subsampling needs at least {2 ** (self.blocks + 1) - 1} input features, got {in_dim}")
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else d_model, d_model, 3, stride=2) for i in range(self.blocks))
        self.out = nn.Linear(d_model * reduced, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(frames [B, T', d_model], padding mask [B, T'] True = padded, None when none was given)."""
        if self.blocks == 0:
            return x, padding_mask
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if padding_mask is None else ~padding_mask
        lengths = valid_extent(valid)
        h = (x * valid.unsqueeze(-1).to(x.dtype)).unsqueeze(1)  # [B, 1, T, F]
        for conv in self.convs:
            short = 3 - h.shape[2]
            if short > 0:  # a sequence shorter than the window: zeros, exactly what batch padding adds
                h, valid = F.pad(h, (0, 0, 0, short)), F.pad(valid, (0, short))
            h = F.relu(conv(h))
            lengths = subsampled_lengths(lengths, 1)
            window = F.max_pool1d(valid.unsqueeze(1).float(), 3, 2).squeeze(1) > 0  # any valid frame in the window
            valid = window & (torch.arange(h.shape[2], device=h.device) < lengths.unsqueeze(1))
            h = h * valid[:, None, :, None].to(h.dtype)
        y = self.dropout(self.out(h.transpose(1, 2).flatten(2)))  # [B, T', C * F']
        y = y * valid.unsqueeze(-1).to(y.dtype)
        return y, (None if padding_mask is None else ~valid)
