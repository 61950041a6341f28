"""Paper 2's unimodal acoustic and visual baselines (Sec. 4.5.4, "Baseline 4"; Uni. (A) / Uni. (V)).

"[It] uses conformer encoder layers to process all sequential video or acoustic frames in
parallel. The output of the conformer layers is then average-pooled and fed into a network that
contains two fully connected layers to generate the prediction. We build the unimodal network
with five conformer layers to match the structure of the full VAVL network."

Pipeline, built from VAVL's own blocks (finetune.heads.vavl) so the baseline sees exactly the
inputs VAVL's branch of that modality sees: acoustic frames through `AcousticInput` (the
toolkit's pretrained encoder, an LW-Sum over a layer-stacked SSL store, or a z-normalised
[T, D] store) or visual [T, D] frames; VAVL's temporal Conv1d projection (`MaskedConv1d`,
`proj_kernel` = 3) to `d_model`; VAVL's time subsampling (`subsample`, default 1 = every
frame, as in VAVL and its reference code; 2 or 4 project to `subsample_dim` = 50 first, see
finetune.heads.vavl), so the baseline stays VAVL's branch; `layers` = 5 conformer blocks (3
modality + 2 shared layers of VAVL); the mean over the valid (subsampled) frames; Linear -> ReLU
-> Dropout -> Linear. Sizes of paper 2, Sec. 4.3: conformers 512 wide, 8 heads, dropout 0.1
(depthwise kernel 31, FFN expansion 4 as in VAVLHead). Trained by the shared loop with the run's
default loss (cross-entropy, BCE or 1 - CCC / MSE for regression; paper 2's Sec. 4.3 settings,
Adam, lr 5e-5, batch 32 on CREMA-D, 20 epochs, belong in the recipe). A clip without any valid
frame of the modality gets zero logits.

Paper 2 gives no public code for this baseline (ilucasgoncalves/VAVL holds VAVL only).

Choices where the paper is vague (all `model:` keys): "two fully connected layers" is read as
one hidden layer plus the output layer, the hidden layer `head_hidden` = 512 wide (the first
width of paper 2's prediction layers) with `head_dropout` = 0.2 (paper 2's rate for its fully
connected layers).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from finetune.heads import BuildContext
from finetune.heads.vavl import AcousticInput, MaskedConv1d, encoder_branch, select_rows, subsampling, valid_mean
from ssl_aver.errors import UserError
from ssl_aver.models.conformer import Conformer, ConvSubsampling
from ssl_aver.models.pooling import LWSum


class _ConformerUni(nn.Module):
    """One modality: Conv1d projection, time subsampling, conformer layers, average pooling, two FC layers."""

    tasks = ("multiclass", "multilabel", "regression")
    modality = "audio"

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        d = int(cfg["d_model"])
        if int(cfg["layers"]) < 1:
            raise UserError(f"model.layers must be >= 1 (paper 2: 5 conformer layers), got {cfg['layers']}")
        self.n_out = n_classes
        if self.modality == "audio":
            self.acoustic = AcousticInput(ctx)
            if self.acoustic.kind == "stacked":
                self.layer_sum = LWSum(self.acoustic.n_layers)
            dim_in = self.acoustic.dim
        else:
            if not ctx.video_shape or len(ctx.video_shape) != 1:
                raise UserError(f"this head needs a visual store with [T, D] frames, got {ctx.video_shape}")
            dim_in = int(ctx.video_shape[0])
        factor, width = subsampling(cfg, d)
        self.proj = MaskedConv1d(dim_in, width, int(cfg["proj_kernel"]))
        self.subsample = ConvSubsampling(width, d, factor, float(cfg["dropout"]))
        self.encoder = Conformer(
            d, int(cfg["layers"]), int(cfg["n_heads"]), dropout=float(cfg["dropout"]), kernel_size=int(cfg["conv_kernel"]),
            ff_expansion=int(cfg["ff_expansion"]),
        )
        hidden = int(cfg["head_hidden"])
        self.head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(float(cfg["head_dropout"])), nn.Linear(hidden, n_classes))

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys (paper 2, Sec. 4.3 and 4.5.4)."""
        return {
            "d_model": 512, "n_heads": 8, "dropout": 0.1, "layers": 5, "conv_kernel": 31, "ff_expansion": 4, "proj_kernel": 3,
            "subsample": 1, "subsample_dim": 50, "head_hidden": 512, "head_dropout": 0.2,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "_ConformerUni":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        if self.modality != "audio":
            raise AttributeError("branch")
        return encoder_branch(self.acoustic)

    def train(self, mode: bool = True) -> "_ConformerUni":
        """Train mode, except a frozen acoustic encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if mode and self.modality == "audio" and self.acoustic.frozen:
            self.acoustic.eval()
        return self

    def pooled(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Frames [N, T, ...] + valid mask [N, T] -> average-pooled conformer output [N, d_model]."""
        if self.modality == "audio":
            x = self.acoustic(x, valid)
            if hasattr(self, "layer_sum"):
                x = self.layer_sum(x)
        h, padded = self.subsample(self.proj(x, valid), ~valid)
        return valid_mean(self.encoder(h, padded), ~padded)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits [B, C] from this head's modality only (zeros for a clip without a valid frame of it)."""
        m = self.modality
        rows = batch[f"has_{m}"].bool() & batch[f"{m}_mask"].any(dim=1)
        logits = torch.zeros(len(rows), self.n_out, device=rows.device)
        index = rows.nonzero().flatten()
        if index.numel():
            x, valid = select_rows(batch, m, index)
            logits = logits.index_put((index,), self.head(self.pooled(x, valid)).to(logits.dtype))  # float32 under autocast
        return logits


class ConformerUniAudioHead(_ConformerUni):
    """Uni. (A): the acoustic unimodal baseline."""

    inputs = ("audio",)
    require = "audio"
    eval_modalities = ("audio",)
    modality = "audio"


class ConformerUniVideoHead(_ConformerUni):
    """Uni. (V): the visual unimodal baseline (never reads the acoustic input)."""

    inputs = ("video",)
    require = "video"
    eval_modalities = ("video",)
    modality = "video"
