"""`ssl-aver pretext build/finalize` end to end on a tiny generated corpus."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ssl_aver.app.cli import main
from ssl_aver.io import read_json
from ssl_aver.store import WindowStore

OUTPUTS = ("labels.csv", "summary.json", "features.f32", "index.npy", "store.json")


def _build(corpus: Path, faces: Path, out: Path, *extra: str) -> int:
    return main(["pretext", "build", "--corpus", str(corpus), "--face-dir", str(faces), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def built(av_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretext_out")
    assert _build(av_corpus["corpus"], av_corpus["faces"], out) == 0
    return out


def test_build_writes_labels_store_plots_and_summary(built: Path) -> None:
    labels = pd.read_csv(built / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels.columns[:13]) == [
        "clip", "window", "start_s", "end_s", "rms", "var_upper", "var_lower", "var_whole",
        "energy", "face_upper", "face_lower", "face_whole", "au_emotion",
    ]  # fmt: skip
    assert labels.columns[-1] == "path" and Path(labels["path"][0]).is_file()
    energy = labels.groupby("clip")["energy"].agg(lambda s: set(s.astype(str)))
    assert energy["spk1/loud"] == {"1"} and energy["spk1/quiet"] == {"0"}
    by_clip = labels.set_index(["clip", "window"])
    assert by_clip.loc[("spk1/loud", "0"), "face_lower"] == "1" and by_clip.loc[("spk1/loud", "0"), "face_upper"] == "0"
    assert by_clip.loc[("spk1/quiet", "1"), "face_upper"] == "1"
    assert set(labels.loc[labels["clip"] == "spk1/loud", "au_emotion"]) == {"happiness"}
    assert set(labels.loc[labels["clip"] == "spk1/quiet", "au_emotion"]) == {"surprise"}
    assert set(labels.loc[labels["clip"] == "spk2/speech", "au_emotion"]) == {"other"}
    for clip in ("spk2/noface", "spk3/nocols"):  # kept for energy, face labels missing (empty cells)
        row = labels[labels["clip"] == clip].iloc[0]
        assert row["energy"] in ("0", "1") and row["face_upper"] == "" and row["au_emotion"] == ""
    summary = read_json(built / "summary.json")
    assert summary["clips"] == 5 and summary["windows"] == len(labels)
    assert summary["thresholds"]["rms"] == pytest.approx(pd.to_numeric(labels["rms"]).mean())
    assert summary["class_counts"]["au_emotion"]["missing"] == 2
    store = WindowStore(built)
    assert len(store) == len(labels) and store.features(0).shape[1] == 130
    assert all((built / f"hist_{s}.png").is_file() for s in ("rms", "var_upper", "var_lower", "var_whole"))


def test_every_bad_input_is_listed_with_a_one_line_reason(built: Path) -> None:
    summary = read_json(built / "summary.json")
    reasons = {f["clip"]: f["reason"] for f in summary["failures"]}
    assert "empty" in reasons["bad/empty"]
    assert "unreadable" in reasons["bad/notes"]
    assert "bad/truncated" in reasons
    assert "too short" in reasons["bad/short"]
    assert "silent audio" in reasons["bad/silent"]
    assert "no audio stream" in reasons["spk2/mute"]
    assert all("\n" not in r for r in reasons.values())
    missing = {f["clip"]: f["reason"] for f in summary["face_missing"]}
    assert "no usable face frames" in missing["spk2/noface"] and "lacks landmark columns" in missing["spk3/nocols"]


def test_rerun_resumes_without_recomputing_and_gives_identical_output(av_corpus, built: Path) -> None:
    before = {name: (built / name).read_bytes() for name in OUTPUTS}
    results = sorted((built / "clips").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in results if read_json(p)["status"] == "ok"]
    assert _build(av_corpus["corpus"], av_corpus["faces"], built) == 0
    assert [p.stat().st_mtime_ns for p in results if read_json(p)["status"] == "ok"] == stamps
    assert {name: (built / name).read_bytes() for name in OUTPUTS} == before


def test_finalize_changes_thresholds_without_recomputing(built: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.json")}
    assert main(["pretext", "finalize", "--out", str(out), "--threshold-stat", "median", "--au-match", "all"]) == 0
    summary = read_json(out / "summary.json")
    labels = pd.read_csv(out / "labels.csv")
    assert summary["thresholds"]["rms"] == pytest.approx(labels["rms"].median())
    assert set(labels.loc[labels["clip"] == "spk1/quiet", "au_emotion"]) == {"other"}  # AU5 missing for surprise
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_shards_and_workers_give_the_same_labels(av_corpus, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    assert _build(av_corpus["corpus"], av_corpus["faces"], out, "--shard", "1/2", "--workers", "2") == 0
    assert not (out / "labels.csv").exists()
    assert _build(av_corpus["corpus"], av_corpus["faces"], out, "--shard", "0/2") == 0
    assert main(["pretext", "finalize", "--out", str(out)]) == 0
    assert (out / "labels.csv").read_bytes() == (built / "labels.csv").read_bytes()
    assert (out / "features.f32").read_bytes() == (built / "features.f32").read_bytes()


def test_changed_settings_are_not_silently_reused(av_corpus, built: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "renorm"
    shutil.copytree(built, out)
    assert _build(av_corpus["corpus"], av_corpus["faces"], out, "--landmark-norm", "interocular", "--tasks", "landmarks") == 0
    labels = pd.read_csv(out / "labels.csv")
    old = pd.read_csv(built / "labels.csv")
    assert labels["rms"].isna().all() and labels["var_upper"].max() < old["var_upper"].max()
    assert read_json(out / "summary.json")["unavailable"]["energy"].startswith("not requested")


def test_user_errors_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["pretext", "build", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--face-dir", str(tmp_path)]) == 2
    assert main(["pretext", "build", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"), "--tasks", "energy,smile"]) == 2
    assert main(["pretext", "build", "--corpus", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # openface needs --face-dir
    assert main(["pretext", "finalize", "--out", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "smile" in err[1] and "--face-dir" in err[2] and "pretext build" in err[3]


def test_mediapipe_backend_labels_real_face_video_without_aus(pt, tmp_path: Path) -> None:
    corpus = tmp_path / "mp"
    corpus.mkdir()
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(pt.feat_data / "single_face.mp4"), "-f", "lavfi",
         "-i", "sine=frequency=200:sample_rate=16000:duration=2.4", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
         "-c:a", "aac", "-shortest", str(corpus / "face.mp4")],
        check=True,
    )  # fmt: skip
    out = tmp_path / "out"
    code = main(["pretext", "build", "--corpus", str(corpus), "--out", str(out), "--face-backend", "mediapipe", "--every", "2", "--quiet", "max_side=320"])
    assert code == 0
    labels = pd.read_csv(out / "labels.csv")
    assert labels["var_whole"].notna().all() and labels["au_emotion"].isna().all()
    summary = read_json(out / "summary.json")
    assert "action units" in summary["unavailable"]["au"]
