"""The SER head's wav2vec2 branch: no pretraining masking while fine-tuning, no dependence on batch padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.heads import BuildContext
from finetune.heads.ser import SERHead
from ssl_aver.errors import UserError
from ssl_aver.models.encoder import EncoderConfig
from ssl_aver.models.wav2vec2 import build_pretraining_model, save_pretraining_model

# every dropout 0, so a training-mode pass differs from an eval-mode one only by masking / LayerDrop
TINY = EncoderConfig(d_model=32, n_heads=2, n_plain_layers=1, n_scaled_layers=1, ff_dim=64, residual_dropout=0.0, output_dropout=0.0)
CONV = {"conv_dim": [32, 32, 32], "conv_kernel": [10, 4, 4], "conv_stride": [5, 4, 4]}  # 80x: 200 frames/s


def _pretrained(folder: Path, norm: str = "layer") -> Path:
    """A randomly initialised wav2vec2 saved like the pretrainer saves it (masking 0.65, LayerDrop 0.1)."""
    torch.manual_seed(0)
    return save_pretraining_model(build_pretraining_model(TINY, feat_extract_norm=norm, num_negatives=5, codevector_dim=16, **CONV), folder)


def _head(encoder: Path, **wav2vec2: float) -> SERHead:
    cfg = {**SERHead.defaults(), "hidden": 16}
    cfg["wav2vec2"] = {**cfg["wav2vec2"], **wav2vec2}
    return SERHead.from_config(cfg, 6, BuildContext(n_classes=6, task="multiclass", encoder_dir=str(encoder)))


def _batch(*clips: torch.Tensor) -> dict[str, torch.Tensor]:
    longest = max(len(c) for c in clips)
    audio, valid = torch.zeros(len(clips), longest), torch.zeros(len(clips), longest, dtype=torch.bool)
    for row, clip in enumerate(clips):
        audio[row, : len(clip)], valid[row, : len(clip)] = clip, True
    return {"audio": audio, "audio_mask": valid}


def _embed(head: SERHead, batch: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
    head.train(train)
    torch.manual_seed(1)
    with torch.no_grad():
        return head.embed(batch)


def test_fine_tuning_masks_no_frame_and_drops_no_layer(tmp_path) -> None:
    saved = _pretrained(tmp_path / "w2v")
    head = _head(saved)
    config = head.branch.config
    assert (config.mask_time_prob, config.mask_feature_prob, config.layerdrop, config.apply_spec_augment) == (0.0, 0.0, 0.0, False)
    batch = _batch(torch.randn(16000), torch.randn(12000))
    masked: list[float] = []
    mask_hidden_states = head.branch._mask_hidden_states

    def spy(hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        before = hidden.clone()
        after = mask_hidden_states(hidden, **kwargs)
        masked.append(float((before != after).any(-1).float().mean()))
        return after

    head.branch._mask_hidden_states = spy
    train_embedding = _embed(head, batch, train=True)
    assert masked == [0.0]
    assert torch.allclose(train_embedding, _embed(head, batch, train=False), atol=1e-6)
    # a run recorded before `model.wav2vec2` existed (no such key in its config.yaml) gets the same
    older = SERHead.from_config({"hidden": 16, "dropout": 0.25}, 6, BuildContext(n_classes=6, task="multiclass", encoder_dir=str(saved)))
    assert (older.branch.config.mask_time_prob, older.branch.config.layerdrop) == (0.0, 0.0)


def test_a_fine_tuning_mask_probability_reaches_the_branch(tmp_path) -> None:
    saved = _pretrained(tmp_path / "w2v")
    head = _head(saved, mask_time_prob=0.05, mask_time_length=2, layerdrop=0.0)
    assert head.branch.config.mask_time_prob == 0.05 and head.branch.config.mask_time_length == 2
    assert head.branch.config.apply_spec_augment
    assert torch.equal(head.branch.masked_spec_embed.detach(), load_file(str(saved / "model.safetensors"))["wav2vec2.masked_spec_embed"])
    batch = _batch(torch.randn(16000))
    assert not torch.allclose(_embed(head, batch, train=True), _embed(head, batch, train=False), atol=1e-3)
    with pytest.raises(UserError, match="mask_time_prob"):
        _head(saved, mask_time_prob=1.5)


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_a_clips_embedding_does_not_depend_on_its_batch(tmp_path, norm) -> None:
    head = _head(_pretrained(tmp_path / "w2v", norm))
    short, long = torch.randn(2 * 16000), torch.randn(5 * 16000)
    alone = _embed(head, _batch(short), train=False)
    together = _embed(head, _batch(short, long), train=False)
    assert (together[0] - alone[0]).abs().max() <= 1e-5
    assert (together[1] - _embed(head, _batch(long), train=False)[0]).abs().max() <= 1e-5
    with torch.no_grad():
        probs_alone, probs_together = head(_batch(short)).softmax(-1), head(_batch(short, long)).softmax(-1)
    assert (probs_together[0] - probs_alone[0]).abs().max() <= 1e-5
