"""TSLTM: transformer encoders, multi-head attention fusion and an LSTM (Huang et al., ICASSP 2020).

J. Huang, J. Tao, B. Liu, Z. Lian and M. Niu, "Multimodal transformer fusion for continuous emotion
recognition", ICASSP 2020, pp. 3507-3511; the "TSLTM"/"TLSTM" baseline of papers 3 and 4.

BUILT FROM THE PAPER'S DESCRIPTION WITHOUT REFERENCE CODE: no public implementation is known, and
only the abstract was found (IEEE SPS resource centre page; papers 3 and 4 describe it as
"transformer encoders per modality, multi-head attention to fuse audio and visual data into a
shared semantic space, an LSTM over time to model long-term dynamics"). The abstract says: "the
multi-head attention produces multimodal emotional intermediate representations from common
semantic feature space after encoding audio and visual modalities ... we combine the Transformer
model and LSTM". The paper works on frame-aligned AVEC 2017 features and predicts per frame;
every size and the clip-level pooling below are therefore this toolkit's choices.

Pipeline:
1. per modality: acoustic frames (`AcousticInput`: pretrained SSLEncoder, LW-Sum over a stacked
   SSL store, or a z-normalised [T, D] store) / face features -> Linear to `d_model` -> sinusoidal
   positions (index of the frame in the clip, so holes keep their timing) -> dropout ->
   `encoder_layers` post-norm transformer encoder layers (Vaswani et al.: self-attention over
   time with key padding masks, feed-forward `ff_dim`, `ssl_aver.models.blocks.AttentionLayer`).
2. fusion into the shared space (`fusion_layers` post-norm multi-head attention layers per
   direction, encoder-decoder attention + feed-forward): the audio frames query the encoded video
   frames of the same clip, and the video frames query the encoded audio frames. Each fused
   sequence keeps its query modality's time axis: the audio stream has the audio length (50 fps),
   the video stream the video length (25-30 fps). Cross-attention aligns the two rates by content,
   so no resampling is needed; the batch carries no frame rates to resample by anyway.
3. an LSTM over each fused sequence: the valid frames of each clip, in order (masked frames are
   removed, not zero-filled), as a packed sequence, so padding never enters the recurrence.
   The same LSTM reads both streams (`shared_lstm`, they live in the shared space).
4. pooling per stream (`pool`): "mean" of the LSTM outputs over the clip's frames (the clip-level
   counterpart of averaging the paper's per-frame predictions) or "last" (final hidden state, of
   both directions when bidirectional); `combine`: "concat" of the two pooled streams, or "mean"
   over the streams present; then FC (`head_hidden`, ReLU, dropout) -> C.

Missing modality (audio-only / video-only rows): the absent modality has no valid frame; its
encoder is not run, the present stream's cross-attention over it is a zero update (MaskedAttention
returns zeros for a row without a valid key), and its own stream is empty: its pooled vector is
zeros ("concat") or it is left out of the mean ("mean"). Logits therefore come from the present
modality only. TSLTM trains on clips with both modalities (`require = "both"`), without modality
dropout (the paper has none).

Choices (all `model:` keys; the paper's values are unknown):
- `d_model` 256, `n_heads` 4, `encoder_layers` 2 per modality, `ff_dim` 1024, `dropout` 0.1
  (residual, attention and embedding dropout), `fusion_layers` 1 per direction; the fusion
  layers query the ENCODER outputs of the other modality (not its fused stream).
- fusion on each modality's own time axis, both directions (above), instead of a single fused
  sequence on the audio axis: a single audio-axis sequence would not exist for video-only clips.
- `lstm_hidden` 256, `lstm_layers` 1, `bidirectional` false (a forward LSTM over time, as for
  continuous recognition), `shared_lstm` true, `pool` "mean", `combine` "concat",
  `head_hidden` 256, `head_dropout` 0.1.
- linear input embeddings (continuous features, no sqrt(d_model) scaling).
Training settings (optimizer, lr) are not known from the paper and live in the run's recipe.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from finetune.heads import BuildContext, check_choice
from finetune.heads.vavl import AcousticInput, encoder_branch
from ssl_aver.errors import UserError
from ssl_aver.models.blocks import AttentionLayer, FeedForward, sinusoidal_positions
from ssl_aver.models.pooling import LWSum
from ssl_aver.models.summarizer import MaskedAttention

POOLS = ("mean", "last")
COMBINES = ("concat", "mean")


class FusionLayer(nn.Module):
    """Post-norm encoder-decoder attention: query frames attend the other modality's valid frames,
    then a feed-forward sub-layer. A row without valid memory gets a zero attention update."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = MaskedAttention(dim, n_heads, dropout)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.norm_attn, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        h = self.norm_attn(query + self.drop(self.attn(query, memory, memory_valid)))
        return self.norm_ff(h + self.drop(self.ff(h)))


