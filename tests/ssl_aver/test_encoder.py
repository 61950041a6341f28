"""Paper 1's attention encoder: masking, fused vs explicit attention, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_aver.errors import UserError
from ssl_aver.models import EncoderConfig, SSLEncoder

TINY = dict(input_dim=6, d_model=16, n_heads=2, n_plain_layers=1, n_scaled_layers=2, ff_dim=32)


def _model(**kw) -> SSLEncoder:
    torch.manual_seed(0)
    return SSLEncoder(EncoderConfig(**{**TINY, **kw})).eval()


def test_paper_defaults() -> None:
    cfg = EncoderConfig()
    assert (cfg.input_dim, cfg.d_model, cfg.n_heads, cfg.n_plain_layers + cfg.n_scaled_layers) == (130, 130, 10, 5)
    assert (cfg.output_dropout, cfg.residual_dropout) == (0.25, 0.1)
    model = SSLEncoder()
    out = model.eval()(torch.randn(2, 7, 130))
    assert out.shape == (2, 7, 130)


def test_padding_does_not_change_valid_frames() -> None:
    model = _model()
    short = torch.randn(1, 5, 6)
    padded = torch.cat([short, torch.randn(1, 4, 6) * 100], dim=1)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[:, 5:] = True
    with torch.no_grad():
        alone = model(short)
        batch = model(padded, mask)
    torch.testing.assert_close(batch[:, :5], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.pool(batch, mask), model.pool(alone), rtol=1e-5, atol=1e-5)


def test_fused_and_explicit_attention_agree() -> None:
    fused = _model(attention="sdpa")
    explicit = _model(attention="explicit")
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 8, 6)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[1, 6:] = True
    mask[2, 2:] = True
    with torch.no_grad():
        torch.testing.assert_close(fused(x, mask), explicit(x, mask), rtol=1e-5, atol=1e-5)


def test_scales_are_learnable_and_optionally_shared() -> None:
    model = _model().train()
    scaled = [layer for layer in model.layers if layer.scaled]
    assert len(scaled) == 2 and scaled[0].alpha is not scaled[1].alpha
    model(torch.randn(2, 4, 6)).sum().backward()
    assert scaled[0].alpha.grad is not None and scaled[0].beta.grad is not None
    shared = _model(shared_scales=True)
    scaled = [layer for layer in shared.layers if layer.scaled]
    assert scaled[0].alpha is scaled[1].alpha is shared.alpha


def test_normalisation_statistics_are_applied() -> None:
    model = _model()
    x = torch.randn(2, 5, 6)
    mean, std = np.arange(6, dtype=np.float32), np.full(6, 3.0, dtype=np.float32)
    with torch.no_grad():
        reference = model(x)
        model.set_normalization(mean, std)
        shifted = model(x * 3.0 + torch.from_numpy(mean))
    torch.testing.assert_close(shifted, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_save_and_load_round_trip(tmp_path, shared) -> None:
    model = _model(shared_scales=shared)
    model.set_normalization(np.ones(6), np.full(6, 2.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    loaded = SSLEncoder.from_pretrained(tmp_path / "enc").eval()
    assert loaded.config == model.config
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(loaded.feature_std, torch.full((6,), 2.0))


def test_missing_or_corrupt_folder_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        SSLEncoder.from_pretrained(tmp_path / "nope")
    _model().save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        SSLEncoder.from_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt encoder config"):
        SSLEncoder.from_pretrained(tmp_path / "enc")
