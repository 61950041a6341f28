"""Face pipeline: missing faces are marked, embeddings have the papers' sizes, weights are honest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.errors import UserError  # noqa: E402
from ssl_aver.features.face import FaceCNN, FaceCrops, FaceExtractor  # noqa: E402

FEAT_DATA = Path(__import__("feat").__file__).parent / "tests" / "data"


def _extractor(**kw) -> FaceExtractor:
    return FaceExtractor({**FaceExtractor.defaults(), "weights": "random", "every": 6, "crop_size": 64, **kw})


@pytest.fixture(scope="module")
def random_face() -> FaceExtractor:
    return _extractor()


def test_frames_without_a_face_are_kept_and_marked_missing(random_face):
    (single,) = random_face.compute([random_face.load(str(FEAT_DATA / "single_face.mp4"))])
    assert single.array.shape == (12, 1280) and single.fps == pytest.approx(5.0)
    assert single.present.all()
    (mixed,) = random_face.compute([random_face.load(str(FEAT_DATA / "face_noface.mov"))])
    assert mixed.present[:5].all() and not mixed.present[-5:].any()
    assert np.all(mixed.array[~mixed.present] == 0) and np.all(np.abs(mixed.array[mixed.present]).sum(axis=1) > 0)
    (none,) = random_face.compute([random_face.load(str(FEAT_DATA / "no_face.mp4"))])
    assert len(none.present) > 0 and not none.present.any()


def test_target_fps_picks_the_frame_step():
    crops = FaceCrops(every=1, fps=10.0)
    assert crops.step(30.0) == 3 and crops.step(25.0) == 2 and crops.step(None) == 1


def test_embedding_sizes_match_the_papers():
    crops = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    assert FaceCNN("mobilenet_v2", "random")(crops).shape == (3, 1280)
    assert FaceCNN("efficientnet_b2", "random")(crops).shape == (3, 1408)
    assert FaceCNN("efficientnet_b2", "random", backend="timm")(crops).shape == (3, 1408)


def test_weights_from_a_local_state_dict_with_its_own_classifier(tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(3)
    affectnet_like = torchvision.models.mobilenet_v2(num_classes=8)
    path = tmp_path / "mobilenet_affectnet.safetensors"
    save_file({k: v.contiguous() for k, v in affectnet_like.state_dict().items()}, str(path))
    crops = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    got = FaceCNN("mobilenet_v2", str(path))(crops)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = affectnet_like.eval().features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(UserError, match="does not fit"):
        FaceCNN("efficientnet_b2", str(path))
    with pytest.raises(UserError, match="not found"):
        FaceCNN("mobilenet_v2", str(tmp_path / "missing.pt"))


def test_imagenet_weights_not_cached_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="weights=PATH"):
        FaceCNN("mobilenet_v2", "imagenet")


def test_pyfeat_landmarks_without_their_weights_point_to_the_offline_landmarker(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="landmarker=mediapipe"):
        _extractor(landmarker="pyfeat")
