"""Paper 5 (MER2023): AFG fusion of utterance-level features + joint emotion/valence decoding.

Features (each one vector per clip, projected to a common width `dim` by its own "dimension
align matrix": LayerNorm -> Linear -> ReLU -> Dropout; the layer norm and ReLU are our choice):
- acoustic: with `encoder: DIR` the pretrained SSLEncoder over openSMILE LLD frames, pooled over
  valid frames (fine-tuned, or frozen with `freeze_encoder=true`); otherwise the stored
  features: each chosen layer (`audio_layers`) of a layer-stacked store [T, L, D] is one vector
  (paper 5: HuBERT-large layers 18, 19 and 20), a [T, D] store gives one (z-normalised with the
  training split's statistics when the run provides them) or, with `audio_groups` (column
  widths summing to D), one per group of columns (our choice for stores without layers, e.g.
  [65, 65]: openSMILE's ComParE LLDs, then their deltas), each the mean over valid frames;
- visual: each face model's embedding averaged over the frames with a face (paper 5: "average
  encoding" of frame-level face features). A [T, D] face store gives one visual vector; a
  model-stacked store [T, M, D] (`stack_face_stores`: paper 5 fuses "2 visual features
  RF(pooling) and MR(block2)", a ResNet and a MANet) gives one per chosen model (`video_models`).
`features` picks the modalities fused (Table 1 has visual-only and acoustic-only columns). The
three AFG structures differ only with two or more acoustic vectors and a visual one
(`ssl_aver.models.afg.structures_coincide`; `mer-table` refuses to compare them otherwise).

Fusion: one of the three AFG structures of `ssl_aver.models.afg` (`structure`).
Decoder (`decoder`):
- `jdev` (Eqs. 5-8): e = Softmax(h W_e + b_e); v~ = h W_v + b_v; v~e = Tanh(e W_ev + b_ev);
  v = [v~, v~e] W_vv + b_vv, so the valence also reads the emotion posterior;
- `baseline`: independent emotion and valence layers on h (the MER2023 baseline).
Loss (`loss`): `uncertainty` (Eq. 9) L = L_e / d1^2 + L_v / (2 d2^2) + log(1 + d1) + log(1 + d2),
with d = softplus(rho) so the deltas stay positive (our parametrisation; they start at
`init_delta`), or `sum`: L_e + valence_weight * L_v. L_e is cross-entropy (BCE for multi-label
targets), L_v the MSE. Model selection on dev (early stopping) uses the fixed criterion
L_e + selection_valence_weight * L_v (L_v on MER2023's scale, see below): learned loss weights
move during training, so the training loss is no yardstick across epochs (0.25 by default, the
weight of the MSE in the MER score).

Valence scale (`valence_scale`, [low, high] of the valence target). The MER score weighs the
MSE for valence on MER2023's [-5, 5]; the derived CREMA-D valence is on that scale
(finetune/valence.py), rated valence from `data.clip_columns` keeps its own scale and
`valence_scale` states it (MSP-Podcast: [1, 7]). Training targets outside it are an error
(a wrong scale would mis-weigh the MSE), and the MER score rescales the MSE to [-5, 5]:
MSE x (10 / (high - low))^2.

The valence target comes from `data.extra_targets: [valence]`: derived for CREMA-D or rated from
`data.clip_columns` (finetune/valence.py, sources `derived_crema_d` / `clip_columns`), or a
corpus's own valence group (MER2023's ratings on [-5, 5], source `corpus`); the head
checks that the run's valence source is the one its config names (`valence_source`). Its
`extra_metrics` hook adds, to every test condition's metrics, the valence MSE (on the target's
scale), the MSE normalised by the variance of the test set's valence targets (`valence_nmse`:
1 = no better than predicting the test mean, comparable across scales and corpora), valence
CCC and the MER score = weighted F1 - 0.25 x MSE on [-5, 5] (the MER2023 baseline's combined
metric).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune.heads import BuildContext
from finetune.valence import MER_SCALE
from ssl_aver.errors import UserError
from ssl_aver.models.afg import SCORINGS, STRUCTURES, AFGFusion

DECODERS = ("jdev", "baseline")
LOSSES = ("uncertainty", "sum")
MSE_WEIGHT = 0.25
STACK_EXTRACTOR = "stacked_faces"


def scale_factor(scale: Sequence[float] = MER_SCALE) -> float:
    """Factor that puts an MSE on `scale` onto MER2023's [-5, 5]: (10 / (high - low))^2."""
    return ((MER_SCALE[1] - MER_SCALE[0]) / (float(scale[1]) - float(scale[0]))) ** 2


