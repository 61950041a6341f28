"""Decoding of audio and video: 16 kHz mono float32 audio, video frames with timestamps.

ffprobe/ffmpeg handle every container (wav, flac, mp3, mp4, mov, mkv, webm, flv); plain WAV
and FLAC are read with soundfile, which is ~1000x faster than real time. Every failure is a
`MediaError` whose message is a one-line reason that corpus runs record per clip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_aver.errors import MediaError, UserError

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".flv", ".avi"})
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS
_SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac"})


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds, from ffprobe."""

    duration: float
    has_audio: bool
    has_video: bool
    fps: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Frame:
    """One decoded video frame: its index in the stream, time in seconds, RGB uint8 image."""

    index: int
    time: float
    image: np.ndarray


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise UserError(f"'{tool}' is not installed; run `make setup` (or apt-get install ffmpeg)")
    return found


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")


def probe(path: str | Path) -> MediaInfo:
    """Duration and streams of a media file (raises MediaError when unreadable)."""
    p = Path(path)
    _check_file(p)
    cmd = [_require("ffprobe"), "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(p)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["unknown ffprobe error"])[-1]
        raise MediaError(f"unreadable media: {reason}")
    info = json.loads(proc.stdout or "{}")
    streams = info.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [s for s in streams if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic", 0) == 0]
    durations = [float(x) for x in [info.get("format", {}).get("duration")] + [s.get("duration") for s in streams] if x not in (None, "N/A")]
    if not durations:
        raise MediaError("unreadable media: no duration")
    if not audio and not video:
        raise MediaError("no audio or video stream")
    fps = width = height = None
    if video:
        num, _, den = str(video[0].get("avg_frame_rate") or video[0].get("r_frame_rate") or "0/1").partition("/")
        fps = float(num) / float(den or 1) if float(den or 1) else None
        width, height = video[0].get("width"), video[0].get("height")
    return MediaInfo(max(durations), bool(audio), bool(video), fps or None, width, height)


def _resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return audio
    import soxr

    return soxr.resample(audio, sr_in, sr_out).astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the audio of any supported file to mono float32 at `sample_rate`."""
    p = Path(path)
    _check_file(p)
    if p.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        import soundfile as sf

        try:
            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError
            raise MediaError(f"unreadable audio: {str(err).splitlines()[0]}") from None
        if data.shape[0] == 0:
            raise MediaError("audio has no samples")
        return _resample(data.mean(axis=1), sr, sample_rate)
    cmd = [
        _require("ffmpeg"), "-nostdin", "-v", "error", "-i", str(p), "-vn", "-map", "0:a:0",
        "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        if "matches no streams" in stderr:
            raise MediaError("no audio stream")
        lines = stderr.splitlines()
        reason = lines[-1] if lines else "unknown ffmpeg error"
        raise MediaError(f"audio decoding failed: {reason}")
    audio = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    if audio.size == 0:
        raise MediaError("audio has no samples")
    return audio


def iter_frames(path: str | Path, every: int = 1, max_side: int | None = None) -> Iterator[Frame]:
    """Yield every `every`-th video frame as RGB with its timestamp in seconds.

    Timestamps come from the container (CAP_PROP_POS_MSEC), falling back to index / fps, so
    variable-frame-rate video is placed correctly in windows. `max_side` downscales large
    frames (landmark detectors do not need 4K).
    """
    import cv2

    p = Path(path)
    _check_file(p)
    if every < 1:
        raise UserError(f"every must be >= 1, got {every}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise MediaError("unreadable video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    try:
        index = 0
        while True:
            if index % every:
                if not cap.grab():
                    break
                index += 1
                continue
            ok, bgr = cap.read()
            if not ok:
                break
            msec = cap.get(cv2.CAP_PROP_POS_MSEC)
            t = msec / 1000.0 if msec and msec > 0 else (index / fps if fps else float(index))
            if index == 0:
                t = 0.0
            if max_side and max(bgr.shape[:2]) > max_side:
                scale = max_side / max(bgr.shape[:2])
                bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            yield Frame(index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()
