"""UAVM (one shared transformer + classifier, AV = average of unimodal predictions) and paper 2's
unimodal conformer baselines (Uni. (A) / Uni. (V))."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.heads import BuildContext, head_class
from finetune.heads.conformer_uni import ConformerUniAudioHead, ConformerUniVideoHead
from finetune.heads.uavm import UAVMHead, average_logits
from finetune.heads.vavl import VAVLHead
from finetune.run import default_loss
from finetune.trainer import TrainSettings, fit, keep_modality
from ssl_aver.errors import UserError

C = 4
TINY_UAVM = {"d_model": 16, "shared_d_model": 16, "n_heads": 2, "modality_layers": 1, "shared_layers": 1, "max_len": 32}
TINY_UNI = {"d_model": 16, "n_heads": 2, "layers": 2, "conv_kernel": 3, "ff_expansion": 2, "head_hidden": 16}


def _ctx(task: str = "multiclass", audio_shape=(5,), n_out: int = C) -> BuildContext:
    return BuildContext(n_classes=n_out, task=task, audio_shape=audio_shape, video_shape=(7,))


def _uavm(task: str = "multiclass", n_out: int = C, **over) -> UAVMHead:
    return UAVMHead({**UAVMHead.defaults(), **TINY_UAVM, **over}, n_out, _ctx(task, n_out=n_out))


def _uni(cls, task: str = "multiclass", n_out: int = C, **over):
    return cls({**cls.defaults(), **TINY_UNI, **over}, n_out, _ctx(task, n_out=n_out))


def _batch(n=6, audio_rows=None, video_rows=None, seed=0, ta=9, tv=6):
    """Audio [n, ta, 5] / video [n, tv, 7]; clip i has 5 + i % 4 audio and 3 + i % 3 video frames,
    odd clips with a masked hole in the middle of each modality."""
    g = torch.Generator().manual_seed(seed)
    audio_rows = range(n) if audio_rows is None else audio_rows
    video_rows = range(n) if video_rows is None else video_rows
    a_mask, v_mask = torch.zeros(n, ta, dtype=torch.bool), torch.zeros(n, tv, dtype=torch.bool)
    for i in audio_rows:
        a_mask[i, : 5 + i % 4] = True
        a_mask[i, 2] = i % 2 == 0
    for i in video_rows:
        v_mask[i, : 3 + i % 3] = True
        v_mask[i, 1] = i % 2 == 0
    return {"clips": [str(i) for i in range(n)], "audio": torch.randn(n, ta, 5, generator=g) * a_mask[..., None],
            "video": torch.randn(n, tv, 7, generator=g) * v_mask[..., None], "audio_mask": a_mask, "video_mask": v_mask,
            "has_audio": a_mask.any(1), "has_video": v_mask.any(1), "targets": torch.eye(C)[torch.arange(n) % C]}


def _rows(batch, keep, ta, tv, fill=0.0):
    """Clips `keep` of a batch, re-padded to ta / tv frames with `fill` at the padding."""
    out = {"clips": [batch["clips"][i] for i in keep], "targets": batch["targets"][keep]}
    for m, t in (("audio", ta), ("video", tv)):
        x, mask = batch[m][keep], batch[f"{m}_mask"][keep]
        length = min(t, x.shape[1])
        padded = torch.full((len(keep), t, x.shape[2]), fill)
        padded[:, :length] = x[:, :length]
        out[m] = padded
        out[f"{m}_mask"] = torch.zeros(len(keep), t, dtype=torch.bool)
        out[f"{m}_mask"][:, :length] = mask[:, :length]
        out[f"has_{m}"] = out[f"{m}_mask"].any(1)
    return out


def _scramble_masked(batch, seed=1):
    """The batch with random values at every masked (and padded) frame."""
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    for m in ("audio", "video"):
        noise = torch.randn(batch[m].shape, generator=g) * 5
        out[m] = torch.where(batch[f"{m}_mask"][..., None], batch[m], noise)
    return out


# ---- registry and paper sizes ---------------------------------------------------------------
def test_registry_and_paper_size_defaults():
    assert head_class("uavm") is UAVMHead
    assert head_class("conformer_uni_audio") is ConformerUniAudioHead and head_class("conformer_uni_video") is ConformerUniVideoHead
    assert (ConformerUniAudioHead.inputs, ConformerUniAudioHead.require, ConformerUniAudioHead.eval_modalities) == (("audio",), "audio", ("audio",))
    assert (ConformerUniVideoHead.inputs, ConformerUniVideoHead.require, ConformerUniVideoHead.eval_modalities) == (("video",), "video", ("video",))
    assert (UAVMHead.require, UAVMHead.eval_modalities) == ("both", ("av", "audio", "video"))
    ctx = BuildContext(n_classes=6, task="multiclass", audio_shape=(1024,), video_shape=(1408,))
    uavm = UAVMHead.from_config(UAVMHead.defaults(), 6, ctx)
    assert len(uavm.audio_front.blocks) == len(uavm.video_front.blocks) == len(uavm.shared.blocks) == 3
    assert uavm.shared.blocks[0].attn.n_heads == 4 and uavm.shared.blocks[0].mlp[0].out_features == 4096
    assert isinstance(uavm.audio_front.proj, torch.nn.Identity) and uavm.video_front.proj.in_features == 1408  # project only when widths differ
    counts = {"uavm": sum(p.numel() for p in uavm.parameters())}
    for name, cls in (("conformer_uni_audio", ConformerUniAudioHead), ("conformer_uni_video", ConformerUniVideoHead)):
        head = cls.from_config(cls.defaults(), 6, ctx)
        assert len(head.encoder.blocks) == 5 and head.proj.conv.out_channels == 512 and head.encoder.blocks[0].attn.n_heads == 8
        assert head.subsample.factor == 1 and cls.defaults()["subsample"] == VAVLHead.defaults()["subsample"]  # VAVL's branch
        assert [m.out_features for m in head.head if isinstance(m, torch.nn.Linear)] == [512, 6]  # two FC layers
        counts[name] = sum(p.numel() for p in head.parameters())
    print("parameter counts:", counts)
    assert 110e6 < counts["uavm"] < 125e6  # 9 blocks of 12.6M + projection + positions
    assert 30e6 < counts["conformer_uni_audio"] < counts["conformer_uni_video"] < 40e6


def test_bad_config_values_are_refused():
    with pytest.raises(UserError, match="av_fusion"):
        _uavm(av_fusion="max")
    with pytest.raises(UserError, match="audio_prob"):
        _uavm(audio_prob=1.5)
    with pytest.raises(UserError, match="shared_layers"):
        _uavm(shared_layers=0)


# ---- UAVM: defining behaviour ---------------------------------------------------------------
def test_uavm_one_shared_transformer_and_classifier_serve_both_modalities():
    torch.manual_seed(0)
    head = _uavm()
    classifiers = [m for m in head.modules() if isinstance(m, torch.nn.Linear) and m.out_features == C]
    assert classifiers == [head.classifier[1]]  # ONE classifier
    calls = []
    head.shared.register_forward_hook(lambda mod, args, out: calls.append(("shared", id(mod))))
    head.classifier.register_forward_hook(lambda mod, args, out: calls.append(("classifier", id(mod))))
    head.eval()(_batch())
    assert calls == [("shared", id(head.shared)), ("classifier", id(head.classifier))] * 2  # the same objects, once per modality

    batch = _batch()
    grads = {}
    for modality, prob in (("audio", 1.0), ("video", 0.0)):
        head.train()
        head.audio_prob = prob  # the training batch goes through this modality only
        head.zero_grad(set_to_none=True)
        F.cross_entropy(head(batch), batch["targets"].argmax(1)).backward()
        grads[modality] = {n: p.grad for n, p in head.named_parameters()}
        reached = {n.split(".")[0] for n, g in grads[modality].items() if g is not None and g.abs().sum() > 0}
        other = "video" if modality == "audio" else "audio"
        assert {"shared", "classifier", f"{modality}_front"} <= reached
        assert all(grads[modality][n] is None for n in grads[modality] if n.startswith(f"{other}_front"))
    # both passes put gradient on the very same shared parameters
    shared = [n for n, _ in head.named_parameters() if n.startswith(("shared.", "classifier."))]
    assert all(grads["audio"][n] is not None and grads["video"][n] is not None for n in shared)


def test_uavm_training_batch_goes_through_one_drawn_modality():
    torch.manual_seed(0)
    head = _uavm().eval()
    batch = _batch()
    with torch.no_grad():
        la, lv = head.modality_logits(batch, "audio")[1], head.modality_logits(batch, "video")[1]
        head.train()  # dropout 0: a training pass is exactly one modality's prediction
        drawn = []
        for _ in range(200):
            out = head(batch)
            drawn.append("audio" if torch.allclose(out, la) else "video" if torch.allclose(out, lv) else "other")
    assert "other" not in drawn and 70 < drawn.count("audio") < 130  # audio_prob = 0.5, as the source's a_tr_prob


@pytest.mark.parametrize("fusion,task", [("logits", "multiclass"), ("probabilities", "multiclass"), ("probabilities", "multilabel"),
                                         ("probabilities", "regression"), ("logits", "multilabel")])
def test_uavm_av_output_is_the_average_of_the_unimodal_predictions(fusion, task):
    torch.manual_seed(0)
    head = _uavm(task, av_fusion=fusion).eval()
    batch = _batch()
    with torch.no_grad():
        av, la, lv = head(batch), head(keep_modality(batch, "audio")), head(keep_modality(batch, "video"))
        # hand-computed audio prediction of clip 2 (unpadded, no hole): front end, shared layers, mean, classifier
        x, valid = batch["audio"][2:3, :7], batch["audio_mask"][2:3, :7]
        assert valid.all()
        by_hand = head.classifier(head.shared(head.audio_front(x, valid), valid).mean(1))
    torch.testing.assert_close(la[2:3], by_hand, atol=1e-5, rtol=1e-5)
    if fusion == "logits" or task == "regression":
        torch.testing.assert_close(av, (la + lv) / 2)
    elif task == "multiclass":
        torch.testing.assert_close(av.softmax(-1), (la.softmax(-1) + lv.softmax(-1)) / 2)
    else:
        torch.testing.assert_close(av.sigmoid(), (la.sigmoid() + lv.sigmoid()) / 2)
    # the probability average stays finite for confident, opposite predictions
    big = torch.tensor([[80.0, -80.0]])
    for t in ("multiclass", "multilabel"):
        fused = average_logits(big, -big, "probabilities", t)
        assert torch.isfinite(fused).all()
    torch.testing.assert_close(average_logits(big, -big, "probabilities", "multiclass").softmax(-1), torch.tensor([[0.5, 0.5]]))


def test_uavm_has_no_cross_modal_attention():
    torch.manual_seed(0)
    head = _uavm().eval()
    batch = _batch()
    changed = dict(batch, video=batch["video"] + torch.randn(batch["video"].shape) * batch["video_mask"][..., None])
    changed_audio = dict(batch, audio=batch["audio"] * 3 + 1 * batch["audio_mask"][..., None])
    with torch.no_grad():
        torch.testing.assert_close(head.modality_logits(changed, "audio")[1], head.modality_logits(batch, "audio")[1])
        torch.testing.assert_close(head.modality_logits(changed_audio, "video")[1], head.modality_logits(batch, "video")[1])
        av, av_changed = head(batch), head(changed)
        lv, lv_changed = head.modality_logits(batch, "video")[1], head.modality_logits(changed, "video")[1]
    assert not torch.allclose(av, av_changed)  # the video does count in the AV output ...
    torch.testing.assert_close(av_changed - av, (lv_changed - lv) / 2)  # ... only through its own prediction
    # a training batch drawn for audio does not depend on the video at all
    head.train()
    head.audio_prob = 1.0
    torch.testing.assert_close(head(changed), head(batch))


def test_uavm_missing_modality_falls_back_to_the_other_prediction():
    torch.manual_seed(0)
    head = _uavm().eval()
    batch = _batch(audio_rows=[0, 1, 2, 3], video_rows=[2, 3, 4, 5])
    batch["has_video"][0] = True  # has_video set but every video frame masked (100% missing frames)
    with torch.no_grad():
        out = head(batch)
        _, la = head.modality_logits(batch, "audio")
        _, lv = head.modality_logits(batch, "video")
        full = head(_batch())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:2], la[:2])
    torch.testing.assert_close(out[4:], lv[4:])
    torch.testing.assert_close(out[2:4], (la[2:4] + lv[2:4]) / 2)
    torch.testing.assert_close(out[2:4], full[2:4])  # the paired clips do not depend on the unpaired ones
    # every test condition gives finite logits; a clip with neither modality gets zeros
    none = dict(batch, audio_mask=torch.zeros_like(batch["audio_mask"]), has_audio=torch.zeros(6, dtype=torch.bool))
    assert torch.equal(head(none)[:2], torch.zeros(2, C))
    for condition in ("audio", "video"):
        assert torch.isfinite(head(keep_modality(batch, condition))).all()
    # training: a clip lacking the drawn modality contributes the other one's prediction
    head.train()
    head.audio_prob = 1.0
    torch.testing.assert_close(head(batch)[4:], lv[4:])


def test_uavm_shared_embeddings_are_the_pooled_shared_outputs_of_paired_clips():
    torch.manual_seed(0)
    head = _uavm().eval()
    batch = _batch(audio_rows=[0, 1, 2, 3], video_rows=[1, 2, 3, 4])
    with torch.no_grad():
        emb_a, emb_v = head.shared_embeddings(batch)
        assert emb_a.shape == emb_v.shape == (3, 16)
        # the classifier reads exactly these vectors
        torch.testing.assert_close(head.classifier(emb_a), head.modality_logits(batch, "audio")[1][1:4])
        torch.testing.assert_close(head.classifier(emb_v), head.modality_logits(batch, "video")[1][1:4])
        stacked = UAVMHead({**UAVMHead.defaults(), **TINY_UAVM}, C, _ctx(audio_shape=(3, 5)))
        b = _batch()
        b["audio"] = b["audio"][:, :, None].expand(-1, -1, 3, -1).contiguous()
        assert hasattr(stacked, "layer_sum") and torch.isfinite(stacked.eval()(b)).all()


# ---- invariances (all three heads) ----------------------------------------------------------
@pytest.mark.parametrize("build", [lambda: _uavm(), lambda: _uni(ConformerUniAudioHead), lambda: _uni(ConformerUniVideoHead),
                                   lambda: _uni(ConformerUniAudioHead, subsample=4, subsample_dim=7),
                                   lambda: _uni(ConformerUniVideoHead, subsample=2, subsample_dim=7)],
                         ids=["uavm", "uni_audio", "uni_video", "uni_audio_4x", "uni_video_2x"])
def test_output_independent_of_companions_padding_and_masked_values(build):
    torch.manual_seed(0)
    head = build().eval()
    batch = _batch()
    with torch.no_grad():
        out = head(batch)
        for i in (1, 3, 4):
            alone = head(_rows(batch, [i], 5 + i % 4, 3 + i % 3))  # the clip's own frames, no padding
            torch.testing.assert_close(alone[0], out[i], atol=1e-5, rtol=1e-5)
        longer = head(_rows(batch, [4, 0, 2], 20, 15, fill=3.0))  # other companions, more padding with junk
        torch.testing.assert_close(longer, out[[4, 0, 2]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(head(_scramble_masked(batch)), out, atol=1e-5, rtol=1e-5)


# ---- unimodal conformer baselines -----------------------------------------------------------
def test_conformer_uni_reads_only_its_modality():
    torch.manual_seed(0)
    video_head = _uni(ConformerUniVideoHead).eval()
    audio_head = _uni(ConformerUniAudioHead).eval()
    assert not hasattr(video_head, "acoustic") and not hasattr(video_head, "branch")
    batch = _batch(video_rows=[0, 1, 2, 4, 5])
    with torch.no_grad():
        out = video_head(batch)
        no_audio = video_head(dict(batch, audio=None, audio_mask=None, has_audio=torch.zeros(6, dtype=torch.bool)))
        no_video = audio_head(dict(batch, video=None, video_mask=None, has_video=torch.zeros(6, dtype=torch.bool)))
    torch.testing.assert_close(no_audio, out)
    assert torch.equal(out[3], torch.zeros(C)) and torch.isfinite(out).all()  # the clip without video: zeros, finite
    assert torch.isfinite(no_video).all() and not torch.equal(no_video[3], torch.zeros(C))


def test_conformer_uni_stacked_acoustic_store_uses_lwsum():
    torch.manual_seed(0)
    head = ConformerUniAudioHead({**ConformerUniAudioHead.defaults(), **TINY_UNI}, C, _ctx(audio_shape=(3, 5))).eval()
    batch = _batch()
    batch["audio"] = batch["audio"][:, :, None].expand(-1, -1, 3, -1).contiguous()
    assert hasattr(head, "layer_sum") and torch.isfinite(head(batch)).all()


# ---- training on separable data -------------------------------------------------------------
def _separable(task, n_batches=4, n=16, seed=0):
    """Audio and video frames whose mean encodes the class; regression targets follow the class."""
    g = torch.Generator().manual_seed(seed)
    mu_a, mu_v = torch.randn(C, 5, generator=g) * 2, torch.randn(C, 7, generator=g) * 2
    attributes = torch.randn(C, 3, generator=g)
    batches = []
    for b in range(n_batches):
        batch = _batch(n=n, seed=seed + b + 1)
        label = torch.randperm(n, generator=g) % C
        batch["audio"] = (batch["audio"] * 0.5 + mu_a[label][:, None]) * batch["audio_mask"][..., None]
        batch["video"] = (batch["video"] * 0.5 + mu_v[label][:, None]) * batch["video_mask"][..., None]
        batch["targets"] = attributes[label] if task == "regression" else torch.eye(C)[label]
        batches.append(batch)
    return batches


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("name", ["uavm", "conformer_uni_audio", "conformer_uni_video"])
def test_heads_learn_separable_data(name, task):
    torch.manual_seed(0)
    n_out = 3 if task == "regression" else C  # regression: three attributes
    head = _uavm(task, n_out) if name == "uavm" else _uni(head_class(name), task, n_out)
    loader = _separable(task)
    settings = TrainSettings(epochs=8, lr=3e-3, lr_patience=None, early_stop_patience=None)
    loss_fn = default_loss(task, n_out)
    result = fit(head, loader, loader[:1], loss_fn=loss_fn, settings=settings, device=torch.device("cpu"), progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
