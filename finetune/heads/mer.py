"""Paper 5 (MER2023): AFG fusion of utterance-level features + joint emotion/valence decoding.

Features (each one vector per clip, projected to a common width `dim` by its own "dimension
align matrix": LayerNorm -> Linear -> ReLU -> Dropout; the layer norm and ReLU are our choice):
- acoustic: with `encoder: DIR` the pretrained SSLEncoder over openSMILE LLD frames, pooled over
  valid frames (fine-tuned, or frozen with `freeze_encoder=true`); otherwise the stored
  features: each chosen layer (`audio_layers`) of a layer-stacked store [T, L, D] is one vector,
  a [T, D] store gives one (z-normalised with the training split's statistics when the run
  provides them), each the mean over valid frames;
- visual: the video store's embedding averaged over the frames with a face (paper 5: "average
  encoding" of frame-level face features). One video store gives one visual vector.
`features` picks the modalities fused (Table 1 has visual-only and acoustic-only columns).

Fusion: one of the three AFG structures of `ssl_aver.models.afg` (`structure`).
Decoder (`decoder`):
- `jdev` (Eqs. 5-8): e = Softmax(h W_e + b_e); v~ = h W_v + b_v; v~e = Tanh(e W_ev + b_ev);
  v = [v~, v~e] W_vv + b_vv, so the valence also reads the emotion posterior;
- `baseline`: independent emotion and valence layers on h (the MER2023 baseline).
Loss (`loss`): `uncertainty` (Eq. 9) L = L_e / d1^2 + L_v / (2 d2^2) + log(1 + d1) + log(1 + d2),
with d = softplus(rho) so the deltas stay positive (our parametrisation; they start at
`init_delta`), or `sum`: L_e + valence_weight * L_v. L_e is cross-entropy (BCE for multi-label
targets), L_v the MSE. Model selection on dev (early stopping) uses the fixed criterion
L_e + selection_valence_weight * L_v: learned loss weights move during training, so the
training loss is no yardstick across epochs (0.25 by default, the weight of the MSE in the MER
score).

The valence target comes from `data.extra_targets: [valence]` (finetune/valence.py); the head
checks that the run's valence source is the one its config names (`valence_source`). Its
`extra_metrics` hook adds valence MSE, valence CCC and the MER score = weighted F1 - 0.25 x MSE
(the MER2023 baseline's combined metric) to every test condition's metrics.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext
from ssl_aver.errors import UserError
from ssl_aver.models.afg import SCORINGS, STRUCTURES, AFGFusion

DECODERS = ("jdev", "baseline")
LOSSES = ("uncertainty", "sum")
MSE_WEIGHT = 0.25


def mer_score(weighted_f1: float, mse: float) -> float:
    """MER2023's combined metric: weighted F1 of the emotions minus 0.25 x the valence MSE."""
    return float(weighted_f1) - MSE_WEIGHT * float(mse)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of [B, T, ...] -> [B, ...] (zeros where none is valid)."""
    w = valid.to(x.dtype).view(*valid.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


class UncertaintyLoss(nn.Module):
    """Eq. 9 with learnable deltas kept positive as softplus(rho)."""

    def __init__(self, init_delta: float = 1.0) -> None:
        super().__init__()
        if init_delta <= 0:
            raise UserError(f"model.init_delta must be > 0, got {init_delta}")
        self.rho = nn.Parameter(torch.full((2,), math.log(math.expm1(init_delta))))

    @property
    def deltas(self) -> torch.Tensor:
        return F.softplus(self.rho)

    def forward(self, emotion_loss: torch.Tensor, valence_loss: torch.Tensor) -> torch.Tensor:
        d1, d2 = self.deltas
        return emotion_loss / d1**2 + valence_loss / (2 * d2**2) + torch.log1p(d1) + torch.log1p(d2)


class JointDecoder(nn.Module):
    """Emotion logits and valence from the fused state; `joint` routes the posterior into valence."""

    def __init__(self, dim: int, n_classes: int, joint: bool = True, multilabel: bool = False) -> None:
        super().__init__()
        self.joint, self.multilabel = joint, multilabel
        self.emotion = nn.Linear(dim, n_classes)
        self.valence = nn.Linear(dim, 1)
        if joint:
            self.emotion_valence = nn.Linear(n_classes, 1)
            self.combine = nn.Linear(2, 1)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.emotion(hidden)
        valence = self.valence(hidden)
        if self.joint:
            posterior = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
            valence = self.combine(torch.cat([valence, torch.tanh(self.emotion_valence(posterior))], dim=-1))
        return logits, valence.squeeze(-1)


def _projection(width: int, dim: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim), nn.ReLU(), nn.Dropout(dropout))


class MERHead(nn.Module):
    """AFG fusion of pooled acoustic/visual features + (joint) emotion/valence decoder."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")

    def __init__(
        self,
        n_classes: int,
        *,
        audio_width: int | None,
        audio_layers: list[int] | None,
        video_width: int | None,
        branch: nn.Module | None = None,
        audio_stats: tuple[np.ndarray, np.ndarray] | None = None,
        structure: str = "parallel",
        decoder: str = "jdev",
        loss: str = "uncertainty",
        dim: int = 128,
        dropout: float = 0.3,
        scoring: str = "concat",
        init_delta: float = 1.0,
        valence_weight: float = 1.0,
        selection_valence_weight: float = MSE_WEIGHT,
        multilabel: bool = False,
        primary: slice = slice(0, None),
        valence_index: int = -1,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise UserError(f"model.decoder must be one of {DECODERS}, got {decoder!r}")
        if loss not in LOSSES:
            raise UserError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if branch is not None:
            self.branch = branch
        self.audio_layers = audio_layers
        if audio_stats is not None and branch is None and audio_layers is None:
            self.register_buffer("audio_mean", torch.as_tensor(audio_stats[0], dtype=torch.float32))
            self.register_buffer("audio_std", torch.as_tensor(audio_stats[1], dtype=torch.float32))
        else:
            self.audio_mean = self.audio_std = None
        n_audio = 0 if audio_width is None else (len(audio_layers) if audio_layers is not None else 1)
        self.audio_proj = nn.ModuleList(_projection(audio_width, dim, dropout) for _ in range(n_audio)) if audio_width else nn.ModuleList()
        self.video_proj = nn.ModuleList([_projection(video_width, dim, dropout)]) if video_width else nn.ModuleList()
        self.fusion = AFGFusion(structure, len(self.audio_proj), len(self.video_proj), dim, scoring)
        self.decoder = JointDecoder(dim, n_classes, joint=decoder == "jdev", multilabel=multilabel)
        self.uncertainty = UncertaintyLoss(init_delta) if loss == "uncertainty" else None
        self.valence_weight = float(valence_weight)
        self.selection_valence_weight = float(selection_valence_weight)
        self.multilabel = multilabel
        self.primary = primary
        self.valence_index = valence_index

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys (see the module docstring)."""
        return {
            "structure": "parallel", "decoder": "jdev", "loss": "uncertainty", "features": ["audio", "video"],
            "audio_layers": None, "dim": 128, "dropout": 0.3, "scoring": "concat", "init_delta": 1.0,
            "valence_weight": 1.0, "selection_valence_weight": MSE_WEIGHT, "valence_source": "derived_crema_d",
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "MERHead":
        """Build on the run's stores/encoder; checks the valence target is there and from the named source."""
        from ssl_aver.models.encoder import SSLEncoder

        if str(cfg["structure"]) not in STRUCTURES:
            raise UserError(f"model.structure must be one of {STRUCTURES}, got {cfg['structure']!r}")
        if str(cfg["scoring"]) not in SCORINGS:
            raise UserError(f"model.scoring must be one of {SCORINGS}, got {cfg['scoring']!r}")
        features = [str(f) for f in cfg["features"]]
        if not features or set(features) - {"audio", "video"}:
            raise UserError(f"model.features must be a non-empty subset of [audio, video], got {features}")
        layout = ctx.extra.get("target_layout", {})
        if "valence" not in layout:
            raise UserError("the mer head needs the valence target: set data.extra_targets: [valence]")
        train = ctx.extra.get("train_labels")
        if train is not None and "valence_source" in train.columns:
            found = str(train["valence_source"].iloc[0])
            if found != str(cfg["valence_source"]):
                raise UserError(f"model.valence_source is {cfg['valence_source']!r} but the run's valence targets are {found!r}; "
                                "set model.valence_source to match (or data.clip_columns to a clip,valence CSV)")
        branch = audio_width = layers = stats = None
        if "audio" in features:
            if ctx.encoder_dir is not None:
                branch = SSLEncoder.from_pretrained(ctx.encoder_dir)
                audio_width = branch.hidden_size
            elif ctx.audio_shape is None:
                raise UserError("model.features has audio but the run has no acoustic store")
            elif len(ctx.audio_shape) == 2:
                n_layers, audio_width = ctx.audio_shape
                chosen = list(range(n_layers)) if cfg["audio_layers"] is None else [int(i) for i in cfg["audio_layers"]]
                if not chosen or any(not -n_layers <= i < n_layers for i in chosen):
                    raise UserError(f"model.audio_layers {chosen} out of range: the acoustic store has {n_layers} layers")
                layers = [i % n_layers for i in chosen]
            else:
                if cfg["audio_layers"] is not None:
                    raise UserError("model.audio_layers needs a layer-stacked acoustic store ([T, L, D]); set it to null")
                audio_width, stats = ctx.audio_shape[-1], ctx.audio_stats
        video_width = None
        if "video" in features:
            if ctx.video_shape is None:
                raise UserError("model.features has video but the run has no visual store")
            video_width = ctx.video_shape[-1]
        primary = layout.get("primary", slice(0, n_classes))
        return cls(
            n_classes, audio_width=audio_width, audio_layers=layers, video_width=video_width, branch=branch, audio_stats=stats,
            structure=str(cfg["structure"]), decoder=str(cfg["decoder"]), loss=str(cfg["loss"]), dim=int(cfg["dim"]),
            dropout=float(cfg["dropout"]), scoring=str(cfg["scoring"]), init_delta=float(cfg["init_delta"]),
            valence_weight=float(cfg["valence_weight"]), selection_valence_weight=float(cfg["selection_valence_weight"]),
            multilabel=ctx.task == "multilabel", primary=primary, valence_index=layout["valence"].start,
        )

    def _acoustic(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Projected acoustic vectors [B, Na, dim]."""
        audio, valid = batch["audio"], batch["audio_mask"]
        if hasattr(self, "branch"):
            vectors = [self.branch.pool(self.branch(audio, ~valid), ~valid)]
        elif self.audio_layers is not None:
            pooled = _masked_mean(audio, valid)
            vectors = [pooled[:, i] for i in self.audio_layers]
        else:
            if self.audio_mean is not None:
                audio = (audio - self.audio_mean) / self.audio_std
            vectors = [_masked_mean(audio, valid)]
        return torch.stack([proj(v) for proj, v in zip(self.audio_proj, vectors)], dim=1)

    def fuse(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused state [B, dim] and the AFG weights by stage."""
        size = len(batch["clips"])
        device = self.decoder.emotion.weight.device
        if len(self.audio_proj):
            acoustic = self._acoustic(batch)
            acoustic_present = batch["has_audio"].bool()[:, None].expand(-1, acoustic.shape[1])
        else:
            acoustic = torch.zeros(size, 0, self.decoder.emotion.in_features, device=device)
            acoustic_present = torch.zeros(size, 0, dtype=torch.bool, device=device)
        if len(self.video_proj):
            visual = self.video_proj[0](_masked_mean(batch["video"], batch["video_mask"])).unsqueeze(1)
            visual_present = batch["has_video"].bool()[:, None]
        else:
            visual = torch.zeros(size, 0, acoustic.shape[-1], device=device)
            visual_present = torch.zeros(size, 0, dtype=torch.bool, device=device)
        fused, _, weights = self.fusion(acoustic, visual, acoustic_present, visual_present)
        return fused, weights

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """{"logits": emotion logits [B, C], "valence": [B]}."""
        logits, valence = self.decoder(self.fuse(batch)[0])
        return {"logits": logits, "valence": valence}

    def loss(self, outputs: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Training: Eq. 9 (or the plain sum); evaluation mode: the fixed dev selection criterion."""
        logits = outputs["logits"]
        emotions = targets[:, self.primary]
        if self.multilabel:
            emotion_loss = F.binary_cross_entropy_with_logits(logits, emotions)
        else:
            emotion_loss = F.cross_entropy(logits, emotions.argmax(dim=1))
        valence_loss = F.mse_loss(outputs["valence"], targets[:, self.valence_index])
        if not self.training:
            return emotion_loss + self.selection_valence_weight * valence_loss
        if self.uncertainty is not None:
            return self.uncertainty(emotion_loss, valence_loss)
        return emotion_loss + self.valence_weight * valence_loss

    def extra_metrics(self, probs: np.ndarray, outputs: Mapping[str, np.ndarray], labels: Any, scores: Mapping[str, Any]) -> dict[str, Any]:
        """Valence MSE and CCC, and the MER score, for one test condition (run hook)."""
        from ssl_aver.metrics import ccc

        target = labels["valence"].to_numpy(np.float64)
        predicted = np.asarray(outputs["valence"], np.float64).reshape(-1)
        mse = float(np.mean((predicted - target) ** 2))
        out: dict[str, Any] = {"valence_mse": mse, "valence_ccc": float(ccc(target, predicted)), "mer_score": mer_score(scores["weighted_f1"], mse)}
        if "valence_source" in labels.columns:
            out["valence_source"] = str(labels["valence_source"].iloc[0])
        if self.uncertainty is not None:
            d1, d2 = self.uncertainty.deltas.detach().cpu().tolist()
            out.update({"delta_emotion": d1, "delta_valence": d2})
        return out
