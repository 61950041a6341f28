"""Paper 2's versatile audio-visual learning (VAVL) head, trained with Algorithm 1.

Per modality: a temporal Conv1d projection of the frame features to `d_model`, optional time
subsampling (`subsample`, below), a conformer encoder (acoustic 3, visual 3 layers), then
conformer layers shared by both modalities (2) with a residual connection over them. The
average-pooled shared output of a modality feeds its prediction head (512-256-out) and a
reconstruction MLP of the average-pooled input features (weight `alpha`); the audio-visual
prediction layer reads both pooled shared outputs.

Training (custom `fit`, Algorithm 1): per batch, (1) update acoustic + shared weights on the
audio loss (+ alpha recon) of the clips with audio, (2) visual + shared weights on the visual
loss of the clips with video, (3) ONLY the audio-visual layer on the clips with both, the rest
run frozen (eval mode, under no_grad: no gradient flows through them). Clips may lack a
modality (`require = "any"`). Inference picks the head by the modalities present.

Acoustic inputs: the toolkit's pretrained encoder over openSMILE LLDs (`encoder: DIR`, frozen
with `freeze_encoder=true`), a layer-stacked SSL store [T, L, D] (learnable weighted sum of
the layers), or any [T, D] store (z-normalised with the training split's statistics).

Choices where the paper is vague (all config): the text mentions a 50-d projection, but the
audio-visual layer's 1,024-d input (two pooled shared outputs) implies 512-d conformers, so the
projection maps straight to `d_model`=512 (`proj_kernel`=3 frames); `alpha`=1.0 (not given);
the reconstruction target is the pooled front-end features (detached); the frozen modules in
step 3 run in eval mode; the checkpoint is chosen on the mean dev loss of the three test
conditions (`select_on`); regression uses 1 - mean CCC over the attributes (`objective: ccc`, refused on class targets:
a regression trained on one-hot columns and scored by macro-F1 means nothing; CREMA-D has no
attribute targets, so until a regression task exists that path runs on synthetic targets only).

Time subsampling (`subsample`: 1 | 2 | 4; Gulati et al.'s convolutional front end,
`ssl_aver.models.conformer.ConvSubsampling`). The default 1 attends over every frame and follows
the reference code: its conformer copy (VAVL/conformer/encoder.py) builds a 4x Conv2dSubampling in
every encoder but its forward never calls it (those are the ~7M parameters it never uses), and
the paper's conformers "process all the sequential video or acoustic frames". With 2 or 4 the
front end sits after the temporal projection, which then maps to `subsample_dim` = 50 features
(the paper's 50-d projection, the reference conformers' input_dim: the plane its subsampler would
have read) and the front end maps that plane to `d_model`; the modality's conformer and the shared
layers run on its subsampled sequence, and the pooling uses the subsampled masks (also in
`shared_embeddings`); the reconstruction target stays the mean of the input frames.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from ssl_aver.progress import tqdm

from finetune.heads import BuildContext, check_choice
from finetune.trainer import BestOnDev, FitResult, Stepper, TrainSettings, autocast, epoch_range, make_optimizer, move
from ssl_aver.errors import UserError
from ssl_aver.models.conformer import SUBSAMPLE_FACTORS, Conformer, ConvSubsampling
from ssl_aver.models.encoder import SSLEncoder
from ssl_aver.models.pooling import LWSum

OBJECTIVES = ("auto", "ccc")
FUSIONS = ("layer", "average")
SELECT_ON = ("mean", "av", "audio", "video")


def mlp3(dim: int, hidden: tuple[int, int], out: int, dropout: float) -> nn.Sequential:
    """Paper 2's three fully connected layers: dim -> h1 -> h2 -> out, ReLU + dropout between."""
    h1, h2 = hidden
    return nn.Sequential(
        nn.Linear(dim, h1), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h2, out),
    )


def valid_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of [N, T, D] over the valid frames of each row -> [N, D]."""
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean concordance correlation coefficient over the columns of [N, K] (paper 2, Eq. 3)."""
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    ccc = 2 * cov / (pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (pm - tm) ** 2 + 1e-8)
    return 1.0 - ccc.mean()


