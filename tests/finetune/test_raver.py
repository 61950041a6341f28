from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from finetune.heads import BuildContext
from finetune.heads.raver import RAVERHead
from finetune.run import build_config, finetune
from ssl_aver.crema_d_labels import EMOTIONS, crema_d_labels, load_votes
from ssl_aver.features.store import ClipFeatures, StoreWriter
from ssl_aver.models.encoder import SSLEncoder
from ssl_aver.models.summarizer import ContextSummarizer

TINY = {"d_model": 16, "n_ctx": 4, "summarizer_layers": 1, "cross_layers": 1, "self_layers": 1, "n_heads": 2, "ff_mult": 2,
        "pool_hidden": 8, "head_dims": [32, 16]}
TINY_OVERRIDES = [f"model.{k}={v}".replace(" ", "") for k, v in TINY.items()]


def write_av_stores(corpus, out, audio_shape=(3, 8), seed=0):
    """Audio [T, *audio_shape] at 50 fps and video [T, 12] at 30 fps (some frames without a face);
    both carry the clip's audio-visual plurality label plus noise, so a head can learn it."""
    labels = crema_d_labels(load_votes(corpus / "processedResults" / "tabulatedVotes.csv"), tie_break="intensity")
    rng = np.random.default_rng(seed)
    codes_a = rng.standard_normal((len(EMOTIONS), *audio_shape)).astype(np.float32)
    codes_v = rng.standard_normal((len(EMOTIONS), 12)).astype(np.float32)
    stores = {}
    for modality, shape, fps in (("audio", list(audio_shape), 50.0), ("video", [12], 30.0)):
        meta = {"extractor": "test", "modality": modality, "config": {"seed": seed}, "fingerprint": "t", "frame_shape": shape,
                "dtype": "float32", "layers": None, "fps": fps, "weights": "random", "has_mask": modality == "video"}
        writer = StoreWriter(out / modality, meta)
        for clip, label in zip(labels["clip"], labels["av_label"].fillna("neutral")):
            n = int(rng.integers(40, 60) * fps / 50.0)
            code = (codes_a if modality == "audio" else codes_v)[EMOTIONS.index(label)]
            array = code + 0.5 * rng.standard_normal((n, *shape)).astype(np.float32)
            present = rng.random(n) > 0.1 if modality == "video" else None
            writer.put(clip, ClipFeatures(array.astype(np.float32), fps, present))
        stores[modality] = writer.consolidate().path
    return stores


@pytest.fixture(scope="module")
def av_stores(tiny_crema, tmp_path_factory):
    return write_av_stores(tiny_crema, tmp_path_factory.mktemp("raver_stores"))


def _batch(b=3, ta=20, tv=12, layers=3, dim=8):
    g = torch.Generator().manual_seed(0)
    batch = {"audio": torch.randn(b, ta, layers, dim, generator=g), "audio_mask": torch.ones(b, ta, dtype=torch.bool),
             "video": torch.randn(b, tv, 12, generator=g), "video_mask": torch.ones(b, tv, dtype=torch.bool)}
    batch["audio_mask"][1, 11:] = False
    batch["video_mask"][2, ::3] = False
    batch["video_mask"][0] = False  # a clip whose video is entirely missing
    return batch


def _ctx(audio_shape=(3, 8), task="multilabel"):
    return BuildContext(n_classes=6, task=task, audio_shape=audio_shape, video_shape=(12,), class_counts=np.array([9, 4, 5, 7, 8, 3]))


def test_summarizer_ignores_the_values_of_masked_frames():
    torch.manual_seed(0)
    summarizer = ContextSummarizer(16, n_ctx=5, n_layers=2, n_heads=4).eval()
    frames = torch.randn(2, 30, 16)
    valid = torch.rand(2, 30) > 0.4
    changed = torch.where(valid.unsqueeze(-1), frames, torch.randn(2, 30, 16) * 100)
    reference = summarizer(frames, valid)
    assert reference.shape == (2, 5, 16)
    torch.testing.assert_close(summarizer(changed, valid), reference)
    # a row with no valid frame gets the frame-free summary, whatever its values
    empty = torch.zeros(2, 30, dtype=torch.bool)
    out = summarizer(frames, empty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], summarizer(torch.randn(2, 30, 16), empty)[1])


