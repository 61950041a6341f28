from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ssl_aver.corpora.msp_podcast import prepare_msp_podcast
from ssl_aver.errors import UserError
from tests.corpus_builders import PODCAST_HEADER, write_lines, write_media, write_msp_podcast

EIGHT = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
#: paper 2's CREMA-D trial files, first rows of github ilucasgoncalves/VAVL label_consensus_1.csv
VOTES_HEADER = "FileName,angry,sad,disgust,fear,neutral,happy,SpkrID,Gender,Split_Set"


def failure_lines(corpus) -> dict[int, str]:
    return {f["line"]: f["reason"] for f in corpus.failures}


@pytest.fixture
def podcast(tmp_path: Path) -> Path:
    names = ("0001_0001", "0001_0002", "0002_0001", "0002_0002", "0003_0002", "0003_0003", "0003_0005", "0003_0006")
    return write_msp_podcast(tmp_path / "MSP-Podcast", [
        "MSP-PODCAST_0001_0001.wav,A,5.2,2.0,4.8,127,Female,Train",
        "MSP-PODCAST_0001_0002.wav,N,4.0,4.2,3.8,Unknown,Unknown,Development",
        "MSP-PODCAST_0002_0001.wav,X,3.5,4.5,3.0,128,Male,Test1",
        "MSP-PODCAST_0002_0002.wav,O,3.5,,3.0,128,Male,Test2",
        "MSP-PODCAST_0003_0001.wav,C,3.0,2.5,4.0,129,Male,Train",  # line 6: no audio file
        "MSP-PODCAST_0003_0002.wav,Z,3.0,2.5,4.0,129,Male,Train",  # line 7: unknown letter
        "MSP-PODCAST_0003_0003.wav,H,9.0,2.5,4.0,129,Male,Train",  # line 8: arousal off the 1-7 scale
        "MSP-PODCAST_0003_0004.wav,H,3.0",  # line 9: too few fields
        "MSP-PODCAST_0001_0001.wav,S,2.0,2.0,2.0,127,Female,Train",  # line 10: repeated clip
        "MSP-PODCAST_0003_0005.wav,C,2.0,3.0,4.0,130,Female,Test1",
        "MSP-PODCAST_0003_0006.wav,U,6.0,5.0,5.0,130,Female,Train",
    ], [f"MSP-PODCAST_{name}" for name in names])


def test_consensus_layout_parses_classes_attributes_speakers_and_partitions(podcast):
    corpus = prepare_msp_podcast(podcast)
    table = corpus.clips.set_index("clip")
    assert list(table.index) == [f"MSP-PODCAST_{n}" for n in ("0001_0001", "0001_0002", "0002_0001", "0002_0002", "0003_0005", "0003_0006")]
    assert corpus.classes == EIGHT
    onehot = [f"cls_{c}" for c in EIGHT]
    assert corpus.targets == {"multiclass": {"consensus": onehot}, "regression": {"attributes": ["arousal", "valence", "dominance"]}}
    first = table.loc["MSP-PODCAST_0001_0001"]
    assert first[onehot].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (first["arousal"], first["valence"], first["dominance"]) == (5.2, 2.0, 4.8)
    assert (first["speaker"], first["sex"], first["partition"]) == ("127", "Female", "Train")
    assert first["audio"] == str(podcast / "Audios" / "MSP-PODCAST_0001_0001.wav") and first["video"] == ""
    assert table.loc["MSP-PODCAST_0003_0006", onehot].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]  # U = surprise
    assert table.loc["MSP-PODCAST_0003_0005", "cls_contempt"] == 1
    # Unknown speaker / gender: nobody's speaker, keeps its corpus partition
    unknown = table.loc["MSP-PODCAST_0001_0002"]
    assert unknown["speaker"] is None and unknown["sex"] is None and unknown["partition"] == "Development"
    # X (no agreement) and O (other): no class, attributes kept; an empty valence cell stays missing
    for clip in ("MSP-PODCAST_0002_0001", "MSP-PODCAST_0002_0002"):
        assert table.loc[clip, onehot].isna().all()
    assert table.loc["MSP-PODCAST_0002_0001", "arousal"] == 3.5
    assert math.isnan(table.loc["MSP-PODCAST_0002_0002", "valence"])
    reasons = failure_lines(corpus)
    assert sorted(reasons) == [6, 7, 8, 9, 10]
    assert reasons[6].startswith("audio not found") and "MSP-PODCAST_0003_0001.wav" in reasons[6]
    assert "EmoClass 'Z'" in reasons[7] and "EmoAct 9.0 is outside [1, 7]" in reasons[8]
    assert reasons[9] == "3 fields where the header has 8" and "repeats labels_consensus.csv line 2" in reasons[10]
    assert {f["clip"] for f in corpus.failures if "clip" in f} == {f"MSP-PODCAST_{n}" for n in ("0003_0001", "0003_0002", "0003_0003", "0001_0001")}
    summary = corpus.summary()
    assert summary["speakers"] == 3 and summary["partitions"] == {"Development": 1, "Test1": 2, "Test2": 1, "Train": 2}


