"""Speech-model extractor: layer stacks, frame rate, chunking and batching equal one pass."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ssl_aver.errors import UserError  # noqa: E402
from ssl_aver.features.speech import SpeechExtractor  # noqa: E402


def _tiny_model(path, layers: int, norm: str = "layer", kind: str = "wavlm"):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

    config_cls, model_cls = (WavLMConfig, WavLMModel) if kind == "wavlm" else (Wav2Vec2Config, Wav2Vec2Model)
    config = config_cls(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer", num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    model_cls(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def wavlm24(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("wavlm24"), 24)


@pytest.fixture(scope="module")
def wavlm2(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("wavlm2"), 2)


def _config(model: str, **kw):
    return {**SpeechExtractor.defaults(), "model": model, **kw}


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_large_shaped_model_gives_25_hidden_states_at_50_fps(wavlm24, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, _audio(1.0), 16000)
    ex = SpeechExtractor(_config(wavlm24))
    info = ex.describe()
    assert info["frame_shape"] == [25, 32] and info["fps"] == 50.0 and info["layers"] == list(range(25))
    (out,) = ex.compute([ex.load(str(wav))])
    assert out.array.shape == (49, 25, 32) and out.fps == 50.0
    single = SpeechExtractor(_config(wavlm24, layers=-1))
    assert single.describe()["frame_shape"] == [32]
    np.testing.assert_allclose(single.compute([single.load(str(wav))])[0].array, out.array[:, 24], atol=1e-5)


def test_chunks_keep_the_frame_grid_and_equal_one_pass_when_context_covers_the_clip(wavlm2):
    audio = _audio(2.3, seed=1)
    whole = SpeechExtractor(_config(wavlm2)).compute([audio])[0].array
    full_context = SpeechExtractor(_config(wavlm2, chunk_seconds=0.5, chunk_context_seconds=3.0)).compute([audio])[0].array
    assert full_context.shape == whole.shape == (114, 3, 32)
    np.testing.assert_allclose(full_context, whole, atol=1e-4)
    # short context: same frames; the positional conv (16 taps) still sees all it needs, so
    # hidden state 0 is equal, while attention over a 0.5 s + 0.2 s window differs afterwards
    short = SpeechExtractor(_config(wavlm2, chunk_seconds=0.5, chunk_context_seconds=0.2)).compute([audio])[0].array
    assert short.shape == whole.shape
    np.testing.assert_allclose(short[:, 0], whole[:, 0], atol=1e-4)
    assert np.abs(short[:, 2] - whole[:, 2]).max() > 1e-3


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_batched_clips_equal_clips_one_at_a_time(tmp_path, norm):
    model = _tiny_model(tmp_path / norm, 2, norm=norm, kind="wav2vec2")
    clips = [_audio(d, seed=i) for i, d in enumerate([0.7, 1.3, 1.0, 0.7])]
    one = SpeechExtractor(_config(model), batch_size=1).compute(clips)
    many = SpeechExtractor(_config(model), batch_size=4).compute(clips)
    for a, b in zip(one, many):
        assert a.array.shape == b.array.shape
        np.testing.assert_allclose(a.array, b.array, atol=1e-4)


def test_missing_weights_offline_name_how_to_get_them(tmp_path):
    with pytest.raises(UserError, match="download it once"):
        SpeechExtractor(_config("microsoft/wavlm-large-not-cached"))
    with pytest.raises(UserError, match="directory not found"):
        SpeechExtractor(_config(str(tmp_path / "nowhere")))


def test_bad_layer_and_too_short_audio_are_clear(wavlm2, tmp_path):
    with pytest.raises(UserError, match="hidden states 0..2"):
        SpeechExtractor(_config(wavlm2, layers=5))
    wav = tmp_path / "short.wav"
    sf.write(wav, _audio(0.01), 16000)
    from ssl_aver.errors import MediaError

    with pytest.raises(MediaError, match="too short"):
        SpeechExtractor(_config(wavlm2)).load(str(wav))


def test_padded_wavlm_batch_raises_no_warning_and_equals_each_clip_through_the_bare_model(wavlm2):
    """transformers' WavLM pairs a bool key_padding_mask with a float attn_mask (a torch deprecation
    warning): the extractor hides exactly that warning, and padding changes nothing."""
    import warnings

    import torch
    from transformers import WavLMModel

    clips = [_audio(d, seed=i) for i, d in enumerate([0.7, 1.3, 1.0])]
    ex = SpeechExtractor(_config(wavlm2), batch_size=3)
    assert ex.padded_batches
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = ex.compute(clips)
    bare = WavLMModel.from_pretrained(wavlm2).eval()
    for clip, got in zip(clips, batched):
        with torch.inference_mode():  # one clip, no attention_mask: no key_padding_mask at all
            states = bare(torch.from_numpy(clip)[None], output_hidden_states=True).hidden_states
        np.testing.assert_allclose(got.array, torch.stack(states, dim=2)[0].numpy(), atol=1e-5)
