"""MulT (Tsai et al., ACL 2019, "Multimodal Transformer for Unaligned Multimodal Language
Sequences"), reduced to audio and video as papers 2-4 use it as a baseline.

Pipeline: acoustic frames (the toolkit's pretrained encoder, a layer-stacked SSL store through
a learnable layer sum, or a z-normalised [T, D] store) and visual frames are projected to the
common width `d_model` by temporal Conv1d layers. Each transformer stack starts from the
scaled input (sqrt(d) x) plus sinusoidal positions and embedding dropout. Two cross-modal
stacks reinforce one modality with the other: audio queries attend to the video frames
(audio <- video) and video queries to the audio frames (video <- audio). With two modalities
each target modality has one cross-modal output, so MulT's "memory" self-attention transformer
runs over that output alone (one per target). Each memory output is pooled over time, the two
pooled vectors are concatenated and go through the residual FC block (Linear-ReLU-dropout-
Linear, plus the input) and the output layer.

Attention runs over time only, within a clip, with key padding masks: masked frames (padding,
frames without a face, frames the robustness suite removes) are never attended and pooled
away, so they change nothing. A clip without any valid frame of one modality still gets finite
logits: the cross-modal attention from that missing source makes a zero update
(`summarizer.MaskedAttention` outputs zeros for rows without a valid key), and the missing
target's pooled vector is zeros.

Checked against yaohungt/Multimodal-Transformer (src/models.py, modules/transformer.py,
modules/position_embedding.py, main.py, src/train.py): d_l = d_a = d_v = 30 hard-coded
(`d_model`); `--num_heads` 5; `--nlevels` 5 cross-modal layers, memory transformers with
max(nlevels, 3) = 5 layers; attention dropout 0.1 in the memory transformers and
`attn_dropout_a` = `attn_dropout_v` = 0.0 in the cross-modal ones (the a <- v stack uses
attn_dropout_v, the v <- a stack attn_dropout_a); relu 0.1, residual 0.1, embedding 0.25,
output 0.0 dropouts; Conv1d projections with kernel 1 and no bias; pre-norm layers whose one
LayerNorm normalises both the queries and the keys/values, feed-forward width 4d with ReLU, a
final LayerNorm after each stack; the embedding (sqrt(d) scale + sinusoidal positions + embedding
dropout) applied to the queries and to the keys/values of each stack; the last time step read
out; the residual FC block over the concatenation. Training (for the recipe, not `model:` keys):
Adam, lr 1e-3, batch 24, gradient clip 0.8, 40 epochs, ReduceLROnPlateau(patience 20, x0.1).

What the reference does that this head deliberately does not copy: it feeds [T, B, D] tensors
and builds no key padding mask, so padded frames are attended and the "last time step" is a
padding frame for every clip shorter than the batch's longest; its causal ("future") mask is
built from the padded lengths of the batch, so a clip's output depends on its companions; the
positional embedding (fairseq-derived) numbers a frame 0 (a zero vector) when its first feature
happens to be exactly 0.

Choices where the source is vague (all `model:` keys):
- `pooling`: "mean" (default) = masked mean over the valid frames of each memory output;
  "last" = the state of the last VALID frame (the reference's read-out, made padding-safe).
  Mean is the default because attention here is not causal (the reference's causal mask is
  built from padded lengths, see above), so the last frame has no privileged summarising role,
  and because a mean over the valid frames degrades gracefully when frames are masked (random
  drops, Markov bursts at the end of a clip move the "last valid frame"); paper 2 average-pools
  its own heads too.
- No causal mask: every frame attends to all valid frames of the clip (bidirectional).
- Both modalities are projected (the reference skips the projection when a modality already
  has width d; here 1,024 / 1,408 -> 30 always projects). `proj_kernel` = 1 as in the
  reference code; the Conv1d keeps its bias (harmless before the scaled embedding).
- The keys and values of a cross-modal stack share one embedding-dropout mask (the reference
  draws two); parameters use PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext, check_choice
from finetune.heads.vavl import AcousticInput, MaskedConv1d, encoder_branch, valid_mean
from ssl_aver.errors import UserError
from ssl_aver.models.blocks import sinusoidal_positions
from ssl_aver.models.pooling import LWSum
from ssl_aver.models.summarizer import MaskedAttention

POOLINGS = ("mean", "last")


def last_valid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """State of the last valid frame of each row of [N, T, D] -> [N, D] (zeros without one)."""
    steps = torch.arange(1, x.shape[1] + 1, device=x.device)
    index = (steps * valid.long()).argmax(dim=1)
    picked = x[torch.arange(x.shape[0], device=x.device), index]
    return picked * valid.any(dim=1, keepdim=True).to(x.dtype)


def pool(x: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """[N, T, D] -> [N, D] by `how` ("mean" over valid frames or the "last" valid frame)."""
    return valid_mean(x, valid) if how == "mean" else last_valid(x, valid)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer of the MulT code: self-attention, or cross-modal attention
    when a source sequence is given (queries from x, keys/values from the source, both
    normalised by the same LayerNorm), then a 4d ReLU feed-forward block.

    `gated` (AuxFormer's "scalar" layers) mixes every residual as alpha * x + (1 - alpha) * f(x)
    with a learnable scalar alpha drawn from U(0, 1) at initialisation.
    """

    def __init__(self, dim: int, n_heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float, gated: bool = False) -> None:
        super().__init__()
        self.attn = MaskedAttention(dim, n_heads, attn_dropout)
        self.norm_attn, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        self.alpha = nn.Parameter(torch.rand(1)) if gated else None

    def _residual(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        update = F.dropout(update, self.res_dropout, self.training)
        if self.alpha is None:
            return x + update
        return self.alpha * x + (1 - self.alpha) * update

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, memory_valid: torch.Tensor) -> torch.Tensor:
        """x [N, T, d]; memory [N, S, d] (None: self-attention over x) with valid mask [N, S]."""
        h = self.norm_attn(x)
        keys = h if memory is None else self.norm_attn(memory)
        x = self._residual(x, self.attn(h, keys, memory_valid))
        h = F.dropout(F.relu(self.fc1(self.norm_ff(x))), self.relu_dropout, self.training)
        return self._residual(x, self.fc2(h))


