"""`ssl-aver mer2023`: MER2023's protocol on a tiny release with given feature stores (nothing is
extracted): k-fold cross-validation on the training clips, fold models averaged on every test clip,
scores on the labelled test clips, one submission per test set; and MER2023's rated valence as the
MER head's extra target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, mean_squared_error

from finetune.data import load_task
from finetune.heads.mer import MERHead
from finetune.mer2023 import build_config, mer2023
from finetune.predict import load
from ssl_aver.av_dataset import AVItem, collate_av
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, FeatureStore, write_clip_features
from tests.corpus_builders import write_lines, write_media

RECIPE = "recipes/finetune/mer_mer2023.yaml"
CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
VALENCE = {"neutral": 0.0, "angry": -3.0, "happy": 3.5, "sad": -2.5, "worried": -1.5, "surprise": 1.0}
TRAIN = {f"sample_{n:08d}": CLASSES[n % 6] for n in range(1, 31)}  # 5 clips per class
TEST1 = {f"sample_{n:08d}": CLASSES[n % 6] for n in range(101, 109)}  # labelled, valence too
TEST1_UNLABELLED = ["sample_00000109", "sample_00000110"]  # 109: audio only; 110: in no feature store
TEST2 = [f"sample_{n:08d}" for n in range(201, 205)]  # no label file
TEST3 = {"sample_00000301": "happy", "sample_00000302": "sad", "sample_00000303": "angry"}  # class labels only (MER-SEMI)
TEST3_UNLABELLED = ["sample_00000304", "sample_00000305"]
PARTITIONS = {"test1": sorted([*TEST1, *TEST1_UNLABELLED]), "test2": TEST2, "test3": sorted([*TEST3, *TEST3_UNLABELLED])}
TINY = ["model.audio_layers=null", "model.dim=8", "model.dropout=0.0", "train.epochs=4", "train.batch_size=8", "train.lr=3e-3",
        "eval.bootstrap=10", "progress=false", "train.num_threads=1", "device=cpu"]


def _valence(clip: str, emotion: str) -> float:
    return VALENCE[emotion] + 0.25 * (int(clip[-1]) % 3 - 1)


def _release(root: Path) -> Path:
    """MER2023's release layout (videos as empty stand-ins: the stores hold the features), with a
    malformed training row that the reader leaves out."""
    videos = [f"train/{c}.mp4" for c in TRAIN] + ["train/sample_00000099.mp4"]
    videos += [f"{p}/{c}.mp4" for p, clips in PARTITIONS.items() for c in clips]
    write_media(root, videos)
    write_lines(root / "train-label.csv", ["name,discrete,valence", *(f"{c},{e},{_valence(c, e)}" for c, e in TRAIN.items()),
                                           "sample_00000099,happy,9"])  # valence off [-5, 5]
    write_lines(root / "test1-label.csv", ["name,discrete,valence", *(f"{c},{e},{_valence(c, e)}" for c, e in TEST1.items())])
    write_lines(root / "test3-label.csv", ["name,discrete", *(f"{c},{e}" for c, e in TEST3.items())])
    return root


def _stores(root: Path) -> tuple[Path, Path]:
    """Acoustic frames [T, 8] whose first 6 columns carry the class; noisy face frames [T, 6]."""
    rng = np.random.default_rng(0)
    emotions = {**TRAIN, **TEST1, **TEST3}
    audio, video = {}, {}
    for clip in [*TRAIN, *(c for clips in PARTITIONS.values() for c in clips)]:
        if clip == "sample_00000110":
            continue
        code = np.eye(8, dtype=np.float32)[CLASSES.index(emotions.get(clip, CLASSES[int(rng.integers(6))]))]
        audio[clip] = ClipFeatures(rng.standard_normal((int(rng.integers(4, 8)), 8)).astype(np.float32) * 0.3 + 2 * code, 50.0)
        if clip != "sample_00000109":
            faces = rng.standard_normal((4, 6)).astype(np.float32) + code[:6]
            video[clip] = ClipFeatures(faces, 25.0, np.array([True, True, False, True]))
    return write_clip_features(root / "audio", audio, "audio"), write_clip_features(root / "video", video, "video")


def _overrides(root: Path, stores: tuple[Path, Path], out: Path) -> list[str]:
    return [f"data.root={root}", f"output_dir={out}", f"features.audio.store={stores[0]}", f"features.video.store={stores[1]}", *TINY]


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    base = tmp_path_factory.mktemp("mer2023")
    root, stores, out = _release(base / "release"), _stores(base / "stores"), base / "out"
    result = mer2023(build_config(RECIPE, _overrides(root, stores, out)))
    return root, stores, out, result


def _splits(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "folds.csv", dtype=str)


def test_each_training_clip_is_one_folds_dev_set_and_never_tested(protocol):
    _, _, out, result = protocol
    splits = _splits(out)
    assert sorted(splits["split"].unique()) == ["0", "1", "2", "3", "4"] and result["folds"] == 5
    train_rows = splits[splits["clip"].isin(list(TRAIN))]
    assert set(train_rows["clip"]) == set(TRAIN)  # the malformed row (sample_00000099) is in none
    for clip, rows in train_rows.groupby("clip"):
        assert sorted(rows["set"]) == ["dev", "train", "train", "train", "train"], clip
    assert sorted(result["fold_sizes"]) == [6] * 5
    # each split's test set: exactly the test clips with an emotion and a valence label (test1's)
    for _, rows in splits.groupby("split"):
        assert sorted(rows.loc[rows["set"] == "test", "clip"]) == sorted(TEST1)
    assert not set(splits["clip"]) & {*TEST1_UNLABELLED, *TEST2, *TEST3, *TEST3_UNLABELLED}


def _prior(out: Path, fold: int) -> tuple[np.ndarray, float]:
    """Class shares and mean valence of a fold's training clips, from the label file itself."""
    splits = _splits(out)
    clips = splits.loc[(splits["split"] == str(fold)) & (splits["set"] == "train"), "clip"]
    shares = np.array([sum(TRAIN[c] == e for c in clips) for e in CLASSES], np.float64) / len(clips)
    return shares, float(np.mean([_valence(c, TRAIN[c]) for c in clips]))