class AcousticInput(nn.Module):
    """Store frames -> [N, T, D] acoustic features for the heads of papers 2-3.

    kind "encoder": the pretrained SSLEncoder (attribute `branch`, so `freeze_encoder` reaches it)
    over openSMILE LLDs; "stacked": [T, L, D] SSL layers returned as they are (the caller applies
    its LW-Sum); "flat": a [T, D] store z-normalised with the training statistics.
    """

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__()
        shape = tuple(ctx.audio_shape or ())
        if not shape:
            raise UserError("this head needs an acoustic feature store (features.audio)")
        if ctx.encoder_dir is not None:
            self.kind = "encoder"
            self.branch = SSLEncoder.from_pretrained(ctx.encoder_dir)
            if shape != (self.branch.config.input_dim,):
                raise UserError(
                    f"the encoder in {ctx.encoder_dir} reads {self.branch.config.input_dim}-d LLD frames but the acoustic store has "
                    f"frames of shape {list(shape)}; use features.audio.config=recipes/features/smile.yaml"
                )
            self.dim, self.n_layers = self.branch.hidden_size, None
        elif len(shape) == 2:
            self.kind, self.n_layers, self.dim = "stacked", shape[0], shape[1]
        else:
            self.kind, self.n_layers, self.dim = "flat", None, shape[0]
            self.register_buffer("mean", torch.zeros(self.dim))
            self.register_buffer("std", torch.ones(self.dim))
            if ctx.audio_stats is not None:
                self.mean.copy_(torch.as_tensor(ctx.audio_stats[0]))
                self.std.copy_(torch.as_tensor(ctx.audio_stats[1]))

    @property
    def frozen(self) -> bool:
        """True when the pretrained encoder takes no updates (freeze_encoder=true)."""
        return self.kind == "encoder" and not any(p.requires_grad for p in self.branch.parameters())

    def forward(self, audio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.kind == "encoder":
            x = self.branch(audio, ~valid)
        elif self.kind == "flat":
            x = (audio - self.mean) / self.std
        else:
            x = audio
        return x * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def encoder_branch(acoustic: AcousticInput) -> nn.Module:
    """`acoustic.branch`, or AttributeError when the acoustic input is a stored feature (so that
    `hasattr(head, "branch")`, which the fine-tuning run uses for `freeze_encoder`, is False)."""
    if acoustic.kind != "encoder":
        raise AttributeError("branch")
    return acoustic.branch


class MaskedConv1d(nn.Module):
    """Temporal Conv1d over [N, T, D] (zero at padded frames before and after), ReLU optional."""

    def __init__(self, dim_in: int, dim_out: int, kernel: int, relu: bool = False) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise UserError(f"projection kernel must be odd, got {kernel}")
        self.conv = nn.Conv1d(dim_in, dim_out, kernel, padding=kernel // 2)
        self.relu = relu

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        w = valid.unsqueeze(-1).to(x.dtype)
        y = self.conv((x * w).transpose(1, 2)).transpose(1, 2)
        return (F.relu(y) if self.relu else y) * w


def subsampling(cfg: Mapping[str, Any], d_model: int) -> tuple[int, int]:
    """(`model.subsample` factor, width of the temporal projection feeding the subsampler), checked:
    d_model without subsampling, else `model.subsample_dim` (the subsampler's feature axis)."""
    factor = cfg["subsample"]
    if isinstance(factor, bool) or factor not in SUBSAMPLE_FACTORS:
        raise UserError(f"model.subsample must be one of {SUBSAMPLE_FACTORS}, got {factor!r}")
    if factor == 1:
        return 1, d_model
    width, least = int(cfg["subsample_dim"]), 3 if factor == 2 else 7
    if width < least:
        raise UserError(f"model.subsample_dim must be >= {least} for model.subsample={factor} (paper 2: 50), got {width}")
    return int(factor), width


def select_rows(batch: Mapping[str, Any], modality: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' frames of one modality, trimmed to their longest valid extent, and the mask."""
    x, valid = batch[modality][rows], batch[f"{modality}_mask"][rows]
    used = valid.any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return x[:, :length], valid[:, :length]


class VAVLHead(nn.Module):
    """VAVL: acoustic/visual conformer branches, shared conformer layers, unimodal + AV heads."""

    inputs = ("audio", "video")
    require = "any"
    eval_modalities = ("av", "audio", "video")
    tasks = ("multiclass", "multilabel", "regression")  # regression: paper 2's attributes, 1 - CCC

    def __init__(self, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        if not ctx.video_shape or len(ctx.video_shape) != 1:
            raise UserError(f"VAVL needs a visual store with [T, D] frames, got {ctx.video_shape}")
        for key, choices in (("objective", OBJECTIVES), ("fusion", FUSIONS), ("select_on", SELECT_ON)):
            check_choice(cfg, key, choices)
        if cfg["objective"] == "ccc" and ctx.task in ("multiclass", "multilabel"):
            raise UserError(
                f"model.objective=ccc is a regression objective but data.target is {ctx.task} (class targets): "
                "its macro-F1 would score a regression on one-hot columns; use model.objective=auto"
            )
        d = int(cfg["d_model"])
        hidden = tuple(int(h) for h in cfg["head_hidden"])
        if len(hidden) != 2:
            raise UserError(f"model.head_hidden must list two widths (paper 2: [512, 256]), got {list(hidden)}")
        self.n_out = n_classes
        self.objective = "ccc" if cfg["objective"] == "ccc" or ctx.task == "regression" else ("bce" if ctx.task == "multilabel" else "ce")
        self.alpha = float(cfg["alpha"]) if cfg["reconstruction"] else 0.0
        self.residual = bool(cfg["residual"])
        self.fusion = str(cfg["fusion"])
        self.select_on = str(cfg["select_on"])
        conformer = dict(n_heads=int(cfg["n_heads"]), dropout=float(cfg["dropout"]), kernel_size=int(cfg["conv_kernel"]), ff_expansion=int(cfg["ff_expansion"]))
        self.acoustic = AcousticInput(ctx)
        if self.acoustic.kind == "stacked":
            self.layer_sum = LWSum(self.acoustic.n_layers)
        video_dim = int(ctx.video_shape[0])
        kernel = int(cfg["proj_kernel"])
        factor, width = subsampling(cfg, d)
        self.audio_proj = MaskedConv1d(self.acoustic.dim, width, kernel)
        self.video_proj = MaskedConv1d(video_dim, width, kernel)
        self.audio_subsample = ConvSubsampling(width, d, factor, float(cfg["dropout"]))
        self.video_subsample = ConvSubsampling(width, d, factor, float(cfg["dropout"]))
        self.audio_encoder = Conformer(d, int(cfg["audio_layers"]), **conformer)
        self.video_encoder = Conformer(d, int(cfg["video_layers"]), **conformer)
        self.shared = Conformer(d, int(cfg["shared_layers"]), **conformer)
        drop = float(cfg["head_dropout"])
        self.audio_head = mlp3(d, hidden, n_classes, drop)
        self.video_head = mlp3(d, hidden, n_classes, drop)
        if self.alpha > 0:
            self.audio_recon = mlp3(d, hidden, self.acoustic.dim, drop)
            self.video_recon = mlp3(d, hidden, video_dim, drop)
        if self.fusion == "layer":
            self.av_head = mlp3(2 * d, hidden, n_classes, drop)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """`model:` keys (paper 2, Sec. 4.3) and the ablation switches of its Table 2."""
        return {
            "d_model": 512, "n_heads": 8, "dropout": 0.1, "audio_layers": 3, "video_layers": 3, "shared_layers": 2,
            "conv_kernel": 31, "ff_expansion": 4, "proj_kernel": 3, "subsample": 1, "subsample_dim": 50,
            "head_hidden": [512, 256], "head_dropout": 0.2,
            "alpha": 1.0, "reconstruction": True, "residual": True, "fusion": "layer", "objective": "auto", "select_on": "mean",
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], n_classes: int, ctx: BuildContext) -> "VAVLHead":
        return cls(cfg, n_classes, ctx)

    # ---- building blocks -------------------------------------------------------------------
    @property
    def branch(self) -> nn.Module:
        """The pretrained acoustic encoder (what `freeze_encoder` freezes); absent without one."""
        return encoder_branch(self.acoustic)

    def encode(self, batch: Mapping[str, Any], modality: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled shared-layer output [N, d] over the subsampled frames, pooled input features
        [N, D_in] over the input frames, detached)."""
        x, valid = select_rows(batch, modality, rows)
        if modality == "audio":
            feats = self.acoustic(x, valid)
            if hasattr(self, "layer_sum"):
                feats = self.layer_sum(feats)
            h, padded = self.audio_subsample(self.audio_proj(feats, valid), ~valid)
            h = self.audio_encoder(h, padded)
        else:
            feats = x
            h, padded = self.video_subsample(self.video_proj(feats, valid), ~valid)
            h = self.video_encoder(h, padded)
        s = self.shared(h, padded)
        if self.residual:
            s = s + h
        return valid_mean(s, ~padded), valid_mean(feats, valid).detach()

    def unimodal_logits(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return (self.audio_head if modality == "audio" else self.video_head)(pooled)

    def fuse(self, pooled_a: torch.Tensor, pooled_v: torch.Tensor) -> torch.Tensor:
        """Audio-visual output: the AV prediction layer, or (ablation 3) the unimodal average."""
        if self.fusion == "layer":
            return self.av_head(torch.cat([pooled_a, pooled_v], dim=-1))
        la, lv = self.audio_head(pooled_a), self.video_head(pooled_v)
        if self.objective == "ccc":
            return (la + lv) / 2
        if self.objective == "ce":
            return torch.log((torch.softmax(la, -1) + torch.softmax(lv, -1)) / 2)
        return torch.logit((torch.sigmoid(la) + torch.sigmoid(lv)) / 2, eps=1e-6)

    @staticmethod
    def _rows(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        has_a, has_v = batch["has_audio"].bool(), batch["has_video"].bool()
        if batch.get("audio") is None:
            has_a = torch.zeros_like(has_a)
        if batch.get("video") is None:
            has_v = torch.zeros_like(has_v)
        return has_a.nonzero().flatten(), has_v.nonzero().flatten(), (has_a & has_v).nonzero().flatten()

    def pooled(self, batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pooled shared outputs [B, d] per modality (zeros where absent) and presence masks [B]."""
        n = len(batch["clips"])
        ia, iv, _ = self._rows(batch)
        d = self.audio_head[0].in_features
        device = batch["has_audio"].device
        pooled = {m: torch.zeros(n, d, device=device) for m in ("audio", "video")}
        present = {m: torch.zeros(n, dtype=torch.bool, device=device) for m in ("audio", "video")}
        for modality, rows in (("audio", ia), ("video", iv)):
            if rows.numel():
                pooled[modality][rows] = self.encode(batch, modality, rows)[0]
                present[modality][rows] = True
        return pooled, present

    def condition_logits(self, batch: Mapping[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{condition: (row mask [B], logits [rows, C])}: "av" = clips with both (AV output),
        "audio" / "video" = clips with that modality through its own head."""
        pooled, present = self.pooled(batch)
        out = {}
        both = present["audio"] & present["video"]
        if both.any():
            out["av"] = (both, self.fuse(pooled["audio"][both], pooled["video"][both]))
        for modality in ("audio", "video"):
            if present[modality].any():
                out[modality] = (present[modality], self.unimodal_logits(modality, pooled[modality][present[modality]]))
        return out

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Inference (Algorithm 1, lines 17-21): AV output when both are present, else the unimodal head."""
        conditions = self.condition_logits(batch)
        logits = torch.zeros(len(batch["clips"]), self.n_out, device=batch["has_audio"].device)
        covered = torch.zeros(len(batch["clips"]), dtype=torch.bool, device=logits.device)
        for name in ("av", "audio", "video"):
            if name in conditions:
                rows, values = conditions[name]
                fill = rows & ~covered
                logits[fill] = values[fill[rows]]
                covered |= rows
        return logits

    def shared_embeddings(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled shared-layer outputs of the audio and of the video of the paired clips (Sec. 5.3)."""
        _, _, both = self._rows(batch)
        return self.encode(batch, "audio", both)[0], self.encode(batch, "video", both)[0]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE (single label), BCE (multi-label) or 1 - CCC (regression) on the primary targets."""
        y = targets[:, : self.n_out]
        if self.objective == "ccc":
            return ccc_loss(logits, y)
        if self.objective == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        return F.cross_entropy(logits, y.argmax(dim=1))

    # ---- Algorithm 1 -----------------------------------------------------------------------
    def _train_mode(self) -> None:
        self.train()
        if self.acoustic.frozen:
            self.acoustic.eval()

    def train_phase(self, batch: Mapping[str, Any], phase: str, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0,
                    stepper: Stepper | None = None, precision: Any = None) -> float | None:
        """One step of Algorithm 1 on a batch: phase "audio" (lines 3-6), "video" (7-10) or "av"
        (11-15). Returns the loss, or None when no clip of the batch has what the phase needs.
        `stepper` / `precision`: the fit's optimizer stepper (fp16 loss scaling, clipping) and
        its autocast context (mixed precision); without them a plain float32 step."""
        ia, iv, both = self._rows(batch)
        targets = batch["targets"]
        with precision if precision is not None else contextlib.nullcontext():
            if phase in ("audio", "video"):
                rows = ia if phase == "audio" else iv
                if not rows.numel():
                    return None
                pooled, x_pool = self.encode(batch, phase, rows)
                loss = self.loss(self.unimodal_logits(phase, pooled).float(), targets[rows])
                if self.alpha > 0:
                    recon = (self.audio_recon if phase == "audio" else self.video_recon)(pooled)
                    loss = loss + self.alpha * F.mse_loss(recon.float(), x_pool.float())
            elif phase == "av":
                if not both.numel() or self.fusion != "layer":
                    return None
                self.eval()
                with torch.no_grad():
                    pooled_a = self.encode(batch, "audio", both)[0]
                    pooled_v = self.encode(batch, "video", both)[0]
                self.av_head.train()
                loss = self.loss(self.av_head(torch.cat([pooled_a, pooled_v], dim=-1)).float(), targets[both])
                self._train_mode()
            else:
                raise ValueError(f"unknown phase {phase!r}")
        if not torch.isfinite(loss):
            raise UserError(f"VAVL {phase} loss became {loss.item()}; lower train.lr")
        if stepper is not None:
            stepper.backward(loss, last=True)
            return float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), grad_clip)
        optimizer.step()
        return float(loss.detach())

    def dev_losses(self, loader: Any, device: torch.device) -> dict[str, float]:
        """Prediction loss per test condition: av (paired clips), audio, video. The mean over clips,
        or for regression 1 - CCC over the whole dev set (CCC is not a mean of batch values)."""
        self.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        kept: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        with torch.no_grad():
            for batch in loader:
                batch = move(batch, device)
                for name, (rows, logits) in self.condition_logits(batch).items():
                    if self.objective == "ccc":
                        outputs, targets = kept.setdefault(name, ([], []))
                        outputs.append(logits)
                        targets.append(batch["targets"][rows])
                        continue
                    n = int(rows.sum())
                    sums[name] = sums.get(name, 0.0) + float(self.loss(logits, batch["targets"][rows])) * n
                    counts[name] = counts.get(name, 0) + n
        if self.objective == "ccc":
            return {k: float(self.loss(torch.cat(o), torch.cat(t))) for k, (o, t) in kept.items()}
        return {k: sums[k] / counts[k] for k in sums}

    def _criterion(self, losses: dict[str, float]) -> float:
        if self.select_on == "mean":
            return sum(losses.values()) / max(len(losses), 1) if losses else math.inf
        return losses.get(self.select_on, math.inf)

    def fit(self, train_loader: Any, dev_loader: Any, *, loss_fn: Any = None, settings: TrainSettings, device: torch.device, progress: bool = True) -> FitResult:
        """Algorithm 1 for `settings.epochs` epochs; keeps the weights best on the dev criterion.

        Every phase uses this head's own `loss` (the run's `loss_fn` is the same function).
        Mixed precision applies to every phase; gradient accumulation is refused: Algorithm 1
        updates after each phase of each batch, and accumulating over batches would mix the
        phases' gradients in the shared layers.
        """
        if settings.grad_accum != 1:
            raise UserError(f"VAVL's Algorithm 1 steps after every phase of every batch; train.grad_accum={settings.grad_accum} "
                            "would merge the phases' gradients: use train.grad_accum=1 (raise train.batch_size instead)")
        self.to(device)
        optimizer = make_optimizer(self.parameters(), settings)
        best = BestOnDev(self, settings, optimizer)
        stepper = Stepper(self.parameters(), optimizer, settings, device)
        steps = 0
        for epoch in tqdm(epoch_range(settings, len(train_loader)), desc="VAVL", disable=not progress, leave=False):
            self._train_mode()
            totals: dict[str, list[float]] = {"audio": [], "video": [], "av": []}
            for batch in train_loader:
                if settings.max_steps is not None and steps >= settings.max_steps:
                    break
                steps += 1
                batch = move(batch, device)
                for phase in ("audio", "video", "av"):
                    value = self.train_phase(batch, phase, optimizer, stepper=stepper, precision=autocast(settings, device))
                    if value is not None:
                        totals[phase].append(value)
            dev = self.dev_losses(dev_loader, device)
            criterion = self._criterion(dev)
            record: dict[str, float] = {"epoch": epoch, "steps": steps, "dev_loss": criterion}
            record.update({f"train_{k}_loss": sum(v) / len(v) for k, v in totals.items() if v})
            record.update({f"dev_{k}_loss": v for k, v in dev.items()})
            record["train_loss"] = sum(record.get(f"train_{k}_loss", 0.0) for k in totals)
            if best.update(epoch, criterion, record):
                break
        return best.restore()
