"""Frame-level hidden states of the toolkit's own pretrained acoustic encoder (paper 1).

The encoder (`ssl_aver.models.encoder.SSLEncoder`, saved by the pretrainer) reads openSMILE
ComParE LLD frames at 62.5 frames/s and returns [T, d_model] at the same rate. It was pretrained
on 2 s windows; `chunk_seconds` (default null: the whole clip in one pass, as the fine-tuning
heads use it) cuts a long clip into consecutive chunks that attend only within themselves.
Clips of a batch are padded and masked, which gives the unpadded results to float rounding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.errors import MediaError, UserError
from ssl_aver.features import Extractor
from ssl_aver.features.store import ClipFeatures
from ssl_aver.media import SAMPLE_RATE, load_audio


class EncoderExtractor(Extractor):
    """Hidden states of an SSLEncoder folder (`model: PATH` written by save_pretrained)."""

    name = "encoder"
    modality = "audio"
    group_clips = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"model": None, "chunk_seconds": None}

    def __init__(self, config: dict[str, Any], device: str = "cpu", batch_size: int = 8) -> None:
        super().__init__(config, device, batch_size)
        from ssl_aver.models.encoder import SSLEncoder

        if not self.config.get("model"):
            raise UserError("the encoder extractor needs model=PATH: a folder written by the pretrainer (model.safetensors + config.json)")
        chunk = self.config.get("chunk_seconds")
        if chunk is not None and float(chunk) <= 0:
            raise UserError(f"chunk_seconds must be > 0 or null, got {chunk}")
        self.folder = Path(str(self.config["model"])).expanduser()
        self.model = SSLEncoder.from_pretrained(self.folder).eval().to(device)

    def describe(self) -> dict[str, Any]:
        from ssl_aver import acoustic

        digest = hashlib.sha256()
        for file in sorted(p for p in self.folder.iterdir() if p.is_file()):
            digest.update(file.name.encode() + file.read_bytes())
        return {
            "frame_shape": [int(self.model.hidden_size)],
            "layers": None,
            "fps": 1.0 / acoustic.FRAME_HOP_S,
            "weights": {"model": str(self.folder)},
            "fingerprint": "encoder:" + digest.hexdigest()[:16],
        }

    def load(self, path: str) -> np.ndarray:
        from ssl_aver import acoustic

        lld = acoustic.compare_lld(load_audio(path, SAMPLE_RATE), SAMPLE_RATE)
        if len(lld) == 0:
            raise MediaError("audio too short for one 32 ms openSMILE frame")
        return lld

    def _pieces(self, n: int) -> list[tuple[int, int]]:
        from ssl_aver import acoustic

        chunk = self.config.get("chunk_seconds")
        size = n if chunk is None else max(1, round(float(chunk) / acoustic.FRAME_HOP_S))
        return [(start, min(n, start + size)) for start in range(0, n, size)]

    def compute(self, items: list[np.ndarray]) -> list[ClipFeatures]:
        import torch

        from ssl_aver import acoustic

        pieces = [(i, a, b) for i, lld in enumerate(items) for a, b in self._pieces(len(lld))]
        out: dict[tuple[int, int], np.ndarray] = {}
        for first in range(0, len(pieces), self.batch_size):
            batch = pieces[first : first + self.batch_size]
            longest = max(b - a for _, a, b in batch)
            x = torch.zeros(len(batch), longest, items[0].shape[1])
            padding = torch.ones(len(batch), longest, dtype=torch.bool)
            for row, (i, a, b) in enumerate(batch):
                x[row, : b - a] = torch.from_numpy(np.asarray(items[i][a:b], np.float32))
                padding[row, : b - a] = False
            with torch.inference_mode():
                hidden = self.model(x.to(self.device), padding.to(self.device)).float().cpu().numpy()
            for row, (i, a, b) in enumerate(batch):
                out[(i, a)] = hidden[row, : b - a]
        fps = 1.0 / acoustic.FRAME_HOP_S
        return [ClipFeatures(np.concatenate([out[(i, a)] for a, _ in self._pieces(len(lld))]), fps) for i, lld in enumerate(items)]