class TransformerStack(nn.Module):
    """The reference `TransformerEncoder`: embedding (sqrt(d) scale, sinusoidal positions when
    `positions`, embedding dropout) of the queries and of the source, the layers, a final
    LayerNorm. forward(x, valid) is a self-attention stack; forward(x, valid, source,
    source_valid) a cross-modal one (x queries the source's valid frames)."""

    def __init__(
        self, dim: int, n_heads: int, n_layers: int, *, attn_dropout: float, relu_dropout: float, res_dropout: float,
        embed_dropout: float, positions: bool = True, gated: bool = False,
    ) -> None:
        super().__init__()
        if dim % n_heads:
            raise UserError(f"model.d_model ({dim}) must be divisible by model.n_heads ({n_heads})")
        self.scale = math.sqrt(dim)
        self.positions = positions
        self.embed_dropout = embed_dropout
        self.layers = nn.ModuleList(TransformerLayer(dim, n_heads, attn_dropout, relu_dropout, res_dropout, gated) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(d) x (+ positions), then embedding dropout."""
        x = self.scale * x
        if self.positions:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, source: torch.Tensor | None = None, source_valid: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        memory = None if source is None else self.embed(source)
        memory_valid = valid if source is None else source_valid
        for layer in self.layers:
            h = layer(h, memory, memory_valid)
        return self.norm(h)


class ResidualMLP(nn.Module):
    """dim -> hidden... -> dim (ReLU + dropout between) plus the input: the reference's residual
    FC block (one hidden layer of width dim in MulT's, [512, 256] in AuxFormer's auxiliary one)."""

    def __init__(self, dim: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        widths = [dim, *(int(h) for h in hidden), dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers += [nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class AVFrontEnd(nn.Module):
    """Store frames -> both modalities projected to width d by temporal Conv1d layers.

    The acoustic input (`AcousticInput`, plus its layer sum for layer-stacked stores) runs on
    the clips that have audio only; the others get zero frames, all masked.
    """

    def __init__(self, ctx: BuildContext, dim: int, kernel: int, system: str) -> None:
        super().__init__()
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"{system} needs a visual store with [T, D] frames, got {ctx.video_shape}")
        self.acoustic = AcousticInput(ctx)
        self.layer_sum: nn.Module = LWSum(self.acoustic.n_layers) if self.acoustic.kind == "stacked" else nn.Identity()
        self.audio_proj = MaskedConv1d(self.acoustic.dim, dim, kernel)
        self.video_proj = MaskedConv1d(int(ctx.video_shape[0]), dim, kernel)

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio [B, Ta, d], audio valid [B, Ta], video [B, Tv, d], video valid [B, Tv])."""
        a_valid, v_valid = batch["audio_mask"].bool(), batch["video_mask"].bool()
        rows = a_valid.any(dim=1).nonzero().flatten()
        feats = torch.zeros(*a_valid.shape, self.acoustic.dim, device=a_valid.device)
        if rows.numel():
            feats[rows] = self.layer_sum(self.acoustic(batch["audio"][rows], a_valid[rows])).to(feats.dtype)
        return self.audio_proj(feats, a_valid), a_valid, self.video_proj(batch["video"].to(feats.dtype), v_valid), v_valid

    def keep_frozen_encoder_in_eval(self) -> None:
        """A frozen pretrained encoder takes no updates, so it runs without dropout noise."""
        if self.acoustic.frozen:
            self.acoustic.eval()


class MulTHead(nn.Module):
    """MulT over audio and video: cross-modal stacks both ways, memory transformers, residual FC."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        self.pooling = check_choice(cfg, "pooling", POOLINGS)
        d, heads = int(cfg["d_model"]), int(cfg["n_heads"])
        self.front = AVFrontEnd(ctx, d, int(cfg["proj_kernel"]), "MulT")
        common = dict(relu_dropout=float(cfg["relu_dropout"]), res_dropout=float(cfg["res_dropout"]), embed_dropout=float(cfg["embed_dropout"]))
        cross, memory = int(cfg["cross_layers"]), int(cfg["memory_layers"])
        self.audio_from_video = TransformerStack(d, heads, cross, attn_dropout=float(cfg["attn_dropout_v"]), **common)
        self.video_from_audio = TransformerStack(d, heads, cross, attn_dropout=float(cfg["attn_dropout_a"]), **common)
        self.audio_memory = TransformerStack(d, heads, memory, attn_dropout=float(cfg["attn_dropout"]), **common)
        self.video_memory = TransformerStack(d, heads, memory, attn_dropout=float(cfg["attn_dropout"]), **common)
        self.fusion = ResidualMLP(2 * d, [2 * d], float(cfg["out_dropout"]))
        self.out_layer = nn.Linear(2 * d, n_classes)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys: the reference code's sizes (yaohungt/Multimodal-Transformer main.py, src/models.py)."""
        return {
            "d_model": 30, "n_heads": 5, "cross_layers": 5, "memory_layers": 5, "proj_kernel": 1,
            "attn_dropout": 0.1, "attn_dropout_a": 0.0, "attn_dropout_v": 0.0, "relu_dropout": 0.1, "res_dropout": 0.1,
            "embed_dropout": 0.25, "out_dropout": 0.0, "pooling": "mean",
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "MulTHead":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.front.acoustic)

    def train(self, mode: bool = True) -> "MulTHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode."""
        super().train(mode)
        self.front.keep_frozen_encoder_in_eval()
        return self

    def streams(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled memory outputs [B, d] of the audio target (audio <- video) and of the video
        target (video <- audio); zeros for a clip without frames of the target modality."""
        a, a_valid, v, v_valid = self.front(batch)
        h_a = self.audio_memory(self.audio_from_video(a, a_valid, v, v_valid), a_valid)
        h_v = self.video_memory(self.video_from_audio(v, v_valid, a, a_valid), v_valid)
        return pool(h_a, a_valid, self.pooling), pool(h_v, v_valid, self.pooling)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class logits (or attribute values) [B, C]."""
        return self.out_layer(self.fusion(torch.cat(self.streams(batch), dim=-1)))
