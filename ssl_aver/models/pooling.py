"""Pooling blocks the audio-visual heads share (papers 3 and 4).

- `LWSum`: learnable weighted sum over stacked SSL layers (softmax weights, so they sum to 1).
- `ASPool`: attentive statistics pooling (Okabe et al., 2018): attention weights over frames,
  then the weighted mean and standard deviation, concatenated; padded frames get no weight.
- `masked_mean` lives in ssl_aver.models.blocks.
"""

from __future__ import annotations

import torch
from torch import nn


class LWSum(nn.Module):
    """[B, T, L, D] stacked layers -> [B, T, D] with softmax-normalised learnable layer weights."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        if stacked.shape[-2] != self.logits.numel():
            raise ValueError(f"LWSum built for {self.logits.numel()} layers, got {stacked.shape[-2]}")
        return torch.einsum("btld,l->btd", stacked, self.weights.to(stacked.dtype))


class ASPool(nn.Module):
    """Attentive statistics pooling: [B, T, D] + valid mask [B, T] -> [B, 2D] (mean ++ std).

    A row with no valid frame pools to zeros (a missing modality contributes nothing).
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.attention(x).squeeze(-1)
        if valid is not None:
            scores = scores.masked_fill(~valid, float("-inf"))
        any_valid = torch.isfinite(scores).any(dim=1, keepdim=True)
        weights = torch.softmax(scores.masked_fill(~any_valid, 0.0), dim=1)
        weights = torch.where(any_valid, weights, torch.zeros_like(weights)).unsqueeze(-1)
        mean = (weights * x).sum(dim=1)
        var = (weights * (x - mean.unsqueeze(1)) ** 2).sum(dim=1)
        std = torch.sqrt(var.clamp_min(1e-6)) * any_valid.to(x.dtype)
        return torch.cat([mean, std], dim=-1)
