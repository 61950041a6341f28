"""Small labelled corpora in the layouts the readers of ssl_aver.corpora take (MSP-IMPROV,
MSP-Podcast, MER2023, a user's CSV), shared by the reader tests and the fine-tuning tests.

Media are silent stand-ins for the reader tests (which only check that files exist), or tones
for fine-tuning: a tone's pitch can carry a clip's label, so a head learns it from openSMILE
features of a few dozen short clips. Test modules import it as `tests.corpus_builders` (pytest's
importlib mode names modules from the rootdir).
"""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ssl_aver.corpora.msp_improv import parse_clip_name

SAMPLE_RATE = 16_000
#: MSP-Podcast's consensus table (Labels/labels_consensus.csv)
PODCAST_HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """A text file of `lines` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_wav(path: Path, tone: float | None, seconds: float, seed: int) -> None:
    """A 16 kHz mono wav: silence, or a `tone` Hz sine with a little noise."""
    n = int(SAMPLE_RATE * seconds)
    if tone is None:
        wave = np.zeros(n, np.float32)
    else:
        t = np.arange(n) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * tone * t) + 0.01 * np.random.default_rng(seed).standard_normal(n)
    sf.write(path, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def write_media(root: Path, files: Mapping[str, float | None] | Iterable[str]) -> Path:
    """Media under `root` by relative path, each with the tone (Hz) mapped to it: a .wav is that
    tone (silence for None or a plain list); another container (.mp4) holds the tone as its sound
    track (ffmpeg), or for None is an empty stand-in (the readers only check that media exist)."""
    tones = files if isinstance(files, Mapping) else dict.fromkeys(files)
    for name, tone in tones.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".wav":
            _write_wav(path, tone, seconds=0.1 if tone is None else 0.5, seed=zlib.crc32(name.encode()))
        elif tone is None:
            path.write_bytes(b"")
        else:
            sine = f"sine=frequency={tone}:sample_rate={SAMPLE_RATE}:duration=0.5"
            subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", sine, str(path)], check=True)
    return root


def _msp_improv_media(clip: str, suffix: str) -> str:
    """Where MSP-IMPROV keeps a clip's media: session<k>/<sentence>/<recording>/<clip><suffix>."""
    info = parse_clip_name(clip)
    assert info is not None, clip
    return f"session{info['session']}/{info['sentence']}/{info['recording']}/{clip}{suffix}"


def msp_improv_block(clip: str, consensus: str, scores: Sequence[float], raters: Sequence[tuple[str, str]]) -> list[str]:
    """The Evaluation.txt lines of one utterance: its header (consensus letter, mean A/V/D/N) and a
    line per (rater id, emotion word) with the same scores."""
    a, v, d, n = (f"{s:.6f}" for s in scores)
    header = f"{clip.replace('MSP-', 'UTD-', 1)}.avi; {consensus}; A:{a}; V:{v}; D:{d} ; N:{n};"
    return [header, *(f"{rater}; {emotion}; ; A:{a}; V:{v}; D:{d}; N:{n};" for rater, emotion in raters), ""]


def write_msp_improv(root: Path, evaluation: str, media: Mapping[str, str], tones: Mapping[str, float] | None = None) -> Path:
    """Evaluation.txt plus media in the session tree; `media` maps clip -> "av" / "a" / "v", and
    `tones` clip -> the Hz of its wav (silent otherwise)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Evaluation.txt").write_text(evaluation, encoding="utf-8")
    files: dict[str, float | None] = {}
    for clip, kinds in media.items():
        if "a" in kinds:
            files[_msp_improv_media(clip, ".wav")] = (tones or {}).get(clip)
        if "v" in kinds:
            files[_msp_improv_media(clip, ".avi")] = None
    return write_media(root, files)


def write_msp_podcast(root: Path, rows: Sequence[str], audio: Mapping[str, float | None] | Iterable[str]) -> Path:
    """Labels/labels_consensus.csv (PODCAST_HEADER + `rows`) and Audios/<name>.wav per name of `audio`."""
    write_lines(root / "Labels" / "labels_consensus.csv", [PODCAST_HEADER, *rows])
    tones = audio if isinstance(audio, Mapping) else dict.fromkeys(audio)
    return write_media(root, {f"Audios/{name}.wav": tone for name, tone in tones.items()})
