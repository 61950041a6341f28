"""The memory-mapped window store: streaming writes, atomicity, labels and statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssl_aver.errors import UserError
from ssl_aver.store import AU_CLASSES, WindowStore, write_store


def _windows(n: int, dim: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.0, size=(int(rng.integers(4, 9)), dim)).astype(np.float32) for _ in range(n)]


def _labels(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "clip": [f"c{i // 3}" for i in range(n)],
            "window": [i % 3 for i in range(n)],
            "start_s": [1.5 * (i % 3) for i in range(n)],
            "end_s": [1.5 * (i % 3) + 2.0 for i in range(n)],
            "energy": [1, 0, None, 1, 0, 1][:n],
            "face_upper": [None, 1, 0, 1, None, 0][:n],
            "au_emotion": ["happiness", None, "other", "anger", "sadness", None][:n],
        }
    )


def test_round_trip_and_metadata(tmp_path) -> None:
    wins = _windows(6)
    meta = write_store(tmp_path, iter(wins), dim=6)
    _labels(6).to_csv(tmp_path / "labels.csv", index=False)
    assert meta == {"dim": 6, "n_windows": 6, "n_frames": sum(len(w) for w in wins), "dtype": "float32", "frame_hop_s": 0.016}
    store = WindowStore(tmp_path)
    assert len(store) == 6
    for i, w in enumerate(wins):
        np.testing.assert_array_equal(store.features(i), w)
    assert not store.features(0).flags.writeable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.f32", "index.npy", "labels.csv", "store.json"]


def test_labels_missing_values(tmp_path) -> None:
    write_store(tmp_path, _windows(6), dim=6)
    _labels(6).to_csv(tmp_path / "labels.csv", index=False)
    labels = WindowStore(tmp_path).labels(["energy", "face_upper", "au_emotion"])
    np.testing.assert_array_equal(labels["energy"], [1, 0, np.nan, 1, 0, 1])
    assert labels["face_upper"].dtype == np.float32
    assert labels["au_emotion"].dtype == np.int64
    np.testing.assert_array_equal(labels["au_emotion"], [0, -1, 4, 3, 1, -1])
    assert AU_CLASSES[3] == "anger"


def test_unknown_or_absent_task_is_a_user_error(tmp_path) -> None:
    write_store(tmp_path, _windows(6), dim=6)
    _labels(6).to_csv(tmp_path / "labels.csv", index=False)
    store = WindowStore(tmp_path)
    with pytest.raises(UserError, match="unknown pretext task 'pitch'"):
        store.labels(["pitch"])
    with pytest.raises(UserError, match="no 'face_whole' column"):
        store.labels(["face_whole"])


def test_feature_stats_match_numpy(tmp_path) -> None:
    wins = _windows(6)
    write_store(tmp_path, wins, dim=6)
    _labels(6).to_csv(tmp_path / "labels.csv", index=False)
    mean, std = WindowStore(tmp_path).feature_stats([1, 3, 4])
    stacked = np.concatenate([wins[1], wins[3], wins[4]]).astype(np.float64)
    np.testing.assert_allclose(mean, stacked.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, stacked.std(0), rtol=1e-5)


def test_missing_files_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(UserError, match=r"store\.json.*ssl-aver pretext build"):
        WindowStore(tmp_path)
    write_store(tmp_path, _windows(2), dim=6)
    with pytest.raises(UserError, match=r"labels\.csv.*ssl-aver pretext build"):
        WindowStore(tmp_path)


def test_crash_while_writing_leaves_no_complete_looking_store(tmp_path) -> None:
    write_store(tmp_path, _windows(3), dim=6)
    _labels(3).to_csv(tmp_path / "labels.csv", index=False)

    def failing():
        yield from _windows(2)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError):
        write_store(tmp_path, failing(), dim=6)
    with pytest.raises(UserError, match="store.json"):
        WindowStore(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_size_mismatch_is_detected(tmp_path) -> None:
    write_store(tmp_path, _windows(3), dim=6)
    _labels(3).to_csv(tmp_path / "labels.csv", index=False)
    with open(tmp_path / "features.f32", "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(UserError, match="rebuild"):
        WindowStore(tmp_path)


def test_wrong_window_shape_is_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="expected"):
        write_store(tmp_path, [np.zeros((3, 5), np.float32)], dim=6)
