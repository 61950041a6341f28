"""SFAV (Chumachenko et al., ICPR 2022) and TSLTM (Huang et al., ICASSP 2020) comparison heads."""

from __future__ import annotations

import copy

import pytest
import torch

from finetune.heads import BuildContext, head_class
from finetune.heads.sfav import CrossScores, SFAVHead, received_attention
from finetune.heads.tsltm import TSLTMHead
from finetune.run import default_loss
from finetune.trainer import TrainSettings, fit, keep_modality
from ssl_aver.errors import UserError

N_CLASSES = 4
A_DIM, V_DIM = 5, 7
GARBAGE = 50.0  # value written at masked frames: it must never reach a valid output


def _ctx(audio_shape=(A_DIM,), video_shape=(V_DIM,)) -> BuildContext:
    return BuildContext(n_classes=N_CLASSES, task="multiclass", audio_shape=audio_shape, video_shape=video_shape)


def _sfav(**over) -> SFAVHead:
    cfg = {**SFAVHead.defaults(), "audio_channels": [6, 8, 10, 8], "video_channels": [6, 6, 8, 8], "n_heads": 2, **over}
    return SFAVHead(cfg, N_CLASSES, _ctx())


def _tsltm(**over) -> TSLTMHead:
    cfg = {**TSLTMHead.defaults(), "d_model": 16, "n_heads": 2, "encoder_layers": 1, "ff_dim": 32, "lstm_hidden": 12, "head_hidden": 16, **over}
    return TSLTMHead(cfg, N_CLASSES, _ctx())


def _batch(n=5, ta=12, tv=7, audio_rows=None, video_rows=None, seed=0, holes=True):
    """Variable lengths, a hole in the middle of some clips, garbage at every masked frame."""
    g = torch.Generator().manual_seed(seed)
    audio_rows = range(n) if audio_rows is None else audio_rows
    video_rows = range(n) if video_rows is None else video_rows
    a_mask, v_mask = torch.zeros(n, ta, dtype=torch.bool), torch.zeros(n, tv, dtype=torch.bool)
    for i in audio_rows:
        a_mask[i, : ta - 3 + i % 4] = True
        if holes and i % 2:
            a_mask[i, 3] = False
    for i in video_rows:
        v_mask[i, : tv - 2 + i % 3] = True
        if holes and i % 2 == 0:
            v_mask[i, 2] = False
    audio = torch.randn(n, ta, A_DIM, generator=g).masked_fill(~a_mask[..., None], GARBAGE)
    video = torch.randn(n, tv, V_DIM, generator=g).masked_fill(~v_mask[..., None], GARBAGE)
    return {"clips": [str(i) for i in range(n)], "audio": audio, "video": video, "audio_mask": a_mask, "video_mask": v_mask,
            "has_audio": a_mask.any(1), "has_video": v_mask.any(1), "targets": torch.eye(N_CLASSES)[torch.arange(n) % N_CLASSES]}


def _rows(batch, rows, pad_a=0, pad_v=0):
    """A sub-batch of `rows`, with `pad_*` extra padded (garbage) frames."""
    out = {"clips": [batch["clips"][i] for i in rows]}
    for m, pad in (("audio", pad_a), ("video", pad_v)):
        x, mask = batch[m][rows], batch[f"{m}_mask"][rows]
        out[m] = torch.cat([x, torch.full((len(rows), pad, x.shape[-1]), -GARBAGE)], dim=1)
        out[f"{m}_mask"] = torch.cat([mask, torch.zeros(len(rows), pad, dtype=torch.bool)], dim=1)
        out[f"has_{m}"] = mask.any(1)
    out["targets"] = batch["targets"][rows]
    return out


