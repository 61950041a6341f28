"""Paper 1's SER model: the attention encoder (pretrained or random) + two fully connected layers.

Two acoustic branches:
- `encoder` (default): the toolkit's SSLEncoder over openSMILE LLD frames, loaded from a
  pretraining run (`encoder: DIR`) or built from `model.encoder` sizes with random weights
  (the supervised baseline). Inputs are z-normalised with the encoder's stored statistics when
  it was pretrained (the statistics it was trained with), and with the fine-tuning training
  split's statistics for the random-weight baseline.
- `wav2vec2`: paper 1's baseline 2, a wav2vec 2.0 transformer pretrained from scratch by
  `recipes/pretrain/wav2vec2.yaml`, over raw 16 kHz audio.
Pooling is the mean over valid frames; the head is Linear-ReLU-Dropout-Linear (paper 1:
"two fully-connected layers", ReLU).

Fine-tuning a wav2vec2 branch (`model.wav2vec2`): the pretrained config keeps pretraining's
SpecAugment masking (mask_time_prob 0.65: about half the frames replaced by the mask
embedding) and LayerDrop 0.1, which Wav2Vec2Model applies in training mode. Paper 1 does not
say how its baseline was fine-tuned; Hugging Face's fine-tuning recipes for wav2vec 2.0 use
mask_time_prob ~0.05. The default here turns masking and LayerDrop off, so the baseline
fine-tunes on the same (deterministic) inputs it is evaluated on and compares with the
pretext-task encoder, which is fine-tuned without input masking; set
`model.wav2vec2.mask_time_prob=0.05` for the HF recipe.

A branch whose convolutional feature encoder uses group norm (`feat_extract_norm: group`:
Hugging Face's default, and what the pretrainer built before it switched to layer norm)
normalises over the padded input, so a batched clip would change with its companions' lengths:
such a branch runs clip by clip on each clip's valid samples (slower; the result of a batch of
one). Layer-norm branches run the padded batch with its attention mask.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ssl_aver.errors import UserError
from finetune.heads import BuildContext
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder


def encoder_kind(directory: str | Path) -> str:
    """'encoder' or 'wav2vec2', from the config.json of a pretrained acoustic branch."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        raise UserError(f"encoder directory {directory} has no config.json; point `encoder` at the `encoder/` folder of a pretraining run")
    data = json.loads(config.read_text(encoding="utf-8"))
    return "wav2vec2" if data.get("model_type") == "wav2vec2" else "encoder"


def _masked_mean(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SERHead(nn.Module):
    """Acoustic branch + FC-ReLU-Dropout-FC classifier over the pooled embedding."""

    inputs = ("audio",)
    require = "audio"
    eval_modalities = ("audio",)
    tasks = ("multiclass", "multilabel", "regression")  # regression: one linear output per attribute

    def __init__(self, branch: nn.Module, kind: str, n_classes: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.branch = branch
        self.kind = kind
        width = branch.hidden_size if kind == "encoder" else branch.config.hidden_size
        self.classifier = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys: classifier width/dropout, the sizes of a random-weight encoder and the
        fine-tuning masking/LayerDrop of a wav2vec2 branch (off: see the module docstring)."""
        return {
            "hidden": 256, "dropout": 0.25, "encoder": asdict(EncoderConfig()),
            "wav2vec2": {"mask_time_prob": 0.0, "mask_time_length": 10, "mask_feature_prob": 0.0, "mask_feature_length": 10, "layerdrop": 0.0},
        }  # fmt: skip

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "SERHead":
        """A head on a pretrained branch (`ctx.encoder_dir`) or on a random-weight encoder."""
        hidden, dropout = int(cfg["hidden"]), float(cfg["dropout"])
        if ctx.encoder_dir is None:
            encoder = SSLEncoder(dict(cfg["encoder"]))
            if ctx.audio_stats is not None:
                encoder.set_normalization(*ctx.audio_stats)
            return cls(encoder, "encoder", n_classes, hidden, dropout)
        if encoder_kind(ctx.encoder_dir) == "wav2vec2":
            from ssl_aver.models.wav2vec2 import load_wav2vec2_encoder

            # runs saved before `model.wav2vec2` existed carry no such key: they get the defaults
            options = {**cls.defaults()["wav2vec2"], **dict(cfg.get("wav2vec2") or {})}
            return cls(load_wav2vec2_encoder(ctx.encoder_dir, **options), "wav2vec2", n_classes, hidden, dropout)
        return cls(SSLEncoder.from_pretrained(ctx.encoder_dir), "encoder", n_classes, hidden, dropout)

    def embed(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The pooled utterance embedding [B, D]."""
        valid = batch["audio_mask"]
        if self.kind == "encoder":
            hidden = self.branch(batch["audio"], ~valid)
            return self.branch.pool(hidden, ~valid)
        if self.branch.config.feat_extract_norm == "group":
            return torch.cat([self._embed_wave(wave[keep].unsqueeze(0)) for wave, keep in zip(batch["audio"], valid)])
        return self._embed_wave(batch["audio"], valid)

    def _embed_wave(self, audio: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over the valid frames of the wav2vec2 branch (all frames when `valid` is None)."""
        if valid is None:
            return self.branch(audio).last_hidden_state.mean(1)
        out = self.branch(audio, attention_mask=valid.long()).last_hidden_state
        frame_valid = self.branch._get_feature_vector_attention_mask(out.shape[1], valid.long())
        return _masked_mean(out, frame_valid.bool())

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.classifier(self.embed(batch))
