"""SFAV: self-attention fusion for audio-visual emotion recognition with incomplete data.

K. Chumachenko, A. Iosifidis and M. Gabbouj, "Self-attention fusion for audiovisual emotion
recognition with incomplete data", ICPR 2022, pp. 2822-2828 (arXiv 2201.11095); the "SFAV"
baseline of papers 3 and 4 (which state no adaptation of it beyond their features).

Pipeline (per clip):
- acoustic frames: `AcousticInput` (the toolkit's pretrained SSLEncoder, a layer-stacked SSL store
  combined by a learnable LW-Sum, or a z-normalised [T, D] store); visual frames: the stored
  per-frame face features (the source's EfficientFace frame embeddings, computed here upstream).
- audio stack: 4 blocks Conv1d(k=3) -> BatchNorm -> ReLU -> MaxPool1d(2, stride 1), widths
  64, 128 | 256, 128; visual stack: 4 blocks Conv1d(k=3) -> BatchNorm -> ReLU, widths 64, 64 | 128, 128
  ("|": where the intermediate fusions act, after block `fusion_block` = 2).
- fusion (`fusion`):
  "ia" (intermediate attention, the paper's best, default): after block 2, scaled dot-product
  attention scores between the modalities, without values: the video frames query the audio
  frames, and the attention each AUDIO frame receives (mean over heads, summed over the video
  queries) multiplies that audio frame; symmetrically the audio frames query the video frames and
  the attention each VIDEO frame receives multiplies it. Then blocks 3-4.
  "it" (intermediate transformer): after block 2, a cross-modal transformer block per direction
  (audio queries attend the video frames and the block output is added to the audio frames, and
  vice versa), then blocks 3-4.
  "lt" (late transformer): after all blocks, the same blocks; the audio representation is the
  block output of the audio queries over the video frames (no residual), and vice versa.
- mean pooling over each modality's valid frames, concatenation, one linear layer.
- training: the source's "softhard" modality dropout (`moddrop`, below); no other dropout.

Checked against katerynaCh/multimodal-emotion-recognition:
- models/multimodalcnn.py: the block widths and order above, kernel 3, audio blocks with 'valid'
  padding + MaxPool1d(2, 1), visual blocks with 'same' padding, the split into stage1/stage2, the
  attention dimensions (av1: audio queries, video keys, width of the audio stage-1 output; va1:
  video queries, audio keys, video width), "ia" = forward_feature_2 (attention matrix averaged
  over heads, summed over the query axis; va1's matrix multiplies the audio, av1's the video),
  "it" = forward_feature_3 (residual added to the stage-1 output), "lt" = forward_transformer
  (pooled block outputs), the classifier Linear(128 + 128, C), no dropout.
- models/transformer_timm.py: Attention has no q/kv bias and scale (out_dim / heads)^-0.5;
  AttentionBlock = LayerNorm on queries and keys, attention + output projection WITHOUT a residual
  to the queries, then x + MLP(LayerNorm(x)) with hidden 2 x out_dim and GELU; no dropout.
- opts.py / main.py / train.py: fusion "ia", num_heads 1 ("in the paper 1 or 4"), mask "softhard";
  SGD lr 0.04, momentum 0.9, dampening 0.9, weight decay 1e-3, batch 8, 100 epochs, lr x 0.1 at
  epochs 40, 55, 65, 70 (training settings live in the run's `train:` recipe, not here; the toolkit
  has no SGD, so a recipe picks the nearest Adam/AdamW setting). "softhard" in train.py: every
  batch is replaced by 4 copies: unchanged; audio x c and video x (1 - c), c drawn per clip from
  {0, 0.01, ..., 0.99}; audio zeroed; video zeroed.

Adaptation of the fixed-length design to variable-length padded frames with masks (holes in the
middle allowed):
- every convolution sees zeros at masked frames ('same' padding, masked frames zeroed before and
  after each block), BatchNorm takes its training statistics from valid frames only
  (`MaskedBatchNorm1d`), and MaxPool1d(2, stride 1) keeps the length (frame t pools t and t+1; a
  masked or missing t+1 counts as 0, which never wins after the ReLU). The source's 'valid'
  padding would shorten every clip by 3 frames per block and make frame t's position depend on the
  padding, so it is not kept.
- the "ia" weights use masked softmax over the valid key frames and sum over the valid query
  frames only, then are scaled by n_keys / n_queries so that they average 1 over a clip's key
  frames. With the source's fixed lengths that factor is a constant that the next conv +
  BatchNorm absorb (the same model up to BatchNorm's epsilon); with variable lengths and holes it
  keeps a clip's weights from depending on how many frames the OTHER modality happens to have.
- attention ("it"/"lt" blocks, "ia" scores) masks padded and missing key frames.
- a modality with no valid frame in a clip (missing face track, test-time removal, modality
  dropout) is replaced by ONE zero frame marked valid. The source feeds an all-zero input through
  the branch when a modality is dropped; all frames of that input carry the same features (the
  audio stack's 'valid' convolutions exactly, the visual stack's 'same' convolutions except near
  the clip's ends), and identical frames act like a single one in mean pooling and in attention
  (as keys they share the weight equally, as queries the count normalisation removes their
  number). So the zero frame is the learned "modality missing" input the source trains, with no
  length to invent; BatchNorm's training statistics count it once.

Choices where the source is vague (all `model:` keys):
- `moddrop` = "softhard": the 4-copies batch cannot be returned through the shared trainer (its
  loss pairs B outputs with B targets), so each clip takes ONE of the four versions, each with
  probability 1/4 (the same expected loss as the mean over the 4 copies). A zeroed modality is
  REMOVED (frames zeroed, mask cleared, `ssl_aver.masking.drop_frames`), exactly what the
  test-time audio-only / video-only conditions do; it reaches the model as the zero frame above.
  The soft version scales what the conv stacks read (the z-normalised / encoder / LW-Sum acoustic
  frames, the face features), the closest thing to the source's scaled MFCCs and images. "none"
  turns it off; the source's "noise" variant is not offered.
- `n_heads` = 1 (opts.py default; the paper reports 1 and 4).
- the "it"/"lt" block's output width is the width of its query modality (128 for both in the
  source, where the two coincide).

Not copied from the reference code: the fixed-length crop/pad (zero-padded audio entered the
statistics as real frames), BatchNorm statistics over padding, the unused value/projection
weights of the "ia" attention (only the scores are used there, so only q and k exist here), and
the test-split best-checkpoint reload (model selection here is the toolkit's dev-loss early
stopping).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext, check_choice
from finetune.heads.vavl import AcousticInput, MaskedConv1d, encoder_branch, valid_mean
from ssl_aver.errors import UserError
from ssl_aver.masking import drop_frames
from ssl_aver.models.conformer import MaskedBatchNorm1d
from ssl_aver.models.pooling import LWSum

FUSIONS = ("ia", "it", "lt")
MODDROPS = ("softhard", "none")


def null_frame(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [B, T, D] zeroed where masked; a row without a valid frame gets frame 0 (zero) marked
    valid, the source's all-zero input for an absent modality (module docstring)."""
    if x.shape[1] == 0:
        x, valid = x.new_zeros(x.shape[0], 1, x.shape[2]), valid.new_zeros(valid.shape[0], 1)
    x = x * valid.unsqueeze(-1).to(x.dtype)
    first = torch.zeros_like(valid)
    first[:, 0] = True
    return x, valid | (first & ~valid.any(dim=1, keepdim=True))


