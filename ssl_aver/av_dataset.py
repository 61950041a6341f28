"""Audio-visual dataset over feature stores, with absent modalities allowed, and its collate.

A label table (any DataFrame with a `clip` column and target columns, e.g. from
`ssl_aver.crema_d_labels`) is joined with an acoustic and/or a visual `FeatureStore`. VAVL
(paper 2) trains on unpaired data, so an item may have audio only or video only; RAVER (paper 4)
treats unreliable frames as missing, so face frames without a face are masked out.

`collate_av` pads a list of items into:
    audio [B, Ta, (L,) D] float32 + audio_mask [B, Ta] (True = a valid frame)
    video [B, Tv, D] float32 + video_mask [B, Tv] (True = a frame with a face)
    (in the store's dtype with `keep_dtype`: a float16 store stays float16 until the training
    loop's `move` upcasts it on the device, halving what the loader reads, copies and pins)
    has_audio [B], has_video [B] (bool), targets [B, C] float32, clips (list of ids)
Padded and missing positions are zeros. When no item of a batch has a modality its time axis
has length 1 with an all-False mask (choice: a zero-length axis breaks convolutions downstream).
A clip whose face was never found counts as having no video.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_aver.errors import UserError
from ssl_aver.features.store import FeatureStore


@dataclass
class AVItem:
    """One clip: features of each modality present (None when absent) and its targets."""

    clip: str
    audio: torch.Tensor | None
    video: torch.Tensor | None
    video_present: torch.Tensor | None
    targets: torch.Tensor


class AVDataset(Dataset):
    """Join a label table with acoustic/visual feature stores.

    require: "any" keeps clips with at least one modality (VAVL's unpaired training), "both"
    keeps paired clips only, "audio"/"video" keep clips with that modality. Clips of the table
    that are dropped are listed in `dropped` with the reason. `audio_layers` selects layers of a
    layer-stacked acoustic store ([T, L, D]); None keeps them all. `keep_dtype` returns frames in
    the store's dtype (float16 stores stay float16) instead of float32.
    """

    def __init__(
        self,
        labels: Any,
        targets: Sequence[str],
        audio: FeatureStore | str | None = None,
        video: FeatureStore | str | None = None,
        require: str = "any",
        audio_layers: Sequence[int] | None = None,
        clip_column: str = "clip",
        keep_dtype: bool = False,
    ) -> None:
        self.keep_dtype = keep_dtype
        if require not in ("any", "both", "audio", "video"):
            raise UserError(f"require must be any, both, audio or video, got {require!r}")
        if audio is None and video is None:
            raise UserError("give at least one feature store (audio= or video=)")
        missing = [c for c in [clip_column, *targets] if c not in labels.columns]
        if missing:
            raise UserError(f"label table lacks column(s) {missing}; it has {list(labels.columns)}")
        self.audio = FeatureStore(audio) if isinstance(audio, (str, os.PathLike)) else audio
        self.video = FeatureStore(video) if isinstance(video, (str, os.PathLike)) else video
        if self.video is not None and self.video.meta.get("modality") == "audio":
            raise UserError(f"{self.video.path} holds audio features; pass it as audio=")
        if self.audio is not None and self.audio.meta.get("modality") == "video":
            raise UserError(f"{self.audio.path} holds face features; pass it as video=")
        self.targets = list(targets)
        self.audio_layers = list(audio_layers) if audio_layers is not None else None
        if self.audio_layers is not None:
            if self.audio is None or len(self.audio.frame_shape) != 2:
                raise UserError("audio_layers needs an acoustic store with stacked layers ([T, L, D]: layers=all or a list)")
            n = self.audio.frame_shape[0]
            if any(not 0 <= i < n for i in self.audio_layers):
                raise UserError(f"audio_layers {self.audio_layers} out of range: the store has {n} layers (0..{n - 1})")
        self.audio_shape = self._audio_shape()
        self.video_shape = tuple(self.video.frame_shape) if self.video is not None else None
        self.rows: list[tuple[str, np.ndarray]] = []
        self.dropped: list[dict[str, str]] = []
        values = labels[self.targets].to_numpy(dtype=np.float32) if self.targets else np.zeros((len(labels), 0), np.float32)
        for clip, target in zip(labels[clip_column].astype(str), values):
            has_a = self.audio is not None and clip in self.audio
            has_v = self.video is not None and clip in self.video
            keep = {"any": has_a or has_v, "both": has_a and has_v, "audio": has_a, "video": has_v}[require]
            if keep:
                self.rows.append((clip, target))
            else:
                self.dropped.append({"clip": clip, "reason": f"not in the feature store(s) as required ({require})"})

    def _audio_shape(self) -> tuple[int, ...] | None:
        if self.audio is None:
            return None
        shape = tuple(self.audio.frame_shape)
        return (len(self.audio_layers), shape[1]) if self.audio_layers is not None else shape

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> AVItem:
        clip, target = self.rows[index]
        audio = video = present = None
        if self.audio is not None and clip in self.audio:
            array = self.audio.get(clip)[0]
            if self.audio_layers is not None:
                array = array[:, self.audio_layers]
            audio = torch.from_numpy(np.array(array, dtype=None if self.keep_dtype else np.float32))
        if self.video is not None and clip in self.video:
            array, _, mask = self.video.get(clip)
            video = torch.from_numpy(np.array(array, dtype=None if self.keep_dtype else np.float32))
            present = torch.from_numpy(mask if mask is not None else np.ones(len(array), bool))
        return AVItem(clip, audio, video, present, torch.from_numpy(np.array(target, dtype=np.float32)))

    def collate(self, items: Sequence[AVItem]) -> dict[str, Any]:
        """`collate_av` with this dataset's frame shapes (use as DataLoader's collate_fn)."""
        return collate_av(items, self.audio_shape, self.video_shape)


def _pad(seqs: list[torch.Tensor | None], masks: list[torch.Tensor | None], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max([len(s) for s in seqs if s is not None] + [1])
    dtype = next((s.dtype for s in seqs if s is not None), torch.float32)
    out = torch.zeros(len(seqs), longest, *shape, dtype=dtype)
    valid = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for row, (seq, mask) in enumerate(zip(seqs, masks)):
        if seq is None:
            continue
        out[row, : len(seq)] = seq
        valid[row, : len(seq)] = True if mask is None else mask
    out = out * valid.view(*valid.shape, *([1] * len(shape)))
    return out, valid


def collate_av(items: Sequence[AVItem], audio_shape: tuple[int, ...] | None, video_shape: tuple[int, ...] | None) -> dict[str, Any]:
    """Padded batch with masks (see the module docstring); a modality without a store is None."""
    batch: dict[str, Any] = {"clips": [item.clip for item in items]}
    if audio_shape is not None:
        batch["audio"], batch["audio_mask"] = _pad([i.audio for i in items], [None] * len(items), tuple(audio_shape))
        batch["has_audio"] = batch["audio_mask"].any(dim=1)
    else:
        batch["audio"] = batch["audio_mask"] = None
        batch["has_audio"] = torch.zeros(len(items), dtype=torch.bool)
    if video_shape is not None:
        batch["video"], batch["video_mask"] = _pad([i.video for i in items], [i.video_present for i in items], tuple(video_shape))
        batch["has_video"] = batch["video_mask"].any(dim=1)
    else:
        batch["video"] = batch["video_mask"] = None
        batch["has_video"] = torch.zeros(len(items), dtype=torch.bool)
    batch["targets"] = torch.stack([item.targets for item in items]) if items else torch.zeros(0, 0)
    return batch