def mer_score(weighted_f1: float, mse: float, scale: Sequence[float] = MER_SCALE) -> float:
    """MER2023's combined metric: weighted F1 of the emotions minus 0.25 x the valence MSE on
    [-5, 5] (an MSE on another valence `scale` is rescaled first, so the 0.25 means the same)."""
    return float(weighted_f1) - MSE_WEIGHT * float(mse) * scale_factor(scale)


def normalised_mse(mse: float, target: np.ndarray) -> float:
    """MSE over the variance of the targets (NaN when they do not vary): scale-free, 1 = the mean."""
    variance = float(np.var(np.asarray(target, np.float64)))
    return float(mse) / variance if variance > 0 else float("nan")


def parse_valence_scale(value: Any) -> tuple[float, float]:
    """`model.valence_scale` as (low, high), checked."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"model.valence_scale must be [low, high] of the valence targets, e.g. [-5, 5], got {value!r}") from None
    if not low < high:
        raise UserError(f"model.valence_scale must have low < high, got [{low}, {high}]")
    return low, high


def _chosen(spec: Any, n: int, key: str, what: str) -> list[int]:
    """Indices picked by `model.<key>` (None = all n), each within the store's n entries."""
    chosen = list(range(n)) if spec is None else [int(i) for i in spec]
    if not chosen or any(not -n <= i < n for i in chosen):
        raise UserError(f"model.{key} {chosen} out of range: the {what} store has {n} (0..{n - 1}); pick within them or null for all")
    return [i % n for i in chosen]


def chosen_audio_layers(cfg: Mapping[str, Any], audio_shape: Sequence[int]) -> list[int] | None:
    """The chosen layers of a layer-stacked acoustic store [L, D]; None for a [D] store."""
    if len(audio_shape) == 2:
        return _chosen(cfg["audio_layers"], int(audio_shape[0]), "audio_layers", "layer-stacked acoustic")
    if cfg["audio_layers"] is not None:
        raise UserError("model.audio_layers needs a layer-stacked acoustic store ([T, L, D]); set it to null")
    return None


def chosen_audio_groups(cfg: Mapping[str, Any], audio_shape: Sequence[int] | None) -> list[int] | None:
    """Column widths splitting a [D] acoustic store into several inputs (None: one input).
    `audio_shape` None stands for the pretrained encoder branch."""
    if cfg["audio_groups"] is None:
        return None
    if audio_shape is None or len(audio_shape) != 1:
        raise UserError("model.audio_groups splits the columns of a [T, D] acoustic store; set it to null for a layer-stacked store "
                        "(use model.audio_layers) or an encoder")
    widths = [int(w) for w in cfg["audio_groups"]]
    if not widths or min(widths) < 1 or sum(widths) != int(audio_shape[0]):
        raise UserError(f"model.audio_groups {widths} must be positive widths summing to the acoustic store's {audio_shape[0]} columns "
                        "(e.g. [65, 65]: ComParE LLDs, then their deltas)")
    return widths


def chosen_video_models(cfg: Mapping[str, Any], video_shape: Sequence[int]) -> list[int] | None:
    """The chosen face models of a model-stacked visual store [M, D]; None for a [D] store."""
    if len(video_shape) == 2:
        return _chosen(cfg["video_models"], int(video_shape[0]), "video_models", "model-stacked visual")
    if cfg["video_models"] is not None:
        raise UserError("model.video_models needs a model-stacked visual store ([T, M, D], finetune.heads.mer.stack_face_stores "
                        "or mer-table --video-stores); set it to null")
    return None


def _features(cfg: Mapping[str, Any]) -> list[str]:
    features = [str(f) for f in cfg["features"]]
    if not features or set(features) - {"audio", "video"}:
        raise UserError(f"model.features must be a non-empty subset of [audio, video], got {features}")
    return features


