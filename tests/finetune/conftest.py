"""A tiny CREMA-D-layout corpus with the REAL rating rows of 9 actors and learnable audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ssl_aver.crema_d_labels import crema_d_labels, load_votes
from ssl_aver.data import CREMA_D_DIR

TONES = {"anger": 220.0, "disgust": 330.0, "fear": 440.0, "happiness": 550.0, "neutral": 660.0, "sadness": 770.0}


def make_tiny_crema(root: Path, actors: int = 9, clips_per_actor: int = 8, seed: int = 0) -> Path:
    """Real votes for a few clips per actor; each wav is a tone whose pitch follows its AV label."""
    votes = load_votes(CREMA_D_DIR / "tabulatedVotes.csv")
    labels = crema_d_labels(votes, tie_break="intensity")
    labels = labels[labels["av_label"].notna()]
    chosen_actors = sorted(labels["actor"].unique())[:actors]
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    for actor in chosen_actors:
        rows = labels[labels["actor"] == actor].head(clips_per_actor)
        keep += rows["clip"].tolist()
        for clip, label in zip(rows["clip"], rows["av_label"]):
            t = np.arange(int(16000 * rng.uniform(1.0, 1.6))) / 16000
            wave = 0.3 * np.sin(2 * np.pi * TONES[label] * t) + 0.01 * rng.standard_normal(len(t))
            (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
            sf.write(root / "AudioWAV" / f"{clip}.wav", wave.astype(np.float32), 16000)
    raw = pd.read_csv(CREMA_D_DIR / "tabulatedVotes.csv", dtype=str, keep_default_na=False)
    (root / "processedResults").mkdir(parents=True, exist_ok=True)
    raw[raw["fileName"].isin(keep)].to_csv(root / "processedResults" / "tabulatedVotes.csv", index=False)
    shutil.copy(CREMA_D_DIR / "VideoDemographics.csv", root / "VideoDemographics.csv")
    return root


@pytest.fixture(scope="session")
def tiny_crema(tmp_path_factory) -> Path:
    return make_tiny_crema(tmp_path_factory.mktemp("crema"))
