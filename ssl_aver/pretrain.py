"""Multi-task self-supervised pretraining of paper 1's encoder (Sec. 3.4, 4.3), with accelerate.

    python -m ssl_aver.pretrain --config recipes/pretrain/demo.yaml data.store=out/store
    accelerate launch -m ssl_aver.pretrain --config recipes/pretrain/msp_face.yaml data.store=...
    ssl-aver pretrain --config recipes/pretrain/msp_face.yaml data.store=... output_dir=runs/ssl3 tasks=[energy,face_upper,face_lower]

One head (two FC layers, ReLU) per selected pretext task on the mean-pooled encoder output;
binary tasks use BCE with logits, au_emotion 5-class cross-entropy; a window without a label for
a task (no face, no AU match) is masked out of that task's loss, and the task losses are summed
with configurable weights. `model.type: wav2vec2` instead pretrains paper 1's baseline 2
(Wav2Vec2ForPreTraining from scratch on the windows' raw audio), see ssl_aver.models.wav2vec2.

Outputs in `output_dir`: config.yaml, metrics.jsonl (one line per epoch), tensorboard/,
checkpoints/ (accelerate save_state, written to a temp folder then renamed, last K kept, each with
trainer_state.json), encoder/ (save_pretrained) and heads/. `resume=true` continues from the latest
checkpoint, mid-epoch included, with the RNG states restored, so an interrupted CPU run ends with
the same weights as an uninterrupted one.

Length: `train.epochs`, or `train.max_steps` optimizer steps (paper 1 pretrains its wav2vec 2.0
baseline for "400k iterations"). With max_steps set, epochs no longer limits the run (as many
epochs as the steps need, like fine-tuning's train.max_steps); the run stops at that step even
mid-epoch: a checkpoint is saved there (before the dev pass, so its RNG state is that of an
uninterrupted run), the partial epoch gets its metrics row, and the encoder is written as usual.

Choices where the paper is vague (config): dev split of `data.dev_fraction` of the clips (seeded);
head hidden width = d_model; Adam without weight decay; no learning-rate schedule in pretraining;
`train.num_threads` caps torch's CPU threads (on a shared 2-core machine two spinning threads
made a tiny model ~100x slower than one thread).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ssl_aver.config import load_config, save_config, to_dict
from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, read_json, seed_everything, write_json
from ssl_aver.models.blocks import MLPHead
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder, save_safetensors_atomic
from ssl_aver.store import AU_CLASSES, AU_TASK, TASKS, WindowStore

log = logging.getLogger(__name__)

#: Paper 1, Table 3: the pretext task sets of the ablation (recipes/pretrain/ssl1..ssl5.yaml).
TASK_SETS: dict[str, list[str]] = {
    "ssl1": ["energy", "face_upper", "face_lower", "au_emotion"],
    "ssl2": ["energy", "face_whole", "au_emotion"],
    "ssl3": ["energy", "face_upper", "face_lower"],
    "ssl4": ["face_upper", "face_lower", "au_emotion"],
    "ssl5": ["energy"],
}

DEFAULTS: dict[str, Any] = {
    "output_dir": None,
    "seed": 0,
    "resume": False,
    "tasks": TASK_SETS["ssl1"],
    "task_weights": {task: 1.0 for task in TASKS},
    "data": {
        "store": None,
        "corpus": None,
        "dev_fraction": 0.1,
        "num_workers": 0,
        "audio_cache": None,
    },
    "model": {
        "type": "ssl_encoder",
        "encoder": asdict(EncoderConfig()),
        "head_hidden": None,
        "head_dropout": 0.0,
        "wav2vec2": {
            "mask_time_prob": 0.65, "mask_time_length": 10, "num_negatives": 100, "codevector_dim": 128,
            "conv_dim": None, "conv_kernel": None, "conv_stride": None,
            # "layer", not HF's default "group": per-frame norm, padding-invariant (ssl_aver.models.wav2vec2)
            "feat_extract_norm": "layer",
        },  # fmt: skip
    },
    "train": {
        "epochs": 300,
        "max_steps": None,
        "batch_size": 32,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "grad_accum": 1,
        "mixed_precision": "no",
        "max_grad_norm": None,
        "checkpoint_every": 0,
        "keep_checkpoints": 3,
        "log_every": 10,
        "eval_batch_size": 64,
        "num_threads": None,
    },
}

CHECKPOINT_STATE = "trainer_state.json"

#: Config keys that cannot change the trained encoder, or whose content the store fingerprint stands for.
UNRECORDED_KEYS = (
    "output_dir", "resume", "data.store", "data.num_workers", "data.audio_cache", "train.num_threads",
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size",
)


class NonFiniteLoss(UserError):
    """The loss became NaN/inf: the run stops before the poisoned update touches any weight."""


# ----------------------------------------------------------------------------- data


class WindowDataset(Dataset):
    """Windows of a store (by index) with their labels; opens the memory map lazily per process,
    so DataLoader workers share the file instead of pickling its contents."""

    def __init__(self, store_dir: Path, indices: np.ndarray, labels: dict[str, np.ndarray]) -> None:
        self.store_dir = Path(store_dir)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = {task: values[self.indices] for task, values in labels.items()}
        self._store: WindowStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        if self._store is None:
            self._store = WindowStore(self.store_dir)
        return self._store.features(int(self.indices[i])), {t: v[i] for t, v in self.labels.items()}


def collate_windows(items: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> dict[str, Any]:
    """Pad a list of [L_i, F] windows to [B, T, F] with a padding mask (True = padded frame)."""
    lengths = [item[0].shape[0] for item in items]
    if min(lengths) == 0:
        raise UserError("the window store holds a window with zero frames; rebuild the store")
    batch, longest, dim = len(items), max(lengths), items[0][0].shape[1]
    features = np.zeros((batch, longest, dim), dtype=np.float32)
    mask = np.ones((batch, longest), dtype=bool)
    for row, (frames, _) in enumerate(items):
        features[row, : frames.shape[0]] = frames
        mask[row, : frames.shape[0]] = False
    labels = {}
    for task in items[0][1]:
        values = np.asarray([item[1][task] for item in items])
        labels[task] = torch.from_numpy(values.astype(np.int64 if task == AU_TASK else np.float32))
    return {"features": torch.from_numpy(features), "padding_mask": torch.from_numpy(mask), "labels": labels}


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): the same order after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


def split_by_clip(clips: Sequence[str], dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Window indices of (train, dev): a seeded `dev_fraction` of the clips goes to dev, whole."""
    names = np.asarray(sorted(set(clips)))
    if not 0.0 <= dev_fraction < 1.0:
        raise UserError(f"data.dev_fraction must be in [0, 1), got {dev_fraction}")
    n_dev = int(math.ceil(dev_fraction * len(names))) if dev_fraction > 0 and len(names) > 1 else 0
    n_dev = min(n_dev, len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    dev_clips = set(names[order[:n_dev]].tolist())
    in_dev = np.asarray([c in dev_clips for c in clips], dtype=bool)
    return np.flatnonzero(~in_dev), np.flatnonzero(in_dev)


# ----------------------------------------------------------------------------- model


class PretextModel(nn.Module):
    """The encoder plus one MLP head per pretext task on its mean-pooled output."""

    def __init__(self, encoder: SSLEncoder, tasks: Sequence[str], head_hidden: int | None, head_dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(head_hidden or encoder.hidden_size)
        self.head_config = {"tasks": list(tasks), "hidden": hidden, "dropout": head_dropout, "in_dim": encoder.hidden_size}
        self.heads = nn.ModuleDict(
            {t: MLPHead(encoder.hidden_size, hidden, len(AU_CLASSES) if t == AU_TASK else 1, head_dropout) for t in tasks}
        )

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.encoder.pool(self.encoder(features, padding_mask), padding_mask)
        return {task: head(pooled) for task, head in self.heads.items()}


def task_losses(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per task: (per-window loss, valid mask, correct mask); missing labels are masked out."""
    out = {}
    for task, logit in logits.items():
        target = labels[task]
        if task == AU_TASK:
            valid = target >= 0
            per = F.cross_entropy(logit.float(), target.clamp_min(0), reduction="none")
            correct = logit.argmax(dim=-1) == target
        else:
            valid = ~torch.isnan(target)
            clean = torch.where(valid, target, torch.zeros_like(target))
            score = logit.float().squeeze(-1)
            per = F.binary_cross_entropy_with_logits(score, clean, reduction="none")
            correct = (score > 0).float() == clean
        out[task] = (per * valid, valid, correct & valid)
    return out


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class TrainerState:
    """Where training stands; saved as trainer_state.json inside every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


def list_checkpoints(folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """Complete checkpoints (those holding trainer_state.json), oldest first."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") or not (path / CHECKPOINT_STATE).is_file():
                continue
            try:
                state = read_json(path / CHECKPOINT_STATE)
                found.append(((int(state["global_step"]), int(state["epoch"])), path))
            except (ValueError, KeyError, TypeError):
                continue
    return sorted(found)


def _save_checkpoint(accelerator: Any, folder: Path, state: TrainerState, keep: int) -> Path:
    """save_state into a temp folder, add trainer_state.json, rename into place, prune old ones."""
    name = f"step_{state.global_step:08d}" + ("" if state.step_in_epoch else f"_epoch_{state.epoch:04d}")
    final = folder / name
    tmp = folder / f".tmp-{name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / CHECKPOINT_STATE, asdict(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(folder)[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- training


def _check_config(cfg: DictConfig) -> None:
    if not cfg.output_dir:
        raise UserError("output_dir is not set; add output_dir=PATH")
    if not cfg.data.store:
        raise UserError("data.store is not set; add data.store=PATH (a store written by `ssl-aver pretext build`)")
    if cfg.model.type not in ("ssl_encoder", "wav2vec2"):
        raise UserError(f"model.type must be ssl_encoder or wav2vec2, got '{cfg.model.type}'")
    if cfg.model.type == "ssl_encoder":
        if not cfg.tasks:
            raise UserError("tasks is empty; choose some of: " + ", ".join(TASKS))
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown:
            raise UserError(f"unknown task(s) {unknown} in tasks; choose from: {', '.join(TASKS)}")
    if cfg.model.encoder.attention not in ("sdpa", "explicit"):
        raise UserError(f"model.encoder.attention must be sdpa or explicit, got '{cfg.model.encoder.attention}'")
    if cfg.model.encoder.d_model % cfg.model.encoder.n_heads:
        raise UserError(f"model.encoder.d_model ({cfg.model.encoder.d_model}) must be divisible by n_heads ({cfg.model.encoder.n_heads})")
    if int(cfg.train.batch_size) < 1 or int(cfg.train.epochs) < 0 or int(cfg.train.grad_accum) < 1:
        raise UserError("train.batch_size and train.grad_accum must be >= 1 and train.epochs >= 0")
    if cfg.train.max_steps is not None and int(cfg.train.max_steps) < 1:
        raise UserError(f"train.max_steps must be >= 1 or null (epochs only), got {cfg.train.max_steps}")


def _build(cfg: DictConfig, store: WindowStore, train_idx: np.ndarray) -> tuple[nn.Module, Any]:
    """The model and the per-batch loss function for cfg.model.type."""
    if cfg.model.type == "wav2vec2":
        from ssl_aver.models import wav2vec2

        model = wav2vec2.build_pretraining_model(EncoderConfig(**to_dict(cfg.model.encoder)), **to_dict(cfg.model.wav2vec2))
        return model, wav2vec2.pretraining_loss
    encoder_cfg = EncoderConfig(**to_dict(cfg.model.encoder))
    if encoder_cfg.input_dim != store.dim:
        raise UserError(f"model.encoder.input_dim is {encoder_cfg.input_dim} but the store holds {store.dim}-d features")
    encoder = SSLEncoder(encoder_cfg)
    encoder.set_normalization(*store.feature_stats(train_idx))
    return PretextModel(encoder, list(cfg.tasks), cfg.model.head_hidden, float(cfg.model.head_dropout)), None


def _loaders(cfg: DictConfig, store: WindowStore, train_idx: np.ndarray, dev_idx: np.ndarray) -> tuple[DataLoader, DataLoader | None, EpochShuffleSampler]:
    workers = int(cfg.data.num_workers)
    common: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    if cfg.model.type == "wav2vec2":
        from ssl_aver.models import wav2vec2

        cache = Path(cfg.data.audio_cache or Path(cfg.output_dir) / "audio_cache")
        audio = wav2vec2.AudioWindows.build(store, cfg.data.corpus, cache)
        train_ds: Dataset = audio.subset(train_idx)
        dev_ds: Dataset | None = audio.subset(dev_idx) if len(dev_idx) else None
        collate = wav2vec2.collate_audio
    else:
        labels = store.labels(list(cfg.tasks))
        train_ds = WindowDataset(store.root, train_idx, labels)
        dev_ds = WindowDataset(store.root, dev_idx, labels) if len(dev_idx) else None
        collate = collate_windows
    sampler = EpochShuffleSampler(len(train_ds), int(cfg.seed))
    train = DataLoader(
        train_ds, batch_size=int(cfg.train.batch_size), sampler=sampler, collate_fn=collate,
        generator=torch.Generator().manual_seed(int(cfg.seed)), **common,
    )  # fmt: skip
    dev = None
    if dev_ds is not None:
        dev = DataLoader(
            dev_ds, batch_size=int(cfg.train.eval_batch_size), shuffle=False, collate_fn=collate,
            generator=torch.Generator().manual_seed(int(cfg.seed) + 1), **common,
        )  # fmt: skip
    return train, dev, sampler


def _step_stats(accelerator: Any, parts: dict[str, tuple[torch.Tensor, ...]], tasks: list[str]) -> torch.Tensor:
    """Summed loss and valid count per task over all processes: [n_tasks, 2]."""
    local = torch.stack([torch.stack([parts[t][0].sum().detach().float(), parts[t][1].sum().float()]) for t in tasks])
    return accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local


def _evaluate(accelerator: Any, model: nn.Module, loader: DataLoader | None, cfg: DictConfig, loss_fn: Any) -> dict[str, float]:
    """Dev loss (total and per task) and per-task accuracy, over every dev window exactly once."""
    if loader is None:
        return {}
    model.eval()
    tasks = list(cfg.tasks) if loss_fn is None else ["wav2vec2"]
    sums = {t: [0.0, 0.0, 0.0] for t in tasks}
    with torch.no_grad():
        for batch in loader:
            if loss_fn is not None:
                loss, n = loss_fn(model, batch, train=False)
                total = accelerator.gather_for_metrics((loss.detach().float() * n).reshape(1))
                count = accelerator.gather_for_metrics(torch.tensor([float(n)], device=loss.device))
                sums["wav2vec2"][0] += float(total.sum())
                sums["wav2vec2"][1] += float(count.sum())
                continue
            logits = model(batch["features"], batch["padding_mask"])
            for task, (per, valid, correct) in task_losses(logits, batch["labels"]).items():
                per, valid, correct = accelerator.gather_for_metrics((per.float(), valid.float(), correct.float()))
                sums[task][0] += float(per.sum())
                sums[task][1] += float(valid.sum())
                sums[task][2] += float(correct.sum())
    model.train()
    out: dict[str, float] = {}
    total = 0.0
    for task, (loss_sum, count, correct) in sums.items():
        if count:
            out[f"dev_loss/{task}"] = loss_sum / count
            total += float(cfg.task_weights.get(task, 1.0)) * loss_sum / count if loss_fn is None else loss_sum / count
            if loss_fn is None:
                out[f"dev_acc/{task}"] = correct / count
    out["dev_loss"] = total
    return out


def _resume_state(accelerator: Any, ckpt_dir: Path) -> TrainerState | None:
    found = list_checkpoints(ckpt_dir)
    if not found:
        return None
    path = found[-1][1]
    accelerator.load_state(str(path))
    state = TrainerState(**read_json(path / CHECKPOINT_STATE))
    log.info("resumed from %s (epoch %d, batch %d, step %d)", path, state.epoch, state.step_in_epoch, state.global_step)
    return state


def _save_final(accelerator: Any, model: nn.Module, cfg: DictConfig, out: Path) -> Path:
    unwrapped = accelerator.unwrap_model(model)
    encoder_dir = out / "encoder"
    if cfg.model.type == "wav2vec2":
        from ssl_aver.models import wav2vec2

        wav2vec2.save_pretraining_model(unwrapped, encoder_dir)
        return encoder_dir
    unwrapped.encoder.save_pretrained(encoder_dir)
    heads_dir = out / "heads"
    heads_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(dict(unwrapped.heads.state_dict()), heads_dir / "model.safetensors")
    write_json(heads_dir / "config.json", unwrapped.head_config)
    return encoder_dir


def _flat_scalars(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix[:-1]] = node
        elif isinstance(node, list):
            flat[prefix[:-1]] = ",".join(map(str, node))

    walk("", to_dict(cfg))
    return flat


def _replicas_in_sync(accelerator: Any, model: nn.Module) -> bool:
    """True when every process holds the same weights (a float64 checksum compared across ranks)."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    sums = accelerator.gather(checksum.to(accelerator.device))
    return bool(torch.all(sums == sums[0]))


def inputs_record(cfg: DictConfig, drop: Sequence[str] = ()) -> dict[str, Any]:
    """What a pretrained encoder depends on: the config (less UNRECORDED_KEYS and `drop`) and the store's fingerprint.

    Written as OUT/inputs.json; a resume, `ssl-aver ablate` and Table 2 / Table 3 reuse compare it.
    """
    from ssl_aver import provenance

    return {"config": provenance.config_record(cfg, (*UNRECORDED_KEYS, *drop)), "store": provenance.window_store_fingerprint(cfg.data.store)}


def _check_resume(cfg: DictConfig, out: Path) -> None:
    """A resume continues only checkpoints made from the same inputs; it may lengthen the run
    (train.epochs / train.max_steps), which is what resuming a finished run is for."""
    from ssl_aver import provenance

    length = ("train.epochs", "train.max_steps")
    saved = out / provenance.RECORD
    old = read_json(saved) if saved.is_file() else None
    if old is not None:
        old = {**old, "config": provenance.config_record(old.get("config", {}), length)}
    changed = provenance.changed_inputs(old, inputs_record(cfg, length))
    if changed:
        raise UserError(
            f"pretraining run {out} was made from other inputs (changed: {provenance.describe(changed)}); "
            "resume it with its own settings, choose a new output_dir, or delete its checkpoints/ to start over"
        )


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) a pretraining job described by a resolved config; return its summary.

    A resume continues only checkpoints made from the same inputs (inputs.json).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from ssl_aver.progress import tqdm

    from ssl_aver import provenance

    _check_config(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    accelerator = Accelerator(
        mixed_precision=str(cfg.train.mixed_precision),
        gradient_accumulation_steps=int(cfg.train.grad_accum),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard")),
    )
    seed_everything(int(cfg.seed))
    store = WindowStore(cfg.data.store)
    clips = store.frame["clip"].astype(str).tolist() if "clip" in store.frame.columns else [str(i) for i in range(len(store))]
    train_idx, dev_idx = split_by_clip(clips, float(cfg.data.dev_fraction), int(cfg.seed))
    if len(train_idx) == 0:
        raise UserError(f"no training windows in {cfg.data.store}")
    model, loss_fn = _build(cfg, store, train_idx)
    train_loader, dev_loader, _ = _loaders(cfg, store, train_idx, dev_idx)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay))
    if dev_loader is not None:
        model, optimizer, train_loader, dev_loader = accelerator.prepare(model, optimizer, train_loader, dev_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)

    record = inputs_record(cfg)
    if cfg.resume and list_checkpoints(ckpt_dir):
        _check_resume(cfg, out)
    state = _resume_state(accelerator, ckpt_dir) if cfg.resume else None
    if state is None:
        if list_checkpoints(ckpt_dir):
            raise UserError(f"{out} already holds checkpoints; add resume=true to continue or choose another output_dir")
        state = TrainerState()
    tasks = list(cfg.tasks) if loss_fn is None else ["wav2vec2"]
    weights = {t: float(cfg.task_weights.get(t, 1.0)) for t in tasks}
    metrics_path = out / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        provenance.write_record(out, record)
        if metrics_path.is_file() and cfg.resume:
            history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            done = cfg.train.max_steps is not None and state.global_step >= int(cfg.train.max_steps)
            history = [row for row in history if row["epoch"] <= state.epoch or (done and row["step"] <= state.global_step)]
    accelerator.init_trackers("pretrain", config=_flat_scalars(cfg))

    epochs = int(cfg.train.epochs)
    max_steps = None if cfg.train.max_steps is None else int(cfg.train.max_steps)
    every = int(cfg.train.checkpoint_every)
    keep = int(cfg.train.keep_checkpoints)
    max_norm = cfg.train.max_grad_norm
    steps_per_epoch = len(train_loader)
    updates_per_epoch = math.ceil(steps_per_epoch / int(cfg.train.grad_accum))
    model.train()
    progress = tqdm(
        total=max_steps or epochs * updates_per_epoch, initial=state.global_step,
        disable=not accelerator.is_main_process, desc="pretrain", unit="step",
    )  # fmt: skip
    start = time.perf_counter()
    epoch = state.epoch
    while (state.global_step < max_steps) if max_steps else (epoch < epochs):
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        for batch in loader:
            with accelerator.accumulate(model):
                if loss_fn is not None:
                    loss, n = loss_fn(model, batch, train=True)
                    parts = {"wav2vec2": (loss.reshape(1) * n, torch.tensor([float(n)], device=loss.device))}
                    total = loss
                else:
                    parts = task_losses(model(batch["features"], batch["padding_mask"]), batch["labels"])
                    total = sum(weights[t] * per.sum() / valid.sum().clamp_min(1) for t, (per, valid, _) in parts.items())
                stats = _step_stats(accelerator, parts, tasks)
                bad = [t for k, t in enumerate(tasks) if not torch.isfinite(stats[k, 0])]
                if bad:
                    progress.close()
                    raise NonFiniteLoss(
                        f"non-finite loss at step {state.global_step + 1} (epoch {epoch + 1}, batch {state.step_in_epoch + 1}) "
                        f"in task(s) {', '.join(bad)}; no update was applied, the last good checkpoint in {ckpt_dir} is intact "
                        "(check the store for NaN/inf features, lower train.lr, or use train.max_grad_norm, then resume=true)"
                    )
                accelerator.backward(total)
                if accelerator.sync_gradients and max_norm:
                    accelerator.clip_grad_norm_(model.parameters(), float(max_norm))
                optimizer.step()
                optimizer.zero_grad()
            for k, task in enumerate(tasks):
                state.loss_sums[task] = state.loss_sums.get(task, 0.0) + float(stats[k, 0])
                state.counts[task] = state.counts.get(task, 0.0) + float(stats[k, 1])
            state.step_in_epoch += 1
            if accelerator.sync_gradients:
                state.global_step += 1
                progress.update(1)
                if state.global_step % int(cfg.train.log_every) == 0:
                    accelerator.log({"train/loss_step": float(total.detach())}, step=state.global_step)
                if state.global_step == max_steps:
                    break
                if every and state.global_step % every == 0 and state.step_in_epoch < steps_per_epoch:
                    _save_checkpoint(accelerator, ckpt_dir, state, keep)
        stopped_mid_epoch = state.step_in_epoch < steps_per_epoch
        if stopped_mid_epoch:
            _save_checkpoint(accelerator, ckpt_dir, state, keep)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state.global_step}
        train_total = 0.0
        for task in tasks:
            if state.counts.get(task):
                row[f"train_loss/{task}"] = state.loss_sums[task] / state.counts[task]
                train_total += weights[task] * row[f"train_loss/{task}"]
        row["train_loss"] = train_total
        row.update(_evaluate(accelerator, model, dev_loader, cfg, loss_fn))
        row["seconds"] = round(time.perf_counter() - start, 3)
        accelerator.log({k: v for k, v in row.items() if isinstance(v, float) and k != "seconds"}, step=state.global_step)
        if accelerator.is_main_process:
            history.append(row)
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        if not stopped_mid_epoch:
            state = TrainerState(epoch=epoch + 1, global_step=state.global_step)
            _save_checkpoint(accelerator, ckpt_dir, state, keep)
        epoch += 1
    progress.close()
    in_sync = _replicas_in_sync(accelerator, model)
    encoder_dir = out / "encoder"
    if accelerator.is_main_process:
        encoder_dir = _save_final(accelerator, model, cfg, out)
        write_json(
            out / "summary.json",
            {
                "epochs": history[-1]["epoch"] if history else 0, "max_steps": max_steps, "steps": state.global_step,
                "num_processes": accelerator.num_processes,
                "replicas_in_sync": in_sync, "encoder": str(encoder_dir), "history": history,
            },
        )  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"output_dir": str(out), "encoder": str(encoder_dir), "steps": state.global_step, "history": history}


# ----------------------------------------------------------------------------- entry points


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The recipe at `config` over DEFAULTS, with `key=value` overrides (unknown keys rejected)."""
    return load_config(config, overrides, DEFAULTS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="recipe YAML (e.g. recipes/pretrain/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.store=out/store train.epochs=3")


def run(args: argparse.Namespace) -> int:
    summary = pretrain(build_config(args.config, args.overrides))
    if summary["history"]:
        last = summary["history"][-1]
        print(f"pretrained {summary['steps']} steps; last epoch train loss {last['train_loss']:.4f}; encoder: {summary['encoder']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ssl_aver.pretrain` / `accelerate launch -m ssl_aver.pretrain`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m ssl_aver.pretrain", description="multi-task SSL pretraining")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        sys.stderr.write(f"pretrain: error: {err}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
