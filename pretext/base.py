"""What every pretext task shares: a clip's decoded inputs and corpus-threshold labelling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pretext.faces import FaceSeries


@dataclass
class ClipData:
    """The inputs of one clip for the per-clip phase.

    `face` is None when no usable face data exists for the clip; `face_reason` then says why.
    """

    clip: str
    audio: np.ndarray
    sample_rate: int
    face: FaceSeries | None = None
    face_reason: str | None = None


def corpus_threshold(values: pd.Series, stat: str = "mean") -> float | None:
    """Threshold of a raw statistic over all windows that have it (paper 1: the mean)."""
    present = pd.to_numeric(values, errors="coerce").dropna()
    if present.empty:
        return None
    return float(present.mean() if stat == "mean" else present.median())


def binarize(values: pd.Series, threshold: float | None) -> pd.Series:
    """1 where strictly above the threshold, 0 otherwise, missing where the statistic is missing."""
    numeric = pd.to_numeric(values, errors="coerce")
    out = pd.Series(pd.NA, index=values.index, dtype="Int64")
    if threshold is None:
        return out
    known = numeric.notna()
    out[known] = (numeric[known] > threshold).astype("int64")
    return out
