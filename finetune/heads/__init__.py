"""Head registry: a head is one module; adding one is one line here ("name": "module:Class").

A head is an `nn.Module` with:
    inputs: tuple[str, ...]          modalities it reads: ("audio",), ("video",) or both
    require: str                     which training clips it needs: "audio", "video", "both" or
                                     "any" (unpaired training, e.g. VAVL)
    eval_modalities: tuple[str, ...] test conditions to report, first = primary: "av", "audio",
                                     "video" (the other modality is removed from the batch)
    defaults() -> dict               its `model:` config keys (checked: a misspelt key is an error)
    from_config(model_cfg, n_classes, ctx: BuildContext) -> head
    forward(batch) -> logits [B, C]  batch from ssl_aver.av_dataset.collate_av: audio,
                                     audio_mask (True = valid), video, video_mask, has_audio,
                                     has_video, targets, clips; or a dict whose "logits" are
                                     the class logits and whose other entries (e.g. "valence")
                                     are written as extra prediction columns
and optionally:
    loss(logits, targets) -> Tensor  (default: cross-entropy / BCE by task)
    fit(train_loader, dev_loader, settings, device, loss_fn, progress) -> FitResult
                                     (custom schedules such as VAVL's Algorithm 1 or the
                                     two-stage training; default: finetune.trainer.fit)
    extra_metrics(probs, outputs, labels, scores) -> dict
                                     metrics beyond the classification ones (MER score)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

HEADS: dict[str, str] = {
    "ser": "finetune.heads.ser:SERHead",
    "mer": "finetune.heads.mer:MERHead",
    "vavl": "finetune.heads.vavl:VAVLHead",
    "two_stage": "finetune.heads.two_stage:TwoStageHead",
    "two_stage_audio": "finetune.heads.two_stage:TwoStageAudioHead",
    "two_stage_video": "finetune.heads.two_stage:TwoStageVideoHead",
    "raver": "finetune.heads.raver:RAVERHead",
    "uavm": "finetune.heads.uavm:UAVMHead",
    "auxformer": "finetune.heads.auxformer:AuxFormerHead",
    "mult": "finetune.heads.mult:MulTHead",
    "sfav": "finetune.heads.sfav:SFAVHead",
    "tsltm": "finetune.heads.tsltm:TSLTMHead",
    "conformer_uni_audio": "finetune.heads.conformer_uni:ConformerUniAudioHead",
    "conformer_uni_video": "finetune.heads.conformer_uni:ConformerUniVideoHead",
}


@dataclass
class BuildContext:
    """What a head may need to build itself besides its own config."""

    n_classes: int
    task: str  # multiclass | multilabel (regression: synthetic tests only, until a regression corpus exists)
    encoder_dir: str | None = None
    audio_shape: tuple[int, ...] | None = None
    video_shape: tuple[int, ...] | None = None
    audio_stats: tuple[np.ndarray, np.ndarray] | None = None  # LLD mean/std of the training clips
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # positives per class in train
    extra: dict[str, Any] = field(default_factory=dict)


def check_choice(cfg: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    """cfg[key] when it is one of `choices`, else a UserError naming the key and the choices."""
    from ssl_aver.errors import UserError

    value = str(cfg[key])
    if value not in choices:
        raise UserError(f"model.{key} must be one of {tuple(choices)}, got {cfg[key]!r}")
    return value


def head_class(name: str) -> Any:
    """The class registered as `name` (UserError naming the choices when unknown)."""
    from ssl_aver.errors import UserError

    if name not in HEADS:
        raise UserError(f"unknown head '{name}'; choose one of: {', '.join(sorted(HEADS))}")
    module, _, cls = HEADS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
