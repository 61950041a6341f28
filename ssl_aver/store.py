"""The window store: per-window acoustic features + pretext labels, memory-mapped for training.

Layout of a store folder (written by `ssl-aver pretext build`):

- `features.f32`: raw float32 frames of every window, appended in labels.csv row order;
- `index.npy`: int64 [n_windows, 2] = (first frame row, number of frames) into features.f32;
- `store.json`: {dim, n_windows, n_frames, dtype, frame_hop_s}; written last, so its presence
  with matching sizes is what marks a store complete;
- `labels.csv`: one row per window (clip, window, start_s, end_s, raw statistics, pseudo-labels;
  an empty cell is a missing label). clip/start_s/end_s also say where each window's audio is.

A flat float32 file opened with np.memmap reads ~110,000 windows/s here (datasets' Array2D:
~4,000/s), so the pretrainer never waits on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import write_json

FEATURES_FILE = "features.f32"
INDEX_FILE = "index.npy"
META_FILE = "store.json"
LABELS_FILE = "labels.csv"

BINARY_TASKS: tuple[str, ...] = ("energy", "face_upper", "face_lower", "face_whole")
AU_TASK = "au_emotion"
AU_CLASSES: tuple[str, ...] = ("happiness", "sadness", "surprise", "anger", "other")
TASKS: tuple[str, ...] = BINARY_TASKS + (AU_TASK,)
LABEL_COLUMNS: tuple[str, ...] = (
    "clip", "window", "start_s", "end_s", "rms", "var_upper", "var_lower", "var_whole",
    "energy", "face_upper", "face_lower", "face_whole", "au_emotion",
)  # fmt: skip


def _frame_hop() -> float:
    from ssl_aver.acoustic import FRAME_HOP_S

    return FRAME_HOP_S


def write_store(out_dir: Path, windows: Iterable[np.ndarray], dim: int = 130) -> dict:
    """Stream per-window float32 [L_i, dim] arrays into a store folder; return its metadata.

    Windows are appended in the order given (labels.csv row order). Everything goes to temporary
    names first; store.json, the completeness marker, is removed at the start and renamed into
    place last, so a crash never leaves a folder that looks like a complete store.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    fd, tmp_features = tempfile.mkstemp(prefix=f".{FEATURES_FILE}.", dir=out)
    tmp_index = ""
    offsets: list[tuple[int, int]] = []
    total = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for i, window in enumerate(windows):
                arr = np.asarray(window, dtype=np.float32)
                if arr.ndim != 2 or arr.shape[1] != dim:
                    raise ValueError(f"window {i} has shape {arr.shape}, expected [frames, {dim}]")
                handle.write(np.ascontiguousarray(arr).tobytes())
                offsets.append((total, arr.shape[0]))
                total += arr.shape[0]
            handle.flush()
            os.fsync(handle.fileno())
        index = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        fd_index, tmp_index = tempfile.mkstemp(prefix=f".{INDEX_FILE}.", suffix=".npy", dir=out)
        with os.fdopen(fd_index, "wb") as handle:
            np.save(handle, index)
        os.replace(tmp_features, out / FEATURES_FILE)
        os.replace(tmp_index, out / INDEX_FILE)
    except BaseException:
        Path(tmp_features).unlink(missing_ok=True)
        if tmp_index:
            Path(tmp_index).unlink(missing_ok=True)
        raise
    meta = {
        "dim": int(dim),
        "n_windows": len(offsets),
        "n_frames": int(total),
        "dtype": "float32",
        "frame_hop_s": _frame_hop(),
    }
    write_json(out / META_FILE, meta)
    return meta


def _missing(path: Path) -> UserError:
    return UserError(f"window store file missing: {path}; run `ssl-aver pretext build` to create the store")


