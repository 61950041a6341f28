"""`ssl-aver finetune` on every labelled-corpus layout (MSP-IMPROV, MSP-Podcast, MER2023, a user's
CSV), from the corpus's own media through openSMILE features to per-split predictions, and the
one-line errors a user gets for a wrong column, target or split protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_aver.app.cli import main
from tests.corpus_builders import msp_improv_block, write_lines, write_media, write_msp_improv, write_msp_podcast

CONFIG = "recipes/finetune/ser_crema_d.yaml"
TINY = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "train.epochs=20", "train.lr=3e-3", "eval.bootstrap=20",
    "progress=false", "train.num_threads=1",
]


def _tone(classes: list[str], name: str) -> float:
    """The pitch that carries class `name`: what the head has to learn."""
    return 200.0 + 120.0 * classes.index(name)


IMPROV_LETTERS = {"A": ("anger", "Angry"), "H": ("happiness", "Happy"), "S": ("sadness", "Sad"), "N": ("neutral", "Neutral")}
#: (clip, consensus letter): 6 speakers of 3 sessions, each with one clip of every class and one
#: without agreement (X) in a neutral scenario
IMPROV_CLIPS = [
    (f"MSP-IMPROV-S{s * 5 + i + 1:02d}{'N' if letter == 'X' else letter}-{speaker}-R-{'FM' if speaker[0] == 'F' else 'MF'}{i + 1:02d}", letter)
    for s, speaker in enumerate(["F01", "M01", "F02", "M02", "F03", "M03"]) for i, letter in enumerate([*IMPROV_LETTERS, "X"])
]


def _msp_improv(root: Path) -> Path:
    """Evaluation.txt and wavs of IMPROV_CLIPS, each the tone of its scenario's emotion."""
    classes = [c for c, _ in IMPROV_LETTERS.values()]
    lines: list[str] = []
    for clip, letter in IMPROV_CLIPS:
        emotion = IMPROV_LETTERS.get(letter, ("", "Neutral"))[1]
        raters = [("WK1", emotion), ("WK2", emotion), ("WK3", "Other")] if letter != "X" else [("WK1", "Angry"), ("WK2", "Sad")]
        lines += msp_improv_block(clip, letter, [3.0, 3.0, 3.0, 4.0], raters)
    target = {clip: IMPROV_LETTERS[clip[14]][0] for clip, _ in IMPROV_CLIPS}
    return write_msp_improv(root, "\n".join(lines), dict.fromkeys(target, "a"), {c: _tone(classes, e) for c, e in target.items()})


def _msp_podcast(root: Path) -> Path:
    """Speakers 1-3 Train, 4 (+ a clip of an Unknown speaker) Development, 5 Test1, 6 Test2; per
    speaker one clip of each of the 4 classes, one contempt (C) clip and one without agreement (X).
    Arousal and valence follow the class, so pitch carries them too."""
    classes = ["anger", "happiness", "neutral", "sadness"]
    letters = {"A": "anger", "H": "happiness", "N": "neutral", "S": "sadness", "C": "neutral", "X": "happiness"}
    attributes = {"anger": (6.0, 2.0), "happiness": (5.0, 6.0), "neutral": (3.5, 4.0), "sadness": (2.0, 2.5)}
    sets = ["Train", "Train", "Train", "Development", "Test1", "Test2"]
    rng = np.random.default_rng(0)
    rows: list[str] = []
    audio: dict[str, float] = {}
    for s, split in enumerate(sets):
        for i, (letter, like) in enumerate(letters.items()):
            name = f"MSP-PODCAST_{s + 1:04d}_{i + 1:04d}"
            arousal, valence = np.array(attributes[like]) + rng.uniform(-0.4, 0.4, 2)
            rows.append(f"{name}.wav,{letter},{arousal:.2f},{valence:.2f},{rng.uniform(2, 6):.2f},{s + 1},{'Female' if s % 2 else 'Male'},{split}")
            audio[name] = _tone(classes, like)
    rows.append("MSP-PODCAST_0099_0001.wav,H,5.1,5.8,4.0,Unknown,Unknown,Development")
    audio["MSP-PODCAST_0099_0001"] = _tone(classes, "happiness")
    return write_msp_podcast(root, rows, audio)


def _mer2023(root: Path) -> Path:
    """The release layout: 24 training videos (4 per class) whose sound track is the tone of their
    class, train-label.csv, and test1 clips that a run on the training partition never reads."""
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    rows = [f"sample_{n + 1:08d},{classes[n % 6]},{n % 6 - 2.5}" for n in range(24)]
    write_lines(root / "train-label.csv", ["name,discrete,valence", *rows])
    write_lines(root / "test1-label.csv", ["name,discrete,valence", "sample_00000101,happy,1.5"])
    media = {f"train/sample_{n + 1:08d}.mp4": _tone(classes, classes[n % 6]) for n in range(24)}
    return write_media(root, {**media, "test1/sample_00000101.mp4": None, "test1/sample_00000102.mp4": None})


