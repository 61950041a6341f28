"""Energy task (paper 1, 3.1): RMS from the STFT magnitude, corpus-mean threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pretext import energy
from pretext.base import ClipData
from pretext.settings import ClipSettings, FinalizeSettings
from ssl_aver.windows import window_bounds


def test_loud_windows_are_labelled_high_and_quiet_ones_low(pt) -> None:
    settings = ClipSettings(tasks=["energy"])
    rows = []
    for name, amplitude in (("loud", 0.5), ("quiet", 0.02), ("mid_loud", 0.3), ("whisper", 0.01)):
        clip = ClipData(name, pt.tone(5.0, amplitude).astype(np.float32), 16000)
        windows = window_bounds(5.0)
        rows += [{"clip": name, **s} for s in energy.window_stats(clip, windows, settings)]
    table = pd.DataFrame(rows)
    labels, info = energy.make_labels(table, FinalizeSettings())
    by_clip = labels["energy"].groupby(table["clip"]).agg(lambda s: set(s.tolist()))
    assert by_clip["loud"] == {1} and by_clip["mid_loud"] == {1}
    assert by_clip["quiet"] == {0} and by_clip["whisper"] == {0}
    assert info["thresholds"]["rms"] == table["rms"].mean()


def test_spectral_rms_is_a_fixed_fraction_of_time_domain_rms(pt) -> None:
    audio = pt.tone(2.0, 0.4).astype(np.float32)
    time_rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    ratio = energy.segment_rms(audio) / time_rms
    assert 0.5 < ratio < 0.7  # Hann-window STFT RMS ~0.6x the time-domain RMS (documented)
    doubled = energy.segment_rms(2 * audio)
    assert abs(doubled / energy.segment_rms(audio) - 2.0) < 1e-3
    assert energy.segment_rms(audio, aggregate="mean") <= energy.segment_rms(audio) + 1e-9


def test_median_threshold_splits_the_corpus_in_half() -> None:
    table = pd.DataFrame({"rms": [0.01, 0.02, 0.03, 10.0]})
    mean_labels, _ = energy.make_labels(table, FinalizeSettings(threshold_stat="mean"))
    median_labels, info = energy.make_labels(table, FinalizeSettings(threshold_stat="median"))
    assert mean_labels["energy"].tolist() == [0, 0, 0, 1]
    assert median_labels["energy"].tolist() == [0, 0, 1, 1]
    assert info["thresholds"]["rms"] == 0.025