def input_counts(cfg: Mapping[str, Any], audio_shape: Sequence[int] | None, video_shape: Sequence[int] | None, encoder: bool) -> tuple[int, int]:
    """How many acoustic and visual vectors a head of this `model:` config fuses on these stores."""
    features = _features(cfg)
    n_acoustic = n_visual = 0
    if "audio" in features:
        if encoder:
            chosen_audio_groups(cfg, None)
            n_acoustic = 1
        elif audio_shape is None:
            raise UserError("model.features has audio but the run has no acoustic store")
        else:
            layers = chosen_audio_layers(cfg, audio_shape)
            groups = chosen_audio_groups(cfg, audio_shape)
            n_acoustic = len(layers) if layers is not None else len(groups) if groups is not None else 1
    if "video" in features:
        if video_shape is None:
            raise UserError("model.features has video but the run has no visual store")
        models = chosen_video_models(cfg, video_shape)
        n_visual = 1 if models is None else len(models)
    return n_acoustic, n_visual


def stack_face_stores(sources: Sequence[str | Path], out: str | Path, replace: bool = False) -> Path:
    """One visual store [T, M, D] from the face stores of M visual models, each then one AFG input.

    Paper 5 fuses two face models (ResNet-FER2013 and MANet-RAFDB) and the fine-tuning run reads
    one visual store, so their frame features are stacked. Frames must align: every source holds
    the same frames per clip (extract them with the same landmarker and `every`/`fps`); a frame
    has a face when every model found one; narrower models are zero-padded to the widest. Clips
    missing from a source are left out (listed in summary.json). The store's config records each
    source's extractor config and fingerprint, so runs on it are reused only while the sources are
    unchanged; an existing stack of other sources is refused, or rebuilt with `replace`.
    """
    import shutil

    from ssl_aver import provenance
    from ssl_aver.features.store import ClipFeatures, FeatureStore, StoreWriter
    from ssl_aver.io import read_json, write_json

    if len(sources) < 2:
        raise UserError(f"stacking face stores needs two or more (one per visual model), got {len(sources)}")
    stores = [FeatureStore(s) for s in sources]
    for store in stores:
        if store.meta.get("modality") != "video" or len(store.frame_shape) != 1:
            raise UserError(f"{store.path} is not a face store of one vector per frame ([T, D]); give stores made by `ssl-aver features extract` with a face config")
    common = [c for c in stores[0].clips if all(c in s for s in stores[1:])]
    if not common:
        raise UserError(f"the face stores {[str(s) for s in sources]} share no clip; stack stores of the same corpus")
    width = max(store.frame_shape[0] for store in stores)
    config = {"sources": [{**provenance.feature_store_fingerprint(s.path), "extractor": s.extractor, "config": s.config, "width": s.frame_shape[0]}
                          for s in stores]}
    meta = {
        "extractor": STACK_EXTRACTOR, "modality": "video", "config": config, "fingerprint": "+".join(str(s.meta.get("fingerprint")) for s in stores),
        "frame_shape": [len(stores), width], "dtype": "float32", "layers": None, "fps": None, "weights": [s.weights for s in stores], "has_mask": True,
    }
    target = Path(out)
    if (target / "meta.json").is_file():
        old = read_json(target / "meta.json")
        finished = (target / "index.json").is_file() and not any((target / "shards").glob("*.npz"))
        if old.get("config") == config and old.get("fingerprint") == meta["fingerprint"] and finished:
            return target
        if replace and old.get("extractor") == STACK_EXTRACTOR:
            shutil.rmtree(target)
    writer = StoreWriter(target, meta)
    left_out = [{"clip": c, "reason": "not in every face store"} for c in sorted(set().union(*(s.clips for s in stores)) - set(common))]
    for clip in common:
        if writer.done(clip):
            continue
        parts = [s.get(clip) for s in stores]
        if len({len(array) for array, _, _ in parts}) != 1 or len({round(rate, 6) for _, rate, _ in parts}) != 1:
            raise UserError(f"clip {clip}: the face stores hold different frames ({[(len(a), r) for a, r, _ in parts]} frames, fps); "
                            "stack stores extracted with the same landmarker and every/fps")
        frames = len(parts[0][0])
        stacked = np.zeros((frames, len(stores), width), np.float32)
        present = np.ones(frames, bool)
        for m, (array, _, mask) in enumerate(parts):
            stacked[:, m, : array.shape[1]] = array
            if mask is not None:
                present &= mask
        writer.put(clip, ClipFeatures(stacked, parts[0][1], present))
    writer.consolidate()
    write_json(target / "summary.json", {"clips_in_store": len(common), "left_out": left_out, "sources": [str(s) for s in sources]})
    return target


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
    tasks = ("multiclass",)  # emotion classes + the valence extra target
    require = "both"
    eval_modalities = ("av", "audio", "video")

    def __init__(
        self,
        n_classes: int,
        *,
        audio_width: int | None,
        audio_layers: list[int] | None,
        video_width: int | None,
        audio_groups: list[int] | None = None,
        video_models: list[int] | None = None,
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
        valence_scale: tuple[float, float] = MER_SCALE,
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
        self.audio_groups = audio_groups
        self.video_models = video_models
        if audio_stats is not None and branch is None and audio_layers is None:
            self.register_buffer("audio_mean", torch.as_tensor(audio_stats[0], dtype=torch.float32))
            self.register_buffer("audio_std", torch.as_tensor(audio_stats[1], dtype=torch.float32))
        else:
            self.audio_mean = self.audio_std = None
        audio_widths = [] if audio_width is None else audio_groups or [audio_width] * (len(audio_layers) if audio_layers is not None else 1)
        n_video = 0 if video_width is None else (len(video_models) if video_models is not None else 1)
        self.audio_proj = nn.ModuleList(_projection(width, dim, dropout) for width in audio_widths)
        self.video_proj = nn.ModuleList(_projection(video_width, dim, dropout) for _ in range(n_video)) if video_width else nn.ModuleList()
        self.fusion = AFGFusion(structure, len(self.audio_proj), len(self.video_proj), dim, scoring)
        self.decoder = JointDecoder(dim, n_classes, joint=decoder == "jdev", multilabel=multilabel)
        self.uncertainty = UncertaintyLoss(init_delta) if loss == "uncertainty" else None
        self.valence_weight = float(valence_weight)
        self.selection_valence_weight = float(selection_valence_weight)
        self.valence_scale = valence_scale
        self.multilabel = multilabel
        self.primary = primary
        self.valence_index = valence_index

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys (see the module docstring)."""
        return {
            "structure": "parallel", "decoder": "jdev", "loss": "uncertainty", "features": ["audio", "video"],
            "audio_layers": None, "audio_groups": None, "video_models": None, "dim": 128, "dropout": 0.3, "scoring": "concat", "init_delta": 1.0,
            "valence_weight": 1.0, "selection_valence_weight": MSE_WEIGHT, "valence_source": "derived_crema_d",
            "valence_scale": list(MER_SCALE),
        }

    @staticmethod
    def _check_valence(cfg: Mapping[str, Any], train: Any, scale: tuple[float, float]) -> None:
        """The run's valence targets come from the named source and lie on the stated scale."""
        if train is None or "valence_source" not in train.columns:
            return
        found = str(train["valence_source"].iloc[0])
        if found != str(cfg["valence_source"]):
            raise UserError(f"model.valence_source is {cfg['valence_source']!r} but the run's valence targets are {found!r}; "
                            "set model.valence_source to match (or data.clip_columns to a clip,valence CSV)")
        if found == "derived_crema_d" and scale != MER_SCALE:
            raise UserError(f"model.valence_scale is {list(scale)} but the derived CREMA-D valence is on MER2023's [-5, 5]; set model.valence_scale=[-5,5]")
        values = train["valence"].to_numpy(np.float64)
        outside = (values < scale[0]) | (values > scale[1])
        if outside.any():
            i = int(np.argmax(outside))
            raise UserError(f"clip {train['clip'].iloc[i]} has valence {values[i]:g} outside model.valence_scale {list(scale)}; "
                            "set model.valence_scale to the ratings' scale, e.g. [1, 7]")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "MERHead":
        """Build on the run's stores/encoder; checks the valence target is there, from the named source and on the named scale."""
        from ssl_aver.models.encoder import SSLEncoder

        if str(cfg["structure"]) not in STRUCTURES:
            raise UserError(f"model.structure must be one of {STRUCTURES}, got {cfg['structure']!r}")
        if str(cfg["scoring"]) not in SCORINGS:
            raise UserError(f"model.scoring must be one of {SCORINGS}, got {cfg['scoring']!r}")
        features = _features(cfg)
        layout = ctx.extra.get("target_layout", {})
        if "valence" not in layout:
            raise UserError("the mer head needs the valence target: set data.extra_targets: [valence]")
        scale = parse_valence_scale(cfg["valence_scale"])
        cls._check_valence(cfg, ctx.extra.get("train_labels"), scale)
        branch = audio_width = layers = groups = stats = video_width = models = None
        if "audio" in features:
            if ctx.encoder_dir is not None:
                chosen_audio_groups(cfg, None)
                branch = SSLEncoder.from_pretrained(ctx.encoder_dir)
                audio_width = branch.hidden_size
            elif ctx.audio_shape is None:
                raise UserError("model.features has audio but the run has no acoustic store")
            else:
                layers = chosen_audio_layers(cfg, ctx.audio_shape)
                groups = chosen_audio_groups(cfg, ctx.audio_shape)
                audio_width = ctx.audio_shape[-1]
                stats = ctx.audio_stats if layers is None else None
        if "video" in features:
            if ctx.video_shape is None:
                raise UserError("model.features has video but the run has no visual store")
            models = chosen_video_models(cfg, ctx.video_shape)
            video_width = ctx.video_shape[-1]
        primary = layout.get("primary", slice(0, n_classes))
        return cls(
            n_classes, audio_width=audio_width, audio_layers=layers, video_width=video_width, audio_groups=groups, video_models=models, branch=branch,
            audio_stats=stats, structure=str(cfg["structure"]), decoder=str(cfg["decoder"]), loss=str(cfg["loss"]), dim=int(cfg["dim"]),
            dropout=float(cfg["dropout"]), scoring=str(cfg["scoring"]), init_delta=float(cfg["init_delta"]),
            valence_weight=float(cfg["valence_weight"]), selection_valence_weight=float(cfg["selection_valence_weight"]),
            valence_scale=scale, multilabel=ctx.task == "multilabel", primary=primary, valence_index=layout["valence"].start,
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
            pooled = _masked_mean(audio, valid)
            vectors = list(torch.split(pooled, self.audio_groups, dim=-1)) if self.audio_groups else [pooled]
        return torch.stack([proj(v) for proj, v in zip(self.audio_proj, vectors)], dim=1)

    def _visual(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Projected visual vectors [B, Nv, dim]: one per face model, each averaged over face frames."""
        pooled = _masked_mean(batch["video"], batch["video_mask"])
        vectors = [pooled] if self.video_models is None else [pooled[:, i] for i in self.video_models]
        return torch.stack([proj(v) for proj, v in zip(self.video_proj, vectors)], dim=1)

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
            visual = self._visual(batch)
            visual_present = batch["has_video"].bool()[:, None].expand(-1, visual.shape[1])
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
            return emotion_loss + self.selection_valence_weight * scale_factor(self.valence_scale) * valence_loss
        if self.uncertainty is not None:
            return self.uncertainty(emotion_loss, valence_loss)
        return emotion_loss + self.valence_weight * valence_loss

    def extra_metrics(self, probs: np.ndarray, outputs: Mapping[str, np.ndarray], labels: Any, scores: Mapping[str, Any]) -> dict[str, Any]:
        """Valence MSE, MSE / test-target variance and CCC, and the MER score, for one test condition (run hook)."""
        from ssl_aver.metrics import ccc

        target = labels["valence"].to_numpy(np.float64)
        predicted = np.asarray(outputs["valence"], np.float64).reshape(-1)
        mse = float(np.mean((predicted - target) ** 2))
        out: dict[str, Any] = {
            "valence_mse": mse, "valence_nmse": normalised_mse(mse, target), "valence_ccc": float(ccc(target, predicted)),
            "mer_score": mer_score(scores["weighted_f1"], mse, self.valence_scale),
        }
        if "valence_source" in labels.columns:
            out["valence_source"] = str(labels["valence_source"].iloc[0])
        if self.uncertainty is not None:
            d1, d2 = self.uncertainty.deltas.detach().cpu().tolist()
            out.update({"delta_emotion": d1, "delta_valence": d2})
        return out
