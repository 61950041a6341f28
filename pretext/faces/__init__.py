"""Face backends: where the landmarks and action units of a clip come from.

A backend is a class built from the ClipSettings with `load(clip) -> FaceSeries` (raising
MediaError when the clip has no usable face data: the clip keeps its audio labels and the face
labels stay missing) and `close()`. `GIVES_AUS` says whether it can detect action units.
Adding a backend is one line in BACKENDS.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: backend name (as given to --face-backend) -> "module:class"
BACKENDS: dict[str, str] = {
    "openface": "pretext.faces.openface:OpenFaceBackend",
    "pyfeat": "pretext.faces.pyfeat:PyFeatBackend",
    "mediapipe": "pretext.faces.mediapipe:MediaPipeBackend",
}

N_POINTS = 68
_AU_NAME = re.compile(r"^AU0*(\d+)$", re.IGNORECASE)


@dataclass
class FaceSeries:
    """Per-frame face data of one clip.

    times [T] seconds; landmarks [T, 68, 2] image coordinates, NaN where `present` is False;
    aus: AU number -> [T] presence (1.0 / 0.0, NaN unknown), or None when the backend detects no AUs.
    """

    times: np.ndarray
    landmarks: np.ndarray
    present: np.ndarray
    aus: dict[int, np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        self.present = np.asarray(self.present, dtype=bool) & np.isfinite(self.landmarks).all(axis=(1, 2)) & np.isfinite(self.times)

    def in_window(self, start: float, end: float, inclusive_end: bool = False) -> np.ndarray:
        """Boolean mask of the usable frames whose time lies in [start, end)."""
        upper = self.times <= end if inclusive_end else self.times < end
        return self.present & (self.times >= start) & upper


class FaceBackend(Protocol):
    GIVES_AUS: bool

    def load(self, clip: Any) -> FaceSeries: ...

    def close(self) -> None: ...


def make_backend(name: str, settings: Any) -> FaceBackend:
    """Instantiate the backend registered as `name` with the build settings."""
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(settings)


def backend_gives_aus(name: str) -> bool:
    """Whether backend `name` detects action units (without instantiating it)."""
    module, _, cls = BACKENDS[name].partition(":")
    return bool(getattr(importlib.import_module(module), cls).GIVES_AUS)


def au_number(column: str) -> int | None:
    """AU number of a column name such as 'AU06', 'AU6' or 'AU06_c' (its prefix), else None."""
    match = _AU_NAME.match(column.split("_")[0])
    return int(match.group(1)) if match else None


def landmark_columns() -> list[str]:
    """x_0..x_67, y_0..y_67: the 2-D landmark columns of OpenFace 2.0 and py-feat tables."""
    return [f"x_{i}" for i in range(N_POINTS)] + [f"y_{i}" for i in range(N_POINTS)]


def landmarks_from_table(table: Any, name: str) -> np.ndarray:
    """[T, 68, 2] landmarks from a table with x_i / y_i columns (MediaError naming missing ones)."""
    from ssl_aver.errors import MediaError

    cols = landmark_columns()
    missing = [c for c in cols if c not in table.columns]
    if missing:
        shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise MediaError(f"{name} lacks landmark columns {shown} ({len(missing)} missing)")
    import pandas as pd

    values = table[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    return np.stack([values[:, :N_POINTS], values[:, N_POINTS:]], axis=-1)


def read_face_csv(path: Path) -> Any:  # -> pandas.DataFrame
    """A face-tracker CSV (OpenFace's ", " separators, py-feat's Fex); MediaError naming the problem."""
    import pandas as pd

    from ssl_aver.errors import MediaError

    if not path.is_file():
        raise MediaError(f"no face CSV at {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"face CSV {path.name} is empty (0 bytes)")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MediaError(f"face CSV {path.name} cannot be parsed: {str(err).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table