class WindowStore:
    """Read-only view of a store folder: memory-mapped features, the index and labels.csv."""

    def __init__(self, out_dir: str | Path, require_labels: bool = True) -> None:
        import pandas as pd

        self.root = Path(out_dir)
        meta_path = self.root / META_FILE
        for path in (meta_path, self.root / FEATURES_FILE, self.root / INDEX_FILE):
            if not path.is_file():
                raise _missing(path)
        try:
            self.meta: dict = json.loads(meta_path.read_text(encoding="utf-8"))
            self.dim = int(self.meta["dim"])
            n_frames = int(self.meta["n_frames"])
            n_windows = int(self.meta["n_windows"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"corrupt window store metadata {meta_path} ({err}); rebuild with `ssl-aver pretext build`") from None
        size = (self.root / FEATURES_FILE).stat().st_size
        if size != n_frames * self.dim * 4:
            raise UserError(
                f"window store {self.root / FEATURES_FILE} has {size} bytes, store.json says "
                f"{n_frames * self.dim * 4}; rebuild with `ssl-aver pretext build`"
            )
        self.index = np.load(self.root / INDEX_FILE, allow_pickle=False)
        if self.index.shape != (n_windows, 2):
            raise UserError(f"window store index {self.root / INDEX_FILE} does not match store.json; rebuild the store")
        if n_frames:
            self._features = np.memmap(self.root / FEATURES_FILE, dtype=np.float32, mode="r", shape=(n_frames, self.dim))
        else:
            self._features = np.zeros((0, self.dim), dtype=np.float32)
        labels_path = self.root / LABELS_FILE
        if labels_path.is_file():
            self.frame = pd.read_csv(labels_path, keep_default_na=True)
            if len(self.frame) != n_windows:
                raise UserError(
                    f"{labels_path} has {len(self.frame)} rows but the store has {n_windows} windows; rebuild the store"
                )
        elif require_labels:
            raise _missing(labels_path)
        else:
            self.frame = pd.DataFrame(index=range(n_windows))

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Number of frames of every window (int64 [n_windows])."""
        return self.index[:, 1]

    def features(self, i: int) -> np.ndarray:
        """Frames of window `i`, float32 [L_i, dim] (a read-only view into the memory map)."""
        offset, length = self.index[i]
        return self._features[offset : offset + length]

    def labels(self, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-task label arrays over all windows.

        Binary tasks: float32 0/1 with NaN where missing. au_emotion: int64 class index into
        AU_CLASSES with -1 where missing.
        """
        out: dict[str, np.ndarray] = {}
        for task in tasks:
            if task not in TASKS:
                raise UserError(f"unknown pretext task '{task}'; choose from: {', '.join(TASKS)}")
            if task not in self.frame.columns:
                raise UserError(f"{self.root / LABELS_FILE} has no '{task}' column; rebuild the store with that task")
            column = self.frame[task]
            if task == AU_TASK:
                codes = {name: k for k, name in enumerate(AU_CLASSES)}
                values = column.astype("string").str.strip().str.lower()
                bad = sorted(set(values.dropna()) - set(codes))
                if bad:
                    raise UserError(f"{self.root / LABELS_FILE}: unknown au_emotion value(s) {bad}; expected {AU_CLASSES}")
                out[task] = values.map(codes).fillna(-1).to_numpy(dtype=np.int64)
            else:
                values = column.to_numpy(dtype=np.float32, na_value=np.nan)
                valid = values[~np.isnan(values)]
                if valid.size and not np.isin(valid, (0.0, 1.0)).all():
                    raise UserError(f"{self.root / LABELS_FILE}: column '{task}' must hold 0, 1 or empty")
                out[task] = values
        return out

    def feature_stats(self, indices: Iterable[int] | None = None, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (float32 [dim]) of every frame of the given windows, for z-normalisation.

        Frames shared by overlapping windows count once per window. std is floored at `eps` so
        constant features do not divide by zero.
        """
        rows = np.arange(len(self)) if indices is None else np.asarray(list(indices), dtype=np.int64)
        if rows.size == 0:
            raise UserError("cannot compute feature statistics over zero windows")
        shift = np.asarray(self.features(int(rows[0])), dtype=np.float64).mean(axis=0) if self.lengths[rows[0]] else 0.0
        total = np.zeros(self.dim, dtype=np.float64)
        total_sq = np.zeros(self.dim, dtype=np.float64)
        count = 0
        for i in rows:
            block = np.asarray(self.features(int(i)), dtype=np.float64) - shift
            total += block.sum(axis=0)
            total_sq += np.square(block).sum(axis=0)
            count += block.shape[0]
        if count == 0:
            raise UserError("the selected windows hold no frames")
        mean = total / count
        var = np.maximum(total_sq / count - np.square(mean), 0.0)
        return (mean + shift).astype(np.float32), np.maximum(np.sqrt(var), eps).astype(np.float32)