def _own_csv(root: Path) -> Path:
    """A user's corpus: their own column names and labels, 6 speakers with 5 clips each."""
    classes = ["calm", "glad", "tense"]
    rows = []
    media: dict[str, float] = {}
    for s in range(6):
        for i in range(5):
            label = classes[(s + i) % 3]
            rows.append(f"u{s}{i},clips/u{s}{i}.wav,p{s},{label}")
            media[f"clips/u{s}{i}.wav"] = _tone(classes, label)
    write_lines(root / "my_labels.csv", ["utt,wav_path,who,emo", *rows])
    return write_media(root, media)


OWN_COLUMNS = ["data.corpus=csv", "data.options.manifest=my_labels.csv", "data.options.columns={clip: utt, audio: wav_path, speaker: who, label: emo}"]


@pytest.fixture(scope="module")
def improv(tmp_path_factory) -> Path:
    return _msp_improv(tmp_path_factory.mktemp("msp_improv"))


@pytest.fixture(scope="module")
def podcast(tmp_path_factory) -> Path:
    return _msp_podcast(tmp_path_factory.mktemp("msp_podcast"))


@pytest.fixture(scope="module")
def mer(tmp_path_factory) -> Path:
    return _mer2023(tmp_path_factory.mktemp("mer2023"))


@pytest.fixture(scope="module")
def own_csv(tmp_path_factory) -> Path:
    return _own_csv(tmp_path_factory.mktemp("csv"))


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    """Feature stores shared by the runs of one module (each corpus's clips extracted once)."""
    return tmp_path_factory.mktemp("features")


def _finetune(root: Path, out: Path, cache: Path, *overrides: str) -> dict:
    code = main(["finetune", "--config", CONFIG, f"data.root={root}", f"output_dir={out}", f"features.cache={cache / root.name}", *TINY, *overrides])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def _predicted(out: Path, split: int) -> list[str]:
    return pd.read_csv(out / f"split_{split:02d}" / "predictions.csv", dtype={"clip": str})["clip"].tolist()


def _test_speakers(out: Path, split: int) -> set[str]:
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    return set(splits.loc[(splits["split"] == str(split)) & (splits["set"] == "test"), "actor"])


def test_msp_improv_kfold_tests_each_speakers_labelled_clips_once(improv, feature_cache, tmp_path):
    out = tmp_path / "improv"
    summary = _finetune(improv, out, feature_cache, "data.corpus=msp_improv", "splits.protocol=kfold", "splits.k=3")
    assert (summary["task"], summary["corpus"], summary["clips"], len(summary["splits"])) == ("multiclass", "msp_improv", 24, 3)
    assert sorted(d["clip"] for d in summary["dropped"]) == sorted(c for c, letter in IMPROV_CLIPS if letter == "X")  # no class
    tested: list[str] = []
    for k in range(3):
        clips = _predicted(out, k)
        assert {c.split("-")[3] for c in clips} == _test_speakers(out, k)
        tested += clips
    assert sorted(tested) == sorted(c for c, letter in IMPROV_CLIPS if letter != "X")
    assert list(pd.read_csv(out / "split_00" / "predictions.csv").columns) == ["clip", "anger", "happiness", "sadness", "neutral"]


