from __future__ import annotations

import numpy as np
import pytest

from ssl_aver.errors import MediaError
from ssl_aver.media import SAMPLE_RATE, iter_frames, load_audio, probe


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".mp4", ".mov", ".mkv", ".webm", ".flv"])
def test_every_format_decodes_to_16k_mono(media_factory, suffix):
    video = suffix not in (".wav", ".flac", ".mp3")
    path = media_factory(f"clip{suffix}", seconds=1.0, video=video, freq=440)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 1.0) < 0.06
    # a 440 Hz tone: its spectrum peaks at 440 Hz after resampling to 16 kHz
    spectrum = np.abs(np.fft.rfft(audio[: SAMPLE_RATE // 2]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / (SAMPLE_RATE // 2)
    assert abs(peak_hz - 440) < 5
    info = probe(path)
    assert info.has_audio and info.has_video == video
    assert abs(info.duration - 1.0) < 0.1


def test_stereo_44k_wav_is_downmixed(tmp_path):
    import soundfile as sf

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 44100)
    audio = load_audio(tmp_path / "s.wav")
    assert len(audio) == SAMPLE_RATE
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.02)


def test_frames_carry_increasing_timestamps(media_factory):
    path = media_factory("v.mp4", seconds=1.0)
    frames = list(iter_frames(path))
    assert 23 <= len(frames) <= 26
    times = [f.time for f in frames]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))
    assert frames[1].time == pytest.approx(0.04, abs=0.005)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    every3 = list(iter_frames(path, every=3))
    assert [f.index for f in every3] == list(range(0, len(frames), 3))
    assert [f.time for f in every3] == pytest.approx(times[::3])


def test_bad_files_raise_media_errors(tmp_path, media_factory):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    silent_video = media_factory("noaudio.mp4", seconds=1.0, audio=False)
    with pytest.raises(MediaError, match="empty"):
        load_audio(empty)
    with pytest.raises(MediaError):
        probe(text)
    with pytest.raises(MediaError):
        load_audio(text)
    with pytest.raises(MediaError, match="no audio stream"):
        load_audio(silent_video)


def test_truncated_file_is_an_error_or_shorter(tmp_path, media_factory):
    whole = media_factory("whole.mp4", seconds=2.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(MediaError):
        load_audio(cut)
