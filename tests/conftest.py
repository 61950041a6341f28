"""Shared fixtures: offline mode and small media made with ffmpeg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models on a 2-core machine: one intra-op thread is ~100x faster than an oversubscribed two.
torch.set_num_threads(1)


def make_media(path: Path, seconds: float, audio: bool = True, video: bool = True, freq: int = 440) -> Path:
    """Write a test clip with ffmpeg: a sine tone and/or a test pattern, any container by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}"]
    suffix = path.suffix.lower()
    if suffix == ".flv" and video:
        cmd += ["-c:v", "flv1"]
    if suffix == ".webm":
        cmd += (["-c:v", "libvpx"] if video else []) + (["-c:a", "libvorbis"] if audio else [])
    if suffix in (".mp4", ".mov", ".mkv") and video:
        cmd += ["-c:v", "mpeg4"]
    if suffix in (".mp4", ".mov", ".flv") and audio:
        cmd += ["-c:a", "aac"] if suffix != ".flv" else ["-c:a", "mp3"]
    cmd += ["-t", str(seconds), str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture
def media_factory(tmp_path: Path):
    def _make(name: str, seconds: float = 1.0, **kwargs) -> Path:
        return make_media(tmp_path / name, seconds, **kwargs)

    return _make
