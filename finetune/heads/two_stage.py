"""Paper 3's two-stage training with unimodal- and multimodal-rated labels (and its baselines).

Architecture (paper 3, Sec. IV, V.D): an acoustic set = LW-Sum over stacked SSL layers (or the
toolkit's pretrained encoder / a [T, D] store) + transformer layers; a visual set = ReLU(Conv1d)
projection + transformer layers; the shared transformer layers take the acoustic and the visual
sequence one after the other (residual over them); AS-Pool per modality, concatenated, then
fully connected layers give the audio-visual prediction. Loss: class-balanced (Cui et al.) with
training-split class counts of the label source; AdamW (recipes: lr 1e-5, wd 5e-7, betas
0.95/0.999).

Heads registered here:
- `two_stage` (models 7-12). `mode: two_stage`: stage 1 trains the acoustic sets and the visual
  sets, each through its own AS-Pool + FC head on its label source (`audio_sets: [voice, av]`,
  `video_sets: [face, av]` = model 12 "Proposed"; `[av]`/`[av]` = model 10; `[voice]`/`[face]` =
  model 11 "Mixed"); stage 2 freezes them and trains the shared layers, the pools and the AV head
  on `labels` (av). `mode: one_step` (models 7-9): one set per modality, everything trained at
  once on `labels` (voice, face or av).
- `two_stage_audio` / `two_stage_video` (models 1-6): one acoustic / visual set + AS-Pool + FC
  trained on `labels`.
A label source is a rating condition whose multi-hot targets the batches carry: the run's
primary targets or a `data.extra_targets` group (recipes: condition av, extra [voice, face, av]).
Evaluation is always on the primary targets.

Model 12's sets (`set_layers`): the paper divides each modality's layers "into two equal sets: one
set is trained using voice-only labels, while the other is adjusted using labels from audio-visual
stimuli" (Sec. IV), so `split` (default) gives models 10, 11 and 12 the same per-modality size:
one front end per modality (LW-Sum + projection, or the visual Conv1d) feeding every set, and the
modality's `audio_layers` / `video_layers` transformer layers divided over its sets. The paper's
count (three acoustic and three visual layers, Sec. V.D) does not halve; an uneven count is split
as evenly as possible with the extra layer in the first listed set (3 -> 2 + 1: voice/face 2, av 1
for `[voice, av]`; list `[av, voice]` to give it to the av set). The split sets share the front end,
which stage 1 trains with the sum of both sets' losses. `full` is the earlier reading: every set has
its own front end and all the modality's layers (model 12 then has twice model 10's per-modality
parameters). A run saved before `set_layers` existed loads as `full`, the way it was built.

Choices where the paper is vague (all config): the transformers are `d_model`=1024 wide (the
paper aligns both inputs to 1,024-d for them) with a 512-d feed-forward layer (its "encoder
hidden layer of 512 dimensions"), 8 heads, post-norm, no positional encoding; an input of
another width gets a linear projection to `d_model`; the visual Conv1d has kernel 3; the outputs
of two sets of one modality are concatenated and linearly projected (`set_fusion: concat`,
trained in stage 2) or averaged (`mean`); stage-1 sets train jointly (sum of their losses, one
early-stopping point); frozen modules run in eval mode; a test without one modality feeds the
AV head zero pooled statistics for it (AS-Pool of no frame).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from finetune.heads import BuildContext
from finetune.heads.vavl import AcousticInput, MaskedConv1d, encoder_branch, select_rows
from finetune.trainer import FitResult, TrainSettings, fit
from ssl_aver.errors import UserError
from ssl_aver.models.blocks import AttentionLayer
from ssl_aver.models.losses import ClassBalancedLoss, positive_counts
from ssl_aver.models.pooling import ASPool, LWSum

MODES = ("two_stage", "one_step")
SET_FUSIONS = ("concat", "mean")
SET_LAYERS = ("split", "full")

BASE_DEFAULTS: dict[str, Any] = {
    "labels": "av", "d_model": 1024, "ff_dim": 512, "n_heads": 8, "audio_layers": 3, "video_layers": 3, "dropout": 0.1,
    "conv_kernel": 3, "pool_hidden": 128, "head_hidden": 256, "head_dropout": 0.2, "beta": 0.999,
}


class Transformer(nn.Module):
    """Post-norm transformer layers over [N, T, d] with a padding mask (True = padded)."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AttentionLayer(dim, n_heads, ff_dim, dropout, 0.0, "sdpa") for _ in range(n_layers))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        attend = ~(valid | ~valid.any(dim=1, keepdim=True))  # a row without frames attends over its zeros
        keep = valid.unsqueeze(-1).to(x.dtype)
        for layer in self.layers:
            x = layer(x, attend) * keep
        return x


