from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from omegaconf import OmegaConf

from ssl_aver.corpora.csv_corpus import prepare_csv
from ssl_aver.corpora.labelled import CORPORA, prepare_corpus
from ssl_aver.errors import UserError
from tests.corpus_builders import write_lines, write_media


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    root = write_media(tmp_path / "mine", [*(f"wav/{c}.wav" for c in ("c1", "c2", "c5", "c6", "c7")), "vid/c2.mp4", "vid/c3.mp4"])
    write_lines(root / "labels.csv", [
        "name,wav,mp4,actor,emotion,val,p_ang,p_hap,p_neu,gender,set",
        "c1,wav/c1.wav,,s1,angry,-0.5,2,1,0,F,train",  # shares 2/3, 1/3: 1/3 is not above 1/C
        "c2,wav/c2.wav,vid/c2.mp4,s1,happy,0.8,0,4,0,F,train",
        "c3,,vid/c3.mp4,s2,neutral,,1,1,2,M,test",  # video only, no valence
        "",  # a blank line is skipped but counted
        "c4,wav/missing.wav,,s2,happy,0.1,0,1,0,M,test",  # line 6: no media file
        "c5,wav/c5.wav,,s3,angy,0.2,1,0,0,,train",  # line 7: label outside the classes
        "c6,wav/c6.wav,,s3,happy,high,0,1,0,M,train",  # line 8: valence not a number
        "c7,wav/c7.wav,,,,0.3,,,,M,dev",  # unlabelled class and shares, no speaker
        "c8,wav/c8.wav",  # line 10: too few fields
    ])
    return root


OPTIONS = {
    "manifest": "labels.csv",
    "columns": {"clip": "name", "audio": "wav", "video": "mp4", "speaker": "actor", "label": "emotion", "valence": "val",
                "sex": "gender", "partition": "set"},
    "classes": ["angry", "happy", "neutral"],
    "distribution": {"angry": "p_ang", "happy": "p_hap", "neutral": "p_neu"},
}


def test_mapped_columns_labels_distribution_and_attributes(corpus_root, caplog):
    with caplog.at_level(logging.INFO, logger="ssl_aver.corpora.tables"):
        corpus = prepare_csv(corpus_root, **OPTIONS)
    classes = ["angry", "happy", "neutral"]
    assert corpus.classes == classes
    label, share, multi, top = ([f"{p}_{c}" for c in classes] for p in ("cls", "share", "multi", "plurality"))
    assert corpus.targets == {
        "multiclass": {"label": label, "plurality": top},
        "distribution": {"votes": share},
        "multilabel": {"votes": multi},
        "regression": {"attributes": ["valence"]},
    }
    table = corpus.clips.set_index("clip")
    assert list(table.index) == ["c1", "c2", "c3", "c7"]
    assert table.loc["c1", label].tolist() == [1, 0, 0] and table.loc["c2", label].tolist() == [0, 1, 0]
    np.testing.assert_allclose(table.loc["c1", share].to_numpy(float), [2 / 3, 1 / 3, 0])  # counts normalised
    np.testing.assert_allclose(table.loc["c3", share].to_numpy(float), [0.25, 0.25, 0.5])
    assert table.loc["c1", multi].tolist() == [1, 0, 0] and table.loc["c3", multi].tolist() == [0, 0, 1]
    assert table.loc["c3", top].tolist() == [0, 0, 1]
    assert table.loc[["c1", "c2"], "valence"].tolist() == [-0.5, 0.8] and math.isnan(table.loc["c3", "valence"])
    assert table.loc["c7", [*label, *share]].isna().all() and table.loc["c7", "valence"] == 0.3
    assert table.loc["c1", "audio"] == str(corpus_root / "wav" / "c1.wav") and table.loc["c1", "video"] == ""
    assert table.loc["c2", "video"] == str(corpus_root / "vid" / "c2.mp4")
    assert table.loc["c3", "audio"] == "" and table.loc["c3", "video"].endswith("vid/c3.mp4")
    assert table["speaker"].tolist() == ["s1", "s1", "s2", None]
    assert table["sex"].tolist() == ["F", "F", "M", "M"] and table["partition"].tolist() == ["train", "train", "test", "dev"]
    assert table[["session", "age", "race"]].isna().all().all()
    reasons = {f["line"]: f["reason"] for f in corpus.failures}
    assert sorted(reasons) == [6, 7, 8, 10]
    assert reasons[6] == f"audio not found: {corpus_root / 'wav' / 'missing.wav'}; no video path"
    assert reasons[7].startswith("label 'angy' is not one of the classes ['angry', 'happy', 'neutral']")
    assert reasons[8] == "val 'high' is not a number" and reasons[10] == "2 fields where the header has 11"
    assert "csv: 4 clips of 2 speakers from labels.csv (audio 3, video 2" in caplog.text and "4 rows left out" in caplog.text