class TSLTMHead(nn.Module):
    """TSLTM: per-modality transformer encoders, cross-modal attention fusion, LSTM over time."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"TSLTM needs a visual store with [T, D] frames, got {ctx.video_shape}")
        d, heads, ff, drop = int(cfg["d_model"]), int(cfg["n_heads"]), int(cfg["ff_dim"]), float(cfg["dropout"])
        if heads < 1 or d % heads:
            raise UserError(f"model.n_heads={heads} must divide model.d_model={d}")
        self.pool, self.combine, self.shared_lstm = check_choice(cfg, "pool", POOLS), check_choice(cfg, "combine", COMBINES), bool(cfg["shared_lstm"])
        self.acoustic = AcousticInput(ctx)
        if self.acoustic.kind == "stacked":
            self.layer_sum = LWSum(self.acoustic.n_layers)
        self.audio_proj = nn.Linear(self.acoustic.dim, d)
        self.video_proj = nn.Linear(int(ctx.video_shape[0]), d)
        self.embed_drop = nn.Dropout(drop)
        n_enc, n_fuse = int(cfg["encoder_layers"]), int(cfg["fusion_layers"])
        self.audio_encoder = nn.ModuleList(AttentionLayer(d, heads, ff, drop, drop, "sdpa") for _ in range(n_enc))
        self.video_encoder = nn.ModuleList(AttentionLayer(d, heads, ff, drop, drop, "sdpa") for _ in range(n_enc))
        self.audio_fusion = nn.ModuleList(FusionLayer(d, heads, ff, drop) for _ in range(n_fuse))
        self.video_fusion = nn.ModuleList(FusionLayer(d, heads, ff, drop) for _ in range(n_fuse))
        layers, hidden, bidirectional = int(cfg["lstm_layers"]), int(cfg["lstm_hidden"]), bool(cfg["bidirectional"])
        lstm = dict(input_size=d, hidden_size=hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional, dropout=drop if layers > 1 else 0.0)
        self.lstm = nn.LSTM(**lstm)
        if not self.shared_lstm:
            self.video_lstm = nn.LSTM(**lstm)
        self.lstm_out = hidden * (2 if bidirectional else 1)
        width = self.lstm_out * (2 if self.combine == "concat" else 1)
        self.classifier = nn.Sequential(
            nn.Linear(width, int(cfg["head_hidden"])), nn.ReLU(), nn.Dropout(float(cfg["head_dropout"])), nn.Linear(int(cfg["head_hidden"]), n_classes),
        )

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys; every size is this toolkit's choice (module docstring)."""
        return {
            "d_model": 256, "n_heads": 4, "encoder_layers": 2, "ff_dim": 1024, "dropout": 0.1, "fusion_layers": 1,
            "lstm_hidden": 256, "lstm_layers": 1, "bidirectional": False, "shared_lstm": True, "pool": "mean",
            "combine": "concat", "head_hidden": 256, "head_dropout": 0.1,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "TSLTMHead":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.acoustic)

    def train(self, mode: bool = True) -> "TSLTMHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if self.acoustic.frozen:
            self.acoustic.eval()
        return self

    def _acoustic_frames(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Acoustic frames [B, T, D] (zero where masked); the encoder only runs on rows with audio."""
        audio, valid = batch["audio"], batch["audio_mask"]
        rows = valid.any(dim=1)
        out = audio.new_zeros(valid.shape[0], valid.shape[1], self.acoustic.dim)
        if rows.any():
            feats = self.acoustic(audio[rows], valid[rows])
            if hasattr(self, "layer_sum"):
                feats = self.layer_sum(feats)
            out = out.to(feats.dtype)
            out[rows] = feats
        return out, valid

    def _encode(self, x: torch.Tensor, valid: torch.Tensor, proj: nn.Module, layers: nn.ModuleList) -> torch.Tensor:
        """Projection + positions + transformer encoder layers over the rows with a valid frame;
        zeros elsewhere and at masked frames."""
        x = proj(x * valid.unsqueeze(-1).to(x.dtype))
        out = torch.zeros_like(x)
        rows = valid.any(dim=1)
        if rows.any():
            h = self.embed_drop(x[rows] + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype))
            for layer in layers:
                h = layer(h, ~valid[rows])
            out[rows] = h
        return out * valid.unsqueeze(-1).to(out.dtype)

    def streams(self, batch: Mapping[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Fused sequences on each modality's own time axis: {"audio": (audio frames after
        attending the video [B, Ta, d], valid [B, Ta]), "video": (video frames after attending the
        audio [B, Tv, d], valid [B, Tv])}."""
        a_raw, a_valid = self._acoustic_frames(batch)
        v_valid = batch["video_mask"]
        a = self._encode(a_raw, a_valid, self.audio_proj, self.audio_encoder)
        v = self._encode(batch["video"], v_valid, self.video_proj, self.video_encoder)
        fused_a, fused_v = a, v
        for audio_layer, video_layer in zip(self.audio_fusion, self.video_fusion):
            fused_a, fused_v = audio_layer(fused_a, v, v_valid), video_layer(fused_v, a, a_valid)
        return {"audio": (fused_a, a_valid), "video": (fused_v, v_valid)}

    def recur(self, seq: torch.Tensor, valid: torch.Tensor, modality: str = "audio") -> torch.Tensor:
        """LSTM over the valid frames of each row, in order, packed (masked frames removed, padding
        never read), pooled to [B, lstm_out] ("mean" of the outputs or "last" state); zeros for a
        row without a valid frame."""
        lstm = self.lstm if self.shared_lstm or modality == "audio" else self.video_lstm
        out = seq.new_zeros(seq.shape[0], self.lstm_out)
        lengths = valid.sum(dim=1)
        rows = lengths > 0
        if not rows.any():
            return out
        order = torch.argsort((~valid[rows]).to(torch.int8), dim=1, stable=True)  # valid frames first, in order
        x = seq[rows].gather(1, order.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        packed = pack_padded_sequence(x, lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, _) = lstm(packed)
        if self.pool == "last":
            directions = 2 if lstm.bidirectional else 1
            pooled = h_n[-directions:].transpose(0, 1).reshape(x.shape[0], -1)
        else:
            padded, _ = pad_packed_sequence(outputs, batch_first=True)  # zeros past each length
            pooled = padded.sum(dim=1) / lengths[rows].unsqueeze(-1).to(padded.dtype)
        out = out.to(pooled.dtype)
        out[rows] = pooled
        return out

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits [B, C] from the pooled LSTM outputs of both fused streams."""
        pooled, present = [], []
        for modality, (seq, valid) in self.streams(batch).items():
            pooled.append(self.recur(seq, valid, modality))
            present.append(valid.any(dim=1, keepdim=True).to(seq.dtype))
        if self.combine == "concat":
            z = torch.cat(pooled, dim=-1)
        else:
            z = sum(pooled) / torch.clamp(sum(present), min=1.0)  # an absent stream pools to zeros
        return self.classifier(z)
