"""Attention-guided feature gathering (AFG, paper 5 Eqs. 1-3) and its three fusion structures.

AFG fuses N aligned utterance-level vectors h^1..h^N (common width D) of one sample by learned
softmax weights: alpha = Softmax(Concat(h^1..h^N) W_alpha + b_alpha), fused = sum_n alpha_n h^n.
The paper writes W_alpha in R^{D x N}, which does not match a concatenation of N vectors; we read
Eq. 2 as the MER2023 baseline does, one linear layer from the concatenated [N*D] vector to N
scores (`scoring: concat`). `scoring: shared` scores each vector with one shared Linear(D, 1)
instead (fewer weights, independent of the order of the inputs).

Absent inputs (a missing modality) are masked out of the softmax, so the weights of the present
ones still sum to 1; a sample with no present input gets a zero vector and is marked absent.

Structures (Fig. 1), with acoustic vectors A (e.g. several SSL layers, the pretrained encoder)
and visual vectors V (face models):
    parallel     (1) AFG over A and V together
    pairwise     (2) AFG over {a} + V for every a in A, then AFG over those audio-visual vectors
    hierarchical (3) AFG over A (intra-acoustic), then AFG over that vector + V (inter-modal)

They differ only with at least two acoustic vectors and at least one visual vector (paper 5
fuses three HuBERT layers and two face models). With one acoustic vector, pairwise's top AFG
and hierarchical's intra AFG each see a single input (softmax weight 1), so both reduce to the
parallel AFG over {a} + V; with no visual vector, pairwise's pairs and hierarchical's top do, so
both reduce to an AFG over A. `structures_coincide` says when; comparing or fusing the three
structures then only compares seeds.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_aver.errors import UserError

SCORINGS = ("concat", "shared")
STRUCTURES = ("parallel", "pairwise", "hierarchical")


def structures_coincide(n_acoustic: int, n_visual: int) -> bool:
    """True when the three structures compute the same function (fewer than two acoustic or no
    visual inputs; module docstring)."""
    return n_acoustic < 2 or n_visual < 1


class AFG(nn.Module):
    """Softmax-weighted sum of N aligned vectors [B, N, D] -> fused [B, D] and weights [B, N]."""

    def __init__(self, n_inputs: int, dim: int, scoring: str = "concat") -> None:
        super().__init__()
        if n_inputs < 1:
            raise UserError("AFG needs at least one input feature")
        if scoring not in SCORINGS:
            raise UserError(f"AFG scoring must be one of {SCORINGS}, got {scoring!r}")
        self.n_inputs = n_inputs
        self.scoring = scoring
        self.score = nn.Linear(n_inputs * dim, n_inputs) if scoring == "concat" else nn.Linear(dim, 1)

    def forward(self, features: torch.Tensor, present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`present` [B, N] (True = the input exists); absent inputs get weight 0."""
        batch, n, _ = features.shape
        if n != self.n_inputs:
            raise ValueError(f"AFG built for {self.n_inputs} inputs got {n}")
        if present is not None:
            features = features * present[..., None].to(features.dtype)
        scores = self.score(features.reshape(batch, -1)) if self.scoring == "concat" else self.score(features).squeeze(-1)
        if present is not None:
            none = ~present.any(dim=1, keepdim=True)
            scores = scores.masked_fill(~present, float("-inf")).masked_fill(none, 0.0)
        weights = torch.softmax(scores, dim=-1)
        if present is not None:
            weights = weights * present.to(weights.dtype)
        return (weights.unsqueeze(-1) * features).sum(dim=1), weights


class AFGFusion(nn.Module):
    """One of the paper's three AFG structures over acoustic and visual vectors."""

    def __init__(self, structure: str, n_acoustic: int, n_visual: int, dim: int, scoring: str = "concat") -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise UserError(f"fusion structure must be one of {STRUCTURES}, got {structure!r}")
        if n_acoustic + n_visual < 1:
            raise UserError("AFG fusion needs at least one acoustic or visual feature")
        if structure != "parallel" and n_acoustic < 1:
            raise UserError(f"the {structure} structure needs at least one acoustic feature; use structure=parallel")
        self.structure = structure
        self.n_acoustic, self.n_visual = n_acoustic, n_visual
        if structure == "parallel":
            self.top = AFG(n_acoustic + n_visual, dim, scoring)
        elif structure == "pairwise":
            self.pairs = nn.ModuleList(AFG(1 + n_visual, dim, scoring) for _ in range(n_acoustic))
            self.top = AFG(n_acoustic, dim, scoring)
        else:
            self.intra = AFG(n_acoustic, dim, scoring)
            self.top = AFG(1 + n_visual, dim, scoring)

    def forward(
        self, acoustic: torch.Tensor, visual: torch.Tensor, acoustic_present: torch.Tensor, visual_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """acoustic [B, Na, D], visual [B, Nv, D] + presence [B, Na] / [B, Nv] ->
        fused [B, D], present [B], and the AFG weights by stage (for inspection)."""
        if self.structure == "parallel":
            present = torch.cat([acoustic_present, visual_present], dim=1)
            fused, weights = self.top(torch.cat([acoustic, visual], dim=1), present)
            return fused, present.any(dim=1), {"top": weights}
        if self.structure == "pairwise":
            pair_vectors, pair_present, out = [], [], {}
            for j, afg in enumerate(self.pairs):
                present = torch.cat([acoustic_present[:, j : j + 1], visual_present], dim=1)
                vector, out[f"pair_{j}"] = afg(torch.cat([acoustic[:, j : j + 1], visual], dim=1), present)
                pair_vectors.append(vector)
                pair_present.append(present.any(dim=1))
            stacked_present = torch.stack(pair_present, dim=1)
            fused, out["top"] = self.top(torch.stack(pair_vectors, dim=1), stacked_present)
            return fused, stacked_present.any(dim=1), out
        audio, intra = self.intra(acoustic, acoustic_present)
        present = torch.cat([acoustic_present.any(dim=1, keepdim=True), visual_present], dim=1)
        fused, top = self.top(torch.cat([audio.unsqueeze(1), visual], dim=1), present)
        return fused, present.any(dim=1), {"intra": intra, "top": top}