def test_options_from_a_recipe_reach_the_reader(corpus_root, monkeypatch):
    """As fine-tuning passes them: `data.options` of a YAML recipe, nested values still OmegaConf containers."""
    monkeypatch.setitem(CORPORA, "csv", "ssl_aver.corpora.csv_corpus:prepare_csv")
    options = OmegaConf.create(OPTIONS)
    corpus = prepare_corpus("csv", str(corpus_root), **dict(options))
    assert corpus.classes == ["angry", "happy", "neutral"] and list(corpus.clips["clip"]) == ["c1", "c2", "c3", "c7"]
    assert corpus.targets["distribution"] == {"votes": ["share_angry", "share_happy", "share_neutral"]}
    with pytest.raises(UserError, match="data.options: got an unexpected keyword argument 'label' for corpus 'csv'"):
        prepare_corpus("csv", str(corpus_root), label="emotion")


def test_defaults_read_columns_by_their_own_names(tmp_path):
    write_media(tmp_path, ["a.wav", "b.wav"])
    write_lines(tmp_path / "manifest.csv", ["clip,audio,label,arousal", "a,a.wav,sad,2", "b,b.wav,calm,4"])
    corpus = prepare_csv(tmp_path, attributes=["arousal"])
    assert corpus.classes == ["calm", "sad"]  # the sorted label values
    assert corpus.targets == {"multiclass": {"label": ["cls_calm", "cls_sad"]}, "regression": {"attributes": ["arousal"]}}
    table = corpus.clips.set_index("clip")
    assert table["speaker"].tolist() == ["a", "b"]  # no speaker column: every clip its own speaker
    assert table.loc["a", ["cls_calm", "cls_sad", "arousal"]].tolist() == [0, 1, 2]
    assert table["partition"].isna().all()


def test_user_errors_name_the_missing_thing(tmp_path, corpus_root):
    with pytest.raises(UserError, match="corpus folder not found"):
        prepare_csv(tmp_path / "nope")
    with pytest.raises(UserError, match=r"corpus manifest \(data.options.manifest\) not found: .*manifest.csv"):
        prepare_csv(corpus_root)
    with pytest.raises(UserError, match=r"has no column 'emo' \(data.options.columns.label\); available columns: name, wav, mp4"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "audio": "wav", "label": "emo"})
    with pytest.raises(UserError, match=r"no column 'clip' \(map it with data.options.columns.clip\)"):
        prepare_csv(corpus_root, manifest="labels.csv")
    with pytest.raises(UserError, match="no media column; map data.options.columns.audio"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "label": "emotion"})
    with pytest.raises(UserError, match="no label column; map data.options.columns.label"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "audio": "wav"})
    with pytest.raises(UserError, match=r"no column 'arousal' \(data.options.attributes\)"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "audio": "wav"}, attributes=["arousal"])
    with pytest.raises(UserError, match="distribution classes .* differ from the classes"):
        prepare_csv(corpus_root, **{**OPTIONS, "classes": ["angry", "happy"]})
    with pytest.raises(UserError, match="attribute name 'speaker' is a manifest field"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "audio": "wav"}, attributes=["speaker"])
    with pytest.raises(UserError, match=r"no usable clip in labels.csv .*line 2: no audio column; video not found"):
        prepare_csv(corpus_root, manifest="labels.csv", columns={"clip": "name", "video": "actor", "label": "emotion"})
