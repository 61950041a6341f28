"""The MSP-IMPROV-layout demo corpus: read back by the MSP-IMPROV reader, prosody that follows
the attributes, raters consistent with the header lines, same settings -> same bytes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_aver.app.demo_corpora import msp_improv as dm
from ssl_aver.corpora.msp_improv import parse_clip_name, prepare_msp_improv
from ssl_aver.errors import UserError
from ssl_aver.media import iter_frames, load_audio, probe

RATER_RE = re.compile(r"^WK\d{3}; (Angry|Happy|Sad|Neutral|Other); [A-Za-z,]*; A:(\S+); V:(\S+); D:(\S+); N:(\S+);$")
HEADER_RE = re.compile(r"^UTD-IMPROV-(\S+)\.avi; ([AHSNOX]); A:(\S+); V:(\S+); D:(\S+) ; N:(\S+);$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("improv") / "msp-improv"
    return out, dm.make_demo_msp_improv(out, seed=3, sessions=1, clips_per_speaker=4, workers=1, progress=False)


def _parse_block(chunk: str) -> tuple[str, list[str], list[list[str]]]:
    """(clip, header fields, rater fields) of one Evaluation.txt block, checked against the format."""
    header, *raters = chunk.strip().split("\n")
    m = HEADER_RE.match(header)
    assert m, header
    rows = [RATER_RE.match(line) for line in raters]
    assert all(rows), raters
    return "MSP-IMPROV-" + m[1], list(m.groups()[1:]), [list(r.groups()) for r in rows if r]


def _check_block(clip: str, header: list[str], raters: list[list[str]]) -> None:
    """Header scores = the raters' means; consensus = plurality (O when Other wins, X on a tie)."""
    words = {"Angry": "A", "Happy": "H", "Sad": "S", "Neutral": "N", "Other": "O"}
    assert 5 <= len(raters) <= 8
    scores = np.array([[float(v) for v in r[1:]] for r in raters])
    assert set(np.unique(scores)) <= {1.0, 2.0, 3.0, 4.0, 5.0}, "rater scores are on the 5-point scale"
    assert [float(v) for v in header[1:]] == pytest.approx(scores.mean(axis=0), abs=1e-6), clip
    votes = pd.Series([words[r[0]] for r in raters]).value_counts()
    assert header[0] == ("X" if (votes == votes.max()).sum() > 1 else votes.idxmax()), clip


def test_the_reader_reads_every_clip(demo: tuple[Path, dict]) -> None:
    out, summary = demo
    corpus = prepare_msp_improv(out)
    assert corpus.failures == []
    assert len(corpus.clips) == summary["clips"] == 8
    assert summary["speakers"] == ["F01", "M01"] and sorted(corpus.clips["speaker"].unique()) == ["F01", "M01"]
    assert set(corpus.clips["session"]) == {"1"}
    assert (corpus.clips["audio"] != "").all() and (corpus.clips["video"] != "").all()
    for row in corpus.clips.itertuples():
        info = parse_clip_name(row.clip)
        assert info is not None and Path(row.audio) == out / "session1" / info["sentence"] / info["recording"] / f"{row.clip}.wav"
        assert Path(row.video) == Path(row.audio).with_suffix(".avi")
        assert row.sex == ("Female" if row.speaker == "F01" else "Male")
    meta = pd.read_csv(out / "metadata" / "clips.csv")
    assert list(meta["clip"]) == list(corpus.clips["clip"])
    assert summary["consensus"] == corpus.clips["consensus"].value_counts().sort_index().to_dict()
    assert corpus.clips["arousal"].corr(meta["arousal"]) > 0.7, "raters' arousal follows the clip's"


def test_header_lines_agree_with_their_raters(demo: tuple[Path, dict]) -> None:
    out, _ = demo
    chunks = (out / "Evaluation.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert len(chunks) == 8
    for chunk in chunks:
        _check_block(*_parse_block(chunk))
    letters = []
    for i in range(300):
        block, letter = dm.evaluation_block("MSP-IMPROV-S01N-M01-T-MF01", "neutral", (2.3, 3.0, 3.0), np.random.default_rng(i))
        _check_block(*_parse_block(block))
        letters.append(letter)
    assert {"N", "X"} <= set(letters) <= {"A", "H", "S", "N", "O", "X"}


def test_attributes_drive_the_prosody(demo: tuple[Path, dict]) -> None:
    calm, excited = dm.prosody((1.5, 3.0, 3.0), 50.0, 1.0, 1.0), dm.prosody((4.5, 3.0, 3.0), 50.0, 1.0, 1.0)
    assert excited[0] > calm[0] and excited[1] > calm[1] and excited[2] > calm[2], "arousal raises pitch, rate and loudness"
    sad, glad = dm.prosody((3.0, 1.0, 3.0), 50.0, 1.0, 1.0), dm.prosody((3.0, 5.0, 3.0), 50.0, 1.0, 1.0)
    assert (sad[3], glad[3]) == (0, 4) and glad[0] > sad[0], "valence widens the pitch range and raises pitch"
    out, _ = demo
    meta = pd.read_csv(out / "metadata" / "clips.csv")
    rms = [float(np.sqrt(np.mean(load_audio(out / p) ** 2))) for p in _wavs(out, meta["clip"])]
    assert pd.Series(rms).corr(meta["gain"], method="spearman") > 0.8
    assert pd.Series(rms).corr(meta["arousal"], method="spearman") > 0.6


def _wavs(out: Path, clips: pd.Series) -> list[Path]:
    paths = []
    for clip in clips:
        info = parse_clip_name(clip)
        assert info is not None
        paths.append(Path(f"session{info['session']}") / info["sentence"] / info["recording"] / f"{clip}.wav")
    return paths


def test_videos_carry_the_speech_and_a_real_face(demo: tuple[Path, dict]) -> None:
    import cv2

    out, _ = demo
    video = next(out.rglob("*.avi"))
    info = probe(video)
    assert info.has_audio and info.has_video and (info.width, info.height) == (240, 180)
    assert abs(info.duration - probe(video.with_suffix(".wav")).duration) < 0.15
    frame = next(iter_frames(video)).image
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    assert len(cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(30, 30))) > 0


def test_same_settings_same_bytes_and_reuse(demo: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = demo
    again = dm.make_demo_msp_improv(out, seed=3, sessions=1, clips_per_speaker=4, workers=1, progress=False)
    assert again["reused"] and again["files"] == summary["files"]
    twin = tmp_path / "twin"
    code = f"from ssl_aver.app.demo_corpora.msp_improv import make_demo_msp_improv as m; m({str(twin)!r}, seed=3, sessions=1, clips_per_speaker=4, workers=2, progress=False)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": "7"})
    for rel in summary["files"]:
        assert (out / rel).read_bytes() == (twin / rel).read_bytes(), rel
    with pytest.raises(UserError, match="pass force"):
        dm.make_demo_msp_improv(twin, seed=4, sessions=1, clips_per_speaker=1, progress=False)
    other = dm.make_demo_msp_improv(twin, seed=4, sessions=1, clips_per_speaker=1, workers=1, force=True, progress=False)
    assert other["clips"] == 2 and sorted(p.name for p in twin.rglob("*.wav")) == sorted(Path(f).name for f in other["files"] if f.endswith(".wav"))
