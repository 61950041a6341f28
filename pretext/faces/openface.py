"""OpenFace 2.0 CSVs (`FeatureExtraction` output) as face data, as paper 1 used.

One CSV per clip at `<face_dir>/<clip id>.csv`. OpenFace writes ", " separators, so the file
is read with skipinitialspace. Frames with success = 0 or confidence below `min_confidence`
(default 0.8: OpenFace's own visualiser hides tracks below ~0.75-0.8) are dropped; frames are
placed in windows by `timestamp`. AU presence per frame comes from AUxx_c, or, for an AU with
only an intensity column, from AUxx_r >= `au_intensity_min` (default 1 on OpenFace's 0-5 scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pretext.faces import FaceSeries, au_number, landmarks_from_table, read_face_csv
from ssl_aver.errors import MediaError, UserError


def openface_aus(table: pd.DataFrame, intensity_min: float = 1.0) -> dict[int, np.ndarray]:
    """AU number -> per-frame presence from AUxx_c (or AUxx_r >= intensity_min without _c)."""
    by_au: dict[int, dict[str, str]] = {}
    for col in table.columns:
        number = au_number(col)
        if number is not None and col.endswith(("_c", "_r")):
            by_au.setdefault(number, {})[col[-1]] = col
    aus: dict[int, np.ndarray] = {}
    for number, cols in sorted(by_au.items()):
        if "c" in cols:
            values = pd.to_numeric(table[cols["c"]], errors="coerce").to_numpy(dtype=np.float64)
            aus[number] = np.where(np.isnan(values), np.nan, (values >= 0.5).astype(np.float64))
        else:
            values = pd.to_numeric(table[cols["r"]], errors="coerce").to_numpy(dtype=np.float64)
            aus[number] = np.where(np.isnan(values), np.nan, (values >= intensity_min).astype(np.float64))
    return aus


def read_openface_csv(path: str | Path, min_confidence: float = 0.8, intensity_min: float = 1.0) -> FaceSeries:
    """Face data of one OpenFace 2.0 CSV; MediaError with a one-line reason when unusable."""
    p = Path(path)
    table = read_face_csv(p)
    if "timestamp" not in table.columns:
        raise MediaError(f"face CSV {p.name} lacks the 'timestamp' column (is it OpenFace 2.0 output?)")
    landmarks = landmarks_from_table(table, f"face CSV {p.name}")
    times = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    present = np.ones(len(table), dtype=bool)
    if "success" in table.columns:
        present &= pd.to_numeric(table["success"], errors="coerce").fillna(0).to_numpy() > 0
    if "confidence" in table.columns:
        present &= pd.to_numeric(table["confidence"], errors="coerce").fillna(0).to_numpy() >= min_confidence
    aus = openface_aus(table, intensity_min)
    return FaceSeries(times, landmarks, present, aus or None)


class OpenFaceBackend:
    """Reads `<face_dir>/<clip id>.csv` for every clip (video or audio-only)."""

    GIVES_AUS = True

    def __init__(self, settings: Any) -> None:
        if not settings.face_dir:
            raise UserError("the openface backend needs --face-dir: a folder of OpenFace 2.0 CSVs named <clip id>.csv")
        self.face_dir = Path(settings.face_dir)
        if not self.face_dir.is_dir():
            raise UserError(f"face folder not found: {self.face_dir}; pass the folder of OpenFace CSVs with --face-dir")
        self.min_confidence = float(settings.min_confidence)
        self.intensity_min = float(settings.au_intensity_min)

    def csv_path(self, clip: Any) -> Path:
        return self.face_dir / f"{clip.clip}.csv"

    def load(self, clip: Any) -> FaceSeries:
        return read_openface_csv(self.csv_path(clip), self.min_confidence, self.intensity_min)

    def close(self) -> None:
        """Nothing to release."""