def test_class_set_option_leaves_other_emotions_unlabelled(podcast):
    four = prepare_msp_podcast(podcast, classes=4)  # an integer, as OmegaConf reads data.options.classes=4
    table = four.clips.set_index("clip")
    assert four.classes == ["anger", "happiness", "neutral", "sadness"]
    assert table.loc["MSP-PODCAST_0001_0001", [f"cls_{c}" for c in four.classes]].tolist() == [1, 0, 0, 0]
    assert table.loc["MSP-PODCAST_0001_0002", "cls_neutral"] == 1
    assert table.loc["MSP-PODCAST_0003_0005", [f"cls_{c}" for c in four.classes]].isna().all()  # contempt
    assert table.loc["MSP-PODCAST_0003_0005", "arousal"] == 2.0
    chosen = prepare_msp_podcast(podcast, classes=["U", "contempt"])
    assert chosen.classes == ["surprise", "contempt"]
    assert chosen.clips.set_index("clip").loc["MSP-PODCAST_0003_0006", ["cls_surprise", "cls_contempt"]].tolist() == [1, 0]
    with pytest.raises(UserError, match="'O' is no MSP-Podcast emotion"):
        prepare_msp_podcast(podcast, classes=["A", "O"])
    with pytest.raises(UserError, match="class set"):
        prepare_msp_podcast(podcast, classes="5")


def test_older_table_name_and_explicit_labels_path(tmp_path):
    root = write_media(tmp_path / "msp", ["Audios/MSP-PODCAST_0100_0001.wav"])
    write_lines(root / "Labels" / "labels_concensus.csv", [PODCAST_HEADER, "MSP-PODCAST_0100_0001.wav,H,4,5,4,7,Male,Train"])
    assert prepare_msp_podcast(root).clips["clip"].tolist() == ["MSP-PODCAST_0100_0001"]
    write_lines(tmp_path / "mine.csv", [PODCAST_HEADER, "MSP-PODCAST_0100_0001,S,4,5,4,7,Male,Test1"])  # no extension: .wav assumed
    corpus = prepare_msp_podcast(root, labels=str(tmp_path / "mine.csv"))
    assert corpus.clips.loc[0, "cls_sadness"] == 1 and corpus.clips.loc[0, "partition"] == "Test1"


