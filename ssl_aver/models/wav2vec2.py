"""Paper 1's baseline 2: wav2vec 2.0 pretrained from scratch on the same windows' raw audio.

transformers' Wav2Vec2ForPreTraining (random init), its transformer sized like our encoder
(hidden = d_model, layers = n_plain + n_scaled, heads, feed-forward width, dropouts), trained
by the same accelerate pretrainer with `model.type: wav2vec2`. Each window's audio is found
through labels.csv (clip id = path under `data.corpus` without extension, start_s/end_s) and
decoded once into a memory-mapped float32 cache. The saved folder loads as an acoustic branch
with `load_wav2vec2_encoder` (a Wav2Vec2Model; the quantiser and projections are dropped).

Choices (config `model.wav2vec2.*`): the convolutional feature encoder keeps wav2vec 2.0's
shape (7 layers, 512 channels, 320x downsampling) unless `conv_dim` / `conv_kernel` /
`conv_stride` are given; masking probability 0.65 / span 10 and 100 negatives as in the
original; the loss is normalised per masked frame; each window is z-normalised like
Wav2Vec2FeatureExtractor(do_normalize=True); the Gumbel temperature stays at its config value
(no annealing).

`feat_extract_norm` defaults to "layer", not Hugging Face's "group": the group norm of the
first convolution normalises each channel over the whole padded input, so a clip's features
change with the length of its batch companions (measured: a 2 s clip alone vs padded to 5 s
differs by ~1 in its hidden states). The per-frame layer norm, with the attention mask (the
transformer zeroes padded frames before its positional convolution and masks them as keys),
gives the same frames to float rounding. The transformer stays post-LN
(`do_stable_layer_norm=False`, unlike wav2vec2-large): paper 1 matches it to its own post-LN
encoder.

The saved config keeps pretraining's masking (0.65) and LayerDrop (0.1), which Wav2Vec2Model
applies whenever it is in training mode; fine-tuning replaces them through
`load_wav2vec2_encoder(dir, **overrides)` (keys in FINETUNE_OPTIONS; the SER head turns both off).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_aver.errors import UserError
from ssl_aver.io import write_json
from ssl_aver.models.encoder import EncoderConfig

SAMPLE_RATE = 16000


def _pos_conv_groups(hidden: int, preferred: int = 16) -> int:
    """Largest divisor of `hidden` not above `preferred` (wav2vec2's grouped positional conv)."""
    return max(g for g in range(1, preferred + 1) if hidden % g == 0)


def wav2vec2_config(
    encoder: EncoderConfig,
    mask_time_prob: float = 0.65,
    mask_time_length: int = 10,
    num_negatives: int = 100,
    codevector_dim: int = 128,
    conv_dim: Sequence[int] | None = None,
    conv_kernel: Sequence[int] | None = None,
    conv_stride: Sequence[int] | None = None,
    feat_extract_norm: str = "layer",
) -> Any:
    """A Wav2Vec2Config whose transformer matches `encoder`'s sizes."""
    from transformers import Wav2Vec2Config

    if feat_extract_norm not in ("layer", "group"):
        raise UserError(f"model.wav2vec2.feat_extract_norm must be layer or group, got '{feat_extract_norm}'")
    conv = {name: list(value) for name, value in (("conv_dim", conv_dim), ("conv_kernel", conv_kernel), ("conv_stride", conv_stride)) if value}
    lengths = {len(value) for value in conv.values()} | ({7} if len(conv) < 3 else set())
    if len(lengths) > 1:
        given = ", ".join(f"{name} has {len(value)}" for name, value in conv.items())
        raise UserError(f"model.wav2vec2 conv_dim, conv_kernel and conv_stride need one entry per conv layer (7 unless all three are given): {given}")
    return Wav2Vec2Config(
        hidden_size=encoder.d_model,
        num_hidden_layers=encoder.n_plain_layers + encoder.n_scaled_layers,
        num_attention_heads=encoder.n_heads,
        intermediate_size=encoder.ff_dim,
        hidden_dropout=encoder.residual_dropout,
        activation_dropout=encoder.residual_dropout,
        attention_dropout=encoder.attention_dropout,
        final_dropout=encoder.output_dropout,
        num_conv_pos_embedding_groups=_pos_conv_groups(encoder.d_model),
        feat_extract_norm=feat_extract_norm,
        mask_time_prob=mask_time_prob,
        mask_time_length=mask_time_length,
        num_negatives=num_negatives,
        codevector_dim=codevector_dim,
        proj_codevector_dim=codevector_dim,
        **conv,
    )


def build_pretraining_model(encoder: EncoderConfig, **options: Any) -> Any:
    """A randomly initialised Wav2Vec2ForPreTraining sized like `encoder`."""
    from transformers import Wav2Vec2ForPreTraining

    return Wav2Vec2ForPreTraining(wav2vec2_config(encoder, **options))


def pretraining_loss(model: Any, batch: dict[str, torch.Tensor], train: bool = True) -> tuple[torch.Tensor, int]:
    """wav2vec 2.0 contrastive + diversity loss per masked frame for a padded audio batch.

    Mask spans and negatives are drawn with numpy's global RNG (restored on resume).
    """
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    base = getattr(model, "module", model)
    cfg = base.config
    audio, attention = batch["audio"], batch["attention_mask"]
    n_frames = int(base._get_feat_extract_output_lengths(audio.shape[1]))
    frame_mask = base._get_feature_vector_attention_mask(n_frames, attention)
    masked = _compute_mask_indices(
        (audio.shape[0], n_frames), mask_prob=cfg.mask_time_prob, mask_length=cfg.mask_time_length,
        attention_mask=frame_mask, min_masks=2,
    )  # fmt: skip
    negatives = _sample_negative_indices((audio.shape[0], n_frames), cfg.num_negatives, mask_time_indices=masked)
    masked_t = torch.as_tensor(masked, dtype=torch.bool, device=audio.device)
    output = model(
        audio, attention_mask=attention, mask_time_indices=masked_t,
        sampled_negative_indices=torch.as_tensor(negatives, dtype=torch.long, device=audio.device),
    )  # fmt: skip
    return output.loss / masked_t.sum().clamp_min(1), int(audio.shape[0])


def save_pretraining_model(model: Any, directory: Path) -> Path:
    """save_pretrained (safetensors + config.json) into `directory`."""
    model.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)


