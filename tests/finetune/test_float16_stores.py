"""float16 feature stores: read and batched in float16, upcast to float32 on the device by the
training loop's `move`, batch by batch; a run on them matches the float32 store's run."""

from __future__ import annotations

import json

import numpy as np
import torch

from finetune.data import crema_d_task
from finetune.run import build_config, finetune
from finetune.trainer import move
from ssl_aver.av_dataset import AVDataset
from ssl_aver.features.store import ClipFeatures, FeatureStore, write_clip_features

from tests.finetune.test_vavl import TINY


def _stores(root, out, dtype):
    labels = crema_d_task(root, "av", "multiclass").labels
    rng = np.random.default_rng(0)
    mu_a, mu_v = rng.standard_normal((6, 8)) * 2, rng.standard_normal((6, 6)) * 2
    audio, video = {}, {}
    for clip, target in zip(labels["clip"], labels[[c for c in labels.columns if c.startswith("target_")]].to_numpy()):
        e = int(target.argmax())
        audio[clip] = ClipFeatures((mu_a[e] + rng.standard_normal((int(rng.integers(12, 20)), 8))).astype(np.float16).astype(np.float32), 50.0)
        v = (mu_v[e] + rng.standard_normal((int(rng.integers(6, 10)), 6))).astype(np.float16).astype(np.float32)
        video[clip] = ClipFeatures(v, 25.0, np.ones(len(v), bool))
    return (write_clip_features(out / f"audio_{dtype}", audio, "audio", dtype=dtype),
            write_clip_features(out / f"video_{dtype}", video, "video", dtype=dtype))


def test_float16_store_batches_stay_half_until_moved(tiny_crema, tmp_path):
    audio, video = _stores(tiny_crema, tmp_path, "float16")
    assert FeatureStore(audio).meta["dtype"] == "float16"
    labels = crema_d_task(tiny_crema, "av", "multiclass").labels
    targets = [c for c in labels.columns if c.startswith("target_")]
    half = AVDataset(labels, targets, audio=audio, video=video, keep_dtype=True)
    full = AVDataset(labels, targets, audio=audio, video=video)
    batch = half.collate([half[i] for i in range(5)])
    assert batch["audio"].dtype == torch.float16 and batch["video"].dtype == torch.float16
    moved = move(batch, torch.device("cpu"))
    assert moved["audio"].dtype == torch.float32 and moved["targets"].dtype == torch.float32
    reference = full.collate([full[i] for i in range(5)])
    assert torch.equal(moved["audio"], reference["audio"]) and torch.equal(moved["video"], reference["video"])
    assert torch.equal(moved["audio_mask"], reference["audio_mask"])


def test_a_run_on_float16_stores_equals_the_float32_run(tiny_crema, tmp_path):
    results = {}
    for dtype in ("float16", "float32"):
        audio, video = _stores(tiny_crema, tmp_path, dtype)  # the same values, exactly representable in float16
        out = tmp_path / dtype
        finetune(build_config("recipes/finetune/vavl_crema_d.yaml", [
            f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=1", "train.epochs=2", "train.lr=2e-3",
            f"features.audio.store={audio}", f"features.video.store={video}", *TINY,
        ]))
        results[dtype] = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    assert [h["dev_loss"] for h in results["float16"]] == [h["dev_loss"] for h in results["float32"]]


def test_every_split_writes_its_tensorboard_curves(tiny_crema, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    audio, video = _stores(tiny_crema, tmp_path, "float32")
    out = tmp_path / "run"
    finetune(build_config("recipes/finetune/vavl_crema_d.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=2", "train.epochs=3",
        f"features.audio.store={audio}", f"features.video.store={video}", *TINY,
    ]))
    for k in range(2):
        events = EventAccumulator(str(out / "tensorboard" / f"split_{k:02d}"))
        events.Reload()
        history = json.loads((out / f"split_{k:02d}" / "metrics.json").read_text())["history"]
        dev = events.Scalars("dev_loss")
        assert [e.step for e in dev] == [1, 2, 3]
        assert np.allclose([e.value for e in dev], [h["dev_loss"] for h in history], rtol=1e-6)
        assert {"train_audio_loss", "lr", "steps"} <= set(events.Tags()["scalars"])
