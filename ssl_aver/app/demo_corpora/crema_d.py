"""The CREMA-D mini demo corpus: real CREMA-D actors' clip names, ratings and demographics, with
synthesised speech whose prosody follows each clip's real audio-visual majority vote.

    DIR/crema-d/AudioWAV/*.wav      16 kHz mono espeak-ng speech of the clip's sentence
    DIR/crema-d/VideoFlash/*.flv    the same speech under real face frames
    DIR/crema-d/processedResults/tabulatedVotes.csv, VideoDemographics.csv, LICENSE.txt
                                    the real CREMA-D rows of the chosen actors (ODbL)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ssl_aver.app.demo_corpora.common import (
    FEMALE_VOICES,
    MALE_VOICES,
    FaceSource,
    Framing,
    Prosody,
    Take,
    derive_seed,
    finish_audio,
    mux,
    random_framing,
    random_start,
    silence,
    synthesize,
    write_wav,
)
from ssl_aver.io import atomic_write_text

#: CREMA-D sentence codes and their text (Cao et al., 2014).
CREMA_SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}

#: CREMA-D emotion code -> prosody. Anger loud+fast+wide range, sadness soft+slow+low,
#: happiness high+fast, fear high+fast+tremulous, disgust low+slow, neutral mid.
EMOTION_PROSODY: dict[str, Prosody] = {
    "N": Prosody(0.45, 0, 165, 2),
    "A": Prosody(0.95, 8, 200, 4),
    "H": Prosody(0.65, 20, 195, 3),
    "F": Prosody(0.5, 26, 205, 3, tremor=1.0),
    "S": Prosody(0.2, -14, 120, 0),
    "D": Prosody(0.35, -12, 135, 1),
}
#: Order that breaks ties between equally voted emotions (the vote table's column order).
VOTE_ORDER = ("A", "D", "F", "H", "N", "S")
#: CREMA-D clip-name emotion -> vote code (used when a clip has no audio-visual rating row).
INTENDED_CODES = {"ANG": "A", "DIS": "D", "FEA": "F", "HAP": "H", "NEU": "N", "SAD": "S"}
#: How far a portrayal moves from neutral prosody by CREMA-D intensity level.
LEVEL_SCALE = {"LO": 0.55, "MD": 0.8, "HI": 1.0, "XX": 0.8}


@dataclass(frozen=True)
class CremaJob:
    clip: str
    wav: str
    flv: str
    emotion: str
    voice: str
    pitch: float
    speed: float
    gain: float
    pitch_range: int
    tremor: float
    text: str
    source: FaceSource
    framing: Framing
    size: tuple[int, int]
    fps: float
    seed: int


def run_crema_batch(jobs: Sequence[CremaJob], work: str) -> list[dict[str, Any]]:
    """CREMA-D clips: speech whose prosody follows the AV vote -> wav, + real face -> flv
    (the flv files of the batch come from one ffmpeg run)."""
    takes, results = [], []
    for job in jobs:
        wav, flv = Path(job.wav), Path(job.flv)
        rng = np.random.default_rng(job.seed)
        speech = synthesize(job.text, job.voice, job.pitch, job.speed, job.pitch_range, job.gain, job.tremor, rng)
        padded = np.concatenate([silence(rng.uniform(0.15, 0.35)), speech, silence(rng.uniform(0.2, 0.4))])
        audio, frames = finish_audio(padded, rng, job.fps)
        if not wav.exists():
            write_wav(wav, audio)
        start = random_start(job.source, frames, rng)
        if not flv.exists():
            takes.append(Take(job.source, job.framing, job.size, frames, start, wav, flv))
        results.append({"kind": "crema", "clip": job.clip, "seconds": round(frames / job.fps, 3), "emotion": job.emotion})
    if takes:
        mux(takes, ["-c:v", "flv1", "-q:v", "8", "-c:a", "aac", "-b:a", "32k"], "flv")
    return results


@dataclass(frozen=True)
class CremaTables:
    """The real CREMA-D tables: vote header and raw lines per clip, AV vote counts, demographics."""

    header: str
    raw: dict[str, list[str]]
    votes: dict[str, dict[str, int]]
    demographics: dict[str, dict[str, str]]


def read_crema_tables(folder: Path) -> CremaTables:
    """tabulatedVotes.csv and VideoDemographics.csv of `folder`.

    Raw vote lines are kept so the copy has the same columns and quoting; rating condition 3
    (ids starting with "3") is the audio-visual one.
    """
    import csv

    from ssl_aver.corpora.crema_d import read_demographics

    lines = (folder / "tabulatedVotes.csv").read_text(encoding="utf-8").splitlines()
    col = {name: i for i, name in enumerate(next(csv.reader([lines[0]])))}
    raw: dict[str, list[str]] = {}
    votes: dict[str, dict[str, int]] = {}
    for line, row in zip(lines[1:], csv.reader(lines[1:])):
        name = row[col["fileName"]]
        raw.setdefault(name, []).append(line)
        if row[0].startswith("3"):
            votes[name] = {code: int(row[col[code]]) for code in VOTE_ORDER}
    return CremaTables(lines[0], raw, votes, read_demographics(folder / "VideoDemographics.csv"))


def majority_vote(counts: dict[str, int]) -> str:
    """The most voted emotion code; ties go to the first in VOTE_ORDER."""
    return max(VOTE_ORDER, key=lambda code: (counts.get(code, 0), -VOTE_ORDER.index(code)))


def choose_actors(demographics: dict[str, dict[str, str]], count: int, seed: int) -> list[str]:
    """`count` real actors balanced by sex (alternating) and cycling through races, so a
    small set still spans CREMA-D's demographic groups."""
    rng = np.random.default_rng(derive_seed(seed, "actors"))
    chosen = []
    for sex in ("Male", "Female"):
        by_race: dict[str, list[str]] = {}
        for actor, info in sorted(demographics.items()):
            if info["sex"] == sex:
                by_race.setdefault(info["race"], []).append(actor)
        queues = {race: list(rng.permutation(actors)) for race, actors in sorted(by_race.items())}
        picked = []
        while any(queues.values()):
            for race in sorted(queues, key=lambda r: (-len(by_race[r]), r)):
                if queues[race]:
                    picked.append(str(queues[race].pop(0)))
        chosen.append(picked)
    merged = [a for pair in zip(*chosen) for a in pair]
    return merged[:count]


