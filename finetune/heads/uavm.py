"""UAVM, the unified audio-visual model (paper 2's Baseline 1).

Gong, Liu, Rouditchenko, Glass, "UAVM: Towards Unifying Audio and Visual Models", IEEE Signal
Processing Letters 29, 2022. Paper 2 (Sec. 4.5.1) ran it with its repository code.

Pipeline: per modality a front end (input LayerNorm, a linear projection to `d_model` when the
frame width differs, learned positional embeddings, `modality_layers` pre-norm transformer
blocks), then ONE transformer shared by both modalities (input LayerNorm, projection to
`shared_d_model` when the widths differ, its own learned positions, `shared_layers` blocks),
mean pooling over the valid frames and ONE classifier (LayerNorm + Linear) shared by both
modalities. The audio and the video sequence go through the shared transformer SEPARATELY (no
cross-modal attention). The audio-visual output averages the two unimodal outputs; with one
modality missing the output is the other modality's prediction.

Training (through the shared loop, `finetune.trainer.fit`, with the run's default loss): every
training batch goes through ONE modality, audio with probability `audio_prob` (0.5) and video
otherwise, and the loss is that modality's prediction loss, so over the batches both passes
train the shared transformer and the classifier. This is the source's schedule: it trains on
neither a sum of per-modality losses nor the fused output. A training clip without the drawn
modality contributes the other modality's prediction. Evaluation (eval mode) gives the
audio-visual output; the dev loss that selects the checkpoint is the loss of that output.
Paper 2 trained every system with its Sec. 4.3 settings (Adam, lr 5e-5, batch 32 on CREMA-D,
20 epochs, best dev checkpoint): recipe (`train:`) settings, not keys of this head.

Checked against YuanGongND/uavm: src/models/mm_trans.py (`UnifiedTrans`, `SingleTrans`, `Block`:
modality-specific `SingleTrans` with depth_i layers -> shared `SingleTrans` with depth_s layers
whose LayerNorm + Linear head is the one classifier; input LayerNorm, projection only when the
widths differ, learned positions (trunc. normal, std 0.02) per stack, pre-norm ViT blocks with
GELU MLP, mlp_ratio 4, no dropout, no final norm before pooling, mean over time);
egs/vggsound/run_uavm.sh and egs/audioset/run_uavm.sh (embed_dim = s_embed_dim = 1024,
num_heads 4, depth_i 3, depth_s 3, a_tr_prob 0.5; lr 5e-5 (VGGSound) / 1e-5 (AudioSet), batch
144, 10 epochs); src/traintest.py (Adam, weight decay 5e-7, betas 0.95/0.999; training draws
audio or video per batch with a_tr_prob; the AV output of `validate` is
(audio_output + video_output) / 2 on the raw outputs, i.e. the LOGITS are averaged);
src/embedding/gen_intermediate_representation.py (the embeddings it analyses are a layer's
output averaged over time, which `shared_embeddings` mirrors for the last shared layer).

Not copied from the source: it pads/trims every clip to 30 frames and runs attention and the
mean pooling over the zero padding (here key padding masks and a mean over valid frames only,
so a clip's output does not depend on padding); it builds unused projection and classifier
layers inside the modality-specific stacks (not built here); it picks the best epoch on the
TEST set (here the shared loop's dev-set early stopping); mixup, label smoothing, noise
augmentation and balanced sampling belong to its data pipeline and are not part of this head.

Choices where the source is vague or does not fit these inputs (all `model:` keys):
- `av_fusion`: "logits" (default, the source: AV logits = mean of the two unimodal logits) or
  "probabilities" (mean of softmax / sigmoid probabilities, returned as logits whose
  activation is that mean, like VAVL's `average` ablation). For regression both are the mean
  of the two outputs.
- `max_len`: the source's positional tables have its fixed 30 frames; here clips have any
  length, so each stack has a learned table of `max_len` (1024) positions indexed by frame
  number (frames at masked holes keep their index) and frames beyond it share the last row.
- The source L2-normalises each frame before the input LayerNorm, which is scale invariant, so
  that step is left out; [T, D] acoustic stores are z-normalised with the training statistics
  and layer-stacked stores get an LW-Sum (as for the other heads of this toolkit).
- The attention's query/key/value projection has a bias (the source's has none).
- `shared_layers` must be >= 1: without shared layers the source gives each modality its own
  classifier, which is its modality-independent baseline, not UAVM.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext, check_choice
from finetune.heads.vavl import AcousticInput, encoder_branch, select_rows, valid_mean
from ssl_aver.errors import UserError
from ssl_aver.models.blocks import SelfAttention
from ssl_aver.models.pooling import LWSum

MODALITIES = ("audio", "video")
AV_FUSIONS = ("logits", "probabilities")


class PreNormBlock(nn.Module):
    """ViT encoder block: x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of `mlp_ratio` x d."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x), padding_mask))
        return x + self.mlp(self.norm_mlp(x))