def test_averaged_test_predictions_are_the_mean_of_the_fold_models(protocol):
    _, (audio_path, video_path), out, result = protocol
    audio, video = FeatureStore(audio_path), FeatureStore(video_path)
    for name, clips in PARTITIONS.items():
        probs = np.zeros((5, len(clips), 6))
        valence = np.zeros((5, len(clips)))
        for fold in range(5):
            model = load(out / "folds", split=fold, device="cpu").model
            for i, clip in enumerate(clips):
                if clip not in audio and clip not in video:
                    probs[fold, i], valence[fold, i] = _prior(out, fold)
                    continue
                a = torch.from_numpy(np.array(audio.get(clip)[0])) if clip in audio else None
                v, _, present = video.get(clip) if clip in video else (None, None, None)
                item = AVItem(clip, a, None if v is None else torch.from_numpy(np.array(v)), None if v is None else torch.from_numpy(present),
                              torch.zeros(0))
                with torch.no_grad():
                    output = model(collate_av([item], (8,), (6,)))
                probs[fold, i] = torch.softmax(output["logits"], -1)[0].numpy()
                valence[fold, i] = float(output["valence"][0])
        written = pd.read_csv(out / f"predictions_{name}.csv", dtype={"clip": str})
        assert written["clip"].tolist() == clips
        np.testing.assert_allclose(written[CLASSES].to_numpy(), probs.mean(0), atol=1e-5)
        np.testing.assert_allclose(written["valence"].to_numpy(), valence.mean(0), atol=1e-5)
        assert not np.allclose(probs[0], probs[1], atol=1e-4)  # the folds' models differ, so the mean is a real average
    assert result["tests"]["test1"]["no_features"] == ["sample_00000110"]


def test_submission_lists_every_test_clip_labelled_or_not(protocol):
    _, _, out, result = protocol
    for name, clips in PARTITIONS.items():
        submission = pd.read_csv(out / f"submission_{name}.csv", dtype={"name": str})
        assert list(submission.columns) == ["name", "discrete", "valence"]
        assert submission["name"].tolist() == clips
        assert set(submission["discrete"]) <= set(CLASSES) and np.isfinite(submission["valence"]).all()
        averaged = pd.read_csv(out / f"predictions_{name}.csv", dtype={"clip": str})
        assert submission["discrete"].tolist() == [CLASSES[i] for i in averaged[CLASSES].to_numpy().argmax(1)]
        np.testing.assert_allclose(submission["valence"], averaged["valence"])
        assert result["tests"][name]["clips"] == len(clips)