#: Config keys fine-tuning may set on a loaded branch (SpecAugment masking and LayerDrop).
FINETUNE_OPTIONS = ("mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length", "layerdrop")


def load_wav2vec2_encoder(directory: str | Path, **overrides: Any) -> Any:
    """The pretrained wav2vec2 transformer (Wav2Vec2Model) as an acoustic branch.

    `overrides` (keys of FINETUNE_OPTIONS) replace the saved config's values before the model is
    built; `apply_spec_augment` follows from the two mask probabilities, and the mask embedding
    exists (loaded from the checkpoint) only while time or feature masking is on.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    root = Path(directory)
    if not (root / "config.json").is_file() or not (root / "model.safetensors").is_file():
        raise UserError(f"no wav2vec2 model in {root}; pretrain one with recipes/pretrain/wav2vec2.yaml")
    unknown = sorted(set(overrides) - set(FINETUNE_OPTIONS))
    if unknown:
        raise UserError(f"unknown wav2vec2 option(s) {unknown}; choose from: {', '.join(FINETUNE_OPTIONS)}")
    for key in ("mask_time_prob", "mask_feature_prob", "layerdrop"):
        if key in overrides and not 0.0 <= float(overrides[key]) < 1.0:
            raise UserError(f"wav2vec2 {key} must be in [0, 1), got {overrides[key]}")
    try:
        config = Wav2Vec2Config.from_pretrained(str(root), local_files_only=True)
        for key, value in overrides.items():
            setattr(config, key, value)
        config.apply_spec_augment = config.mask_time_prob > 0 or config.mask_feature_prob > 0
        return Wav2Vec2Model.from_pretrained(str(root), config=config, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load wav2vec2 model from {root}: {str(err).splitlines()[0]}") from None


def _find_clip(corpus: Path, clip: str) -> Path:
    from ssl_aver.media import MEDIA_EXTENSIONS

    for ext in sorted(MEDIA_EXTENSIONS):
        candidate = corpus / f"{clip}{ext}"
        if candidate.is_file():
            return candidate
    raise UserError(f"clip '{clip}' from labels.csv not found under data.corpus={corpus}; point data.corpus at the corpus the store was built from")


class AudioWindows:
    """Raw 16 kHz audio of every store window, from a memory-mapped cache of decoded clips."""

    def __init__(self, cache: Path, clips: list[str], starts: np.ndarray, ends: np.ndarray) -> None:
        self.cache = Path(cache)
        self.table = json.loads((self.cache / "clips.json").read_text(encoding="utf-8"))
        self.clips, self.starts, self.ends = clips, starts, ends

    @classmethod
    def build(cls, store: Any, corpus: str | Path | None, cache: Path) -> "AudioWindows":
        """Decode each clip named in the store's labels.csv once (reused when the cache matches)."""
        from ssl_aver.progress import tqdm

        from ssl_aver.media import load_audio

        if not corpus:
            raise UserError("model.type=wav2vec2 needs data.corpus=PATH (the corpus root the store was built from)")
        frame = store.frame
        for column in ("clip", "start_s", "end_s"):
            if column not in frame.columns:
                raise UserError(f"{store.root / 'labels.csv'} has no '{column}' column; rebuild the store")
        clips = frame["clip"].astype(str).tolist()
        names = sorted(set(clips))
        cache = Path(cache)
        meta = cache / "clips.json"
        fresh = meta.is_file() and sorted(json.loads(meta.read_text(encoding="utf-8"))) == names
        if not fresh:
            cache.mkdir(parents=True, exist_ok=True)
            meta.unlink(missing_ok=True)
            table: dict[str, list[int]] = {}
            fd, tmp = tempfile.mkstemp(prefix=".audio.f32.", dir=cache)
            offset = 0
            with os.fdopen(fd, "wb") as handle:
                for name in tqdm(names, desc="decode audio", unit="clip"):
                    audio = load_audio(_find_clip(Path(corpus), name), SAMPLE_RATE)
                    handle.write(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
                    table[name] = [offset, int(audio.size)]
                    offset += int(audio.size)
            os.replace(tmp, cache / "audio.f32")
            write_json(meta, table)
        return cls(cache, clips, frame["start_s"].to_numpy(float), frame["end_s"].to_numpy(float))

    def subset(self, indices: np.ndarray) -> "AudioWindowDataset":
        return AudioWindowDataset(self, np.asarray(indices, dtype=np.int64))


class AudioWindowDataset(Dataset):
    """Windows (by store index) as z-normalised float32 audio; memory map opened per process."""

    def __init__(self, windows: AudioWindows, indices: np.ndarray) -> None:
        self.windows, self.indices = windows, indices
        self._audio: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_audio": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._audio is None:
            path = self.windows.cache / "audio.f32"
            self._audio = np.memmap(path, dtype=np.float32, mode="r") if path.stat().st_size else np.zeros(0, np.float32)
        k = int(self.indices[i])
        offset, length = self.windows.table[self.windows.clips[k]]
        lo = min(length, int(round(self.windows.starts[k] * SAMPLE_RATE)))
        hi = min(length, int(round(self.windows.ends[k] * SAMPLE_RATE)))
        piece = np.asarray(self._audio[offset + lo : offset + hi], dtype=np.float32)
        return (piece - piece.mean()) / np.sqrt(piece.var() + 1e-7) if piece.size else piece


def collate_audio(items: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """Pad raw windows to [B, S] with an attention mask (1 = real sample)."""
    longest = max(item.size for item in items)
    if longest == 0:
        raise UserError("a batch of windows holds no audio; check start_s/end_s in labels.csv")
    audio = np.zeros((len(items), longest), dtype=np.float32)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    for row, item in enumerate(items):
        audio[row, : item.size] = item
        mask[row, : item.size] = 1
    return {"audio": torch.from_numpy(audio), "attention_mask": torch.from_numpy(mask)}
