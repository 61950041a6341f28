"""Frame-level feature extractors for the fine-tuning heads, and their registry.

An extractor turns one clip (a media file) into a variable-length array [T, *frame_shape] at a
known frame rate (plus a per-frame `present` mask for faces). `ssl-aver features extract` runs
one over a corpus into a `FeatureStore`. Adding an extractor is one line in `EXTRACTORS`
("name": "module:Class"); classes are imported only when used, so `import ssl_aver.features`
does not pull in transformers or torchvision.

An extractor class provides:
    name, modality ("audio" | "video"), group_clips (several clips per `compute` call or one)
    defaults() -> dict              its config keys with default values (all of them change
                                    the numbers, so all of them enter the store's config hash)
    __init__(config, device, batch_size)
    describe() -> dict              frame_shape, layers, weights, fps (nominal), fingerprint
    load(path) -> item              CPU decoding (runs in a prefetch thread); MediaError per clip
    compute(items) -> [ClipFeatures]
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, FeatureStore

#: extractor name -> "module:Class"
EXTRACTORS: dict[str, str] = {
    "speech": "ssl_aver.features.speech:SpeechExtractor",
    "smile": "ssl_aver.features.smile:SmileExtractor",
    "encoder": "ssl_aver.features.encoder:EncoderExtractor",
    "face": "ssl_aver.features.face:FaceExtractor",
}


class Extractor(ABC):
    """What every extractor implements (see the module docstring)."""

    name: ClassVar[str]
    modality: ClassVar[str]
    group_clips: ClassVar[bool] = True
    default_batch_size: ClassVar[int] = 8

    def __init__(self, config: dict[str, Any], device: str = "cpu", batch_size: int = 8) -> None:
        self.config = dict(config)
        self.device = device
        self.batch_size = max(1, int(batch_size))

    @classmethod
    @abstractmethod
    def defaults(cls) -> dict[str, Any]:
        """Config keys of this extractor with their defaults."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """frame_shape, layers, weights, fps and a weights fingerprint for the store's meta."""

    @abstractmethod
    def load(self, path: str) -> Any:
        """Decode one clip on the CPU (raises MediaError for a clip that cannot be used)."""

    @abstractmethod
    def compute(self, items: list[Any]) -> list[ClipFeatures]:
        """Features of loaded clips, batched where the extractor can."""


def extractor_class(name: str) -> type[Extractor]:
    """The class registered under `name` (UserError listing the names when unknown)."""
    if name not in EXTRACTORS:
        raise UserError(f"unknown extractor '{name}'; choose one of: {', '.join(EXTRACTORS)}")
    module, _, cls = EXTRACTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["EXTRACTORS", "ClipFeatures", "Extractor", "FeatureStore", "extractor_class"]
