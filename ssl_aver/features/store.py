"""The per-clip, variable-length feature store: one memory-mapped array for a whole corpus.

Layout of a store folder (every file written atomically):

    meta.json        extractor name, resolved config, config_hash, modality, frame_shape, dtype,
                     layers, weights (what the numbers came from), and whether a mask is kept
    config.yaml      the resolved extractor config, human readable
    index.json       {"data": "data-<n>.bin", "clips": [...], "offsets": [...], "lengths": [...],
                      "fps": [...]}  (rows of clip i are data[offsets[i] : offsets[i] + lengths[i]])
    data-<n>.bin     all frames of all clips, raw [total_frames, *frame_shape] in `dtype`
    present-<n>.bin  uint8 [total_frames] (visual stores: 1 = a face was found in the frame)
    shards/          per-clip .npz files written while extracting (deleted after consolidation)
    summary.json     counts and the per-clip failures with their reasons

Extraction writes one shard per finished clip, so an interrupted run loses at most the clips in
flight and a rerun skips every clip that has a shard or is already consolidated. Consolidation
writes a new numbered data file, then swaps index.json to it (one atomic rename), then removes
the shards and the old data file, so a crash at any point leaves a readable store.

Reading is zero-copy: `FeatureStore.get` returns a view into a numpy memmap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import read_json, write_json

STORE_VERSION = 1
SHARD_DIR = "shards"


@dataclass
class ClipFeatures:
    """One clip's features: `array` [T, *frame_shape], frames per second, optional mask [T]."""

    array: np.ndarray
    fps: float
    present: np.ndarray | None = None


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a resolved extractor config (sorted-key JSON, sha256, 16 hex)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def shard_name(clip: str) -> str:
    """File name of a clip's shard: clip ids may hold '/' and any character, so hash them."""
    return hashlib.sha1(clip.encode("utf-8")).hexdigest()[:20] + ".npz"


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keyed(meta: dict[str, Any]) -> dict[str, Any]:
    """What a store is keyed by: the resolved config and the weights' fingerprint."""
    return {"config": meta.get("config", {}), "weights_fingerprint": meta.get("fingerprint")}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class StoreWriter:
    """Creates or resumes a store for one extractor config; refuses a store made with another.

    Choice: a store folder belongs to exactly one config (hash in meta.json). Extracting into it
    with a different config raises a UserError listing the differing keys, rather than silently
    opening a config-hash subfolder, because later stages are pointed at the store path and must
    never read features that came from a different setting.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"feature store path {self.path} is a file; choose a folder for --out")
        self.meta = {**meta, "version": STORE_VERSION, "config_hash": config_hash(_keyed(meta))}
        meta_path = self.path / "meta.json"
        if meta_path.is_file():
            old = read_json(meta_path)
            if old.get("config_hash") != self.meta["config_hash"] or old.get("extractor") != self.meta["extractor"]:
                diffs = _differences(_keyed(old), _keyed(self.meta))
                detail = "; ".join(diffs[:4]) or f"extractor {old.get('extractor')} -> {self.meta['extractor']}"
                raise UserError(
                    f"feature store {self.path} was made with a different config ({detail}); "
                    "choose another --out folder or delete that one"
                )
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise UserError(f"{self.path} is not empty and holds no feature store (no meta.json); choose an empty or new --out folder")
        self.shards = self.path / SHARD_DIR
        self.shards.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, self.meta)
        self._consolidated = set(FeatureStore(self.path).clips) if (self.path / "index.json").is_file() else set()

    def done(self, clip: str) -> bool:
        """True when the clip is already extracted (consolidated or shard on disk)."""
        return clip in self._consolidated or (self.shards / shard_name(clip)).is_file()

    def put(self, clip: str, features: ClipFeatures) -> None:
        """Write one clip's shard (atomically), checking its frame shape against the meta."""
        array = np.ascontiguousarray(features.array, dtype=np.dtype(self.meta["dtype"]))
        if list(array.shape[1:]) != list(self.meta["frame_shape"]):
            raise ValueError(f"clip {clip}: frame shape {list(array.shape[1:])} != store's {self.meta['frame_shape']}")
        arrays: dict[str, np.ndarray] = {"clip": np.array(clip), "array": array, "fps": np.array(float(features.fps))}
        if self.meta.get("has_mask"):
            present = np.ones(len(array), bool) if features.present is None else np.asarray(features.present, bool)
            if present.shape != (len(array),):
                raise ValueError(f"clip {clip}: mask of shape {present.shape} for {len(array)} frames")
            arrays["present"] = present
        _atomic_save_npz(self.shards / shard_name(clip), **arrays)

    def consolidate(self) -> "FeatureStore":
        """Merge the consolidated data and all shards into a new data file, then drop the shards."""
        return consolidate(self.path)


def write_clip_features(
    path: str | Path,
    clips: dict[str, ClipFeatures],
    modality: str,
    extractor: str = "external",
    config: dict[str, Any] | None = None,
    weights: Any = "external",
    dtype: str = "float32",
) -> Path:
    """A store from features computed elsewhere (another toolkit, a test), so any head can train on them.

    The frame shape comes from the arrays; `config` keys the store like an extractor config does;
    `dtype` float16 halves the store (as an extractor's `store_dtype` does).
    """
    if modality not in ("audio", "video") or not clips:
        raise UserError("write_clip_features needs modality 'audio' or 'video' and at least one clip")
    if dtype not in ("float32", "float16"):
        raise UserError(f"dtype must be float32 or float16, got {dtype!r}")
    first = next(iter(clips.values())).array
    meta = {
        "extractor": extractor, "modality": modality, "config": dict(config or {}), "fingerprint": extractor,
        "frame_shape": list(first.shape[1:]), "dtype": dtype, "layers": None, "fps": None, "weights": weights,
        "has_mask": modality == "video",
    }
    writer = StoreWriter(path, meta)
    for clip, features in clips.items():
        writer.put(clip, features)
    writer.consolidate()
    return Path(path)


