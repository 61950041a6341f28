"""AU task (paper 1, 3.3): EMFACS rule, tie-breaks, `other`, missing; OpenFace/py-feat parsing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pretext import au_emotion
from pretext.au_emotion import classify
from pretext.base import ClipData
from pretext.faces.openface import read_openface_csv
from pretext.faces.pyfeat import read_fex_csv
from pretext.settings import ClipSettings, FinalizeSettings
from ssl_aver.windows import window_bounds


def _p(**aus: float) -> dict[int, float]:
    props = {au: 0.0 for au in au_emotion.EMFACS_AUS}
    props.update({int(k[2:]): v for k, v in aus.items()})
    return props


@pytest.mark.parametrize(
    ("aus", "expected"),
    [
        (_p(au06=0.9, au12=0.8), "happiness"),
        (_p(au04=0.7, au15=0.6), "sadness"),
        (_p(au02=0.6, au26=0.9), "surprise"),
        (_p(au07=0.5, au23=0.5), "anger"),
        (_p(au06=0.9, au01=0.9, au02=0.9), "other"),  # top AUs only
        (_p(au12=0.9, au15=0.9), "other"),  # bottom AUs only
        (_p(au06=0.49, au12=0.9), "other"),  # below the 0.5 presence proportion
        (_p(), "other"),
    ],
)
def test_emfacs_rule(aus: dict[int, float], expected: str) -> None:
    assert classify(aus) == expected


def test_several_matches_go_to_the_combination_detected_in_more_frames() -> None:
    # happiness: 0.6 + 0.6 = 1.2; sadness: AU1 + AU4 + AU15 = 0.5 + 0.5 + 0.5 = 1.5
    assert classify(_p(au06=0.6, au12=0.6, au01=0.5, au04=0.5, au15=0.5)) == "sadness"
    assert classify(_p(au06=1.0, au12=1.0, au01=0.5, au04=0.5, au15=0.5)) == "happiness"


def test_ties_go_to_the_fuller_combination_then_table_order() -> None:
    tie_fuller = _p(au01=0.5, au02=0.5, au26=0.5, au07=0.75, au23=0.75)  # surprise 1.5 (3 AUs) vs anger 1.5 (2 AUs)
    assert classify(tie_fuller) == "surprise"
    tie_order = _p(au06=0.8, au12=0.8, au05=0.8, au23=0.8)  # happiness 1.6 (2) vs anger 1.6 (2)
    assert classify(tie_order) == "happiness"


def test_strict_all_rule_needs_the_whole_top_combination() -> None:
    partial = _p(au01=0.9, au26=0.9)
    assert classify(partial, match="any") == "surprise"
    assert classify(partial, match="all") == "other"
    assert classify(_p(au01=0.9, au02=0.9, au05=0.9, au26=0.9), match="all") == "surprise"


def test_no_au_data_is_missing_not_other() -> None:
    assert classify({au: None for au in au_emotion.EMFACS_AUS}) is None
    assert classify({au: np.nan for au in au_emotion.EMFACS_AUS}) is None


def test_window_proportions_from_an_openface_csv(pt, tmp_path) -> None:
    # happiness during the first second only, anger AUs throughout
    aus = lambda t: {6: int(t < 1.0), 12: int(t < 1.0), 4: 1, 23: 1}  # noqa: E731
    face = read_openface_csv(pt.openface_csv(tmp_path / "c.csv", 3.5, aus=aus))
    rows = au_emotion.window_stats(ClipData("c", np.zeros(1, np.float32), 16000, face), window_bounds(3.5), ClipSettings())
    table = pd.DataFrame(rows)
    assert table.loc[0, "au06"] == pytest.approx(0.5) and table.loc[1, "au06"] == 0.0
    labels, _ = au_emotion.make_labels(table, FinalizeSettings())
    # window 0: happiness 0.5 + 0.5 = 1.0 vs anger 1 + 1 = 2.0 -> anger; window 1: anger only
    assert labels["au_emotion"].tolist() == ["anger", "anger"]
    labels, _ = au_emotion.make_labels(table, FinalizeSettings(au_presence=0.4))
    assert labels["au_emotion"].tolist() == ["anger", "anger"]


def test_the_real_openface_csv_parses() -> None:
    path = pytest.importorskip("feat").__file__.rsplit("/", 1)[0] + "/tests/data/OpenFace_Test.csv"
    face = read_openface_csv(path)
    assert face.landmarks.shape == (100, 68, 2) and face.present.all()
    assert {1, 2, 4, 5, 6, 7, 12, 15, 23, 26, 28, 45} <= set(face.aus)
    assert set(np.unique(face.aus[12])) <= {0.0, 1.0}


def test_the_real_pyfeat_csv_parses() -> None:
    path = pytest.importorskip("feat").__file__.rsplit("/", 1)[0] + "/tests/data/Feat_Test.csv"
    face = read_fex_csv(path, fps=30.0)
    assert face.landmarks.shape == (1, 68, 2) and face.present.all() and face.times.tolist() == [0.0]
    assert face.aus[1][0] == 1.0  # AU01 probability 0.563 >= 0.5