def plan_crema(
    out: Path, actors: Sequence[str], tables: CremaTables, seed: int, sources: dict[str, FaceSource],
    size: tuple[int, int], fps: float, clips_per_actor: int | None,
) -> list[CremaJob]:
    """One job per clip of each actor: voice by sex, prosody by AV majority vote x level."""
    jobs = []
    root = out / "crema-d"
    for actor in actors:
        rng = np.random.default_rng(derive_seed(seed, "actor", actor))
        sex = "female" if tables.demographics[actor]["sex"] == "Female" else "male"
        voice = str(rng.choice(FEMALE_VOICES if sex == "female" else MALE_VOICES))
        base_pitch = rng.uniform(48, 66) if sex == "female" else rng.uniform(30, 48)
        base_speed, loudness = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
        framing = random_framing(rng)
        clips = sorted(name for name in tables.raw if name.startswith(f"{actor}_"))
        if clips_per_actor is not None and clips_per_actor < len(clips):
            clips = sorted(str(c) for c in rng.choice(clips, clips_per_actor, replace=False))
        neutral = EMOTION_PROSODY["N"]
        for clip in clips:
            _, sentence, intended, level = clip.split("_")
            emotion = majority_vote(tables.votes[clip]) if clip in tables.votes else INTENDED_CODES[intended]
            prosody = EMOTION_PROSODY[emotion]
            k = LEVEL_SCALE.get(level, 0.8)
            jitter = np.random.default_rng(derive_seed(seed, "clip", clip))
            jobs.append(
                CremaJob(
                    clip=clip, wav=str(root / "AudioWAV" / f"{clip}.wav"), flv=str(root / "VideoFlash" / f"{clip}.flv"),
                    emotion=emotion, voice=voice,
                    pitch=float(base_pitch + k * prosody.pitch + jitter.normal(0, 1.5)),
                    speed=float(base_speed * (neutral.speed + k * (prosody.speed - neutral.speed)) * jitter.uniform(0.96, 1.04)),
                    gain=float(loudness * (neutral.gain + k * (prosody.gain - neutral.gain)) * jitter.uniform(0.92, 1.08)),
                    pitch_range=int(round(neutral.pitch_range + k * (prosody.pitch_range - neutral.pitch_range))),
                    tremor=float(k * prosody.tremor), text=CREMA_SENTENCES[sentence], source=sources[sex], framing=framing, size=size, fps=fps,
                    seed=derive_seed(seed, "crema", clip),
                )
            )
    return jobs


def write_real_tables(base: Path, clips: Sequence[str], actors: Sequence[str], tables: CremaTables) -> list[str]:
    """The real CREMA-D rows of `clips` and `actors` under base/crema-d (vote table, demographics,
    licence); returns the files written, relative to `base`."""
    from ssl_aver.data import CREMA_D_DIR

    root = base / "crema-d"
    vote_lines = [line for name in sorted(clips) for line in tables.raw[name]]
    atomic_write_text(root / "processedResults" / "tabulatedVotes.csv", "\n".join([tables.header, *vote_lines]) + "\n")
    demo_lines = (CREMA_D_DIR / "VideoDemographics.csv").read_text(encoding="utf-8").splitlines()
    keep = set(actors)
    actor_lines = [line for line in demo_lines[1:] if line.split(",", 1)[0].strip('"') in keep]
    atomic_write_text(root / "VideoDemographics.csv", "\n".join([demo_lines[0], *actor_lines]) + "\n")
    atomic_write_text(root / "LICENSE.txt", (CREMA_D_DIR / "LICENSE.txt").read_text(encoding="utf-8"))
    return ["crema-d/processedResults/tabulatedVotes.csv", "crema-d/VideoDemographics.csv", "crema-d/LICENSE.txt"]
