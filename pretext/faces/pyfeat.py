"""py-feat face data: its Fex CSVs, or its detectors run on the video when their weights are cached.

A Fex table has x_0..x_67 / y_0..y_67 landmarks, AUxx detection probabilities (present when
>= `au_probability_min`, default 0.5) and a `frame` index. Its `approx_time` column is rounded to
whole seconds, so frames are placed in windows by `timestamp` when the table has one, else by
frame / fps of the clip's video. When a frame holds several faces the one with the highest
FaceScore is kept. With `face_dir` set, `<face_dir>/<clip id>.csv` is read; otherwise the
detector (`pyfeat_detector`, default Detectorv1) runs on the video; its weights come from the
Hugging Face hub, so offline without a cached copy this is a UserError saying how to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pretext.faces import FaceSeries, au_number, landmarks_from_table, read_face_csv
from ssl_aver.errors import MediaError, UserError

DETECTORS = ("Detectorv1", "Detectorv2", "MPDetector")


def _best_face_per_frame(table: pd.DataFrame) -> pd.DataFrame:
    if "frame" not in table.columns or not table["frame"].duplicated().any():
        return table
    score = pd.to_numeric(table["FaceScore"], errors="coerce").fillna(-1.0) if "FaceScore" in table.columns else pd.Series(0.0, index=table.index)
    order = table.assign(_score=score.to_numpy()).sort_values(["frame", "_score"], ascending=[True, False], kind="stable")
    return order.drop_duplicates("frame", keep="first").drop(columns="_score")


def fex_to_series(table: pd.DataFrame, fps: float | None, name: str, probability_min: float = 0.5) -> FaceSeries:
    """Face data of a py-feat Fex table (MediaError with a one-line reason when unusable)."""
    table = _best_face_per_frame(table.reset_index(drop=True))
    landmarks = landmarks_from_table(table, name)
    if "timestamp" in table.columns:
        times = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    elif "frame" in table.columns:
        if not fps:
            raise MediaError(f"{name} has no timestamp column and the clip has no video frame rate to place frames in time")
        times = pd.to_numeric(table["frame"], errors="coerce").to_numpy(dtype=np.float64) / float(fps)
    else:
        raise MediaError(f"{name} lacks both 'timestamp' and 'frame' columns")
    aus: dict[int, np.ndarray] = {}
    for col in table.columns:
        number = au_number(col)
        if number is not None and "_" not in col:
            values = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64)
            aus[number] = np.where(np.isnan(values), np.nan, (values >= probability_min).astype(np.float64))
    present = np.ones(len(table), dtype=bool)
    return FaceSeries(times, landmarks, present, aus or None)


def read_fex_csv(path: str | Path, fps: float | None = None, probability_min: float = 0.5) -> FaceSeries:
    """Face data of a py-feat CSV (Fex.to_csv / detect(save=...))."""
    p = Path(path)
    return fex_to_series(read_face_csv(p), fps, f"face CSV {p.name}", probability_min)


def load_detector(name: str = "Detectorv1") -> Any:
    """A py-feat detector on the CPU; UserError saying how to get the weights when they are not cached."""
    if name not in DETECTORS:
        raise UserError(f"unknown py-feat detector '{name}'; choose one of {', '.join(DETECTORS)}")
    import torch

    # py-feat turns autograd off globally while building its detectors; keep the caller's mode.
    try:
        with torch.set_grad_enabled(torch.is_grad_enabled()):
            import feat

            return getattr(feat, name)(device="cpu")
    except Exception as err:  # hub errors come as OSError, LocalEntryNotFoundError, ValueError...
        first = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0][:120]
        raise UserError(
            f"py-feat {name} weights are not available offline ({type(err).__name__}: {first}); download them once "
            f"with network access (unset HF_HUB_OFFLINE and run: python -c \"import feat; feat.{name}()\"), "
            "or pass --face-dir with py-feat CSVs, or use --face-backend mediapipe"
        ) from None


class PyFeatBackend:
    """Fex CSVs from `face_dir`, else py-feat's detector on each clip's video."""

    GIVES_AUS = True

    def __init__(self, settings: Any) -> None:
        self.face_dir = Path(settings.face_dir) if settings.face_dir else None
        if self.face_dir is not None and not self.face_dir.is_dir():
            raise UserError(f"face folder not found: {self.face_dir}; pass the folder of py-feat CSVs with --face-dir")
        self.every = int(settings.every)
        self.probability_min = float(settings.au_probability_min)
        self.detector_name = str(settings.pyfeat_detector)
        self._detector: Any = None

    def _fps(self, clip: Any) -> float | None:
        if not clip.has_video:
            return None
        from ssl_aver.media import probe

        return probe(clip.path).fps

    def load(self, clip: Any) -> FaceSeries:
        if self.face_dir is not None:
            return read_fex_csv(self.face_dir / f"{clip.clip}.csv", self._fps(clip), self.probability_min)
        if not clip.has_video:
            raise MediaError("audio-only file and no --face-dir with py-feat CSVs")
        if self._detector is None:
            self._detector = load_detector(self.detector_name)
        try:
            fex = self._detector.detect(str(clip.path), data_type="video", skip_frames=self.every if self.every > 1 else None, progress_bar=False)
        except (RuntimeError, ValueError, OSError) as err:
            raise MediaError(f"py-feat detection failed: {(str(err).splitlines() or ['error'])[0][:200]}") from None
        return fex_to_series(pd.DataFrame(fex), self._fps(clip), "py-feat output", self.probability_min)

    def close(self) -> None:
        self._detector = None
