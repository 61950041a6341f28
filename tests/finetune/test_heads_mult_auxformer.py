"""MulT and AuxFormer heads: cross-modal attention within a clip, masks, missing modalities,
AuxFormer's auxiliary losses and modality dropout, training through finetune.trainer.fit."""

from __future__ import annotations

import pytest
import torch

from finetune.heads import BuildContext
from finetune.heads.auxformer import AuxFormerHead
from finetune.heads.mult import MulTHead
from finetune.run import default_loss
from finetune.trainer import TrainSettings, fit, keep_modality, predict_outputs
from ssl_aver.errors import UserError
from ssl_aver.models.encoder import SSLEncoder

MULT_TINY = {"d_model": 8, "n_heads": 2, "cross_layers": 1, "memory_layers": 1, "proj_kernel": 3}
AUX_TINY = {"d_model": 8, "n_heads": 2, "layers": 1, "aux_hidden": [8, 8], "aux_repeats": 2, "proj_kernel": 3}
MULT_QUIET = {"attn_dropout": 0.0, "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0, "out_dropout": 0.0}
AUX_QUIET = {**MULT_QUIET, "cross_attn_dropout": 0.0, "modality_dropout": {"audio": 0.0, "video": 0.0}}
HEADS = {"mult": (MulTHead, MULT_TINY), "auxformer": (AuxFormerHead, AUX_TINY)}


def _head(name: str, task: str = "multiclass", audio_shape: tuple[int, ...] = (5,), **over) -> torch.nn.Module:
    cls, tiny = HEADS[name]
    ctx = BuildContext(n_classes=6, task=task, audio_shape=audio_shape, video_shape=(7,))
    return cls.from_config({**cls.defaults(), **tiny, **over}, 6, ctx)


def _batch(n: int = 4, audio_shape: tuple[int, ...] = (5,), audio_rows=None, video_rows=None, seed: int = 0) -> dict:
    """Clips of different lengths, padded (audio to 12 frames, video to 8); odd clips have a
    masked video frame in the middle (no face); rows left out of audio_rows / video_rows lack
    that modality entirely."""
    g = torch.Generator().manual_seed(seed)
    a_mask, v_mask = torch.zeros(n, 12, dtype=torch.bool), torch.zeros(n, 8, dtype=torch.bool)
    for i in range(n):
        if audio_rows is None or i in audio_rows:
            a_mask[i, : 7 + (2 * i) % 5] = True
        if video_rows is None or i in video_rows:
            v_mask[i, : 5 + i % 3] = True
            if i % 2:
                v_mask[i, 2] = False
    audio = torch.randn(n, 12, *audio_shape, generator=g) * a_mask.view(n, 12, *[1] * len(audio_shape))
    video = torch.randn(n, 8, 7, generator=g) * v_mask[..., None]
    return {"clips": [f"c{i}" for i in range(n)], "audio": audio, "video": video, "audio_mask": a_mask, "video_mask": v_mask,
            "has_audio": a_mask.any(1), "has_video": v_mask.any(1), "targets": torch.eye(6)[torch.arange(n) % 6]}


def _alone(batch: dict, i: int) -> dict:
    """Clip i on its own, trimmed to its last valid frame (no padding, no companions)."""
    out = {"clips": [batch["clips"][i]], "targets": batch["targets"][i : i + 1]}
    for m in ("audio", "video"):
        valid = batch[f"{m}_mask"][i]
        length = int(valid.nonzero().max()) + 1 if valid.any() else 1
        out[m], out[f"{m}_mask"], out[f"has_{m}"] = batch[m][i : i + 1, :length], valid[None, :length], valid.any()[None]
    return out


def _noisy(batch: dict) -> dict:
    """The batch with large random values at every masked frame (padding, holes, missing modality)."""
    out = dict(batch)
    for m in ("audio", "video"):
        mask = batch[f"{m}_mask"].view(*batch[f"{m}_mask"].shape, *[1] * (batch[m].dim() - 2))
        out[m] = torch.where(mask, batch[m], 100 * torch.randn_like(batch[m]))
    return out


def _separable(n: int, seed: int, audio_shape: tuple[int, ...] = (5,)) -> dict:
    """Clips whose audio and video frames carry a class code plus noise."""
    batch = _batch(n, audio_shape, seed=seed)
    labels = torch.arange(n) % 6
    g = torch.Generator().manual_seed(99)
    codes_a, codes_v = 2 * torch.randn(6, *audio_shape, generator=g), 2 * torch.randn(6, 7, generator=g)
    batch["audio"] = batch["audio"] + codes_a[labels][:, None] * batch["audio_mask"].view(n, 12, *[1] * len(audio_shape))
    batch["video"] = batch["video"] + codes_v[labels][:, None] * batch["video_mask"][..., None]
    return batch


def _fit(head: torch.nn.Module, loss_fn) -> list[dict]:
    train = [_separable(12, seed) for seed in (1, 2)]
    settings = TrainSettings(epochs=10, lr=3e-3, lr_patience=None, early_stop_patience=None)
    return fit(head, train, [_separable(12, 3)], loss_fn=loss_fn, settings=settings, device=torch.device("cpu"), progress=False).history


# ---- shared: eval invariances, missing modalities, paper sizes, encoder branch ------------------
@pytest.mark.parametrize("name", ["mult", "auxformer"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_eval_output_ignores_companions_padding_and_masked_values(name, pooling):
    torch.manual_seed(0)
    head = _head(name, pooling=pooling).eval()
    batch = _batch(5, audio_rows=[0, 1, 2, 4], video_rows=[0, 2, 3, 4])
    with torch.no_grad():
        reference = head(batch)
        torch.testing.assert_close(head(_noisy(batch)), reference, atol=1e-6, rtol=0)
        for i in range(5):
            torch.testing.assert_close(head(_alone(batch, i))[0], reference[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mult", "auxformer"])
@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression"])
def test_rows_with_one_modality_missing_get_finite_outputs(name, task):
    torch.manual_seed(0)
    head = _head(name, task)
    batch = _batch(4, audio_rows=[0, 2, 3], video_rows=[1, 2, 3])  # 0: audio only, 1: video only
    head.eval()
    with torch.no_grad():
        assert torch.isfinite(head(batch)).all()
        for condition in ("audio", "video"):
            assert torch.isfinite(head(keep_modality(batch, condition))).all()
    head.train()
    loss_fn = getattr(head, "loss", None) or default_loss(task, 6)
    loss = loss_fn(head(batch), batch["targets"])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("name, low, high", [("mult", 2.5e5, 4e5), ("auxformer", 1.0e6, 1.5e6)])
def test_defaults_build_at_paper_size(name, low, high):
    cls = HEADS[name][0]
    head = cls.from_config(cls.defaults(), 6, BuildContext(n_classes=6, task="multiclass", audio_shape=(1024,), video_shape=(1408,))).eval()
    n = sum(p.numel() for p in head.parameters())
    print(f"{name}: {n:,} parameters at paper size")
    assert low < n < high
    batch = _batch(2, (1024,))
    batch["video"] = torch.randn(2, 8, 1408) * batch["video_mask"][..., None]
    with torch.no_grad():
        out = head(batch)
    assert out.shape == (2, 6) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mult", "auxformer"])
def test_pretrained_encoder_branch_is_freezable_and_skips_clips_without_audio(name, tmp_path):
    torch.manual_seed(0)
    SSLEncoder({"input_dim": 5, "d_model": 8, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 16}).save_pretrained(tmp_path / "enc")
    cls, tiny = HEADS[name]
    ctx = BuildContext(n_classes=6, task="multiclass", encoder_dir=str(tmp_path / "enc"), audio_shape=(5,), video_shape=(7,))
    head = cls.from_config({**cls.defaults(), **tiny}, 6, ctx)
    assert isinstance(head.branch, SSLEncoder)
    for p in head.branch.parameters():
        p.requires_grad_(False)
    head.train()
    assert not head.branch.training and head.front.audio_proj.training
    assert not hasattr(_head(name), "branch")  # stored features: nothing for freeze_encoder to freeze
    head.eval()
    with torch.no_grad():
        assert torch.isfinite(head(_batch(3, audio_rows=[1, 2]))).all()


# ---- MulT ---------------------------------------------------------------------------------------
def test_mult_audio_stream_attends_to_the_video_of_its_own_clip_only():
    torch.manual_seed(0)
    head = _head("mult").eval()
    batch = _batch(4)
    with torch.no_grad():
        audio_side, video_side = head.streams(batch)
        changed = dict(batch, video=batch["video"].clone())
        changed["video"][0, 1] += 3.0  # a valid video frame of clip 0
        a2, v2 = head.streams(changed)
        assert (a2[0] - audio_side[0]).abs().max() > 1e-3  # audio queries attend to that video frame
        torch.testing.assert_close(a2[1:], audio_side[1:], atol=1e-6, rtol=0)  # ... of their own clip only
        torch.testing.assert_close(v2[1:], video_side[1:], atol=1e-6, rtol=0)
        changed = dict(batch, audio=batch["audio"].clone())
        changed["audio"][2, 3] += 3.0
        a3, v3 = head.streams(changed)
        assert (v3[2] - video_side[2]).abs().max() > 1e-3  # and video queries attend to the audio
        torch.testing.assert_close(v3[[0, 1, 3]], video_side[[0, 1, 3]], atol=1e-6, rtol=0)


def test_mult_masked_video_frames_change_nothing():
    torch.manual_seed(0)
    head = _head("mult").eval()
    batch = _batch(4)
    assert not batch["video_mask"][1, 2]  # a hole in the middle of clip 1's video
    with torch.no_grad():
        reference = head.streams(batch)
        changed = dict(batch, video=batch["video"].clone())
        changed["video"][1, 2] = 50.0
        changed["video"][0, 6:] = -50.0  # padding
        for before, after in zip(reference, head.streams(changed)):
            torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_mult_missing_source_makes_a_zero_cross_modal_update():
    """A clip without video: the audio <- video attention weights cannot matter for it (zero
    update), while they do for the clips with video."""
    torch.manual_seed(0)
    head = _head("mult").eval()
    batch = _batch(3, video_rows=[1, 2])
    with torch.no_grad():
        reference = head.streams(batch)[0]
        for layer in head.audio_from_video.layers:
            for p in layer.attn.parameters():
                p.add_(torch.randn_like(p))
        changed = head.streams(batch)[0]
    torch.testing.assert_close(changed[0], reference[0], atol=1e-6, rtol=0)
    assert (changed[1:] - reference[1:]).abs().max() > 1e-3
    assert torch.isfinite(head.streams(batch)[1]).all() and not head.streams(batch)[1][0].any()  # no video: zero video stream


def test_mult_fit_lowers_the_training_loss():
    torch.manual_seed(0)
    head = _head("mult", **MULT_QUIET)
    history = _fit(head, default_loss("multiclass", 6))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]


def test_mult_bad_pooling_is_a_user_error():
    with pytest.raises(UserError, match="model.pooling"):
        _head("mult", pooling="max")


# ---- AuxFormer ----------------------------------------------------------------------------------
def _grad_groups(head: torch.nn.Module) -> set[str]:
    """Module groups (front.<part> or the top-level module) with a non-zero gradient."""
    reached = set()
    for name, p in head.named_parameters():
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] == "front" else parts[0]
        if p.grad is not None and p.grad.abs().sum() > 0:
            reached.add(group)
    return reached


@pytest.mark.parametrize("shared", [True, False])
def test_auxformer_each_loss_term_reaches_exactly_its_branches(shared):
    torch.manual_seed(0)
    head = _head("auxformer", audio_shape=(3, 5), shared_aux_head=shared, **AUX_QUIET).train()
    batch = _batch(4, (3, 5))
    out = head(batch)
    terms = head.loss_terms(out, batch["targets"])
    video_head = "audio_aux_head" if shared else "video_aux_head"
    expected = {
        "main": {"front.layer_sum", "front.audio_proj", "front.video_proj", "audio_from_video", "video_from_audio", "audio_self", "video_self",
                 "fusion", "out_layer"},
        "audio": {"front.layer_sum", "front.audio_proj", "audio_aux", "audio_aux_head"},
        "video": {"front.video_proj", "video_aux", video_head},
    }
    for term, groups in expected.items():
        head.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        assert _grad_groups(head) == groups, term
    total = head.loss(out, batch["targets"])
    torch.testing.assert_close(total, sum(0.3333 * t for t in terms.values()))


@pytest.mark.parametrize("dropped", ["audio", "video"])
def test_auxformer_modality_dropout_removes_a_whole_modality_in_training_only(dropped):
    torch.manual_seed(0)
    kept = "video" if dropped == "audio" else "audio"
    head = _head("auxformer", **{**AUX_QUIET, "modality_dropout": {dropped: 1.0, kept: 0.0}})
    batch = _batch(4)
    with torch.no_grad():
        head.train()
        out = head(batch)
        assert not out[f"has_{dropped}"].any() and out[f"has_{kept}"].all()
        without = head.branches(keep_modality(batch, kept))  # zeroed and masked, as at test time
        for key in ("main", "audio", "video"):
            torch.testing.assert_close(out[key], without[key], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[dropped], out[dropped][:1].expand_as(out[dropped]))  # a constant: no frame reached it
        head.eval()
        predicted = head(batch)
        torch.testing.assert_close(predicted, head.combine(head.branches(batch)))
        assert (predicted - head.combine(without)).abs().max() > 1e-3


def test_auxformer_modality_dropout_rates():
    torch.manual_seed(0)
    head = _head("auxformer")
    batch = _batch(4)
    seen = {"audio": 0, "video": 0, "none": 0}
    for _ in range(2000):
        out = head._modality_dropout(batch)
        seen["audio" if not out["audio_mask"].any() else "video" if not out["video_mask"].any() else "none"] += 1
    assert abs(seen["audio"] / 2000 - 0.2) < 0.04 and abs(seen["video"] / 2000 - 0.2) < 0.04


@pytest.mark.parametrize("combine", ["present", "all"])
def test_auxformer_prediction_averages_main_and_auxiliary_outputs(combine):
    torch.manual_seed(0)
    head = _head("auxformer", combine=combine).eval()
    batch = _batch(3, audio_rows=[0, 2], video_rows=[1, 2])  # 0: audio only, 1: video only, 2: both
    with torch.no_grad():
        parts = head.branches(batch)
        predicted = head(batch)
    main, a, v = parts["main"], parts["audio"], parts["video"]
    if combine == "all":
        torch.testing.assert_close(predicted, (main + a + v) / 3)
    else:
        torch.testing.assert_close(predicted[0], (main[0] + a[0]) / 2)
        torch.testing.assert_close(predicted[1], (main[1] + v[1]) / 2)
        torch.testing.assert_close(predicted[2], (main[2] + a[2] + v[2]) / 3)


def test_auxformer_aux_loss_counts_only_clips_with_the_modality():
    torch.manual_seed(0)
    head = _head("auxformer", **AUX_QUIET).train()
    batch = _batch(4, video_rows=[2, 3])
    out = head(batch)
    terms = head.loss_terms(out, batch["targets"])
    labels = batch["targets"].argmax(1)
    torch.testing.assert_close(terms["video"], torch.nn.functional.cross_entropy(out["video"][2:], labels[2:]))
    torch.testing.assert_close(terms["audio"], torch.nn.functional.cross_entropy(out["audio"], labels))
    none = head.loss_terms({**out, "has_video": torch.zeros(4, dtype=torch.bool)}, batch["targets"])
    assert none["video"].item() == 0.0


def test_auxformer_fit_lowers_the_loss_and_predictions_keep_only_class_columns():
    torch.manual_seed(0)
    head = _head("auxformer", **AUX_QUIET)
    history = _fit(head, head.loss)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    head.eval()
    with torch.no_grad():
        dev = _separable(12, 3)
        predicted = head(dev)
        assert isinstance(predicted, torch.Tensor) and predicted.shape == (12, 6)
        torch.testing.assert_close(head.loss(predicted, dev["targets"]), torch.nn.functional.cross_entropy(predicted, dev["targets"].argmax(1)))
    clips, probs, extras = predict_outputs(head, [dev], torch.device("cpu"), "multiclass")
    assert probs.shape == (12, 6) and extras == {}


def test_auxformer_shared_embeddings_pool_the_cross_modal_stacks_of_paired_clips():
    torch.manual_seed(0)
    head = _head("auxformer").eval()
    batch = _batch(4, audio_rows=[0, 1, 3], video_rows=[1, 2, 3])  # paired: clips 1 and 3
    with torch.no_grad():
        audio, video = head.shared_embeddings(batch)
        assert audio.shape == (2, 8) and video.shape == (2, 8)
        for row, i in enumerate((1, 3)):
            alone_a, alone_v = head.shared_embeddings(_alone(batch, i))
            torch.testing.assert_close(alone_a[0], audio[row], atol=1e-5, rtol=0)
            torch.testing.assert_close(alone_v[0], video[row], atol=1e-5, rtol=0)
        a, a_valid, v, v_valid = head.front(_alone(batch, 1))
        expected = head.audio_from_video(a, a_valid, v, v_valid)[0, a_valid[0]].mean(0)
        torch.testing.assert_close(audio[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("over, key", [({"loss_weights": {"main": 1.0, "audio": 1.0}}, "loss_weights"),
                                       ({"modality_dropout": {"audio": 0.7, "video": 0.5}}, "modality_dropout"),
                                       ({"combine": "max"}, "combine")])
def test_auxformer_bad_config_is_a_user_error(over, key):
    with pytest.raises(UserError, match=f"model.{key}"):
        _head("auxformer", **over)
