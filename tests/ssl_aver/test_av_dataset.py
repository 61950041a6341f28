"""AV dataset: unpaired clips allowed, padded batches with masks, missing faces masked out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_aver.av_dataset import AVDataset
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, StoreWriter


def _store(path, modality: str, frame_shape: list[int], clips: dict[str, ClipFeatures]):
    meta = {"extractor": "test", "modality": modality, "config": {"n": len(clips)}, "fingerprint": "t", "frame_shape": frame_shape,
            "dtype": "float32", "layers": None, "fps": None, "weights": "random", "has_mask": modality == "video"}
    writer = StoreWriter(path, meta)
    for clip, features in clips.items():
        writer.put(clip, features)
    return writer.consolidate()


@pytest.fixture()
def stores(tmp_path):
    rng = np.random.default_rng(0)
    audio = _store(tmp_path / "a", "audio", [3, 4], {
        "both": ClipFeatures(rng.standard_normal((5, 3, 4)).astype(np.float32), 50.0),
        "audio_only": ClipFeatures(rng.standard_normal((2, 3, 4)).astype(np.float32), 50.0),
    })
    video = _store(tmp_path / "v", "video", [6], {
        "both": ClipFeatures(np.ones((4, 6), np.float32), 30.0, np.array([True, False, True, True])),
        "video_only": ClipFeatures(np.ones((3, 6), np.float32), 30.0, np.array([True, True, True])),
        "faceless": ClipFeatures(np.zeros((2, 6), np.float32), 30.0, np.array([False, False])),
    })
    return audio, video


def _labels():
    return pd.DataFrame({"clip": ["both", "audio_only", "video_only", "faceless", "absent"],
                         "anger": [1, 0, 0, 1, 0], "valence": [0.5, -0.5, 0.0, 0.1, 0.2]})


def test_unpaired_clips_are_kept_and_batches_are_padded_with_masks(stores):
    audio, video = stores
    data = AVDataset(_labels(), ["anger", "valence"], audio=audio, video=video)
    assert len(data) == 4 and [d["clip"] for d in data.dropped] == ["absent"]
    batch = data.collate([data[i] for i in range(len(data))])
    assert batch["clips"] == ["both", "audio_only", "video_only", "faceless"]
    assert batch["audio"].shape == (4, 5, 3, 4) and batch["audio_mask"].shape == (4, 5)
    assert batch["audio_mask"].sum(dim=1).tolist() == [5, 2, 0, 0]
    assert batch["video"].shape == (4, 4, 6)
    assert batch["video_mask"].tolist() == [[True, False, True, True], [False] * 4, [True, True, True, False], [False] * 4]
    assert batch["has_audio"].tolist() == [True, True, False, False]
    assert batch["has_video"].tolist() == [True, False, True, False]
    assert torch.all(batch["video"][0, 1] == 0) and torch.all(batch["audio"][1, 2:] == 0)
    torch.testing.assert_close(batch["audio"][0], torch.from_numpy(np.array(audio.get("both")[0])))
    assert batch["targets"].dtype == torch.float32 and batch["targets"][:, 1].tolist() == pytest.approx([0.5, -0.5, 0.0, 0.1])


def test_require_both_layer_selection_and_a_missing_modality_in_a_batch(stores):
    audio, video = stores
    paired = AVDataset(_labels(), ["anger"], audio=audio, video=video, require="both", audio_layers=[2])
    assert [paired[i].clip for i in range(len(paired))] == ["both"]
    assert paired[0].audio.shape == (5, 1, 4)
    video_only = AVDataset(_labels(), ["anger"], audio=audio, video=video, require="video")
    batch = video_only.collate([video_only[2]])  # "video_only": no audio in the whole batch
    assert batch["audio"].shape == (1, 1, 3, 4) and not batch["audio_mask"].any() and not batch["has_audio"].any()
    loader = torch.utils.data.DataLoader(video_only, batch_size=2, collate_fn=video_only.collate)
    assert sum(len(b["clips"]) for b in loader) == len(video_only)


def test_bad_inputs_are_user_errors(stores):
    audio, video = stores
    with pytest.raises(UserError, match="lacks column"):
        AVDataset(_labels(), ["arousal"], audio=audio)
    with pytest.raises(UserError, match="holds face features"):
        AVDataset(_labels(), ["anger"], audio=video)
    with pytest.raises(UserError, match="out of range"):
        AVDataset(_labels(), ["anger"], audio=audio, audio_layers=[7])