def _scramble_masked(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    for m in ("audio", "video"):
        noise = torch.randn(batch[m].shape, generator=g) * 30
        out[m] = torch.where(batch[f"{m}_mask"][..., None], batch[m], noise)
    return out


def _check_invariances(head, batch):
    """Eval mode: a clip alone == in the padded batch; masked frame values change nothing."""
    head.eval()
    with torch.no_grad():
        full = head(batch)
        for i in range(len(batch["clips"])):
            alone = head(_rows(batch, [i]))
            torch.testing.assert_close(alone[0], full[i], atol=1e-5, rtol=1e-5)
        padded = head(_rows(batch, list(range(len(batch["clips"]))), pad_a=6, pad_v=4))
        torch.testing.assert_close(padded, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(_scramble_masked(batch)), full, atol=1e-5, rtol=1e-5)


def _separable(n=32, seed=0):
    """Clips whose frame means encode the class in both modalities, in batches of 8."""
    g = torch.Generator().manual_seed(seed)
    mu_a, mu_v = torch.randn(N_CLASSES, A_DIM, generator=g) * 2, torch.randn(N_CLASSES, V_DIM, generator=g) * 2
    batches = []
    for start in range(0, n, 8):
        b = _batch(8, seed=seed + start)
        labels = torch.arange(start, start + 8) % N_CLASSES
        b["audio"] = torch.where(b["audio_mask"][..., None], b["audio"] + mu_a[labels][:, None], b["audio"])
        b["video"] = torch.where(b["video_mask"][..., None], b["video"] + mu_v[labels][:, None], b["video"])
        b["targets"] = torch.eye(N_CLASSES)[labels]
        batches.append(b)
    return batches


def _fit_lowers_loss(head):
    data = _separable()
    settings = TrainSettings(epochs=12, lr=3e-3, lr_patience=None, early_stop_patience=None)
    result = fit(head, data, data, loss_fn=default_loss("multiclass", N_CLASSES), settings=settings, device=torch.device("cpu"), progress=False)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < 0.6 * first, (first, last)


def _missing_modality_finite(head):
    batch = _batch(6, audio_rows=[0, 1, 2, 3], video_rows=[2, 3, 4, 5])  # 0-1 audio-only, 4-5 video-only
    for mode in ("train", "eval"):
        getattr(head, mode)()
        head.zero_grad()
        logits = head(batch)
        assert logits.shape == (6, N_CLASSES) and torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    head.eval()
    with torch.no_grad():
        full = _batch(6)
        for modality in ("audio", "video"):
            assert torch.isfinite(head(keep_modality(full, modality))).all()
        # the present modality drives the logits of a unimodal row
        audio_only = keep_modality(full, "audio")
        changed = dict(audio_only, audio=audio_only["audio"] + torch.randn(audio_only["audio"].shape))
        assert not torch.allclose(head(changed), head(audio_only))
        video_only = keep_modality(full, "video")
        changed = dict(video_only, video=video_only["video"] + torch.randn(video_only["video"].shape))
        assert not torch.allclose(head(changed), head(video_only))


# ---- SFAV ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["ia", "it", "lt"])
def test_sfav_fusion_makes_each_branch_depend_on_the_other_modality(fusion):
    torch.manual_seed(0)
    head = _sfav(fusion=fusion).eval()
    batch = _batch()
    with torch.no_grad():
        pa, pv = head.encode(batch)
        # new valid video frames for clip 0: its AUDIO-branch representation changes, the others' do not
        video = batch["video"].clone()
        video[0] = torch.where(batch["video_mask"][0, :, None], 3 * torch.randn(video.shape[1:]), video[0])
        pa2, _ = head.encode(dict(batch, video=video))
        assert (pa2[0] - pa[0]).abs().max() > 1e-5
        torch.testing.assert_close(pa2[1:], pa[1:], atol=0, rtol=0)
        # and new audio changes the VIDEO-branch representation
        audio = batch["audio"].clone()
        audio[0] = torch.where(batch["audio_mask"][0, :, None], 3 * torch.randn(audio.shape[1:]), audio[0])
        _, pv2 = head.encode(dict(batch, audio=audio))
        assert (pv2[0] - pv[0]).abs().max() > 1e-5
        torch.testing.assert_close(pv2[1:], pv[1:], atol=0, rtol=0)
        # masked frames (holes and padding) of either modality change nothing
        pa3, pv3 = head.encode(_scramble_masked(batch))
        torch.testing.assert_close(pa3, pa, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(pv3, pv, atol=1e-6, rtol=1e-6)


def test_sfav_intermediate_attention_weights_frames_by_received_attention():
    torch.manual_seed(0)
    scores = CrossScores(dim_q=6, dim_k=4, dim_out=6, n_heads=2)
    query, key = torch.randn(2, 5, 6), torch.randn(2, 7, 4)
    q_valid = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    k_valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    w = received_attention(scores(query, key, k_valid), q_valid, k_valid)
    assert torch.all(w[~k_valid] == 0)
    for row in range(2):  # the weights average 1 over a clip's valid key frames
        torch.testing.assert_close(w[row][k_valid[row]].mean(), torch.tensor(1.0))
    # masked queries do not vote; values at masked keys are never read
    query2, key2 = query.clone(), key.clone()
    query2[~q_valid], key2[~k_valid] = 99.0, -99.0
    torch.testing.assert_close(received_attention(scores(query2, key2, k_valid), q_valid, k_valid), w)
    # in the head, the video frames (width 6 after block 2) query the audio frames (width 8)
    head = _sfav()
    assert head.video_queries_audio.q.in_features == 6 and head.video_queries_audio.k.in_features == 8


def test_sfav_modality_dropout_only_in_training():
    torch.manual_seed(0)
    head = _sfav()
    batch = _batch(400, ta=4, tv=3, holes=False)
    dropped, scales = head.modality_dropout(batch)
    audio_off, video_off = ~dropped["has_audio"], ~dropped["has_video"]
    soft = scales["audio"] != 1
    assert not (audio_off & video_off).any() and torch.all(dropped["audio"][audio_off] == 0)
    for share in (audio_off, video_off, soft):  # one of four versions per clip, 1/4 each
        assert 0.18 < share.float().mean() < 0.32
    torch.testing.assert_close(scales["audio"] + scales["video"], torch.where(soft | (scales["video"] != 1), 1.0, 2.0))
    untouched = ~(audio_off | video_off | soft | (scales["video"] != 1))
    assert torch.equal(dropped["audio_mask"][untouched], batch["audio_mask"][untouched])

    calls = []
    original = head.modality_dropout
    head.modality_dropout = lambda b: calls.append(1) or original(b)
    small = _batch()
    head.train()(small)
    assert calls == [1]
    head.eval()
    with torch.no_grad():
        out = head(small)
        torch.testing.assert_close(head(small), out, atol=0, rtol=0)
    assert calls == [1]
    plain = _sfav(moddrop="none")
    plain.load_state_dict(head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(small), out, atol=0, rtol=0)
    plain.modality_dropout = lambda b: calls.append(2) or original(b)
    plain.train()(small)
    assert calls == [1]


@pytest.mark.parametrize("fusion", ["ia", "it", "lt"])
def test_sfav_eval_output_independent_of_batch_padding_and_masked_frames(fusion):
    torch.manual_seed(0)
    head = _sfav(fusion=fusion)
    head.train()
    for b in _separable()[:2]:  # move the BatchNorm running statistics off their initial values
        head(b)
    _check_invariances(head, _batch(6, audio_rows=[0, 1, 2, 3, 4], video_rows=[1, 2, 3, 4, 5]))


@pytest.mark.parametrize("fusion", ["ia", "it", "lt"])
def test_sfav_finite_with_a_modality_missing(fusion):
    torch.manual_seed(0)
    _missing_modality_finite(_sfav(fusion=fusion))


def test_sfav_training_lowers_the_loss():
    torch.manual_seed(0)
    _fit_lowers_loss(_sfav())


def test_sfav_paper_size_and_config_errors():
    assert head_class("sfav") is SFAVHead
    head = SFAVHead.from_config(SFAVHead.defaults(), 6, _ctx((1024,), (1408,)))
    n = sum(p.numel() for p in head.parameters())
    print(f"SFAV parameters at paper size: {n:,}")
    assert 0.6e6 < n < 1.2e6
    assert head.audio_queries_video.q.in_features == 128 and head.audio_queries_video.k.in_features == 64
    assert head.classifier.in_features == 256 and len(head.audio_blocks) == len(head.video_blocks) == 4
    assert not hasattr(head, "branch")  # stored features: nothing for freeze_encoder
    stacked = SFAVHead.from_config(SFAVHead.defaults(), 6, _ctx((25, 1024), (1408,)))
    assert stacked.layer_sum.logits.numel() == 25
    with pytest.raises(UserError, match="model.fusion"):
        _sfav(fusion="late")
    with pytest.raises(UserError, match="model.fusion_block"):
        _sfav(fusion_block=5)


# ---- TSLTM -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bidirectional,pool", [(False, "last"), (False, "mean"), (True, "mean"), (True, "last")])
def test_tsltm_lstm_reads_the_valid_frames_packed(bidirectional, pool):
    torch.manual_seed(0)
    head = _tsltm(bidirectional=bidirectional, pool=pool).eval()
    seq = torch.randn(3, 9, 16)
    valid = torch.zeros(3, 9, dtype=torch.bool)
    valid[0, :9], valid[1, :5], valid[2, :7] = True, True, True
    with torch.no_grad():
        out = head.recur(seq.masked_fill(~valid[..., None], GARBAGE), valid)
        # the clip alone, unpadded == in the batch with trailing padding
        torch.testing.assert_close(head.recur(seq[1:2, :5], valid[1:2, :5])[0], out[1], atol=1e-6, rtol=1e-6)
        # more padding changes nothing
        more = torch.cat([seq, torch.full((3, 4, 16), -GARBAGE)], dim=1)
        torch.testing.assert_close(head.recur(more, torch.cat([valid, torch.zeros(3, 4, dtype=torch.bool)], 1)), out, atol=1e-6, rtol=1e-6)
        # a change late in a clip, and one at its first frame (carried by the recurrence), change it
        for t in (3, 0):
            changed = seq.clone()
            changed[1, t] += torch.randn(16)
            new = head.recur(changed.masked_fill(~valid[..., None], GARBAGE), valid)
            assert not torch.allclose(new[1], out[1], atol=1e-6)
            torch.testing.assert_close(new[[0, 2]], out[[0, 2]], atol=0, rtol=0)
        # a hole in the middle is skipped: same as the clip without that frame
        holed = valid.clone()
        holed[1, 2] = False
        compact = torch.cat([seq[1:2, :2], seq[1:2, 3:5]], dim=1)
        torch.testing.assert_close(head.recur(seq, holed)[1], head.recur(compact, torch.ones(1, 4, dtype=torch.bool))[0], atol=1e-6, rtol=1e-6)
        # no valid frame: zeros
        assert torch.all(head.recur(seq[:1], torch.zeros(1, 9, dtype=torch.bool)) == 0)


def test_tsltm_fusion_attends_the_other_modality_of_the_same_clip_only():
    torch.manual_seed(0)
    head = _tsltm().eval()
    batch = _batch()
    with torch.no_grad():
        streams = head.streams(batch)
        fused_a, a_valid = streams["audio"]
        fused_v, v_valid = streams["video"]
        assert fused_a.shape[1] == batch["audio"].shape[1] and fused_v.shape[1] == batch["video"].shape[1]  # own time axes
        video = batch["video"].clone()
        video[0, 0] += torch.randn(V_DIM)
        new_a = head.streams(dict(batch, video=video))["audio"][0]
        assert not torch.allclose(new_a[0][a_valid[0]], fused_a[0][a_valid[0]], atol=1e-6)  # audio stream reads clip 0's video
        torch.testing.assert_close(new_a[1:], fused_a[1:], atol=0, rtol=0)  # ...and no other clip's
        audio = batch["audio"].clone()
        audio[2, 0] += torch.randn(A_DIM)
        new_v = head.streams(dict(batch, audio=audio))["video"][0]
        assert not torch.allclose(new_v[2][v_valid[2]], fused_v[2][v_valid[2]], atol=1e-6)
        torch.testing.assert_close(new_v[[0, 1, 3, 4]], fused_v[[0, 1, 3, 4]], atol=0, rtol=0)
        scrambled = head.streams(_scramble_masked(batch))
        for m, valid in (("audio", a_valid), ("video", v_valid)):
            torch.testing.assert_close(scrambled[m][0][valid], streams[m][0][valid], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("over", [{}, {"bidirectional": True, "combine": "mean", "pool": "last", "shared_lstm": False, "lstm_layers": 2}])
def test_tsltm_eval_output_independent_of_batch_padding_and_masked_frames(over):
    torch.manual_seed(0)
    _check_invariances(_tsltm(**over), _batch(6, audio_rows=[0, 1, 2, 3, 4], video_rows=[1, 2, 3, 4, 5]))


@pytest.mark.parametrize("combine", ["concat", "mean"])
def test_tsltm_finite_with_a_modality_missing(combine):
    torch.manual_seed(0)
    _missing_modality_finite(_tsltm(combine=combine))


def test_tsltm_training_lowers_the_loss():
    torch.manual_seed(0)
    _fit_lowers_loss(_tsltm())


def test_tsltm_default_size_and_config_errors():
    assert head_class("tsltm") is TSLTMHead
    head = TSLTMHead.from_config(TSLTMHead.defaults(), 6, _ctx((1024,), (1408,)))
    n = sum(p.numel() for p in head.parameters())
    print(f"TSLTM parameters at default size: {n:,}")
    assert 4e6 < n < 8e6
    assert len(head.audio_encoder) == len(head.video_encoder) == 2 and head.lstm.hidden_size == 256
    with pytest.raises(UserError, match="model.pool"):
        _tsltm(pool="max")
    with pytest.raises(UserError, match="model.n_heads"):
        _tsltm(n_heads=3)


def test_heads_leave_the_batch_untouched():
    batch = _batch()
    before = copy.deepcopy(batch)
    for head in (_sfav().train(), _tsltm().train()):
        head(batch)
        for k, v in before.items():
            assert torch.equal(batch[k], v) if isinstance(v, torch.Tensor) else batch[k] == v
