"""openSMILE ComParE LLD features at 32 ms / 16 ms (paper 1, Sec. 4.2)."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_aver import acoustic


def _tone(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_shape_grid_and_names() -> None:
    feats = acoustic.compare_lld(_tone(3.0))
    assert feats.dtype == np.float32
    assert feats.shape == (acoustic.n_frames_for(3.0), 130) == (186, 130)
    assert np.isfinite(feats).all()
    names = acoustic.feature_names()
    assert len(names) == 130
    assert names[65:] == [f"{n}_de" if "[" not in n else n.replace("sma[", "sma_de[") for n in names[:65]]


def test_features_follow_the_signal() -> None:
    loud = acoustic.compare_lld(_tone(2.0))
    quiet = acoustic.compare_lld(_tone(2.0) * 0.05)
    names = acoustic.feature_names()
    col = names.index("pcm_RMSenergy_sma")
    assert loud[:, col].mean() > 10 * quiet[:, col].mean()


def test_stray_include_in_cwd_does_not_change_results(tmp_path, monkeypatch) -> None:
    audio = _tone(1.0, seed=3)
    reference = acoustic.compare_lld(audio)
    junk = "[componentInstances:cComponentManager]\ninstance[junk].type=cNotAComponent\n"
    for name in ("ComParE_2016_core.lld.conf.inc", acoustic._LLD_INC, "BufferMode.conf.inc"):
        (tmp_path / name).write_text(junk)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(acoustic.compare_lld(audio), reference)


def test_full_scale_audio_is_clipped_not_wrapped() -> None:
    square = np.sign(_tone(1.0)).astype(np.float32)
    col = acoustic.feature_names().index("mfcc_sma[1]")
    full = acoustic.compare_lld(square)[:, col]
    near = acoustic.compare_lld(square * np.float32(0.999))[:, col]
    np.testing.assert_allclose(full, near, rtol=0.02, atol=0.05)


def test_short_audio_gives_no_rows() -> None:
    assert acoustic.compare_lld(np.zeros(200, dtype=np.float32)).shape == (0, 130)


@pytest.mark.parametrize(
    ("start", "end", "first", "count"),
    [(0.0, 2.0, 0, 124), (1.5, 3.5, 94, 123), (3.0, 5.0, 188, 123), (3.008, 5.008, 188, 124), (0.0, 0.6, 0, 36)],
)
def test_window_frames_selects_frames_inside_the_window(start, end, first, count) -> None:
    feats = np.arange(400, dtype=np.float32)[:, None].repeat(130, axis=1)
    rows = acoustic.window_frames(feats, start, end)
    assert rows.shape == (count, 130)
    assert rows[0, 0] == first
    assert first * acoustic.FRAME_HOP_S >= start - 1e-9
    assert (first + count - 1) * acoustic.FRAME_HOP_S + acoustic.FRAME_LENGTH_S <= end + 1e-9


def test_window_frames_clamps_to_available_rows() -> None:
    feats = np.zeros((50, 130), dtype=np.float32)
    assert acoustic.window_frames(feats, 0.5, 2.5).shape == (50 - 32, 130)
    assert acoustic.window_frames(feats, 5.0, 7.0).shape == (0, 130)