def test_msp_podcast_own_partitions_for_classes_and_attributes(podcast, feature_cache, tmp_path, capsys):
    table = pd.read_csv(podcast / "Labels" / "labels_consensus.csv", dtype=str)
    test1 = table.loc[table["Split_Set"] == "Test1", "FileName"].str.removesuffix(".wav")
    out = tmp_path / "classes"
    summary = _finetune(podcast, out, feature_cache, "data.corpus=msp_podcast", "data.options.classes=4", "splits.protocol=corpus")
    assert (summary["task"], len(summary["splits"])) == ("multiclass", 1)
    # Test1 is the test set (Test2 is no set of the default splits.partitions); contempt and X have no class of the four
    assert sorted(_predicted(out, 0)) == sorted(test1[~table.loc[test1.index, "EmoClass"].isin(["C", "X"])])
    splits = pd.read_csv(out / "splits.csv", dtype=str).set_index("clip")
    assert splits.loc["MSP-PODCAST_0099_0001", "set"] == "dev", "a clip of an Unknown speaker keeps its partition"
    out = tmp_path / "attributes"
    summary = _finetune(podcast, out, feature_cache, "data.corpus=msp_podcast", "data.target=regression", "splits.protocol=corpus",
                        "train.epochs=30", "train.lr_patience=null", "train.early_stop_patience=null")
    assert summary["task"] == "regression"
    assert f"ser [audio]: CCC {summary['overall']['ccc']['mean']:.4f}" in capsys.readouterr().out
    predictions = pd.read_csv(out / "split_00" / "predictions.csv", dtype={"clip": str})
    assert sorted(predictions["clip"]) == sorted(test1)
    truth = table.set_index(table["FileName"].str.removesuffix(".wav")).loc[predictions["clip"], ["EmoAct", "EmoVal", "EmoDom"]].astype(float)
    split = json.loads((out / "split_00" / "metrics.json").read_text())
    for attribute, column in (("arousal", "EmoAct"), ("valence", "EmoVal"), ("dominance", "EmoDom")):
        t, q = truth[column].to_numpy(), predictions[attribute].to_numpy()
        ccc = 2 * np.cov(t, q, bias=True)[0, 1] / (t.var() + q.var() + (t.mean() - q.mean()) ** 2)
        assert split[f"ccc_{attribute}"] == pytest.approx(ccc, rel=1e-4, abs=1e-6)
        assert summary["overall"][f"ccc_{attribute}"]["mean"] == pytest.approx(split[f"ccc_{attribute}"])
    # pitch follows the class, and arousal and valence follow it: learnt on an unseen speaker
    assert split["ccc_arousal"] > 0.5 and split["ccc_valence"] > 0.5


def test_mer2023_kfold_over_its_training_clips(mer, feature_cache, tmp_path):
    out = tmp_path / "mer"
    summary = _finetune(mer, out, feature_cache, "data.corpus=mer2023", "data.options.partitions=[train]",
                        "splits.protocol=kfold", "splits.k=3")
    assert (summary["task"], summary["clips"], len(summary["splits"])) == ("multiclass", 24, 3)
    tested: list[str] = []
    for k in range(3):
        clips = _predicted(out, k)
        assert set(clips) == _test_speakers(out, k)  # every clip is its own speaker
        tested += clips
    assert sorted(tested) == [f"sample_{n:08d}" for n in range(1, 25)]  # each training clip once, no test1 clip
    store = json.loads((Path(summary["stores"]["audio"]) / "summary.json").read_text())
    assert (store["extractor"], store["extracted_now"], store["failures"]) == ("smile", 24, []), "openSMILE read every video's sound track"


def test_csv_with_the_users_own_columns_fine_tunes_with_no_new_code(own_csv, feature_cache, tmp_path):
    out = tmp_path / "mine"
    summary = _finetune(own_csv, out, feature_cache, *OWN_COLUMNS, "splits.protocol=random", "splits.k=2")
    assert (summary["task"], summary["corpus"], summary["clips"], len(summary["splits"])) == ("multiclass", "csv", 30, 2)
    manifest = pd.read_csv(own_csv / "my_labels.csv", dtype=str)
    for k in range(2):
        predictions = pd.read_csv(out / f"split_{k:02d}" / "predictions.csv", dtype={"clip": str})
        assert list(predictions.columns) == ["clip", "calm", "glad", "tense"]
        assert sorted(predictions["clip"]) == sorted(manifest.loc[manifest["who"].isin(_test_speakers(out, k)), "utt"])
    # the pitch carries the user's labels: far above chance (1/3) on unseen speakers
    assert summary["overall"]["accuracy"]["mean"] > 0.6


def test_user_errors_are_one_line_naming_the_fix(own_csv, podcast, tmp_path, capsys):
    def error(root: Path, *overrides: str) -> str:
        assert main(["finetune", "--config", CONFIG, f"data.root={root}", f"output_dir={tmp_path / 'run'}", *TINY, *overrides]) == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and message.startswith("ssl-aver finetune: error: ")
        return message

    missing = error(own_csv, *OWN_COLUMNS, "data.options.columns.label=emotion")
    assert "no column 'emotion' (data.options.columns.label); available columns: utt, wav_path, who, emo" in missing
    regression = error(own_csv, *OWN_COLUMNS, "data.target=regression")
    assert "corpus 'csv' offers no regression target; it offers: multiclass" in regression
    for protocol in ("random", "kfold"):
        unknown = error(podcast, "data.corpus=msp_podcast", f"splits.protocol={protocol}")
        assert "no speaker id" in unknown and "use splits.protocol=corpus" in unknown
    assert not (tmp_path / "run" / "features").exists(), "refused before extracting any features"