def _iter_shards(shard_dir: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(shard_dir.glob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            yield str(npz["clip"]), path


def consolidate(path: str | Path) -> "FeatureStore":
    """Write every clip (already consolidated ones and shards) into one memory-mappable file."""
    root = Path(path)
    meta = read_json(root / "meta.json")
    dtype = np.dtype(meta["dtype"])
    frame_shape = tuple(meta["frame_shape"])
    old = FeatureStore(root) if (root / "index.json").is_file() else None
    shard_dir = root / SHARD_DIR
    shards = dict(_iter_shards(shard_dir)) if shard_dir.is_dir() else {}
    if old is None and not shards:
        raise UserError(f"nothing to consolidate in {root}: no clip was extracted")
    clips = sorted(set(old.clips if old else []) | set(shards))
    number = (old.index.get("number", 0) + 1) if old else 1
    data_name, mask_name = f"data-{number:06d}.bin", f"present-{number:06d}.bin"
    offsets: list[int] = []
    lengths: list[int] = []
    fps: list[float] = []
    with open(root / data_name, "wb") as data_out, open(root / mask_name, "wb") if meta.get("has_mask") else contextlib.nullcontext() as mask_out:
        offset = 0
        for clip in clips:
            if clip in shards:
                with np.load(shards[clip], allow_pickle=False) as npz:
                    array, rate = npz["array"], float(npz["fps"])
                    present = npz["present"] if "present" in npz.files else None
            else:
                assert old is not None
                array, rate, present = old.get(clip)
            if array.dtype != dtype or tuple(array.shape[1:]) != frame_shape:
                raise UserError(f"shard of clip {clip} in {root} does not match the store's dtype/shape; delete {shard_dir} and rerun")
            data_out.write(np.ascontiguousarray(array).tobytes())
            if mask_out is not None:
                mask_out.write(np.asarray(present if present is not None else np.ones(len(array), bool), np.uint8).tobytes())
            offsets.append(offset)
            lengths.append(len(array))
            fps.append(rate)
            offset += len(array)
        data_out.flush()
        os.fsync(data_out.fileno())
    index = {"number": number, "data": data_name, "present": mask_name if meta.get("has_mask") else None,
             "total_frames": sum(lengths), "clips": clips, "offsets": offsets, "lengths": lengths, "fps": fps}
    write_json(root / "index.json", index)
    for path_ in shards.values():
        path_.unlink(missing_ok=True)
    if old is not None:
        for name in (old.index.get("data"), old.index.get("present")):
            if name and name not in (data_name, mask_name):
                (root / name).unlink(missing_ok=True)
    return FeatureStore(root)


class FeatureStore:
    """Read a consolidated feature store: `clips`, `get(clip) -> (array, fps, present|None)`, `meta`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise UserError(f"{self.path} is not a feature store (no meta.json); make one with `ssl-aver features extract`")
        if not (self.path / "index.json").is_file():
            raise UserError(f"feature store {self.path} has no consolidated data yet; rerun `ssl-aver features extract` into it to finish")
        self.meta: dict[str, Any] = read_json(self.path / "meta.json")
        self.index: dict[str, Any] = read_json(self.path / "index.json")
        self.clips: list[str] = list(self.index["clips"])
        self._row = {clip: i for i, clip in enumerate(self.clips)}
        self.frame_shape: tuple[int, ...] = tuple(self.meta["frame_shape"])
        total = int(self.index["total_frames"])
        dtype = np.dtype(self.meta["dtype"])
        data_path = self.path / self.index["data"]
        expected = total * int(np.prod(self.frame_shape)) * dtype.itemsize
        if not data_path.is_file() or data_path.stat().st_size != expected:
            raise UserError(f"feature store {self.path} is damaged ({data_path.name} missing or truncated); delete it and extract again")
        self._data = np.memmap(data_path, dtype=dtype, mode="r", shape=(total, *self.frame_shape)) if total else np.zeros((0, *self.frame_shape), dtype)
        self._present = None
        if self.index.get("present"):
            self._present = np.memmap(self.path / self.index["present"], dtype=np.uint8, mode="r", shape=(total,)) if total else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.clips)

    def __contains__(self, clip: object) -> bool:
        return clip in self._row

    @property
    def extractor(self) -> str:
        return str(self.meta["extractor"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta["config"])

    @property
    def layers(self) -> list[int] | None:
        return self.meta.get("layers")

    @property
    def weights(self) -> Any:
        return self.meta.get("weights")

    def get(self, clip: str) -> tuple[np.ndarray, float, np.ndarray | None]:
        """(features [T, *frame_shape] as a read-only memmap view, fps, present [T] bool or None)."""
        try:
            i = self._row[clip]
        except KeyError:
            raise KeyError(f"clip {clip!r} is not in feature store {self.path}") from None
        start, length = int(self.index["offsets"][i]), int(self.index["lengths"][i])
        present = None if self._present is None else self._present[start : start + length].astype(bool)
        return self._data[start : start + length], float(self.index["fps"][i]), present
