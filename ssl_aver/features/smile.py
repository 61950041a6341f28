"""openSMILE ComParE_2016 LLD + delta frames (130-d, 32 ms windows, 16 ms hop = 62.5 frames/s).

Paper 1's acoustic input features as a store, so fine-tuning heads (and the toolkit's own
encoder) can read them without recomputing; wraps `ssl_aver.acoustic.compare_lld`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ssl_aver.errors import MediaError
from ssl_aver.features import Extractor
from ssl_aver.features.store import ClipFeatures
from ssl_aver.media import SAMPLE_RATE, load_audio


class SmileExtractor(Extractor):
    """ComParE_2016 LLDs + deltas per 16 ms frame; one clip at a time (openSMILE is sequential)."""

    name = "smile"
    modality = "audio"
    group_clips = False

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        from ssl_aver import acoustic

        conf = acoustic.config_path().read_text(encoding="utf-8")
        return {
            "frame_shape": [acoustic.N_FEATURES],
            "layers": None,
            "fps": 1.0 / acoustic.FRAME_HOP_S,
            "weights": {"features": "openSMILE ComParE_2016 LLD + deltas, 32 ms / 16 ms"},
            "fingerprint": "opensmile:" + hashlib.sha256(conf.encode("utf-8")).hexdigest()[:16],
        }

    def load(self, path: str) -> np.ndarray:
        from ssl_aver import acoustic

        audio = load_audio(path, SAMPLE_RATE)
        lld = acoustic.compare_lld(audio, SAMPLE_RATE)
        if len(lld) == 0:
            raise MediaError(f"audio too short: {len(audio) / SAMPLE_RATE * 1000:.0f} ms < one {acoustic.FRAME_LENGTH_S * 1000:.0f} ms frame")
        return lld

    def compute(self, items: list[np.ndarray]) -> list[ClipFeatures]:
        from ssl_aver import acoustic

        return [ClipFeatures(np.asarray(lld, np.float32), 1.0 / acoustic.FRAME_HOP_S) for lld in items]
