"""Task 1 of paper 1 (section 3.1): is a window's speech energy high or low?

Per window the audio samples of the segment go through librosa's STFT; librosa.feature.rms
on the magnitude (S=..., frame_length=n_fft) gives one RMS value per STFT frame. With the
default Hann window this spectral RMS is ~0.59x the time-domain RMS of the same samples; the
labels only compare windows with a corpus threshold, so the scale cancels out. The paper
gives one "RMS value for each segment" without saying how frames are pooled: we take the
quadratic mean of the frame values (`rms_aggregate="rms"`, i.e. the segment's spectral RMS),
or their plain mean with `rms_aggregate="mean"`. n_fft/hop default to librosa's 2048/512.
Label: 1 when the window's RMS is strictly above the corpus mean RMS, else 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pretext.base import ClipData, binarize, corpus_threshold
from ssl_aver.windows import Window

STATS: tuple[str, ...] = ("rms",)
LABELS: tuple[str, ...] = ("energy",)
NEEDS_FACE = False


def segment_rms(segment: np.ndarray, n_fft: int = 2048, hop_length: int = 512, aggregate: str = "rms") -> float:
    """RMS energy of one audio segment from its STFT magnitude (see the module docstring)."""
    import librosa

    segment = np.asarray(segment, dtype=np.float32)
    n_fft = min(n_fft, 1 << int(np.floor(np.log2(max(segment.size, 2)))))
    spectrum = np.abs(librosa.stft(segment, n_fft=n_fft, hop_length=min(hop_length, n_fft)))
    frames = librosa.feature.rms(S=spectrum, frame_length=n_fft)[0]
    if aggregate == "mean":
        return float(frames.mean())
    return float(np.sqrt(np.mean(np.square(frames, dtype=np.float64))))


def window_stats(clip: ClipData, windows: list[Window], settings: Any) -> list[dict[str, float | None]]:
    """The RMS of every window of a clip."""
    sr = clip.sample_rate
    out = []
    for w in windows:
        segment = clip.audio[int(round(w.start * sr)) : int(round(w.end * sr))]
        out.append({"rms": segment_rms(segment, settings.n_fft, settings.hop_length, settings.rms_aggregate)})
    return out


def make_labels(table: pd.DataFrame, settings: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`energy` = rms strictly above the corpus threshold (mean by default)."""
    threshold = corpus_threshold(table["rms"], settings.threshold_stat)
    return pd.DataFrame({"energy": binarize(table["rms"], threshold)}), {"thresholds": {"rms": threshold}}
