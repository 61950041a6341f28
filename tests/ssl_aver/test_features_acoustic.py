"""openSMILE and own-encoder extractors, and the recipes in recipes/features."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.errors import UserError  # noqa: E402
from ssl_aver.features import FeatureStore  # noqa: E402
from ssl_aver.features.extract import extract_features, resolve_config  # noqa: E402

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "features").glob("*.yaml"))


def _folder_corpus(root: Path) -> Path:
    (root / "spk1").mkdir(parents=True)
    for name, seconds in [("spk1/a", 1.0), ("b", 0.5)]:
        audio = 0.1 * np.random.default_rng(len(name)).standard_normal(int(16000 * seconds))
        sf.write(root / f"{name}.wav", audio.astype(np.float32), 16000)
    return root


def test_smile_store_has_130_lld_at_62_5_fps(tmp_path):
    corpus = _folder_corpus(tmp_path / "c")
    summary = extract_features(corpus, tmp_path / "s", "smile", device="cpu", progress=False)
    assert summary["layout"] == "folder"
    store = FeatureStore(tmp_path / "s")
    array, fps, _ = store.get("spk1/a")
    assert store.clips == ["b", "spk1/a"] and array.shape == (61, 130) and fps == 62.5


def test_own_encoder_hidden_states_batched_equal_single(tmp_path):
    from ssl_aver.models.encoder import SSLEncoder

    SSLEncoder({"d_model": 20, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 40}).save_pretrained(tmp_path / "enc")
    corpus = _folder_corpus(tmp_path / "c")
    extract_features(corpus, tmp_path / "one", "encoder", overrides=[f"model={tmp_path / 'enc'}"], device="cpu", batch_size=1, progress=False)
    extract_features(corpus, tmp_path / "two", "encoder", overrides=[f"model={tmp_path / 'enc'}"], device="cpu", batch_size=2, progress=False)
    one, two = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert one.get("spk1/a")[0].shape == (61, 20) and one.get("spk1/a")[1] == 62.5
    for clip in one.clips:
        np.testing.assert_allclose(one.get(clip)[0], two.get(clip)[0], atol=1e-4)
    with pytest.raises(UserError, match="model=PATH"):
        extract_features(corpus, tmp_path / "none", "encoder", device="cpu", progress=False)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_resolves(recipe):
    cls, cfg = resolve_config(None, str(recipe), [])
    assert cfg["extractor"] == cls.name
    assert recipe.read_text().startswith("# ssl-aver features extract")


def test_layer_lists_and_contradicting_extractor_names():
    _, cfg = resolve_config("speech", None, ["layers=[0,12,24]"])
    assert list(cfg["layers"]) == [0, 12, 24]
    with pytest.raises(UserError, match="contradicts"):
        resolve_config("face", str(RECIPES[0].with_name("wavlm_large.yaml")), [])
