"""Losses the heads share.

`ClassBalancedLoss` follows Cui et al. (CVPR 2019), as papers 3 and 4 use it: each class is
weighted by (1 - beta) / (1 - beta^n_c), n_c = the class's training positives, and the weights
are normalised to sum to the number of classes. With multi-label targets it is a weighted BCE;
with single-label targets a weighted cross-entropy. beta -> 0 gives the unweighted loss.
Multi-label targets may be 0/1 or vote shares (`data.target: distribution`, papers 3-4 train on
the distributions): BCE takes soft targets as they are, and a class's training positives are
counted with the papers' binarisation (`positive_counts`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def positive_counts(targets: np.ndarray) -> np.ndarray:
    """Training positives per class of multi-label targets, 0/1 or vote shares: a value strictly
    above 1/C counts (papers 3-4's binarisation; a 1 of a multi-hot row always does)."""
    from ssl_aver.metrics import THRESHOLD_TOL

    y = np.asarray(targets, dtype=np.float64)
    return (y > 1.0 / y.shape[1] + THRESHOLD_TOL).sum(0)


def class_balanced_weights(counts: np.ndarray, beta: float) -> torch.Tensor:
    """Per-class weights (1 - beta) / (1 - beta^n), normalised to sum to C; unseen classes get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    effective = 1.0 - np.power(beta, counts)
    weights = np.where(counts > 0, (1.0 - beta) / np.maximum(effective, 1e-12), 0.0)
    total = weights.sum()
    if total > 0:
        weights = weights * len(counts) / total
    return torch.tensor(weights, dtype=torch.float32)


class ClassBalancedLoss(nn.Module):
    """Class-balanced BCE (multilabel) or cross-entropy (multiclass) from training class counts."""

    def __init__(self, counts: np.ndarray, beta: float = 0.999, multilabel: bool = True) -> None:
        super().__init__()
        self.multilabel = multilabel
        self.register_buffer("weights", class_balanced_weights(counts, beta))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            per = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            return (per * self.weights).mean()
        return nn.functional.cross_entropy(logits, targets.argmax(dim=1), weight=self.weights)
