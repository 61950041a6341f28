"""The fine-tuning loop every head shares (paper 1, section 4.3 settings by default).

Adam (or AdamW), learning rate x `lr_factor` after `lr_patience` epochs without dev
improvement, early stopping on the dev loss, and the model with the best dev loss restored at
the end, so that the test set is evaluated exactly once, on the model chosen on dev.

Schedule (paper 1: "a five epoch-patience learning decay with a 0.1 factor ... early stopping
criterion based on the development loss"; the early-stopping patience is not given): the rate
is multiplied by `lr_factor` at the end of the `lr_patience`-th consecutive epoch without dev
improvement (again after each further `lr_patience` such epochs), and the run stops after
`early_stop_patience` such epochs. torch's ReduceLROnPlateau(patience=p) would cut only after
p + 1 epochs. The default early-stopping patience is 10 = 2 x 5, so the decayed rate gets five
epochs before the run can stop; a patience at or below `lr_patience` would stop every run
before its decay, which `TrainSettings` refuses. `None` turns either off.

`max_steps` bounds the run in optimizer steps instead of epochs (paper 1 fine-tunes its
wav2vec 2.0 baseline for 1,200 iterations): training stops mid-epoch at that step, the dev
set is evaluated there, and `epochs` no longer limits the run.

`mixed_precision` (no / bf16 / fp16) runs the training forward passes under `torch.autocast`
on the run's device (fp16 with a gradient scaler); losses are computed in float32 and dev /
test evaluation stays in float32, so a model is chosen and scored on full-precision outputs.
`grad_accum` = N sums the gradients of N batches before each optimizer step (the loss of each
batch divided by N: a step sees the mean over N batches, an effective batch of N x batch_size);
`max_steps` and the steps of the history count optimizer steps. Why autocast rather than an
`accelerate.Accelerator` per run: the grid runner (`finetune.grid`) gives each process its own
(system, split) jobs, and an Accelerator in a multi-process launch would wrap every model in DDP
and all-reduce the gradients of processes that are training different jobs.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ssl_aver.errors import UserError
from ssl_aver.progress import tqdm

Batch = dict[str, torch.Tensor | list[str]]


PRECISIONS: dict[str, torch.dtype | None] = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainSettings:
    epochs: int = 20
    lr: float = 7.25e-4
    batch_size: int = 32
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_patience: int | None = 5
    lr_factor: float = 0.1
    early_stop_patience: int | None = 10
    grad_clip: float = 0.0
    max_steps: int | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    grad_accum: int = 1
    log_dir: str | None = None  # TensorBoard curves of every epoch record (finetune.run sets OUT/tensorboard/split_XX)

    def __post_init__(self) -> None:
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"train.mixed_precision must be one of {tuple(PRECISIONS)}, got {self.mixed_precision!r}")
        if int(self.grad_accum) < 1:
            raise UserError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("lr_patience", "early_stop_patience", "max_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UserError(f"train.{name} must be >= 1 or null (off), got {value}")
        if self.lr_patience is not None and self.early_stop_patience is not None and self.early_stop_patience <= self.lr_patience:
            raise UserError(
                f"train.early_stop_patience ({self.early_stop_patience}) must exceed train.lr_patience ({self.lr_patience}): "
                "otherwise every run stops before its learning-rate decay; raise it, or set train.lr_patience=null for no decay"
            )


@dataclass
class FitResult:
    best_epoch: int
    best_dev_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


class BestOnDev:
    """Keeps the weights with the lowest dev loss, decays the rate on a plateau, says when to stop.

    Shared by the generic loop and heads with their own schedules (VAVL's Algorithm 1), so
    every head follows the same schedule (module docstring). Each history record gets `lr`,
    the rate the epoch trained with.
    """

    def __init__(self, model: nn.Module, settings: TrainSettings, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.settings = settings
        self.optimizer = optimizer
        self.state = copy.deepcopy(model.state_dict())
        self.result = FitResult(best_epoch=0, best_dev_loss=math.inf)
        self.stale = 0

    def update(self, epoch: int, dev_loss: float, record: dict[str, float]) -> bool:
        """Record an epoch; True when `early_stop_patience` epochs passed without improvement."""
        self.result.history.append({**record, "lr": self.optimizer.param_groups[0]["lr"]})
        if self.settings.log_dir:
            log_scalars(self.settings.log_dir, self.result.history[-1])
        if dev_loss < self.result.best_dev_loss - 1e-9:
            self.result.best_dev_loss, self.result.best_epoch, self.stale = dev_loss, epoch, 0
            self.state = copy.deepcopy(self.model.state_dict())
            return False
        self.stale += 1
        decay = self.settings.lr_patience
        if decay is not None and self.stale % decay == 0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.settings.lr_factor
        return self.settings.early_stop_patience is not None and self.stale >= self.settings.early_stop_patience

    def restore(self) -> FitResult:
        """Load the best weights back into the model and return the fit's record."""
        self.model.load_state_dict(self.state)
        return self.result


_WRITERS: dict[str, Any] = {}


def log_scalars(log_dir: str, record: dict[str, float]) -> None:
    """Append one epoch record to the TensorBoard events of `log_dir`, one step per record (a
    head that fits in stages, like the two-stage model, continues the same curves).

    A SummaryWriter, not accelerate's TensorBoardTracker: the tracker logs only on the main
    process, and a grid's other processes train jobs of their own (`finetune.grid`)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = _WRITERS.get(log_dir)
    if writer is None:
        writer = _WRITERS[log_dir] = SummaryWriter(log_dir)
        writer.ssl_step = 0
    writer.ssl_step += 1
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key, value, writer.ssl_step)
    writer.flush()


def close_log(log_dir: str | None) -> None:
    """Close the TensorBoard writer of `log_dir` (after a split's fit)."""
    writer = _WRITERS.pop(log_dir, None) if log_dir else None
    if writer is not None:
        writer.close()


def autocast(settings: TrainSettings, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The training forward pass's precision context: torch.autocast in bf16/fp16, else nothing."""
    dtype = PRECISIONS[settings.mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def as_float(out: Any) -> Any:
    """Model outputs in float32 (a tensor, or the tensors of a dict), so losses run at full precision."""
    if isinstance(out, dict):
        return {k: as_float(v) for k, v in out.items()}
    return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


class Stepper:
    """Backward + optimizer step with gradient accumulation, clipping and (fp16) loss scaling.

    `backward(loss, last)` adds the gradient of loss / grad_accum and steps the optimizer every
    `grad_accum` batches and at the last batch of an epoch; returns True when it stepped.
    """

    def __init__(self, params: Iterable[nn.Parameter], optimizer: torch.optim.Optimizer, settings: TrainSettings, device: torch.device) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.settings = settings
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.mixed_precision == "fp16")
        self.pending = 0
        optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, last: bool) -> bool:
        self.scaler.scale(loss / self.settings.grad_accum).backward()
        self.pending += 1
        if self.pending < self.settings.grad_accum and not last:
            return False
        if self.settings.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        return True


def make_optimizer(params: Iterable[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """Adam (paper 1) or AdamW (papers 3-4) from the settings."""
    params = [p for p in params if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    raise UserError(f"unknown optimizer '{settings.optimizer}'; choose adam or adamw")


def move(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device`; half-precision frames (float16 stores) are upcast to float32 there,
    batch by batch, so the loader reads and copies half the bytes (pinned memory on a GPU)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=value.is_pinned())
            if value.dtype in (torch.float16, torch.bfloat16):
                value = value.float()
        out[key] = value
    return out


def _epoch_loss(model: nn.Module, loader, loss_fn, device: torch.device) -> float:
    """Mean dev loss over the clips; a `corpus_level` loss (1 - CCC) is computed once over the
    whole dev set, since CCC is not a mean of per-batch values."""
    model.eval()
    total, count = 0.0, 0
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    whole = getattr(loss_fn, "corpus_level", False)
    with torch.no_grad():
        for batch in loader:
            batch = move(batch, device)
            logits = model(batch)
            if whole:
                outputs.append(logits)
                targets.append(batch["targets"])
                continue
            n = len(batch["clips"])
            total += float(loss_fn(logits, batch["targets"])) * n
            count += n
    if whole:
        return float(loss_fn(torch.cat(outputs), torch.cat(targets))) if outputs else math.inf
    return total / max(count, 1)


def fit(
    model: nn.Module,
    train_loader,
    dev_loader,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: TrainSettings,
    device: torch.device,
    progress: bool = True,
) -> FitResult:
    """Train with early stopping on dev loss; leaves `model` holding its best-on-dev weights."""
    model.to(device)
    optimizer = make_optimizer(model.parameters(), settings)
    best = BestOnDev(model, settings, optimizer)
    stepper = Stepper(model.parameters(), optimizer, settings, device)
    steps = 0
    per_epoch = math.ceil(len(train_loader) / settings.grad_accum)
    for epoch in tqdm(epoch_range(settings, per_epoch), desc="fine-tune", disable=not progress, leave=False):
        model.train()
        total, count = 0.0, 0
        for i, batch in enumerate(train_loader):
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
            batch = move(batch, device)
            with autocast(settings, device):
                out = model(batch)
            loss = loss_fn(as_float(out), batch["targets"])
            if not torch.isfinite(loss):
                raise UserError(f"fine-tuning loss became {loss.item()} at epoch {epoch}; lower train.lr")
            steps += stepper.backward(loss, last=i == len(train_loader) - 1)
            n = len(batch["clips"])
            total += loss.item() * n
            count += n
        dev_loss = _epoch_loss(model, dev_loader, loss_fn, device)
        record = {"epoch": epoch, "steps": steps, "train_loss": total / max(count, 1), "dev_loss": dev_loss}
        if best.update(epoch, dev_loss, record):
            break
    return best.restore()


def epoch_range(settings: TrainSettings, steps_per_epoch: int) -> range:
    """Epochs 1..N: `epochs`, or as many as `max_steps` needs when the run is bounded in steps."""
    if settings.max_steps is None:
        return range(1, settings.epochs + 1)
    return range(1, math.ceil(settings.max_steps / max(steps_per_epoch, 1)) + 1)


def keep_modality(batch: Batch, modality: str) -> Batch:
    """The batch as a head would see it with only `modality` ("audio", "video" or "av") present.

    The removed modality is zeroed and its mask cleared, so masked attention never sees it.
    """
    if modality == "av":
        return batch
    if modality not in ("audio", "video"):
        raise UserError(f"unknown test condition '{modality}'; choose av, audio or video")
    drop = "video" if modality == "audio" else "audio"
    out = dict(batch)
    if out.get(drop) is not None:
        out[drop] = torch.zeros_like(out[drop])
        out[f"{drop}_mask"] = torch.zeros_like(out[f"{drop}_mask"])
    if f"has_{drop}" in out:
        out[f"has_{drop}"] = torch.zeros_like(out[f"has_{drop}"])
    return out


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Head outputs as predictions: softmax (multiclass), sigmoid (multilabel), as they are (regression)."""
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "regression":
        return logits
    return torch.softmax(logits, dim=-1)


def predict(model: nn.Module, loader, device: torch.device, task: str, modality: str = "av") -> tuple[list[str], np.ndarray]:
    """Clip ids and predictions (class probabilities, or attribute values for regression)."""
    clips, probs, _ = predict_outputs(model, loader, device, task, modality)
    return clips, probs


def predict_outputs(
    model: nn.Module, loader, device: torch.device, task: str, modality: str = "av",
) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Clip ids, predictions (`activate`) and the head's other per-clip outputs.

    A head's forward returns class logits [B, C], or a dict holding them as "logits" beside
    other per-clip outputs ([B] or [B, k] tensors, e.g. MER's valence estimate): those come
    back by name, in clip order (its `loss` then receives the whole dict).
    """
    model.eval().to(device)
    clips: list[str] = []
    probs: list[np.ndarray] = []
    extras: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in loader:
            batch = keep_modality(move(batch, device), modality)
            out = model(batch)
            logits = out["logits"] if isinstance(out, dict) else out
            probs.append(activate(logits, task).float().cpu().numpy())
            if isinstance(out, dict):
                for name, value in out.items():
                    if name != "logits":
                        extras.setdefault(name, []).append(value.detach().float().cpu().numpy())
            clips.extend(batch["clips"])
    outputs = {name: np.concatenate(parts) for name, parts in extras.items()}
    return clips, np.concatenate(probs) if probs else np.zeros((0, 0), dtype=np.float32), outputs