class TransformerStack(nn.Module):
    """The source's `SingleTrans` body over [N, T, D_in] with a valid mask [N, T] -> [N, T, dim].

    Input LayerNorm, a linear projection when D_in != dim, learned positions (when it has
    layers), pre-norm blocks attending over the valid frames only. Every row must have a valid
    frame (the head only passes rows that have the modality).
    """

    def __init__(self, in_dim: int, dim: int, n_layers: int, n_heads: int, mlp_ratio: float, dropout: float, max_len: int) -> None:
        super().__init__()
        self.in_norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.proj: nn.Module = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.positions = nn.Parameter(nn.init.trunc_normal_(torch.zeros(max_len, dim), std=0.02)) if n_layers else None
        self.blocks = nn.ModuleList(PreNormBlock(dim, n_heads, mlp_ratio, dropout) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.in_norm(x))
        if self.positions is not None:
            index = torch.arange(h.shape[1], device=h.device).clamp(max=self.positions.shape[0] - 1)
            h = h + self.positions[index].to(h.dtype)
        for block in self.blocks:
            h = block(h, ~valid)
        return h


def average_logits(la: torch.Tensor, lv: torch.Tensor, fusion: str, task: str) -> torch.Tensor:
    """Logits of the AV prediction from the audio and the video logits.

    "logits": their mean (the source). "probabilities": logits whose softmax (multiclass) or
    sigmoid (multilabel) is the mean of the two probabilities, computed in log space so that
    confident predictions stay finite; regression outputs are averaged either way.
    """
    if fusion == "logits" or task == "regression":
        return (la + lv) / 2
    if task == "multiclass":
        return torch.logsumexp(torch.stack([F.log_softmax(la, -1), F.log_softmax(lv, -1)]), 0) - math.log(2.0)
    log_p = torch.logsumexp(torch.stack([F.logsigmoid(la), F.logsigmoid(lv)]), 0)
    log_q = torch.logsumexp(torch.stack([F.logsigmoid(-la), F.logsigmoid(-lv)]), 0)
    return log_p - log_q


