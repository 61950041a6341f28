"""68-point landmarks from FaceMesh (fitted against dlib) and face alignment, on real face media."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssl_aver.errors import MediaError, UserError
from ssl_aver.face import (
    JAW,
    MAPPING_PATH,
    FaceMapping,
    Landmarker68,
    align_face,
    alignment_matrix,
    benchmark_landmarks,
    eye_line_angle,
    inter_ocular_distance,
)
from ssl_aver.media import iter_frames

FEAT_DATA = Path(importlib.util.find_spec("feat").submodule_search_locations[0]) / "tests" / "data"


@functools.lru_cache(maxsize=1)
def _dlib_models() -> tuple:
    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))


def _dlib_68(image: np.ndarray) -> np.ndarray | None:
    """dlib's 68 points of the largest HOG-detected face (the reference of the fit)."""
    detector, predictor = _dlib_models()
    rects = detector(image, 0)
    if not rects:
        return None
    rect = max(rects, key=lambda r: r.area())
    shape = predictor(image, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _frames_at(name: str, indices: set[int]) -> dict[int, np.ndarray]:
    return {f.index: f.image for f in iter_frames(FEAT_DATA / name) if f.index in indices}


def _first_frame(name: str) -> np.ndarray:
    return next(iter(iter_frames(FEAT_DATA / name))).image


def test_held_out_frames_match_dlib_within_a_tenth_of_the_inter_ocular_distance() -> None:
    held = json.loads(MAPPING_PATH.read_text())["held_out"]
    by_source: dict[str, list[int]] = {}
    for item in held:
        by_source.setdefault(item["source"], []).append(int(item["frame"]))
    errors = []
    with Landmarker68(static=True) as landmarker:
        for source, frames in sorted(by_source.items()):
            picked = set(frames[:: max(1, len(frames) // 6)])
            for image in _frames_at(source, picked).values():
                ref = _dlib_68(image)
                ours = landmarker(image)
                assert ref is not None and ours is not None
                assert ours.shape == (68, 2) and ours.dtype == np.float32
                errors.append(np.linalg.norm(ours - ref, axis=1) / inter_ocular_distance(ref))
    errors = np.stack(errors)
    assert len(errors) >= 20
    assert errors.mean() < 0.1
    assert errors[:, list(JAW)].mean() < 0.12  # py-feat's one-point table is ~0.3 here


def test_no_face_gives_none_and_nan_rows() -> None:
    with Landmarker68(static=True) as landmarker:
        assert landmarker(_first_frame("no_face.mp4")) is None
    with Landmarker68() as landmarker:
        track = landmarker.track(FEAT_DATA / "no_face.mp4", every=8, max_side=480)
    assert len(track) >= 10
    assert not track.present.any()
    assert np.isnan(track.landmarks).all()
    assert np.all(np.diff(track.times) > 0)


def test_face_then_no_face_tracks_present_then_missing_frames() -> None:
    with Landmarker68() as landmarker:
        track = landmarker.track(FEAT_DATA / "face_noface.mov", every=4, max_side=480)
        again = landmarker.track(FEAT_DATA / "face_noface.mov", every=4, max_side=480)
    present = track.present
    assert present[0] and not present[-1]
    first_missing = int(np.argmin(present))
    assert 0 < first_missing < len(track)
    assert not present[first_missing:].any()
    assert np.isfinite(track.landmarks[present]).all() and np.isnan(track.landmarks[~present]).all()
    assert (track.width, track.height) == (960, 540)
    # a second track on the same landmarker starts fresh: identical result
    np.testing.assert_array_equal(again.present, present)
    np.testing.assert_allclose(again.landmarks[present], track.landmarks[present], atol=1e-3)


def test_downscaled_tracking_returns_original_pixel_coordinates() -> None:
    with Landmarker68() as landmarker:
        full = landmarker.track(FEAT_DATA / "single_face.mp4", every=12)
        small = landmarker.track(FEAT_DATA / "single_face.mp4", every=12, max_side=320)
    assert full.present.all() and small.present.all()
    iod = inter_ocular_distance(full.landmarks)
    err = np.linalg.norm(small.landmarks - full.landmarks, axis=2).mean(axis=1) / iod
    assert err.max() < 0.05


def test_alignment_levels_a_face_rotated_by_20_degrees() -> None:
    image = _first_frame("single_face.mp4")
    h, w = image.shape[:2]
    side = int(math.hypot(h, w))
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = image
    rotated = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((side / 2, side / 2), 20.0, 1.0), (side, side))
    with Landmarker68(static=True) as landmarker:
        upright = landmarker(image)
        tilted = landmarker(rotated)
        assert upright is not None and tilted is not None
        assert abs(abs(eye_line_angle(tilted) - eye_line_angle(upright)) - 20.0) < 2.0
        crop = align_face(rotated, tilted, size=224, margin=0.25)
        assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
        again = landmarker(crop)
    assert again is not None
    assert abs(eye_line_angle(again)) < 2.0
    # the face fills the crop minus the margin on each side
    extent = (again.max(axis=0) - again.min(axis=0)).max()
    assert 224 / 1.5 * 0.85 < extent < 224 / 1.5 * 1.15


def test_alignment_matrix_maps_landmarks_into_the_crop() -> None:
    with Landmarker68(static=True) as landmarker:
        points = landmarker(_first_frame("single_face.mp4"))
    assert points is not None
    m = alignment_matrix(points, size=100, margin=0.0)
    mapped = points @ m[:, :2].T + m[:, 2]
    assert mapped.min() > -1.0 and mapped.max() < 101.0
    assert (mapped.max(axis=0) - mapped.min(axis=0)).max() == pytest.approx(100.0, abs=0.5)


def test_user_errors_name_the_problem() -> None:
    with pytest.raises(UserError, match="uint8"):
        with Landmarker68(static=True) as landmarker:
            landmarker(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(UserError, match=r"\[height, width, 3\]"):
        with Landmarker68(static=True) as landmarker:
            landmarker(np.zeros((32, 32), np.uint8))
    with pytest.raises(UserError, match="fit_face_mapping"):
        FaceMapping.load("/nonexistent/mapping.json")
    with pytest.raises(UserError, match="68, 2"):
        align_face(np.zeros((32, 32, 3), np.uint8), np.zeros((5, 2)))


def test_track_of_a_missing_file_is_a_media_error(tmp_path: Path) -> None:
    with Landmarker68() as landmarker:
        with pytest.raises(MediaError):
            landmarker.track(tmp_path / "missing.mp4")


def test_benchmark_reports_both_frame_rates_on_the_same_frames() -> None:
    result = benchmark_landmarks(FEAT_DATA / "WolfgangLanger_Pexels.mp4", every=4, max_frames=24)
    assert result["frames"] == 24 and result["detected_frames"] == 24
    assert result["raw_facemesh_fps"] > 0 and result["landmarker68_fps"] > 0
    assert result["ratio"] == pytest.approx(result["landmarker68_fps"] / result["raw_facemesh_fps"], rel=0.01)


def test_landmarks_command_writes_tracks_and_records_bad_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssl_aver.app.cli import main
    from ssl_aver.face import load_track

    corpus = tmp_path / "videos"
    corpus.mkdir()
    (corpus / "person.mp4").symlink_to(FEAT_DATA / "single_face.mp4")
    (corpus / "sky.mp4").symlink_to(FEAT_DATA / "no_face.mp4")
    (corpus / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert main(["landmarks", str(corpus), "--out", str(out), "--every", "10", "--max-side", "320"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    fractions = {row["clip"]: row["present_fraction"] for row in summary["clips"]}
    assert fractions == {"person": 1.0, "sky": 0.0}
    assert [f["clip"] for f in summary["failures"]] == ["broken"]
    track = load_track(out / "person.npz")
    assert track.landmarks.shape == (len(track), 68, 2) and track.present.all()
    assert (track.width, track.height) == (640, 360)
    assert main(["landmarks", str(tmp_path / "nope.mp4"), "--out", str(out)]) == 2
    assert "input not found" in capsys.readouterr().err


def test_mediapipe_start_up_warnings_stay_out_of_stderr_in_a_fresh_process(tmp_path: Path, media_factory) -> None:
    """Each FaceMesh graph start (a new Landmarker68, every track's reset) makes mediapipe's C++
    side print absl warnings once per process and graph; only a fresh process shows them."""
    import subprocess
    import sys

    videos = [str(media_factory(name, seconds=0.4, audio=False)) for name in ("a.mp4", "b.mp4")]
    cmd = [sys.executable, "-m", "ssl_aver.app.cli", "landmarks", *videos, "--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "2 clips tracked" in run.stdout, run.stderr
    for noise in ("Feedback manager", "XNNPACK", "absl::InitializeLog"):
        assert noise not in run.stderr, run.stderr


def test_graph_start_window_drops_only_the_known_noise(capfd: pytest.CaptureFixture[str]) -> None:
    import os
    import sys

    from ssl_aver.face import _quiet_graph_start

    with _quiet_graph_start():
        os.write(2, b"W0000 inference_feedback_manager.cc:114] Feedback manager requires a model with a single signature inference.\n")
        os.write(2, b"a real error from native code\n")
        print("and one from Python", file=sys.stderr)
    # other lines come through (capfd takes Python's print past descriptor 2, hence sorted)
    assert sorted(capfd.readouterr().err.splitlines()) == ["a real error from native code", "and one from Python"]
