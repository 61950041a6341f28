"""Landmark task (paper 1, 3.2): upper/lower centroid-trace variance, thresholds, normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pretext import landmarks
from pretext.base import ClipData
from pretext.faces import FaceSeries
from pretext.faces.openface import read_openface_csv
from pretext.settings import ClipSettings, FinalizeSettings
from ssl_aver.windows import window_bounds


def _stats(face: FaceSeries, duration: float, **settings) -> pd.DataFrame:
    clip = ClipData("c", np.zeros(16000, np.float32), 16000, face)
    return pd.DataFrame(landmarks.window_stats(clip, window_bounds(duration), ClipSettings(**settings)))


def test_mouth_motion_labels_the_lower_face_and_brow_motion_the_upper_face(pt, tmp_path) -> None:
    # windows of a 6.5 s clip: [0,2] [1.5,3.5] [3,5] [4.5,6.5]; mouth moves only in the first, brows only in the last
    path = pt.openface_csv(tmp_path / "c.csv", 6.5, lower_active=lambda t: t < 1.4, upper_active=lambda t: t >= 5.1)
    table = _stats(read_openface_csv(path), 6.5)
    labels, info = landmarks.make_labels(table, FinalizeSettings())
    assert labels.loc[0, "face_lower"] == 1 and labels.loc[0, "face_upper"] == 0
    assert labels.loc[3, "face_upper"] == 1 and labels.loc[3, "face_lower"] == 0
    assert labels.loc[1:2, ["face_upper", "face_lower"]].to_numpy().sum() == 0
    assert info["thresholds"]["var_lower"] == table["var_lower"].mean()
    assert labels["face_whole"].tolist()[0] == 1  # the single-centroid variant sees the mouth too


def test_windows_without_enough_face_frames_have_missing_labels(pt, tmp_path) -> None:
    path = pt.openface_csv(tmp_path / "c.csv", 3.5, lower_active=lambda t: True, success=lambda t: int(t < 1.2))
    table = _stats(read_openface_csv(path), 3.5)
    assert table.loc[0].notna().all() and table.loc[1].isna().all()
    labels, _ = landmarks.make_labels(table, FinalizeSettings())
    assert labels["face_lower"].isna().tolist() == [False, True]


def test_interocular_normalisation_removes_camera_distance(pt) -> None:
    rng = np.random.default_rng(0)
    face = pt.base_face()
    frames = face[None] + rng.normal(0, 1.0, (30, 68, 2))
    times = np.arange(30) / 15
    near = FaceSeries(times, frames * 2.0, np.ones(30, bool))
    far = FaceSeries(times, frames, np.ones(30, bool))
    raw_near, raw_far = _stats(near, 2.0), _stats(far, 2.0)
    assert np.isclose(raw_near.loc[0, "var_whole"], 4 * raw_far.loc[0, "var_whole"])
    norm_near, norm_far = _stats(near, 2.0, landmark_norm="interocular"), _stats(far, 2.0, landmark_norm="interocular")
    assert np.allclose(norm_near.to_numpy(), norm_far.to_numpy())


def test_rigid_alignment_removes_head_motion_but_keeps_mouth_motion(pt) -> None:
    face = pt.base_face()
    n = 30
    frames = np.repeat(face[None], n, axis=0)
    angle = np.linspace(-0.2, 0.2, n)
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    centre = face.mean(axis=0)
    moved = np.einsum("tij,tkj->tki", rot, frames - centre) + centre + np.linspace(0, 40, n)[:, None, None]
    series = FaceSeries(np.arange(n) / 15, moved, np.ones(n, bool))
    raw = _stats(series, 2.0)
    rigid = _stats(series, 2.0, landmark_norm="rigid")
    assert raw.loc[0, "var_upper"] > 50 and rigid.loc[0, "var_upper"] < 1e-6
    talking = moved.copy()
    talking[:, 48:68, 1] += 5 * np.sin(np.arange(n))[:, None]
    rigid_talk = _stats(FaceSeries(np.arange(n) / 15, talking, np.ones(n, bool)), 2.0, landmark_norm="rigid")
    assert rigid_talk.loc[0, "var_lower"] > 1.0 and rigid_talk.loc[0, "var_upper"] < 0.05


def test_centroid_variance_is_var_x_plus_var_y_of_the_centroid_trace() -> None:
    pts = np.zeros((4, 68, 2))
    pts[:, :, 0] = np.array([0.0, 1.0, 2.0, 3.0])[:, None]
    pts[:, :, 1] = np.array([0.0, 0.0, 2.0, 2.0])[:, None]
    assert np.isclose(landmarks.centroid_variance(pts, range(68)), np.var([0, 1, 2, 3]) + np.var([0, 0, 2, 2]))
