"""Paper 4's RAVER: context summarizers + cross-modal attention, robust to missing frames/modalities.

Pipeline (Sec. III, Fig. 1a): acoustic frames -> LW-Sum over stacked SSL layers ([T, L, D]
stores; nothing for [T, D] stores) or the toolkit's pretrained SSLEncoder over openSMILE LLDs
(`encoder: DIR`), then a Conv1d (k=1) to the common width d when the width differs; visual
frames -> Conv1d (k=1) to d. Each modality goes through its own context summarizer (N_ctx
learnable query tokens, decoder layers with key padding masks: masked or missing frames are
never attended), then cross-modal layers (audio context queries the visual one and vice versa,
MulT), then self-attention layers, AS-Pool per modality, concatenation and the FC head
(2048-1024-256-C). Training uses modality dropout per batch (audio zeroed 20% of the time,
video 20%, neither 60%) and the class-balanced loss; the recipe sets AdamW (lr 1e-5, wd 5e-7,
betas 0.95/0.999).

Choices where the paper is vague (all `model:` keys):
- `positions`: sinusoidal positions are added to the frames before the summarizer (the
  summarizer is otherwise blind to frame order); `ff_mult` = 4 (feed-forward width 4d).
- A modality with no valid frame in a clip: its summarizer's cross-attention gives zero (the
  summary carries no frame information), the other modality's cross-modal update from it is
  zero, and its pooled vector is zeros, so the FC head sees only the available modality.
- Modality dropout zeroes the features AND clears the mask of the dropped modality (the same
  operation the test-time missing-modality conditions use); it is drawn once per batch.
- `cb_beta` = 0.999 for the class-balanced weights (the paper does not give beta);
  `head_dropout` = 0.1 between the FC layers.
- [T, D] acoustic stores without a pretrained encoder are z-normalised with the training
  split's statistics (BuildContext.audio_stats), as for paper 1's LLD inputs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from finetune.heads import BuildContext
from ssl_aver.errors import UserError
from ssl_aver.masking import drop_frames
from ssl_aver.models.blocks import sinusoidal_positions
from ssl_aver.models.losses import ClassBalancedLoss
from ssl_aver.models.pooling import ASPool, LWSum
from ssl_aver.models.summarizer import ContextSummarizer, CrossModalLayer, SelfAttentionLayer


class _Conv1x1(nn.Module):
    """Conv1d with kernel 1 over [B, T, D_in] -> [B, T, D_out] (a time-distributed linear map)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_in, d_out, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class RAVERHead(nn.Module):
    """RAVER over an acoustic store (or the pretrained encoder) and a visual store."""

    inputs = ("audio", "video")
    tasks = ("multiclass", "multilabel")  # paper 4 evaluates emotion classes only
    require = "both"
    eval_modalities = ("av", "audio", "video")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext, branch: nn.Module | None = None) -> None:
        super().__init__()
        if ctx.audio_shape is None or ctx.video_shape is None:
            raise UserError("RAVER needs an acoustic and a visual feature store (features.audio and features.video)")
        d = int(cfg["d_model"])
        heads, ff, drop = int(cfg["n_heads"]), int(cfg["ff_mult"]), float(cfg["dropout"])
        self.branch = branch
        self.layer_sum: nn.Module = nn.Identity()
        if branch is not None:
            audio_dim = branch.hidden_size
        elif len(ctx.audio_shape) == 2:
            self.layer_sum = LWSum(int(ctx.audio_shape[0]))
            audio_dim = int(ctx.audio_shape[1])
        else:
            audio_dim = int(ctx.audio_shape[0])
        if branch is None and ctx.audio_stats is not None and len(ctx.audio_shape) == 1:
            self.register_buffer("audio_mean", torch.as_tensor(np.asarray(ctx.audio_stats[0]), dtype=torch.float32))
            self.register_buffer("audio_std", torch.as_tensor(np.asarray(ctx.audio_stats[1]), dtype=torch.float32))
        else:
            self.audio_mean = self.audio_std = None
        self.audio_proj: nn.Module = nn.Identity() if audio_dim == d else _Conv1x1(audio_dim, d)
        self.video_proj = _Conv1x1(int(ctx.video_shape[-1]), d)
        self.positions = bool(cfg["positions"])
        summarizer = dict(n_ctx=int(cfg["n_ctx"]), n_layers=int(cfg["summarizer_layers"]), n_heads=heads, ff_mult=ff, dropout=drop)
        self.summarize_audio = ContextSummarizer(d, **summarizer)
        self.summarize_video = ContextSummarizer(d, **summarizer)
        self.embed_drop = nn.Dropout(float(cfg["embed_dropout"]))
        n_cross, n_self = int(cfg["cross_layers"]), int(cfg["self_layers"])
        self.audio_from_video = nn.ModuleList(CrossModalLayer(d, heads, ff, drop) for _ in range(n_cross))
        self.video_from_audio = nn.ModuleList(CrossModalLayer(d, heads, ff, drop) for _ in range(n_cross))
        self.audio_self = nn.ModuleList(SelfAttentionLayer(d, heads, ff, drop) for _ in range(n_self))
        self.video_self = nn.ModuleList(SelfAttentionLayer(d, heads, ff, drop) for _ in range(n_self))
        self.pool_audio = ASPool(d, int(cfg["pool_hidden"]))
        self.pool_video = ASPool(d, int(cfg["pool_hidden"]))
        layers: list[nn.Module] = []
        width = 4 * d
        for hidden in cfg["head_dims"]:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU(), nn.Dropout(float(cfg["head_dropout"]))]
            width = int(hidden)
        layers.append(nn.Linear(width, n_classes))
        self.classifier = nn.Sequential(*layers)
        self.drop_audio, self.drop_video = float(cfg["modality_dropout"]["audio"]), float(cfg["modality_dropout"]["video"])
        if self.drop_audio < 0 or self.drop_video < 0 or self.drop_audio + self.drop_video > 1:
            raise UserError(f"model.modality_dropout audio={self.drop_audio} video={self.drop_video}: each >= 0 and their sum <= 1")
        self.criterion = ClassBalancedLoss(ctx.class_counts, float(cfg["cb_beta"]), multilabel=ctx.task == "multilabel")

    @staticmethod
    def defaults() -> dict[str, Any]:
        """Paper 4's sizes (Sec. IV-D.2)."""
        return {
            "d_model": 1024, "n_ctx": 128, "summarizer_layers": 6, "cross_layers": 3, "self_layers": 3, "n_heads": 8,
            "ff_mult": 4, "dropout": 0.1, "embed_dropout": 0.25, "positions": True, "pool_hidden": 128,
            "head_dims": [2048, 1024, 256], "head_dropout": 0.1, "modality_dropout": {"audio": 0.2, "video": 0.2},
            "cb_beta": 0.999,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "RAVERHead":
        """RAVER on stored acoustic features, or on the pretrained encoder when `ctx.encoder_dir` is set."""
        branch = None
        if ctx.encoder_dir is not None:
            from finetune.heads.ser import encoder_kind
            from ssl_aver.models.encoder import SSLEncoder

            if encoder_kind(ctx.encoder_dir) != "encoder":
                raise UserError(f"RAVER takes the toolkit's attention encoder as acoustic branch, not {ctx.encoder_dir} (wav2vec2)")
            branch = SSLEncoder.from_pretrained(ctx.encoder_dir)
        return cls(cfg, n_classes, ctx, branch)

    def train(self, mode: bool = True) -> "RAVERHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if self.branch is not None and not any(p.requires_grad for p in self.branch.parameters()):
            self.branch.eval()
        return self

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class-balanced BCE / cross-entropy on the primary target columns."""
        return self.criterion(logits, targets[:, : logits.shape[1]])

    def _modality_dropout(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        u = float(torch.rand(()))
        if u < self.drop_audio:
            return drop_frames(batch, "audio")
        if u < self.drop_audio + self.drop_video:
            return drop_frames(batch, "video")
        return batch

    def _audio_frames(self, audio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.branch is not None:
            frames = self.branch(audio, ~valid)
        else:
            frames = self.layer_sum(audio)
            if self.audio_mean is not None:
                frames = (frames - self.audio_mean) / self.audio_std
        return self.audio_proj(frames)

    def _summary(self, frames: torch.Tensor, valid: torch.Tensor, summarizer: ContextSummarizer) -> torch.Tensor:
        frames = frames * valid.unsqueeze(-1).to(frames.dtype)
        if self.positions:
            frames = frames + sinusoidal_positions(frames.shape[1], frames.shape[2], frames.device, frames.dtype)
        return summarizer(frames, valid)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.training:
            batch = self._modality_dropout(batch)
        a_valid, v_valid = batch["audio_mask"], batch["video_mask"]
        has_a, has_v = a_valid.any(dim=1), v_valid.any(dim=1)
        c_a = self._summary(self._audio_frames(batch["audio"], a_valid), a_valid, self.summarize_audio)
        c_v = self._summary(self.video_proj(batch["video"]), v_valid, self.summarize_video)
        c_a, c_v = self.embed_drop(c_a), self.embed_drop(c_v)
        ctx_a_valid = has_a[:, None].expand(-1, c_a.shape[1])
        ctx_v_valid = has_v[:, None].expand(-1, c_v.shape[1])
        h_a, h_v = c_a, c_v
        for a_layer, v_layer in zip(self.audio_from_video, self.video_from_audio):
            h_a, h_v = a_layer(h_a, c_v, ctx_v_valid), v_layer(h_v, c_a, ctx_a_valid)
        for a_layer, v_layer in zip(self.audio_self, self.video_self):
            h_a, h_v = a_layer(h_a), v_layer(h_v)
        pooled = torch.cat([self.pool_audio(h_a, ctx_a_valid), self.pool_video(h_v, ctx_v_valid)], dim=-1)
        return self.classifier(pooled)
