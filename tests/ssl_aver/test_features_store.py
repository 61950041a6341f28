"""Feature store + `ssl-aver features extract`: keyed by config, resumable, failures recorded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.app.cli import main  # noqa: E402
from ssl_aver.errors import UserError  # noqa: E402
from ssl_aver.features import FeatureStore  # noqa: E402
from ssl_aver.features.extract import extract_features  # noqa: E402
from ssl_aver.features.store import ClipFeatures, StoreWriter  # noqa: E402

FEAT_DATA = Path(__import__("feat").__file__).parent / "tests" / "data"


def _save_wavlm(path: Path, seed: int = 0) -> str:
    import torch
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
                         feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(seed)
    WavLMModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return _save_wavlm(tmp_path_factory.mktemp("wavlm"))


def _crema(root: Path, durations: dict[str, float]) -> Path:
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    for i, (clip, seconds) in enumerate(durations.items()):
        audio = 0.1 * np.random.default_rng(i).standard_normal(int(16000 * seconds))
        sf.write(root / "AudioWAV" / f"{clip}.wav", audio.astype(np.float32), 16000)
    return root


def test_store_roundtrip_and_failures_in_summary(model, tmp_path):
    corpus = _crema(tmp_path / "crema", {"1001_DFA_ANG_XX": 1.0, "1002_IEO_SAD_HI": 0.6})
    (corpus / "AudioWAV" / "1003_DFA_HAP_XX.wav").write_bytes(b"not audio")
    summary = extract_features(corpus, tmp_path / "store", "speech", overrides=[f"model={model}"], device="cpu", progress=False)
    assert summary["layout"] == "crema-d" and summary["extracted_now"] == 2
    assert [f["clip"] for f in summary["failures"]] == ["1003_DFA_HAP_XX"]
    assert json.loads((tmp_path / "store" / "summary.json").read_text())["failures"][0]["reason"].startswith("unreadable audio")
    store = FeatureStore(tmp_path / "store")
    array, fps, present = store.get("1001_DFA_ANG_XX")
    assert array.shape == (49, 3, 32) and fps == 50.0 and present is None
    assert store.meta["layers"] == [0, 1, 2] and store.meta["extractor"] == "speech" and store.meta["weights"]["model"] == model
    assert not any((tmp_path / "store" / "shards").iterdir())


def test_changed_config_or_weights_is_not_reused(model, tmp_path):
    corpus = _crema(tmp_path / "crema", {"1001_DFA_ANG_XX": 0.5})
    extract_features(corpus, tmp_path / "store", "speech", overrides=[f"model={model}"], device="cpu", progress=False)
    with pytest.raises(UserError, match="different config.*layers"):
        extract_features(corpus, tmp_path / "store", "speech", overrides=[f"model={model}", "layers=1"], device="cpu", progress=False)
    other = shutil.copytree(model, tmp_path / "retrained")
    _save_wavlm(Path(other), seed=1)
    os.utime(Path(other) / "model.safetensors", (1, 1))
    with pytest.raises(UserError, match="different config"):
        extract_features(corpus, tmp_path / "store", "speech", overrides=[f"model={other}"], device="cpu", progress=False)


def test_rerun_skips_done_clips_and_resumes_after_an_interruption(model, tmp_path):
    corpus = _crema(tmp_path / "crema", {"1001_DFA_ANG_XX": 0.8, "1002_DFA_ANG_XX": 0.6})
    args = dict(extractor="speech", overrides=[f"model={model}"], device="cpu", progress=False)
    extract_features(corpus, tmp_path / "store", **args)
    before = FeatureStore(tmp_path / "store").get("1001_DFA_ANG_XX")[0].copy()
    again = extract_features(corpus, tmp_path / "store", **args)
    assert again["extracted_now"] == 0 and again["skipped_done"] == 2
    _crema(corpus, {"1001_DFA_ANG_XX": 0.8, "1002_DFA_ANG_XX": 0.6, "1004_DFA_ANG_XX": 0.7})
    grown = extract_features(corpus, tmp_path / "store", **args)
    assert grown["extracted_now"] == 1 and grown["skipped_done"] == 2
    store = FeatureStore(tmp_path / "store")
    assert store.clips == ["1001_DFA_ANG_XX", "1002_DFA_ANG_XX", "1004_DFA_ANG_XX"]
    np.testing.assert_array_equal(store.get("1001_DFA_ANG_XX")[0], before)
    assert len(list((tmp_path / "store").glob("data-*.bin"))) == 1

    # an interrupted run leaves shards and no index: the next run keeps them and finishes
    fresh = tmp_path / "fresh"
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    writer = StoreWriter(fresh, {k: meta[k] for k in ("extractor", "modality", "config", "fingerprint", "frame_shape", "dtype", "layers", "fps", "weights", "has_mask")})
    writer.put("1001_DFA_ANG_XX", ClipFeatures(before, 50.0))
    resumed = extract_features(corpus, fresh, **args)
    assert resumed["skipped_done"] == 1 and resumed["extracted_now"] == 2
    np.testing.assert_array_equal(FeatureStore(fresh).get("1001_DFA_ANG_XX")[0], before)


def test_cli_face_store_with_random_weights_warns_and_keeps_the_mask(tmp_path, capsys):
    corpus = tmp_path / "videos"
    corpus.mkdir()
    shutil.copy(FEAT_DATA / "single_face.mp4", corpus / "single.mp4")
    shutil.copy(FEAT_DATA / "no_face.mp4", corpus / "none.mp4")
    code = main(["features", "extract", "--corpus", str(corpus), "--extractor", "face", "--out", str(tmp_path / "faces"),
                 "--device", "cpu", "--quiet", "weights=random", "every=8", "crop_size=64", "store_dtype=float16"])
    assert code == 0
    assert "weights=random" in capsys.readouterr().err
    store = FeatureStore(tmp_path / "faces")
    assert store.weights == "random" and store.meta["dtype"] == "float16"
    array, fps, present = store.get("single")
    assert array.shape == (9, 1280) and array.dtype == np.float16 and present.all() and fps == pytest.approx(30 / 8)
    assert not store.get("none")[2].any()


def test_cli_user_errors_exit_2(tmp_path, capsys):
    assert main(["features", "extract", "--corpus", str(tmp_path), "--extractor", "nope", "--out", str(tmp_path / "s")]) == 2
    assert "unknown extractor 'nope'" in capsys.readouterr().err
    assert main(["features", "extract", "--corpus", str(tmp_path / "missing"), "--extractor", "face", "--out", str(tmp_path / "s")]) == 2
    assert "corpus folder not found" in capsys.readouterr().err
    assert main(["features", "extract", "--corpus", str(tmp_path), "--extractor", "face", "--out", str(tmp_path / "s"), "wieghts=random"]) == 2
    assert "wieghts" in capsys.readouterr().err