class UAVMHead(nn.Module):
    """UAVM: modality-specific front ends, one shared transformer and one shared classifier."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"UAVM needs a visual store with [T, D] frames, got {ctx.video_shape}")
        check_choice(cfg, "av_fusion", AV_FUSIONS)
        self.audio_prob = float(cfg["audio_prob"])
        if not 0.0 <= self.audio_prob <= 1.0:
            raise UserError(f"model.audio_prob is the chance a training batch goes through audio (0..1), got {self.audio_prob}")
        if int(cfg["shared_layers"]) < 1:
            raise UserError(f"model.shared_layers must be >= 1 (UAVM's shared transformer), got {cfg['shared_layers']}")
        if int(cfg["max_len"]) < 1:
            raise UserError(f"model.max_len must be >= 1, got {cfg['max_len']}")
        self.n_out = n_classes
        self.task = ctx.task
        self.av_fusion = str(cfg["av_fusion"])
        d, shared_d = int(cfg["d_model"]), int(cfg["shared_d_model"])
        stack = dict(n_heads=int(cfg["n_heads"]), mlp_ratio=float(cfg["mlp_ratio"]), dropout=float(cfg["dropout"]), max_len=int(cfg["max_len"]))
        self.acoustic = AcousticInput(ctx)
        if self.acoustic.kind == "stacked":
            self.layer_sum = LWSum(self.acoustic.n_layers)
        n_specific = int(cfg["modality_layers"])
        self.audio_front = TransformerStack(self.acoustic.dim, d, n_specific, **stack)
        self.video_front = TransformerStack(int(ctx.video_shape[0]), d, n_specific, **stack)
        self.shared = TransformerStack(d, shared_d, int(cfg["shared_layers"]), **stack)
        self.classifier = nn.Sequential(nn.LayerNorm(shared_d, eps=1e-6), nn.Linear(shared_d, n_classes))

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys; sizes of the source's run_uavm.sh (its best configuration, 3 + 3 layers)."""
        return {
            "d_model": 1024, "shared_d_model": 1024, "n_heads": 4, "modality_layers": 3, "shared_layers": 3, "mlp_ratio": 4.0,
            "dropout": 0.0, "max_len": 1024, "audio_prob": 0.5, "av_fusion": "logits",
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "UAVMHead":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.acoustic)

    def train(self, mode: bool = True) -> "UAVMHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if mode and self.acoustic.frozen:
            self.acoustic.eval()
        return self

    @staticmethod
    def present(batch: Mapping[str, Any], modality: str) -> torch.Tensor:
        """[B] bool: the clip has the modality and at least one valid frame of it."""
        has = batch[f"has_{modality}"].bool()
        if batch.get(modality) is None:
            return torch.zeros_like(has)
        return has & batch[f"{modality}_mask"].any(dim=1)

    def shared_output(self, batch: Mapping[str, Any], modality: str, rows: torch.Tensor) -> torch.Tensor:
        """Mean over valid frames of the shared transformer's output for one modality's rows, [N, d]:
        the modality's front end, then the shared transformer on that sequence alone."""
        x, valid = select_rows(batch, modality, rows)
        if modality == "audio":
            x = self.acoustic(x, valid)
            if hasattr(self, "layer_sum"):
                x = self.layer_sum(x)
            front = self.audio_front
        else:
            x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
            front = self.video_front
        return valid_mean(self.shared(front(x, valid), valid), valid)

    def modality_logits(self, batch: Mapping[str, Any], modality: str, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows [B] bool, logits [B, C]) of one modality through the shared layers and classifier;
        `rows` defaults to the clips that have it, logits are zero elsewhere."""
        rows = self.present(batch, modality) if rows is None else rows
        logits = torch.zeros(len(rows), self.n_out, device=rows.device)
        index = rows.nonzero().flatten()
        if index.numel():
            logits = logits.index_put((index,), self.classifier(self.shared_output(batch, modality, index)).to(logits.dtype))  # float32 under autocast
        return rows, logits

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Eval: the AV average where both modalities are present, else the present one's prediction
        (zeros for a clip with neither). Training: the prediction of one drawn modality."""
        present = {m: self.present(batch, m) for m in MODALITIES}
        use = dict(present)
        if self.training:
            drawn = "audio" if float(torch.rand(())) < self.audio_prob else "video"
            other = "video" if drawn == "audio" else "audio"
            use[other] = present[other] & ~present[drawn]
        (rows_a, la), (rows_v, lv) = (self.modality_logits(batch, m, use[m]) for m in MODALITIES)
        both = (rows_a & rows_v).unsqueeze(-1)
        single = torch.where(rows_a.unsqueeze(-1), la, lv)
        return torch.where(both, average_logits(la, lv, self.av_fusion, self.task), single)

    def shared_embeddings(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """UAVM's shared transformer output per modality, mean over valid frames, of the paired clips.

        Paper 2, Fig. 2: for the audio and for the video of each clip with both, the last shared
        block's output for that modality's sequence alone, averaged over its valid frames (what
        the shared classifier reads, before its LayerNorm), [N, d] each."""
        rows = (self.present(batch, "audio") & self.present(batch, "video")).nonzero().flatten()
        return self.shared_output(batch, "audio", rows), self.shared_output(batch, "video", rows)