def test_paper2_crema_d_partition_unsmooths_votes_and_finds_both_media(tmp_path):
    audio = ("1026_IEO_ANG_HI", "1001_WSI_NEU_XX", "1019_TAI_HAP_XX", "1002_TIE_SAD_XX", "1003_DFA_NEU_XX", "1004_IEO_FEA_HI")
    root = write_media(tmp_path / "CREMA-D", [*(f"AudioWAV/{c}.wav" for c in audio), *(f"VideoFlash/{c}.flv" for c in ("1026_IEO_ANG_HI", "1005_ITS_HAP_XX"))])
    write_lines(tmp_path / "label_consensus_1.csv", [
        VOTES_HEADER,
        "1026_IEO_ANG_HI.wav,0.856,0.01,0.01,0.104,0.01,0.01,1026,Male,Train",
        "1001_WSI_NEU_XX.wav,0.095454545,0.01,0.01,0.01,0.779090909,0.095454545,1001,Male,Train",
        "1019_TAI_HAP_XX.wav,0.01,0.01,0.1275,0.01,0.01,0.8325,1019,Male,Development",
        "1002_TIE_SAD_XX.wav,0.48,0.48,0.01,0.01,0.01,0.01,1002,Female,Test",  # tied 1/2, 1/2
        "1003_DFA_NEU_XX.wav,0.166666667,0.01,0.01,0.01,0.793333333,0.01,1003,Female,Test",  # 2 of 12 = exactly 1/6
        "1004_IEO_FEA_HI.wav,0.005,0.015,0.01,0.01,0.95,0.01,1004,Female,Test",  # line 7: below the 0.01 floor
        "1005_ITS_HAP_XX.wav,0.01,0.01,0.01,0.01,0.01,0.95,1005,Male,Train",  # video only
        "1006_ITS_HAP_XX.wav,0.01,0.01,0.01,0.01,0.01,0.95,1006,Male,Train",  # line 9: no media
    ])
    corpus = prepare_msp_podcast(root, labels=str(tmp_path / "label_consensus_1.csv"), audio_dir="AudioWAV", video_dir="VideoFlash")
    classes = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert corpus.classes == classes
    shares, multi, onehot = ([f"{p}_{c}" for c in classes] for p in ("share", "multi", "cls"))
    assert corpus.targets == {"multiclass": {"plurality": onehot}, "distribution": {"votes": shares}, "multilabel": {"votes": multi}}
    table = corpus.clips.set_index("clip")
    expected = {  # p = (s - 0.01) / 0.94, in class order anger, disgust, fear, happiness, neutral, sadness
        "1026_IEO_ANG_HI": [0.9, 0, 0.1, 0, 0, 0],
        "1001_WSI_NEU_XX": [1 / 11, 0, 0, 1 / 11, 9 / 11, 0],
        "1019_TAI_HAP_XX": [0, 1 / 8, 0, 7 / 8, 0, 0],
        "1002_TIE_SAD_XX": [0.5, 0, 0, 0, 0, 0.5],
        "1003_DFA_NEU_XX": [1 / 6, 0, 0, 0, 5 / 6, 0],
        "1005_ITS_HAP_XX": [0, 0, 0, 1, 0, 0],
    }
    assert list(table.index) == list(expected)
    for clip, p in expected.items():
        np.testing.assert_allclose(table.loc[clip, shares].to_numpy(float), p, atol=1e-6)
    assert table.loc["1026_IEO_ANG_HI", multi].tolist() == [1, 0, 0, 0, 0, 0]
    assert table.loc["1002_TIE_SAD_XX", multi].tolist() == [1, 0, 0, 0, 0, 1]
    assert table.loc["1003_DFA_NEU_XX", multi].tolist() == [0, 0, 0, 0, 1, 0]  # 1/6 is not above 1/6
    assert table.loc["1001_WSI_NEU_XX", onehot].tolist() == [0, 0, 0, 0, 1, 0]
    assert table.loc["1002_TIE_SAD_XX", onehot].isna().all()  # a tie has no plurality class
    first = table.loc["1026_IEO_ANG_HI"]
    assert first["audio"].endswith("AudioWAV/1026_IEO_ANG_HI.wav") and first["video"].endswith("VideoFlash/1026_IEO_ANG_HI.flv")
    assert (first["speaker"], first["sex"], first["partition"]) == ("1026", "Male", "Train")
    assert table.loc["1001_WSI_NEU_XX", "video"] == ""
    assert table.loc["1005_ITS_HAP_XX", "audio"] == "" and table.loc["1005_ITS_HAP_XX", "video"].endswith(".flv")
    reasons = failure_lines(corpus)
    assert sorted(reasons) == [7, 9]
    assert "angry 0.005 is below the smoothing floor 0.01" in reasons[7] and "vote_smoothing=0" in reasons[7]
    assert reasons[9].startswith("audio not found") and "no video in" in reasons[9]


def test_plain_vote_shares_with_smoothing_off(tmp_path):
    write_media(tmp_path, ["Audios/1001_DFA_ANG_XX.wav"])
    write_lines(tmp_path / "Labels" / "labels_consensus.csv", [VOTES_HEADER, "1001_DFA_ANG_XX.wav,0.5,0.5,0,0,0,0,1001,Male,Train"])
    corpus = prepare_msp_podcast(tmp_path, vote_smoothing=0)
    assert corpus.clips.loc[0, ["share_anger", "share_disgust", "share_sadness"]].tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(UserError, match="vote_smoothing must lie in"):
        prepare_msp_podcast(tmp_path, vote_smoothing=0.2)


def test_user_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        prepare_msp_podcast(tmp_path / "nope")
    with pytest.raises(UserError, match="no Labels/labels_consensus.csv under .*data.options.labels"):
        prepare_msp_podcast(tmp_path)
    write_lines(tmp_path / "Labels" / "labels_consensus.csv", ["FileName,SpkrID,Split_Set", "a.wav,1,Train"])
    with pytest.raises(UserError, match="no label columns.*available columns: FileName, SpkrID, Split_Set"):
        prepare_msp_podcast(tmp_path)
    write_lines(tmp_path / "Labels" / "labels_consensus.csv", ["FileName,angry,sad", "a.wav,0.5,0.5"])
    with pytest.raises(UserError, match="no column 'disgust'"):
        prepare_msp_podcast(tmp_path)
    write_lines(tmp_path / "Labels" / "labels_consensus.csv", [VOTES_HEADER, "a.wav,0.95,0.01,0.01,0.01,0.01,0.01,1,Male,Train"])
    with pytest.raises(UserError, match="classes chooses among EmoClass letters, and labels_consensus.csv has no EmoClass column"):
        prepare_msp_podcast(tmp_path, classes="4")
    with pytest.raises(UserError, match=r"no usable clip .*line 2: audio not found"):
        prepare_msp_podcast(tmp_path)