class AcousticSet(nn.Module):
    """Front end (LW-Sum over stacked SSL layers, projection to d_model if needed) + transformer layers.

    A set built with `front=False` has only the layers: it reads another set's front end (`embed`).
    """

    def __init__(self, acoustic: AcousticInput, cfg: Mapping[str, Any], n_layers: int, front: bool = True) -> None:
        super().__init__()
        d = int(cfg["d_model"])
        if front and acoustic.kind == "stacked":
            self.layer_sum = LWSum(acoustic.n_layers)
        if front and acoustic.dim != d:
            self.proj = nn.Linear(acoustic.dim, d)
        self.encoder = Transformer(d, n_layers, int(cfg["n_heads"]), int(cfg["ff_dim"]), float(cfg["dropout"]))

    def embed(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The front end's output [N, T, d_model]."""
        x = self.layer_sum(feats) if hasattr(self, "layer_sum") else feats
        return self.proj(x) if hasattr(self, "proj") else x

    def forward(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(feats, valid), valid)


class VisualSet(nn.Module):
    """ReLU(Conv1d) projection of the face embeddings to d_model (paper 3, Eq. 7) + transformer layers.

    A set built with `front=False` has only the layers: it reads another set's projection (`embed`).
    """

    def __init__(self, video_dim: int, cfg: Mapping[str, Any], n_layers: int, front: bool = True) -> None:
        super().__init__()
        d = int(cfg["d_model"])
        if front:
            self.proj = MaskedConv1d(video_dim, d, int(cfg["conv_kernel"]), relu=True)
        self.encoder = Transformer(d, n_layers, int(cfg["n_heads"]), int(cfg["ff_dim"]), float(cfg["dropout"]))

    def embed(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The front end's output [N, T, d_model]."""
        return self.proj(x, valid)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(x, valid), valid)


def set_layer_counts(n_layers: int, n_sets: int, how: str, modality: str) -> list[int]:
    """Transformer layers of each of a modality's sets (`set_layers`, module docstring)."""
    if how == "full":
        return [n_layers] * n_sets
    if n_layers < n_sets:
        raise UserError(f"model.{modality}_layers={n_layers} cannot be split over {n_sets} {modality} sets (model.set_layers=split); "
                        f"give at least {n_sets} layers or model.set_layers=full")
    share, extra = divmod(n_layers, n_sets)
    return [share + (i < extra) for i in range(n_sets)]


def n_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or frozen) of a module."""
    return sum(p.numel() for p in module.parameters())


class PoolHead(nn.Module):
    """AS-Pool + two fully connected layers: [N, T, d] -> logits [N, C]."""

    def __init__(self, dim: int, n_classes: int, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.pool = ASPool(dim, int(cfg["pool_hidden"]))
        hidden = int(cfg["head_hidden"])
        self.fc = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(float(cfg["head_dropout"])), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x, valid))


def label_slice(ctx: BuildContext, source: str) -> slice:
    """Columns of a label source in a batch's targets (see the module docstring)."""
    layout: dict[str, slice] = dict(ctx.extra.get("target_layout") or {"primary": slice(0, ctx.n_classes)})
    if source not in layout:
        extra = sorted(k for k in layout if k != "primary")
        raise UserError(f"label source '{source}' is not in the batches (extra targets: {extra}); add it to data.extra_targets, e.g. data.extra_targets=[voice,face,av]")
    return layout[source]


