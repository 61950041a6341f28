"""Face backends: OpenFace/py-feat CSV robustness, py-feat's offline error, backend registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pretext.faces import BACKENDS, make_backend
from pretext.faces.openface import read_openface_csv
from pretext.faces.pyfeat import fex_to_series, load_detector
from pretext.settings import ClipSettings
from ssl_aver.errors import MediaError, UserError


def test_frames_with_nan_landmarks_or_low_confidence_are_dropped(pt, tmp_path) -> None:
    path = pt.openface_csv(tmp_path / "c.csv", 1.0)
    lines = path.read_text().splitlines()
    header = lines[0].split(", ")
    row = lines[3].split(", ")
    row[header.index("x_30")] = "nan"
    lines[3] = ", ".join(row)
    row = lines[5].split(", ")
    row[header.index("confidence")] = "0.3"
    lines[5] = ", ".join(row)
    path.write_text("\n".join(lines) + "\n")
    face = read_openface_csv(path, min_confidence=0.8)
    assert face.present.tolist() == [True, True, False, True, False] + [True] * 5
    assert read_openface_csv(path, min_confidence=0.2).present.sum() == 9


@pytest.mark.parametrize(
    ("content", "reason"),
    [("", "empty"), ("frame, timestamp\n1, 0.0\n", "lacks landmark columns x_0"), ("frame, x_0\n1, 2\n", "timestamp")],
)
def test_unusable_face_csvs_give_a_one_line_reason(tmp_path, content: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(MediaError, match=reason) as info:
        read_openface_csv(path)
    assert "\n" not in str(info.value)


def test_au_presence_falls_back_to_intensity_without_the_c_column(pt, tmp_path) -> None:
    path = pt.openface_csv(tmp_path / "c.csv", 1.0, aus=lambda t: {12: 1}, drop=("AU12_c",))
    face = read_openface_csv(path, intensity_min=1.0)
    assert face.aus is not None and face.aus[12].tolist() == [1.0] * 10
    assert read_openface_csv(path, intensity_min=2.5).aus[12].sum() == 0


def test_pyfeat_tables_keep_the_most_confident_face_per_frame(pt) -> None:
    face = pt.base_face()
    rows = []
    for frame, score, shift in ((0, 0.6, 100.0), (0, 0.99, 0.0), (1, 0.9, 0.0)):
        row = {"frame": frame, "FaceScore": score, "AU12": 0.7}
        row.update({f"x_{i}": face[i, 0] + shift for i in range(68)})
        row.update({f"y_{i}": face[i, 1] for i in range(68)})
        rows.append(row)
    series = fex_to_series(pd.DataFrame(rows), fps=25.0, name="fex")
    assert series.times.tolist() == [0.0, 0.04]
    assert np.allclose(series.landmarks[0], face)
    with pytest.raises(MediaError, match="frame rate"):
        fex_to_series(pd.DataFrame(rows), fps=None, name="fex")


def test_openface_backend_needs_a_face_dir(tmp_path) -> None:
    with pytest.raises(UserError, match="--face-dir"):
        make_backend("openface", ClipSettings())
    with pytest.raises(UserError, match="not found"):
        make_backend("openface", ClipSettings(face_dir=str(tmp_path / "missing")))
    assert set(BACKENDS) == {"openface", "pyfeat", "mediapipe"}


def test_pyfeat_detector_without_cached_weights_is_a_clear_user_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="download them once") as info:
        load_detector("Detectorv1")
    assert "\n" not in str(info.value)
