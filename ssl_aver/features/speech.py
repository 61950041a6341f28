"""Hidden states of a transformers speech encoder (WavLM, wav2vec 2.0, HuBERT) per audio frame.

Papers 3 and 4 take WavLM-large's 25 hidden states (the CNN encoder's projected output plus the
24 transformer layers: x_a in R^{N_a x 25 x 1024}, 50 frames/s at 16 kHz); paper 2 takes
wav2vec2-large-robust's 1024-d frames; paper 5 picks HuBERT-large layers. `layers: all` keeps
the stack [T, L+1, D]; an integer keeps one layer [T, D]; a list keeps those layers [T, n, D].

Long clips run in chunks of `chunk_seconds` with `chunk_context_seconds` of extra audio on each
side whose frames are discarded. Chunk edges sit on the CNN's hop (320 samples), so a chunked
clip has exactly the frames of one pass and its CNN features are identical; the transformer
layers attend over a chunk plus its context instead of the whole clip, so they differ from a
single pass (the relative position bias and the positional convolution see the same frames as
long as the context covers them). A clip no longer than `chunk_seconds` runs in one pass.

Several clips run in one padded batch with an attention mask when the model's CNN uses layer
normalisation (the large models: results equal the unpadded ones to float rounding); models
with group normalisation over time (wav2vec2-base, HuBERT-base) would change with padding, so
they batch only chunks of equal length.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.errors import MediaError, UserError
from ssl_aver.features import Extractor
from ssl_aver.features.store import ClipFeatures
from ssl_aver.media import SAMPLE_RATE, load_audio

_DTYPES = {"float32", "float16", "bfloat16"}


def _looks_like_path(name: str) -> bool:
    """Local folders start with '.', '/' or '~' or exist; anything else is taken as a hub id."""
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def load_speech_model(name: str) -> tuple[Any, Any]:
    """(model in eval mode, feature extractor or None) from a hub id or a local directory.

    Offline (HF_HUB_OFFLINE=1) a model that is not cached fails at once; the UserError says how
    to get it.
    """
    from transformers import AutoFeatureExtractor, AutoModel

    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.is_dir():
        raise UserError(f"speech model directory not found: {path}; set model: to a folder with config.json + weights or to a hub id")
    source = str(path) if path.is_dir() else name
    try:
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise UserError(
            f"speech model '{name}' is not on this machine ({str(err).splitlines()[0][:120]}); download it once with network "
            f"(`hf download {name}` or unset HF_HUB_OFFLINE), or set model: to a local directory holding it"
        ) from None
    if not hasattr(model, "_get_feat_extract_output_lengths") or not hasattr(model.config, "conv_stride"):
        raise UserError(f"model '{name}' ({type(model).__name__}) is not a wav2vec2-style speech encoder (WavLM, wav2vec2, HuBERT)")
    try:
        processor = AutoFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError):
        processor = None
    return model.eval(), processor


def model_fingerprint(name: str, model: Any) -> str:
    """What identifies the weights: the hub commit, or a hash of a local folder's file stats."""
    path = Path(name).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
        return "local:" + digest.hexdigest()[:16]
    return "hub:" + str(getattr(model.config, "_commit_hash", None) or name)