def training_counts(loader: Any, columns: slice, multilabel: bool, n_classes: int) -> np.ndarray:
    """Positives per class of one label source in the training set (class-balanced loss)."""
    rows = getattr(loader.dataset, "rows", None)
    if rows is not None:
        targets = np.stack([np.asarray(r[-1], np.float32) for r in rows]) if rows else np.zeros((0, columns.stop), np.float32)
    else:
        targets = np.concatenate([b["targets"].numpy() for b in loader])
    y = targets[:, columns]
    return positive_counts(y) if multilabel else np.bincount(y.argmax(1), minlength=n_classes)


class _Base(nn.Module):
    tasks = ("multiclass", "multilabel")  # paper 3 evaluates emotion classes only

    """Shared plumbing: label sources, class-balanced losses, frozen modules kept in eval mode."""

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.multilabel = ctx.task == "multilabel"
        self.beta = float(cfg["beta"])
        self.labels = str(cfg["labels"])
        self.slices = {self.labels: label_slice(ctx, self.labels)}
        self.losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "_Base":
        return cls(cfg, n_classes, ctx)

    def train(self, mode: bool = True) -> "_Base":
        """Train mode, except modules whose parameters are all frozen (they stay in eval mode)."""
        super().train(mode)
        if mode:
            for module in self.children():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def prepare_losses(self, train_loader: Any) -> None:
        """One class-balanced loss per label source, from the training split's counts."""
        for source, columns in self.slices.items():
            counts = training_counts(train_loader, columns, self.multilabel, self.n_classes)
            criterion = ClassBalancedLoss(counts, self.beta, self.multilabel).to(next(self.parameters()).device)
            self.losses[source] = lambda logits, targets, c=criterion, s=columns: c(logits, targets[:, s])

    def source_loss(self, source: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.losses[source]


class _Unimodal(_Base):
    """Models 1-6: one acoustic or visual set + AS-Pool + FC, trained on one label source."""

    modality = "audio"

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__(cfg, n_classes, ctx)
        d = int(cfg["d_model"])
        if self.modality == "audio":
            self.acoustic = AcousticInput(ctx)
            self.set = AcousticSet(self.acoustic, cfg, int(cfg["audio_layers"]))
        else:
            if not ctx.video_shape or len(ctx.video_shape) != 1:
                raise UserError(f"this head needs a visual store with [T, D] frames, got {ctx.video_shape}")
            self.set = VisualSet(int(ctx.video_shape[0]), cfg, int(cfg["video_layers"]))
        self.head = PoolHead(d, n_classes, cfg)

    @staticmethod
    def defaults() -> dict[str, Any]:
        return dict(BASE_DEFAULTS)

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        if self.modality != "audio":
            raise AttributeError("branch")
        return encoder_branch(self.acoustic)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the whole head and of its one set (front end + transformer layers)."""
        return {"total": n_parameters(self), f"{self.modality}_sets": n_parameters(self.set)}

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        x, valid = batch[self.modality], batch[f"{self.modality}_mask"]
        if self.modality == "audio":
            x = self.acoustic(x, valid)
        return self.head(self.set(x, valid), valid)

    def fit(self, train_loader: Any, dev_loader: Any, *, loss_fn: Any = None, settings: TrainSettings, device: torch.device, progress: bool = True) -> FitResult:
        """The shared loop with the class-balanced loss of `labels`."""
        self.to(device)
        self.prepare_losses(train_loader)
        return fit(self, train_loader, dev_loader, loss_fn=self.source_loss(self.labels), settings=settings, device=device, progress=progress)


class TwoStageAudioHead(_Unimodal):
    """Models 1-3: acoustic input, trained on voice / face / av labels."""

    inputs = ("audio",)
    require = "audio"
    eval_modalities = ("audio",)
    modality = "audio"


class TwoStageVideoHead(_Unimodal):
    """Models 4-6: visual input, trained on voice / face / av labels."""

    inputs = ("video",)
    require = "video"
    eval_modalities = ("video",)
    modality = "video"


class _Stage1(nn.Module):
    """View of the head whose output is every stage-1 set's logits [B, S, C] (for the shared loop)."""

    def __init__(self, head: "TwoStageHead") -> None:
        super().__init__()
        self.head = head

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.head.stage1_logits(batch)


class TwoStageHead(_Base):
    """Models 7-12: acoustic + visual sets, shared layers, AV head; two-stage or one-step training."""

    inputs = ("audio", "video")
    require = "both"
    eval_modalities = ("av", "audio", "video")

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__(cfg, n_classes, ctx)
        if cfg["mode"] not in MODES:
            raise UserError(f"model.mode must be one of {MODES}, got {cfg['mode']!r}")
        if cfg["set_fusion"] not in SET_FUSIONS:
            raise UserError(f"model.set_fusion must be one of {SET_FUSIONS}, got {cfg['set_fusion']!r}")
        # a run saved before `set_layers` existed has no such key in its config.yaml: it was built with full sets
        self.set_layers = str(cfg.get("set_layers", "full"))
        if self.set_layers not in SET_LAYERS:
            raise UserError(f"model.set_layers must be one of {SET_LAYERS}, got {self.set_layers!r}")
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"this head needs a visual store with [T, D] frames, got {ctx.video_shape}")
        self.mode = str(cfg["mode"])
        self.audio_sources = [str(s) for s in cfg["audio_sets"]] if self.mode == "two_stage" else [self.labels]
        self.video_sources = [str(s) for s in cfg["video_sets"]] if self.mode == "two_stage" else [self.labels]
        if not self.audio_sources or not self.video_sources:
            raise UserError("model.audio_sets and model.video_sets need at least one label source each (e.g. [voice, av] and [face, av])")
        self.slices.update({s: label_slice(ctx, s) for s in self.audio_sources + self.video_sources})
        self.residual = bool(cfg["residual"])
        self.set_fusion = str(cfg["set_fusion"])
        self.stage_epochs = (cfg["stage1_epochs"], cfg["stage2_epochs"])
        d = int(cfg["d_model"])
        self.acoustic = AcousticInput(ctx)
        audio_layers = set_layer_counts(int(cfg["audio_layers"]), len(self.audio_sources), self.set_layers, "audio")
        video_layers = set_layer_counts(int(cfg["video_layers"]), len(self.video_sources), self.set_layers, "video")
        split = self.set_layers == "split"  # then the first set holds the modality's front end and feeds every set
        self.audio_sets = nn.ModuleList(AcousticSet(self.acoustic, cfg, n, front=not split or i == 0) for i, n in enumerate(audio_layers))
        self.video_sets = nn.ModuleList(VisualSet(int(ctx.video_shape[0]), cfg, n, front=not split or i == 0) for i, n in enumerate(video_layers))
        if self.mode == "two_stage":
            self.audio_set_heads = nn.ModuleList(PoolHead(d, n_classes, cfg) for _ in self.audio_sources)
            self.video_set_heads = nn.ModuleList(PoolHead(d, n_classes, cfg) for _ in self.video_sources)
        if self.set_fusion == "concat":
            if len(self.audio_sets) > 1:
                self.audio_fuse = nn.Linear(len(self.audio_sets) * d, d)
            if len(self.video_sets) > 1:
                self.video_fuse = nn.Linear(len(self.video_sets) * d, d)
        self.shared = Transformer(d, int(cfg["shared_layers"]), int(cfg["n_heads"]), int(cfg["ff_dim"]), float(cfg["dropout"]))
        self.audio_pool = ASPool(d, int(cfg["pool_hidden"]))
        self.video_pool = ASPool(d, int(cfg["pool_hidden"]))
        hidden = int(cfg["head_hidden"])
        self.av_head = nn.Sequential(nn.Linear(4 * d, hidden), nn.ReLU(), nn.Dropout(float(cfg["head_dropout"])), nn.Linear(hidden, n_classes))

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys (paper 3, Sec. V.D); the defaults are model 12, "Proposed"."""
        return {
            **BASE_DEFAULTS, "mode": "two_stage", "audio_sets": ["voice", "av"], "video_sets": ["face", "av"], "set_layers": "split",
            "shared_layers": 2, "residual": True, "set_fusion": "concat", "stage1_epochs": None, "stage2_epochs": None,
        }

    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.acoustic)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the whole head and of each modality's sets (front end + transformer layers):
        the part that must match for models 10, 11 and 12 to be compared at equal capacity."""
        return {"total": n_parameters(self), "audio_sets": n_parameters(self.audio_sets), "video_sets": n_parameters(self.video_sets)}

    def _sets(self, batch: Mapping[str, Any], modality: str, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each set's output [N, T, d] for the rows that have the modality, and their mask."""
        x, valid = select_rows(batch, modality, rows)
        sets = self.audio_sets if modality == "audio" else self.video_sets
        if modality == "audio":
            x = self.acoustic(x, valid)
        if self.set_layers == "split":
            h = sets[0].embed(x, valid)
            return [s.encoder(h, valid) for s in sets], valid
        return [s(x, valid) for s in sets], valid

    def stage1_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits of every stage-1 set, [B, n_audio_sets + n_video_sets, C] (rows lacking a modality: 0)."""
        n = len(batch["clips"])
        heads = list(self.audio_set_heads) + list(self.video_set_heads)
        out = torch.zeros(n, len(heads), self.n_classes, device=batch["has_audio"].device)
        k = 0
        for modality, set_heads in (("audio", self.audio_set_heads), ("video", self.video_set_heads)):
            rows = batch[f"has_{modality}"].bool().nonzero().flatten()
            if rows.numel():
                outputs, valid = self._sets(batch, modality, rows)
                for i, (h, head) in enumerate(zip(outputs, set_heads)):
                    out[rows, k + i] = head(h, valid).to(out.dtype)  # float32 under autocast
            k += len(set_heads)
        return out

    def stage1_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over sets of the class-balanced loss on each set's own label source."""
        sources = self.audio_sources + self.video_sources
        return sum(self.source_loss(s)(logits[:, i], targets) for i, s in enumerate(sources))

    def _fused(self, outputs: list[torch.Tensor], modality: str) -> torch.Tensor:
        if len(outputs) == 1:
            return outputs[0]
        if self.set_fusion == "mean":
            return torch.stack(outputs).mean(0)
        return getattr(self, f"{modality}_fuse")(torch.cat(outputs, dim=-1))

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """AV logits: sets -> (fusion) -> shared layers (+ residual) -> AS-Pool per modality -> FC."""
        n = len(batch["clips"])
        d = self.audio_pool.attention[0].in_features
        pooled = {}
        for modality, pool in (("audio", self.audio_pool), ("video", self.video_pool)):
            pooled[modality] = torch.zeros(n, 2 * d, device=batch["has_audio"].device)
            rows = batch[f"has_{modality}"].bool().nonzero().flatten()
            if rows.numel():
                outputs, valid = self._sets(batch, modality, rows)
                h = self._fused(outputs, modality)
                s = self.shared(h, valid)
                pooled[modality][rows] = pool(s + h if self.residual else s, valid).to(pooled[modality].dtype)
        return self.av_head(torch.cat([pooled["audio"], pooled["video"]], dim=-1))

    def stage1_modules(self) -> list[nn.Module]:
        """What stage 1 trains and stage 2 freezes: acoustic input, sets and their heads."""
        return [self.acoustic, self.audio_sets, self.video_sets, self.audio_set_heads, self.video_set_heads]

    def fit(self, train_loader: Any, dev_loader: Any, *, loss_fn: Any = None, settings: TrainSettings, device: torch.device, progress: bool = True) -> FitResult:
        """Stage 1 (sets on their label sources), freeze, stage 2 (shared + AV head); or one step."""
        self.to(device)
        self.prepare_losses(train_loader)
        history: list[dict[str, float]] = []
        if self.mode == "two_stage":
            stage1 = dataclasses.replace(settings, epochs=int(self.stage_epochs[0] or settings.epochs))
            result = fit(_Stage1(self), train_loader, dev_loader, loss_fn=self.stage1_loss, settings=stage1, device=device, progress=progress)
            history += [{**h, "stage": 1} for h in result.history]
            for module in self.stage1_modules():
                module.requires_grad_(False)
        stage2 = dataclasses.replace(settings, epochs=int(self.stage_epochs[1] or settings.epochs))
        result = fit(self, train_loader, dev_loader, loss_fn=self.source_loss(self.labels), settings=stage2, device=device, progress=progress)
        history += [{**h, "stage": 2 if self.mode == "two_stage" else 1} for h in result.history]
        return FitResult(result.best_epoch, result.best_dev_loss, history)
