from __future__ import annotations

import shutil

import pandas as pd
import pytest

from ssl_aver.corpora.crema_d import read_crema_d
from ssl_aver.corpora.folder import scan_folder
from ssl_aver.data import CREMA_D_DIR
from ssl_aver.errors import UserError


def test_folder_scan_builds_manifest_and_lists_bad_files(tmp_path, media_factory):
    root = tmp_path / "corpus"
    media_factory("corpus/a/one.mp4", seconds=2.5)
    media_factory("corpus/a/b/two.wav", seconds=1.0, video=False)
    media_factory("corpus/three.mkv", seconds=1.5, audio=False)
    (root / "broken.mp4").write_text("not a video")
    (root / "notes.txt").write_text("ignored: not media")
    manifest = scan_folder(root)
    by_id = {c.clip: c for c in manifest.clips}
    assert set(by_id) == {"a/one", "a/b/two", "three"}
    assert by_id["a/one"].has_audio and by_id["a/one"].has_video
    assert by_id["a/b/two"].has_audio and not by_id["a/b/two"].has_video
    assert not by_id["three"].has_audio and by_id["three"].has_video
    assert by_id["a/one"].duration == pytest.approx(2.5, abs=0.1)
    assert [f["clip"] for f in manifest.failures] == ["broken"]
    assert list(manifest.to_frame().columns) == ["clip", "path", "duration", "has_audio", "has_video"]


def test_folder_scan_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_folder(tmp_path / "nope")


def test_crema_d_reader_with_partial_media(tmp_path, media_factory):
    root = tmp_path / "crema"
    media_factory("crema/AudioWAV/1001_DFA_ANG_XX.wav", seconds=0.6, video=False)
    media_factory("crema/AudioWAV/1002_IEO_HAP_HI.wav", seconds=0.6, video=False)
    media_factory("crema/VideoFlash/1001_DFA_ANG_XX.flv", seconds=0.6)
    media_factory("crema/VideoFlash/1003_TIE_SAD_LO.flv", seconds=0.6)
    media_factory("crema/AudioWAV/readme_clip.wav", seconds=0.6, video=False)
    shutil.copy(CREMA_D_DIR / "VideoDemographics.csv", root / "VideoDemographics.csv")
    corpus = read_crema_d(root)
    clips = {c.clip: c for c in corpus.clips}
    assert set(clips) == {"1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1003_TIE_SAD_LO"}
    assert clips["1001_DFA_ANG_XX"].audio and clips["1001_DFA_ANG_XX"].video
    assert clips["1002_IEO_HAP_HI"].video is None
    assert clips["1003_TIE_SAD_LO"].audio is None
    assert clips["1001_DFA_ANG_XX"].intended == "anger" and clips["1003_TIE_SAD_LO"].level == "LO"
    assert corpus.actors == ["1001", "1002", "1003"]
    # real demographics: 91 actors, 48 male and 43 female (CREMA-D paper)
    assert len(corpus.demographics) == 91
    sexes = pd.Series([d["sex"] for d in corpus.demographics.values()]).value_counts()
    assert sexes["Male"] == 48 and sexes["Female"] == 43
    assert corpus.demographics["1001"]["sex"] == "Male" and corpus.demographics["1001"]["age"] == "51"
    assert corpus.skipped == [{"clip": "readme_clip", "reason": "name does not follow ActorID_Sentence_Emotion_Level"}]
    assert corpus.votes_path is None


def test_crema_d_reader_without_media_is_a_user_error(tmp_path):
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(UserError, match="no CREMA-D media"):
        read_crema_d(tmp_path)