def receptive_field(kernels: list[int], strides: list[int]) -> tuple[int, int]:
    """(receptive field, hop) in samples of a stack of unpadded 1-D convolutions."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * jump
        jump *= stride
    return field, jump


@dataclass
class _Piece:
    item: int
    start: int  # first sample
    stop: int  # one past the last sample
    keep_from: int  # first output frame of this piece to keep
    keep_to: int


class SpeechExtractor(Extractor):
    """Frame-level hidden states of any transformers wav2vec2-style model (hub id or folder)."""

    name = "speech"
    modality = "audio"
    group_clips = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            "model": "microsoft/wavlm-large",
            "layers": "all",
            "normalize": "auto",
            "chunk_seconds": 30.0,
            "chunk_context_seconds": 5.0,
            "dtype": "float32",
        }

    def __init__(self, config: dict[str, Any], device: str = "cpu", batch_size: int = 8) -> None:
        super().__init__(config, device, batch_size)
        import torch

        if str(self.config["dtype"]) not in _DTYPES:
            raise UserError(f"dtype must be one of {sorted(_DTYPES)}, got {self.config['dtype']!r}")
        if float(self.config["chunk_seconds"]) <= 0 or float(self.config["chunk_context_seconds"]) < 0:
            raise UserError("chunk_seconds must be > 0 and chunk_context_seconds >= 0")
        self.model, self.processor = load_speech_model(str(self.config["model"]))
        self.torch_dtype = getattr(torch, str(self.config["dtype"]))
        if self.torch_dtype != torch.float32 and device == "cpu":
            raise UserError(f"dtype={self.config['dtype']} needs --device cuda; use dtype=float32 on the CPU")
        self.model.to(device=device, dtype=self.torch_dtype)
        cfg = self.model.config
        self.field, self.hop = receptive_field(list(cfg.conv_kernel), list(cfg.conv_stride))
        self.n_states = int(cfg.num_hidden_layers) + 1
        self.layers = self._resolve_layers(self.config["layers"])
        self.padded_batches = getattr(cfg, "feat_extract_norm", "group") == "layer"
        self.normalize = self._resolve_normalize(self.config["normalize"])

    def _resolve_layers(self, spec: Any) -> list[int] | int:
        if isinstance(spec, str) and spec == "all":
            return list(range(self.n_states))
        if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
            layer = int(spec)
            chosen: list[int] | int = layer if layer >= 0 else self.n_states + layer
            check = [chosen]
        else:
            chosen = [int(x) if int(x) >= 0 else self.n_states + int(x) for x in spec]
            check = chosen
        bad = [x for x in check if not 0 <= x < self.n_states]
        if bad or not check:
            raise UserError(f"layers={spec!r}: this model has hidden states 0..{self.n_states - 1} (0 = CNN output), choose within them or 'all'")
        return chosen

    def _resolve_normalize(self, spec: Any) -> bool:
        """`auto` follows the model's preprocessor_config (do_normalize); without one, no normalisation."""
        if isinstance(spec, bool):
            return spec
        if str(spec).lower() in ("true", "false"):
            return str(spec).lower() == "true"
        if str(spec) != "auto":
            raise UserError(f"normalize must be auto, true or false, got {spec!r}")
        return bool(getattr(self.processor, "do_normalize", False)) if self.processor is not None else False

    def describe(self) -> dict[str, Any]:
        width = int(self.model.config.hidden_size)
        shape = [len(self.layers), width] if isinstance(self.layers, list) else [width]
        return {
            "frame_shape": shape,
            "layers": self.layers,
            "fps": SAMPLE_RATE / self.hop,
            "weights": {"model": str(self.config["model"]), "class": type(self.model).__name__, "normalize": self.normalize},
            "fingerprint": model_fingerprint(str(self.config["model"]), self.model),
        }

    def n_frames(self, samples: int) -> int:
        """Output frames of the CNN for `samples` input samples (unpadded convolutions)."""
        return 0 if samples < self.field else (samples - self.field) // self.hop + 1

    def load(self, path: str) -> np.ndarray:
        audio = load_audio(path, SAMPLE_RATE)
        if len(audio) < self.field:
            raise MediaError(f"audio too short: {len(audio) / SAMPLE_RATE * 1000:.0f} ms < the model's {self.field / SAMPLE_RATE * 1000:.0f} ms receptive field")
        if self.normalize:
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        return audio.astype(np.float32, copy=False)

    def pieces(self, item: int, samples: int) -> list[_Piece]:
        """Chunks of one clip on the hop grid, with context, keeping each frame exactly once."""
        total = self.n_frames(samples)
        per_chunk = max(1, round(float(self.config["chunk_seconds"]) * SAMPLE_RATE / self.hop))
        if total <= per_chunk:
            return [_Piece(item, 0, samples, 0, total)]
        context = round(float(self.config["chunk_context_seconds"]) * SAMPLE_RATE / self.hop)
        out = []
        for core in range(0, total, per_chunk):
            core_end = min(total, core + per_chunk)
            first, last = max(0, core - context), min(total, core_end + context)
            out.append(_Piece(item, first * self.hop, (last - 1) * self.hop + self.field, core - first, core_end - first))
        return out

    def _batches(self, pieces: list[_Piece]) -> list[list[_Piece]]:
        lengths = {id(p): p.stop - p.start for p in pieces}
        ordered = sorted(pieces, key=lambda p: lengths[id(p)])
        batches: list[list[_Piece]] = []
        for piece in ordered:
            last = batches[-1] if batches else None
            fits = last is not None and len(last) < self.batch_size
            if fits and not self.padded_batches:
                fits = lengths[id(last[0])] == lengths[id(piece)]
            if fits:
                last.append(piece)
            else:
                batches.append([piece])
        return batches

    def compute(self, items: list[np.ndarray]) -> list[ClipFeatures]:
        import torch

        pieces = [p for i, audio in enumerate(items) for p in self.pieces(i, len(audio))]
        outputs: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in range(len(items))}
        for batch in self._batches(pieces):
            longest = max(p.stop - p.start for p in batch)
            values = torch.zeros(len(batch), longest, dtype=torch.float32)
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, p in enumerate(batch):
                values[row, : p.stop - p.start] = torch.from_numpy(items[p.item][p.start : p.stop])
                mask[row, : p.stop - p.start] = 1
            kwargs: dict[str, Any] = {"output_hidden_states": True}
            if self.padded_batches:
                kwargs["attention_mask"] = mask.to(self.device)
            with torch.inference_mode(), warnings.catch_warnings():
                # transformers' WavLM attention itself pairs a bool key_padding_mask (from our 0/1
                # attention_mask, whatever its dtype) with its float position-bias attn_mask; torch
                # turns the bool mask into the equal -inf additive mask, so results are as intended
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask", category=UserWarning)
                states = self.model(values.to(self.device, self.torch_dtype), **kwargs).hidden_states
                chosen = states[self.layers] if isinstance(self.layers, int) else torch.stack([states[i] for i in self.layers], dim=2)
                chosen = chosen.float().cpu().numpy()
            for row, p in enumerate(batch):
                valid = self.n_frames(p.stop - p.start)
                outputs[p.item].append((p.start, chosen[row, :valid][p.keep_from : p.keep_to]))
        results = []
        for i in range(len(items)):
            parts = [arr for _, arr in sorted(outputs[i], key=lambda x: x[0])]
            results.append(ClipFeatures(np.concatenate(parts, axis=0), SAMPLE_RATE / self.hop))
        return results