def test_raver_output_ignores_masked_frames_and_missing_modalities():
    torch.manual_seed(0)
    head = RAVERHead.from_config(RAVERHead.defaults() | TINY, 6, _ctx()).eval()
    batch = _batch()
    reference = head(batch)
    assert reference.shape == (3, 6) and torch.isfinite(reference).all()
    noisy = dict(batch)
    noisy["audio"] = torch.where(batch["audio_mask"][..., None, None], batch["audio"], torch.full_like(batch["audio"], 50.0))
    noisy["video"] = torch.where(batch["video_mask"][..., None], batch["video"], torch.full_like(batch["video"], -50.0))
    torch.testing.assert_close(head(noisy), reference)


@pytest.mark.parametrize("missing", ["video", "audio"])
def test_raver_takes_nothing_from_a_missing_modality_through_cross_modal_layers_or_pooling(missing):
    """A clip without `missing`: whatever that modality's branch computes (summarizer, cross-modal and
    self layers, pooling), its output is the same; clips that have it do change. Guards the masks
    after the summarizer."""
    torch.manual_seed(0)
    head = RAVERHead.from_config(RAVERHead.defaults() | TINY, 6, _ctx()).eval()
    batch = _batch()
    batch["video_mask"][0] = True
    batch[f"{missing}_mask"][0] = False
    other = "audio" if missing == "video" else "video"
    branch = [getattr(head, name) for name in (f"{missing}_proj", f"summarize_{missing}", f"{missing}_from_{other}", f"{missing}_self", f"pool_{missing}")]
    with torch.no_grad():
        reference = head(batch)
        for module in branch:
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
        changed = head(batch)
    torch.testing.assert_close(changed[0], reference[0])
    assert not torch.allclose(changed[1:], reference[1:], atol=1e-3)


def test_raver_modality_dropout_rates():
    torch.manual_seed(0)
    head = RAVERHead.from_config(RAVERHead.defaults() | TINY, 6, _ctx())
    seen = {"audio": 0, "video": 0, "none": 0}
    batch = _batch()
    batch["video_mask"][0] = True
    for _ in range(2000):
        out = head._modality_dropout(batch)
        key = "audio" if not out["audio_mask"].any() else "video" if not out["video_mask"].any() else "none"
        seen[key] += 1
    assert abs(seen["audio"] / 2000 - 0.2) < 0.04 and abs(seen["video"] / 2000 - 0.2) < 0.04


def test_tiny_raver_trains_with_falling_loss():
    torch.manual_seed(0)
    quiet = {"dropout": 0.0, "embed_dropout": 0.0, "head_dropout": 0.0, "modality_dropout": {"audio": 0.0, "video": 0.0}}
    head = RAVERHead.from_config(RAVERHead.defaults() | TINY | quiet, 6, _ctx())
    batch = _batch(b=12)
    labels = torch.arange(12) % 6
    targets = torch.nn.functional.one_hot(labels, 6).float()
    g = torch.Generator().manual_seed(1)
    batch["audio"] = batch["audio"] + 2 * torch.randn(6, 1, 3, 8, generator=g)[labels]
    batch["video"] = batch["video"] + 2 * torch.randn(6, 1, 12, generator=g)[labels]
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = head.loss(head(batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.4 * losses[0]


def test_raver_on_pretrained_encoder_branch(tmp_path):
    torch.manual_seed(0)
    SSLEncoder({"input_dim": 10, "d_model": 8, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 16}).save_pretrained(tmp_path / "enc")
    ctx = _ctx(audio_shape=(10,))
    ctx.encoder_dir = str(tmp_path / "enc")
    head = RAVERHead.from_config(RAVERHead.defaults() | TINY, 6, ctx)
    assert isinstance(head.branch, SSLEncoder)
    batch = _batch(layers=1, dim=10)
    batch["audio"] = batch["audio"][:, :, 0]
    for p in head.branch.parameters():
        p.requires_grad_(False)
    head.train()
    assert not head.branch.training and head.summarize_audio.training
    assert torch.isfinite(head(batch)).all()


def test_raver_finetune_run_reports_every_test_condition(tiny_crema, av_stores, tmp_path):
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/raver_crema_d.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=2", "train.epochs=6", "train.lr=3e-3", "train.batch_size=16",
        f"features.audio.store={av_stores['audio']}", f"features.video.store={av_stores['video']}", "eval.bootstrap=20",
        "progress=false", *TINY_OVERRIDES,
    ])
    summary = finetune(cfg)
    assert set(summary["by_modality"]) == {"av", "audio", "video"}
    assert summary["task"] == "multilabel"
    history = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("predictions.csv", "predictions_audio.csv", "predictions_video.csv", "model.safetensors"):
        assert (out / "split_01" / name).is_file()
    preds = pd.read_csv(out / "split_00" / "predictions.csv")
    assert ((preds.iloc[:, 1:] >= 0) & (preds.iloc[:, 1:] <= 1)).all().all()
