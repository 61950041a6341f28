"""Conformer time subsampling (Gulati et al.'s Conv2d front end): length and mask arithmetic,
independence from batch companions / padding / masked values, holes, empty clips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_aver.models.conformer import Conformer, ConvSubsampling, subsampled_lengths, valid_extent


def _conv_frames(length: int, blocks: int) -> int:
    """Frames a real k=3, stride-2 Conv1d stack leaves of `length` frames (the independent count)."""
    x = torch.zeros(1, 1, length)
    for _ in range(blocks):
        x = nn.functional.conv1d(x, torch.zeros(1, 1, 3), stride=2)
    return x.shape[-1]


def test_lengths_follow_the_conv_arithmetic_and_keep_one_frame_of_a_short_clip():
    lengths = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 10, 150, 90])
    # by hand: L' = (L - 3) // 2 + 1, 1 for 0 < L < 3, 0 for an empty clip
    assert subsampled_lengths(lengths, 1).tolist() == [0, 1, 1, 1, 1, 2, 2, 3, 4, 74, 44]
    assert subsampled_lengths(lengths, 2).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 36, 21]
    for blocks in (1, 2):
        for n in range(7, 40):  # wherever a real convolution leaves frames, the counts agree
            assert int(subsampled_lengths(torch.tensor([n]), blocks)) == _conv_frames(n, blocks)
    assert valid_extent(torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)).tolist() == [3, 0, 5]


def test_masks_of_a_hand_worked_clip_with_holes_and_padding():
    # 11 frames: valid 0-1, holes 2-5 (no face), valid 6-8, padding 9-10 -> length 9
    valid = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    x = torch.randn(1, 11, 9)
    # 2x: L' = 4; windows [0..2] valid, [2..4] holes only, [4..6] and [6..8] valid, [8..10] past L'
    _, padded = ConvSubsampling(9, 8, 2).eval()(x, ~valid)
    assert (~padded).tolist() == [[True, False, True, True, False]]
    # 4x: L'' = (4 - 3) // 2 + 1 = 1; window [0..2] of the 2x mask holds valid frames, frame 1 lies past L''
    _, padded = ConvSubsampling(9, 8, 4).eval()(x, ~valid)
    assert (~padded).tolist() == [[True, False]]
    # a trailing valid frame outside every complete window: L = 4 -> L' = 1, window [0..2] is all holes
    _, padded = ConvSubsampling(9, 8, 2).eval()(x[:, :4], ~torch.tensor([[0, 0, 0, 1]], dtype=torch.bool))
    assert (~padded).tolist() == [[False]]
    # shorter than the window: one frame, alone or padded
    for t in (1, 2):
        y, padded = ConvSubsampling(9, 8, 4).eval()(x[:, :t], torch.zeros(1, t, dtype=torch.bool))
        assert y.shape == (1, 1, 8) and (~padded).tolist() == [[True]]
    y, padded = ConvSubsampling(9, 8, 4).eval()(x[:, :5])  # no mask given: every frame valid, no mask back
    assert y.shape == (1, 1, 8) and padded is None


def test_paper_size_layers_and_identity():
    sub = ConvSubsampling(50, 512, 4)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in sub.convs] == [
        (1, 512, (3, 3), (2, 2), (0, 0)), (512, 512, (3, 3), (2, 2), (0, 0))]
    assert sub.out.in_features == 512 * 11 and sub.out.out_features == 512  # 50 -> 24 -> 11 features
    assert ConvSubsampling(50, 512, 2).out.in_features == 512 * 24
    same = ConvSubsampling(16, 16, 1)
    x, mask = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
    y, m = same(x, mask)
    assert y is x and m is mask and not list(same.parameters())
    with pytest.raises(ValueError, match="one of"):
        ConvSubsampling(16, 16, 3)
    with pytest.raises(ValueError, match="at least 7"):
        ConvSubsampling(6, 16, 4)


def _clips(seed: int = 0):
    """Six clips of 1-23 frames (one empty) padded to 26 frames with junk; holes in three of them."""
    g = torch.Generator().manual_seed(seed)
    lengths = [23, 1, 2, 9, 14, 0]
    valid = torch.zeros(6, 26, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, :n] = True
    valid[0, 5:11] = False  # a run of frames without a face
    valid[3, 3] = False
    valid[4, 0:2] = False  # missing at the start
    x = torch.where(valid[..., None], torch.randn(6, 26, 10, generator=g), 50 * torch.randn(6, 26, 10, generator=g))
    return x, valid, lengths


def _stack(factor: int) -> tuple[ConvSubsampling, Conformer]:
    torch.manual_seed(factor)
    return ConvSubsampling(10 if factor > 1 else 8, 8, factor, dropout=0.1).eval(), Conformer(8, 2, 2, dropout=0.1, kernel_size=5).eval()


def _run(stack, x, valid):
    sub, conformer = stack
    h, padded = sub(x if sub.factor > 1 else x[..., :8], ~valid)
    return conformer(h, padded), padded


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_clip_output_independent_of_companions_padding_and_masked_values(factor):
    stack = _stack(factor)
    x, valid, lengths = _clips()
    with torch.no_grad():
        out, padded = _run(stack, x, valid)
        assert torch.isfinite(out).all() and torch.all(out[padded] == 0)
        assert padded[5].all()  # the empty clip: no valid frame, finite (zero) output
        for i, n in enumerate(lengths):
            n = max(n, 1)  # its own frames, no padding (an empty clip keeps one masked frame, as select_rows does)
            alone, alone_padded = _run(stack, x[i : i + 1, :n], valid[i : i + 1, :n])
            t = alone.shape[1]
            assert torch.equal(alone_padded[0], padded[i, :t]) and padded[i, t:].all()
            torch.testing.assert_close(alone[0], out[i, :t], atol=1e-5, rtol=1e-5)
        perm = torch.tensor([4, 2, 0, 5, 1, 3])  # other companions and order
        torch.testing.assert_close(_run(stack, x[perm], valid[perm])[0], out[perm], atol=1e-5, rtol=1e-5)
        junk = torch.where(valid[..., None], x, torch.randn(x.shape) * 1e3)  # other values at holes and padding
        torch.testing.assert_close(_run(stack, junk, valid)[0], out, atol=1e-5, rtol=1e-5)
        longer = torch.cat([junk, torch.randn(6, 9, 10)], dim=1)  # more padding
        more, more_padded = _run(stack, longer, torch.cat([valid, torch.zeros(6, 9, dtype=torch.bool)], dim=1))
        torch.testing.assert_close(more[:, : out.shape[1]], out, atol=1e-5, rtol=1e-5)
        assert more_padded[:, out.shape[1] :].all()
        # the clip's valid frames do reach its output
        changed = x.clone()
        changed[4, 8] += torch.randn(10)  # inside the first windows of 2x and 4x (L = 14 -> 6 -> 2 frames);
        # not a constant shift of the frame, which the LayerNorms remove
        assert not torch.allclose(_run(stack, changed, valid)[0][4], out[4])


def test_subsampling_shortens_the_sequence_and_zeroes_masked_frames():
    x, valid, lengths = _clips()
    for factor, blocks in ((2, 1), (4, 2)):
        h, padded = ConvSubsampling(10, 8, factor).eval()(x, ~valid)
        assert h.shape[1] == _conv_frames(26, blocks) and torch.all(h[padded] == 0)  # masked frames are zero rows
        extent = valid_extent(~padded)
        assert torch.all(extent <= subsampled_lengths(torch.tensor(lengths), blocks))