def test_scores_match_sklearn_by_hand(protocol):
    _, _, out, result = protocol
    test1 = pd.read_csv(out / "submission_test1.csv", dtype={"name": str}).set_index("name").loc[list(TEST1)]
    f1 = f1_score([TEST1[c] for c in TEST1], test1["discrete"], average="weighted")
    mse = mean_squared_error([_valence(c, e) for c, e in TEST1.items()], test1["valence"])
    scores = result["tests"]["test1"]
    assert (scores["class_labelled"], scores["valence_labelled"]) == (8, 8)
    assert scores["weighted_f1"] == pytest.approx(f1) and scores["valence_mse"] == pytest.approx(mse)
    assert scores["mer_score"] == pytest.approx(f1 - 0.25 * mse)
    test3 = pd.read_csv(out / "submission_test3.csv", dtype={"name": str}).set_index("name").loc[list(TEST3)]
    assert result["tests"]["test3"]["weighted_f1"] == pytest.approx(f1_score(list(TEST3.values()), test3["discrete"], average="weighted"))
    assert result["tests"]["test3"]["valence_mse"] is None and result["tests"]["test3"]["mer_score"] is None  # MER-SEMI: class only
    assert {k: result["tests"]["test2"][k] for k in ("class_labelled", "weighted_f1", "mer_score")} == {"class_labelled": 0, "weighted_f1": None,
                                                                                                       "mer_score": None}
    # cross-validation: each fold's held-out clips, predicted by that fold's model; means over folds
    held_out = pd.read_csv(out / "predictions_train.csv", dtype={"clip": str}).set_index("clip")
    splits = _splits(out)
    f1s, mses = [], []
    for fold in range(5):
        clips = splits.loc[(splits["split"] == str(fold)) & (splits["set"] == "dev"), "clip"].tolist()
        predicted = [CLASSES[i] for i in held_out.loc[clips, CLASSES].to_numpy().argmax(1)]
        f1s.append(f1_score([TRAIN[c] for c in clips], predicted, average="weighted"))
        mses.append(mean_squared_error([_valence(c, TRAIN[c]) for c in clips], held_out.loc[clips, "valence"]))
    assert [f["weighted_f1"] for f in result["cv"]["per_fold"]] == pytest.approx(f1s)
    assert result["cv"]["weighted_f1"] == pytest.approx(np.mean(f1s)) and result["cv"]["valence_mse"] == pytest.approx(np.mean(mses))
    assert result["cv"]["mer_score"] == pytest.approx(np.mean(f1s) - 0.25 * np.mean(mses))
    assert json.loads((out / "table.json").read_text())["tests"]["test1"]["mer_score"] == pytest.approx(f1 - 0.25 * mse)
    assert "| test1 | 10 | 8 |" in (out / "table.md").read_text()


def test_rated_valence_is_the_mer_heads_extra_target(protocol):
    root, _, _, _ = protocol
    cfg = build_config(RECIPE, [f"data.root={root}"])
    task = load_task(cfg.data)
    assert task.extra == {"valence": ["valence"]} and task.all_targets == [*(f"cls_{c}" for c in CLASSES), "valence"]
    assert set(task.labels["valence_source"]) == {"corpus"} and task.labels["valence"].notna().all()
    assert set(task.labels["clip"]) == {*TRAIN, *TEST1}
    reasons = {d["clip"]: d["reason"] for d in task.dropped}
    assert reasons["sample_00000301"] == "no regression label (valence) for data.extra_targets"  # a class without valence
    assert reasons["sample_00000201"] == "no multiclass label (emotion)"
    # the head checks the source and the scale of MER2023's ratings
    train = task.labels[task.labels["partition"] == "train"]
    MERHead._check_valence({"valence_source": "corpus"}, train, (-5.0, 5.0))
    with pytest.raises(UserError, match=r"outside model.valence_scale \[1.0, 7.0\]"):
        MERHead._check_valence({"valence_source": "corpus"}, train, (1.0, 7.0))
    with pytest.raises(UserError, match="model.valence_source is 'derived_crema_d' but the run's valence targets are 'corpus'"):
        MERHead._check_valence({"valence_source": "derived_crema_d"}, train, (-5.0, 5.0))
    cfg.data.extra_targets = ["arousal"]
    with pytest.raises(UserError, match=r"'arousal' is no target group of corpus 'mer2023'; choose from multiclass/emotion, regression/valence"):
        load_task(cfg.data)


def test_cli_reuses_finished_folds_and_refuses_what_the_protocol_cannot_take(protocol, capsys):
    root, stores, out, result = protocol
    weights = {p: p.stat().st_mtime_ns for p in (out / "folds").glob("split_*/model.safetensors")}
    assert len(weights) == 5
    assert main(["mer2023", "--config", RECIPE, *_overrides(root, stores, out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in weights} == weights  # inputs unchanged: the folds' models are reused
    printed = capsys.readouterr().out
    assert "train (5-fold CV)" in printed and "test1: 10 clips (8 labelled)" in printed
    assert json.loads((out / "table.json").read_text())["tests"]["test1"]["mer_score"] == pytest.approx(result["tests"]["test1"]["mer_score"])
    # other folds (another shuffle) are never reported with the old folds' models
    assert main(["mer2023", "--config", RECIPE, *_overrides(root, stores, out), "splits.seed=1"]) == 2
    assert "was computed from other inputs (changed: splits_sha256)" in capsys.readouterr().err
    assert main(["mer2023", "--config", RECIPE, *_overrides(root, stores, out)]) == 0
    for bad, message in [
        ("splits.protocol=random", "set splits.protocol=kfold"),
        ("data.extra_targets=[]", "set data.extra_targets=[valence]"),
        (f"splits.file={out / 'folds.csv'}", "makes its own folds of the training clips"),
        ("data.options.partitions=[train,test2]", "no clip of test2 has an emotion and a valence label"),
    ]:
        assert main(["mer2023", "--config", RECIPE, *_overrides(root, stores, out / "bad"), bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