class ConvBlock(nn.Module):
    """Conv1d(k, 'same') -> BatchNorm (valid-frame statistics) -> ReLU [-> MaxPool1d(2, stride 1)]
    over [B, T, C]; masked frames are zero in and out, so they never reach a valid frame."""

    def __init__(self, dim_in: int, dim_out: int, kernel: int, pool: bool) -> None:
        super().__init__()
        self.conv = MaskedConv1d(dim_in, dim_out, kernel)
        self.norm = MaskedBatchNorm1d(dim_out)
        self.pool = pool

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.unsqueeze(-1).to(x.dtype)
        y = F.relu(self.norm(self.conv(x, valid).transpose(1, 2), valid).transpose(1, 2)) * w
        if self.pool:
            # frame t pools frames t and t+1; a masked or absent t+1 is 0 and y >= 0 after the ReLU
            y = torch.maximum(y, F.pad(y[:, 1:], (0, 0, 0, 1))) * w
        return y


class CrossScores(nn.Module):
    """Per-head attention probabilities of `query` frames over the valid `key` frames [B, H, Nq, Nk]
    (transformer_timm.Attention's scores: q and k without bias, scale (dim_out / heads)^-0.5)."""

    def __init__(self, dim_q: int, dim_k: int, dim_out: int, n_heads: int) -> None:
        super().__init__()
        if n_heads < 1 or dim_out % n_heads:
            raise UserError(f"model.n_heads={n_heads} must divide the attention width {dim_out}")
        self.n_heads = n_heads
        self.scale = (dim_out // n_heads) ** -0.5
        self.q = nn.Linear(dim_q, dim_out, bias=False)
        self.k = nn.Linear(dim_k, dim_out, bias=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        b, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        q = self.q(query).view(b, n_q, self.n_heads, -1).transpose(1, 2)
        k = self.k(key).view(b, n_k, self.n_heads, -1).transpose(1, 2)
        keep = key_valid[:, None, None, :]
        scores = (q @ k.transpose(-2, -1) * self.scale).masked_fill(~keep, torch.finfo(q.dtype).min)
        return torch.softmax(scores, dim=-1) * keep.to(q.dtype)


def received_attention(probs: torch.Tensor, query_valid: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """"ia" frame weights [B, Nk]: the attention each key frame receives (mean over heads, summed
    over the valid queries), times n_keys / n_queries so that they average 1 over the valid keys."""
    received = (probs.mean(dim=1) * query_valid.unsqueeze(-1).to(probs.dtype)).sum(dim=1)
    n_q = query_valid.sum(dim=1, keepdim=True).clamp_min(1).to(probs.dtype)
    n_k = key_valid.sum(dim=1, keepdim=True).to(probs.dtype)
    return received * n_k / n_q


class CrossBlock(nn.Module):
    """transformer_timm.AttentionBlock: x = Proj(Attn(LN(q), LN(k))) (no query residual), then
    x + MLP(LN(x)) with a GELU MLP of `mlp_ratio` x width."""

    def __init__(self, dim_q: int, dim_k: int, dim_out: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q, self.norm_k, self.norm_out = nn.LayerNorm(dim_q), nn.LayerNorm(dim_k), nn.LayerNorm(dim_out)
        self.scores = CrossScores(dim_q, dim_k, dim_out, n_heads)
        self.value = nn.Linear(dim_k, dim_out, bias=False)
        self.proj = nn.Linear(dim_out, dim_out)
        hidden = int(dim_out * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim_out, hidden), nn.GELU(), nn.Linear(hidden, dim_out))

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        q, k = self.norm_q(query), self.norm_k(key)
        probs = self.scores(q, k, key_valid)
        b, n_q, n_k, heads = q.shape[0], q.shape[1], k.shape[1], self.scores.n_heads
        v = self.value(k).view(b, n_k, heads, -1).transpose(1, 2)
        x = self.proj((probs @ v).transpose(1, 2).reshape(b, n_q, -1))
        return x + self.mlp(self.norm_out(x))


class SFAVHead(nn.Module):
    """SFAV: conv stacks per modality, intermediate attention fusion (default), ModDrop training."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"SFAV needs a visual store with [T, D] frames, got {ctx.video_shape}")
        self.fusion, self.moddrop = check_choice(cfg, "fusion", FUSIONS), check_choice(cfg, "moddrop", MODDROPS)
        audio_ch = [int(c) for c in cfg["audio_channels"]]
        video_ch = [int(c) for c in cfg["video_channels"]]
        self.fusion_block = int(cfg["fusion_block"])
        if not 1 <= self.fusion_block <= min(len(audio_ch), len(video_ch)):
            raise UserError(
                f"model.fusion_block={self.fusion_block} must lie in 1..{min(len(audio_ch), len(video_ch))} "
                f"(blocks of model.audio_channels {audio_ch} / model.video_channels {video_ch} before the intermediate fusion)"
            )
        kernel, heads = int(cfg["kernel"]), int(cfg["n_heads"])
        self.acoustic = AcousticInput(ctx)
        if self.acoustic.kind == "stacked":
            self.layer_sum = LWSum(self.acoustic.n_layers)
        self.audio_blocks = nn.ModuleList(
            ConvBlock(d_in, d_out, kernel, pool=True) for d_in, d_out in zip([self.acoustic.dim] + audio_ch[:-1], audio_ch)
        )
        self.video_blocks = nn.ModuleList(
            ConvBlock(d_in, d_out, kernel, pool=False) for d_in, d_out in zip([int(ctx.video_shape[0])] + video_ch[:-1], video_ch)
        )
        # widths where the fusion acts: after block `fusion_block` ("ia", "it") or the last block ("lt")
        a_dim, v_dim = (audio_ch[-1], video_ch[-1]) if self.fusion == "lt" else (audio_ch[self.fusion_block - 1], video_ch[self.fusion_block - 1])
        if self.fusion == "ia":
            self.audio_queries_video = CrossScores(a_dim, v_dim, a_dim, heads)  # source av1: weights the video frames
            self.video_queries_audio = CrossScores(v_dim, a_dim, v_dim, heads)  # source va1: weights the audio frames
        else:
            ratio = float(cfg["mlp_ratio"])
            self.audio_from_video = CrossBlock(a_dim, v_dim, a_dim, heads, ratio)
            self.video_from_audio = CrossBlock(v_dim, a_dim, v_dim, heads, ratio)
        self.classifier = nn.Linear(audio_ch[-1] + video_ch[-1], n_classes)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys at the source's size (multimodalcnn.py, opts.py)."""
        return {
            "fusion": "ia", "n_heads": 1, "audio_channels": [64, 128, 256, 128], "video_channels": [64, 64, 128, 128],
            "fusion_block": 2, "kernel": 3, "mlp_ratio": 2.0, "moddrop": "softhard",
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "SFAVHead":
        return cls(cfg, n_classes, ctx)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.acoustic)

    def train(self, mode: bool = True) -> "SFAVHead":
        """Train mode, except a frozen acoustic encoder stays in eval mode (no dropout noise)."""
        super().train(mode)
        if self.acoustic.frozen:
            self.acoustic.eval()
        return self

    def modality_dropout(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The source's "softhard" ModDrop, one version per clip (probability 1/4 each): unchanged;
        soft (audio x c, video x (1 - c), c in {0, .01, ..., .99}); audio removed; video removed.
        Returns the batch with the removals and the per-clip scales [B] of the soft version."""
        a_valid, v_valid = batch["audio_mask"], batch["video_mask"]
        version = torch.randint(0, 4, (a_valid.shape[0],), device=a_valid.device)
        c = torch.randint(0, 100, (a_valid.shape[0],), device=a_valid.device).float() / 100
        soft, one = version == 1, torch.ones_like(c)
        scales = {"audio": torch.where(soft, c, one), "video": torch.where(soft, 1 - c, one)}
        out = drop_frames(batch, "audio", (version == 2)[:, None].expand_as(a_valid))
        return drop_frames(out, "video", (version == 3)[:, None].expand_as(v_valid)), scales

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

    def encode(self, batch: Mapping[str, Any], scales: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled audio-branch [B, C_a] and video-branch [B, C_v] outputs, fusion included."""
        a, a_valid = null_frame(*self._acoustic_frames(batch))
        v, v_valid = null_frame(batch["video"], batch["video_mask"])
        if scales is not None:
            a, v = a * scales["audio"][:, None, None], v * scales["video"][:, None, None]
        split = self.fusion_block if self.fusion != "lt" else len(self.audio_blocks)
        for block in self.audio_blocks[:split]:
            a = block(a, a_valid)
        for block in self.video_blocks[:split]:
            v = block(v, v_valid)
        if self.fusion == "ia":
            w_a = received_attention(self.video_queries_audio(v, a, a_valid), v_valid, a_valid)
            w_v = received_attention(self.audio_queries_video(a, v, v_valid), a_valid, v_valid)
            a, v = a * w_a.unsqueeze(-1), v * w_v.unsqueeze(-1)
        elif self.fusion == "it":
            a_w, v_w = a_valid.unsqueeze(-1).to(a.dtype), v_valid.unsqueeze(-1).to(v.dtype)
            a, v = a + self.audio_from_video(a, v, v_valid) * a_w, v + self.video_from_audio(v, a, a_valid) * v_w
        for block in self.audio_blocks[split:]:
            a = block(a, a_valid)
        for block in self.video_blocks[split:]:
            v = block(v, v_valid)
        if self.fusion == "lt":
            a, v = self.audio_from_video(a, v, v_valid), self.video_from_audio(v, a, a_valid)
        return valid_mean(a, a_valid), valid_mean(v, v_valid)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits [B, C]; in training mode after the modality dropout."""
        scales = None
        if self.training and self.moddrop == "softhard":
            batch, scales = self.modality_dropout(batch)
        pooled_a, pooled_v = self.encode(batch, scales)
        return self.classifier(torch.cat([pooled_a, pooled_v], dim=-1))
