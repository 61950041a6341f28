from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from finetune.heads.vavl import valid_mean
from finetune.robustness import ClipFrames, Condition, degrade, frame_drops, sample_stats, summarise
from finetune.run import build_config as finetune_config
from finetune.run import finetune
from ssl_aver.av_dataset import AVDataset
from ssl_aver.app.cli import main
from ssl_aver.crema_d_labels import EMOTIONS, crema_d_labels, load_votes
from ssl_aver.features.store import ClipFeatures, FeatureStore, StoreWriter, write_clip_features
from ssl_aver.metrics import evaluate_predictions

RAVER = ["model.d_model=16", "model.n_ctx=4", "model.summarizer_layers=1", "model.cross_layers=1", "model.self_layers=1",
         "model.n_heads=2", "model.ff_mult=2", "model.pool_hidden=8", "model.head_dims=[16]"]
SER = ["model.encoder.input_dim=8", "model.encoder.d_model=8", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1",
       "model.encoder.n_scaled_layers=0", "model.encoder.ff_dim=16", "model.hidden=8"]
FAST = ["seeds=[0,1]", "random.levels=[0.0,0.5,1.0]", "markov.grid=[[0.2,0.3]]", "bootstrap=30", "progress=false", "num_threads=1"]


def _stores(corpus, out):
    """Label-carrying audio [T, 8] at 50 fps and video [T, 6] at 30 fps (10% of frames without a face)."""
    labels = crema_d_labels(load_votes(corpus / "processedResults" / "tabulatedVotes.csv"), tie_break="intensity")
    rng = np.random.default_rng(0)
    paths = {}
    for modality, dim, fps in (("audio", 8, 50.0), ("video", 6, 30.0)):
        codes = rng.standard_normal((len(EMOTIONS), dim)).astype(np.float32)
        writer = StoreWriter(out / modality, {"extractor": "test", "modality": modality, "config": {}, "fingerprint": "t", "frame_shape": [dim],
                                              "dtype": "float32", "layers": None, "fps": fps, "weights": "random", "has_mask": modality == "video"})
        for clip, label in zip(labels["clip"], labels["av_label"].fillna("neutral")):
            n = int(rng.integers(30, 50) * fps / 50.0)
            array = (codes[EMOTIONS.index(label)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
            writer.put(clip, ClipFeatures(array, fps, rng.random(n) > 0.1 if modality == "video" else None))
        paths[modality] = writer.consolidate().path
    return paths


@pytest.fixture(scope="module")
def runs(tiny_crema, tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    stores = _stores(tiny_crema, root / "stores")
    common = [f"data.root={tiny_crema}", "splits.k=2", "train.batch_size=16", "eval.bootstrap=0", "progress=false",
              f"features.audio.store={stores['audio']}", f"features.video.store={stores['video']}"]
    finetune(finetune_config("recipes/finetune/raver_crema_d.yaml", [*common, f"output_dir={root / 'raver'}", "train.epochs=5", "train.lr=3e-3", *RAVER]))
    finetune(finetune_config("recipes/finetune/ser_crema_d.yaml", [*common, f"output_dir={root / 'ser'}", "train.epochs=5", "train.lr=3e-3", *SER]))
    return root / "raver", root / "ser"


def test_robustness_cli_on_raver_and_ser_runs(runs, tmp_path):
    raver, ser = runs
    out = tmp_path / "rob"
    assert main(["robustness", "--run", str(raver), "--compare", str(ser), "--out", str(out), *FAST]) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert set(report["fills"]) == {"mask", "zero"}
    by_head = {r["head"]: r for r in report["runs"]}
    assert set(by_head) == {"raver", "ser"}
    rv, sr = by_head["raver"], by_head["ser"]
    assert rv["splits"] == [0, 1] and rv["seeds"] == [0, 1] and set(rv["fills"]) == {"mask", "zero"}
    for by_fill in rv["fills"].values():
        # every condition of the grid, with the measured share of dropped frames matching the level under both fills
        assert set(by_fill["random"]) == {"audio", "video", "both"} and set(by_fill["markov"]) == {"sync", "async"}
        for name, points in by_fill["random"].items():
            assert [p["level"] for p in points] == [0.0, 0.5, 1.0]
            for p in points:
                for share in p["dropped_pct"].values():
                    assert share == pytest.approx(100 * p["level"], abs=1.5)
                assert 0.0 <= p["macro_f1"]["ci"][0] <= p["macro_f1"]["ci"][1] <= 1.0 and 0.0 <= p["macro_f1"]["mean"] <= 1.0
            # 0% loss is the clean input
            assert points[0]["macro_f1"] == rv["clean"]["macro_f1"]
        sync = by_fill["markov"]["sync"][0]
        assert sync["adf_expected"] == pytest.approx(40.0) and 0.0 < sync["adf"] < 100.0
        # the 100%-masking level of random audio is the missing-audio condition of the same fill
        assert by_fill["random"]["audio"][-1]["macro_f1"] == by_fill["missing"]["audio"]["macro_f1"]
        assert set(by_fill["missing"]) == {"audio", "video"}
    # both fills lose the same frames
    assert rv["fills"]["mask"]["markov"]["sync"][0]["adf"] == rv["fills"]["zero"]["markov"]["sync"][0]["adf"]
    assert set(rv["clean"]["per_class_f1"]) == set(EMOTIONS)
    # the clean point equals the fine-tuning run's own test evaluation (the heads were rebuilt exactly)
    run_metrics = json.loads((raver / "metrics.json").read_text())
    assert rv["clean"]["macro_f1"]["mean"] == pytest.approx(run_metrics["by_modality"]["av"]["macro_f1"]["mean"], abs=1e-6)
    assert rv["fills"]["mask"]["missing"]["video"]["macro_f1"]["mean"] == pytest.approx(run_metrics["by_modality"]["audio"]["macro_f1"]["mean"], abs=1e-6)
    # an audio-only head gets only the audio conditions
    for by_fill in sr["fills"].values():
        assert set(by_fill["random"]) == {"audio"} and by_fill["markov"] == {} and set(by_fill["missing"]) == {"audio"}
    assert sr["clean"]["macro_f1"]["mean"] == pytest.approx(json.loads((ser / "metrics.json").read_text())["overall"]["macro_f1"]["mean"], abs=1e-6)
    assert {p.rsplit("/", 1)[-1] for p in report["plots"]} >= {"random_audio.png", "random_video.png", "markov_sync.png"}
    assert (out / "random_audio.png").stat().st_size > 1000
    text = (out / "robustness.md").read_text()
    assert "Brier" in text and "100% missing audio, zero" in text and "| raver (raver) | zero |" in text


def test_robustness_errors(tmp_path, capsys):
    assert main(["robustness", "--run", str(tmp_path)]) == 2
    assert "not an `ssl-aver finetune` run" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "markov.grid=[[0.5]]"]) == 2
    assert "[p_L, p_N] pairs" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "markov.grid=[[0.5,1.5]]"]) == 2
    assert "p_N must be a probability" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "seed=3"]) == 2
    assert "seed" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "fills=[mask,blur]"]) == 2
    assert "fills: got ['mask', 'blur']" in capsys.readouterr().err


def test_bootstrap_point_matches_toolkit_metrics():
    rng = np.random.default_rng(0)
    probs = rng.random((40, 6)).astype(np.float32)
    targets = (rng.random((40, 6)) > 0.6).astype(np.float32)
    stats = sample_stats(probs, targets, "multilabel")
    out = summarise([[stats]], [np.ones((1, 40), np.float32)], 6, 0.95)
    reference = evaluate_predictions(probs, targets, "multilabel", EMOTIONS, bootstrap=0)
    assert out["macro_f1"]["mean"] == pytest.approx(reference["macro_f1"], abs=1e-6)
    assert out["brier"]["mean"] == pytest.approx(reference["brier"], abs=1e-6)
    assert [e["mean"] for e in out["per_class_f1"]] == pytest.approx(list(reference["per_class_f1"].values()), abs=1e-6)


def test_shared_markov_mask_drops_aligned_regions_in_a_batch():
    frames = ClipFrames({"audio": {"c": (100, 50.0)}, "video": {"c": (60, 30.0)}})
    batch = {"clips": ["c"], "audio": torch.ones(1, 100, 4), "audio_mask": torch.ones(1, 100, dtype=torch.bool), "has_audio": torch.tensor([True]),
             "video": torch.ones(1, 60, 3), "video_mask": torch.ones(1, 60, dtype=torch.bool), "has_video": torch.tensor([True])}
    point = Condition("markov", "sync", p_loss=0.3, p_recover=0.2, touches=("audio", "video"), seeded=True)
    out = degrade(batch, point, split=0, seed=0, frames=frames, step_s=None)
    audio_lost, video_lost = ~out["audio_mask"][0], ~out["video_mask"][0]
    assert audio_lost.any() and not audio_lost[0]
    assert all(video_lost[j] == audio_lost[int(j / 30 * 50 + 1e-9)] for j in range(60))
    assert (out["audio"][0][audio_lost] == 0).all()
    again = degrade(batch, point, split=0, seed=0, frames=frames, step_s=None)
    assert torch.equal(again["audio_mask"], out["audio_mask"])
    other = degrade(batch, Condition("markov", "async", p_loss=0.3, p_recover=0.2, touches=("audio", "video"), seeded=True), 0, 0, frames, None)
    assert not torch.equal((~other["video_mask"][0]), video_lost) or not torch.equal(~other["audio_mask"][0], audio_lost)
    # zero fill: the same regions zeroed, the masks left on
    zero = degrade(batch, Condition("markov", "sync", p_loss=0.3, p_recover=0.2, touches=("audio", "video"), seeded=True, fill="zero"), 0, 0, frames, None)
    assert zero["audio_mask"].all() and zero["video_mask"].all()
    assert torch.equal(zero["audio"][0].abs().sum(-1) == 0, audio_lost) and torch.equal(zero["video"][0].abs().sum(-1) == 0, video_lost)


def _masked_batch() -> dict:
    """Two clips of audio [T=20, 3] (the second padded after 12 frames) and video [T=9, 2] with a faceless frame."""
    g = torch.Generator().manual_seed(0)
    batch = {"clips": ["a", "b"], "audio": torch.rand(2, 20, 3, generator=g) + 1.0, "audio_mask": torch.ones(2, 20, dtype=torch.bool),
             "video": torch.rand(2, 9, 2, generator=g) + 1.0, "video_mask": torch.ones(2, 9, dtype=torch.bool)}
    batch["audio_mask"][1, 12:] = False
    batch["video_mask"][0, 4] = False
    for m in ("audio", "video"):
        batch[m] = batch[m] * batch[f"{m}_mask"][..., None]
        batch[f"has_{m}"] = batch[f"{m}_mask"].any(dim=1)
    return batch


def test_fills_drop_the_same_frames_but_only_mask_tells_the_model():
    batch, frames = _masked_batch(), ClipFrames()
    point = {fill: Condition("random", "audio", 0.5, touches=("audio",), seeded=True, fill=fill) for fill in ("mask", "zero")}
    drops = frame_drops(batch, point["zero"], 0, 0, frames, None)["audio"]
    assert torch.equal(drops, frame_drops(batch, point["mask"], 0, 0, frames, None)["audio"])
    assert drops.sum(1).tolist() == [10, 6] and not (drops & ~batch["audio_mask"]).any()
    masked, zeroed = (degrade(batch, point[f], 0, 0, frames, None) for f in ("mask", "zero"))
    kept = batch["audio_mask"] & ~drops
    assert torch.equal(masked["audio_mask"], kept) and torch.equal(zeroed["audio_mask"], batch["audio_mask"])
    assert torch.equal(masked["audio"], zeroed["audio"]) and (zeroed["audio"][drops] == 0).all()
    assert torch.equal(zeroed["video"], batch["video"]) and torch.equal(zeroed["video_mask"], batch["video_mask"])
    # a masked-mean head (VAVL's pooling): told, it averages the frames kept; not told, it averages zeros in
    kept_sum = (batch["audio"] * kept[..., None]).sum(1)
    torch.testing.assert_close(valid_mean(masked["audio"], masked["audio_mask"]), kept_sum / kept.sum(1, keepdim=True))
    torch.testing.assert_close(valid_mean(zeroed["audio"], zeroed["audio_mask"]), kept_sum / batch["audio_mask"].sum(1, keepdim=True))
    assert not torch.allclose(valid_mean(zeroed["audio"], zeroed["audio_mask"]), valid_mean(masked["audio"], masked["audio_mask"]))
    # 100% missing: mask removes the modality; zero keeps a silent clip of the original length
    gone = {f: degrade(batch, Condition("missing", "video", 1.0, touches=("video",), fill=f), 0, 0, frames, None) for f in ("mask", "zero")}
    assert not gone["mask"]["video_mask"].any() and not gone["mask"]["has_video"].any()
    assert torch.equal(gone["zero"]["video_mask"], batch["video_mask"]) and gone["zero"]["has_video"].all() and (gone["zero"]["video"] == 0).all()


def test_zero_fill_changes_a_mask_honouring_head_and_mask_fill_hides_the_dropped_values():
    from finetune.heads import BuildContext
    from finetune.heads.raver import RAVERHead

    torch.manual_seed(0)
    ctx = BuildContext(n_classes=6, task="multilabel", audio_shape=(3,), video_shape=(2,), class_counts=np.ones(6))
    tiny = {"d_model": 8, "n_ctx": 2, "summarizer_layers": 1, "cross_layers": 1, "self_layers": 1, "n_heads": 2, "ff_mult": 2, "pool_hidden": 4, "head_dims": [8]}
    head = RAVERHead.from_config(RAVERHead.defaults() | tiny, 6, ctx).eval()
    batch, frames = _masked_batch(), ClipFrames()
    point = {fill: Condition("random", "audio", 0.5, touches=("audio",), seeded=True, fill=fill) for fill in ("mask", "zero")}
    drops = frame_drops(batch, point["mask"], 0, 0, frames, None)["audio"]
    with torch.no_grad():
        clean, masked, zeroed = head(batch), head(degrade(batch, point["mask"], 0, 0, frames, None)), head(degrade(batch, point["zero"], 0, 0, frames, None))
        # told which frames are gone, the head's output does not depend on what their values were
        noisy = degrade(batch, point["mask"], 0, 0, frames, None)
        noisy["audio"] = torch.where(drops[..., None], torch.full_like(batch["audio"], 40.0), noisy["audio"])
        torch.testing.assert_close(head(noisy), masked)
    assert not torch.allclose(masked, clean) and not torch.allclose(zeroed, masked, atol=1e-4)


def test_context_sweep_runs_one_model_per_value(tiny_crema, runs, tmp_path):
    raver, _ = runs
    stores = json.loads((raver / "metrics.json").read_text())["stores"]
    recipe_overrides = [f"finetune.{o}" for o in [
        f"data.root={tiny_crema}", "splits.k=1", "train.epochs=2", "train.batch_size=16", "eval.bootstrap=0", "progress=false",
        f"features.audio.store={stores['audio']}", f"features.video.store={stores['video']}", *RAVER]]
    out = tmp_path / "sweep"
    args = ["robustness", "--sweep", "recipes/finetune/raver_context_sweep.yaml", f"output_dir={out}", "values=[2,6]",
            "robustness.random.levels=[0.0,0.9]", "robustness.bootstrap=10", "robustness.progress=false", *recipe_overrides]
    assert main(args) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["value"] for r in sweep["rows"]] == [2, 6] and sweep["best"] in (2, 6)
    assert (out / "context_sweep.png").is_file()
    for value in (2, 6):
        config = (out / f"n_ctx_{value}" / "config.yaml").read_text()
        assert f"n_ctx: {value}" in config
        report = json.loads((out / f"n_ctx_{value}" / "robustness" / "robustness.json").read_text())
        assert report["data_set"] == "dev" and list(report["runs"][0]["fills"]) == ["mask"]
        assert set(report["runs"][0]["fills"]["mask"]["random"]) == {"audio", "video"}


def _copy_run(run, to):
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("robustness"))
    return to


def test_runs_on_other_splits_or_clips_are_not_compared(runs, tmp_path, capsys):
    raver, ser = runs
    # another partition of the actors
    moved = _copy_run(ser, tmp_path / "ser_moved")
    table = pd.read_csv(moved / "splits.csv", dtype=str)
    first = (table["split"] == "0") & (table["set"] == "test")
    swap = table.index[first][0], table.index[(table["split"] == "0") & (table["set"] == "train")][0]
    table.loc[list(swap), "set"] = table.loc[list(swap[::-1]), "set"].to_numpy()
    table.to_csv(moved / "splits.csv", index=False)
    args = ["robustness", "--run", str(raver), "--out", str(tmp_path / "out"), *FAST]
    assert main([*args, "--compare", str(moved)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot compare runs {raver} and {moved}: split 0 assigns actors differently" in err and len(err.splitlines()) == 1
    # the same splits, but a store that lacks a test clip
    fewer = _copy_run(ser, tmp_path / "ser_fewer")
    metrics = json.loads((fewer / "metrics.json").read_text())
    store = FeatureStore(metrics["stores"]["audio"])
    original = pd.read_csv(raver / "splits.csv", dtype=str)
    test_actors = set(original.loc[(original["split"] == "0") & (original["set"] == "test"), "actor"])
    lost = next(c for c in store.clips if c.split("_")[0] in test_actors)
    clips = {c: ClipFeatures(np.array(store.get(c)[0]), store.get(c)[1]) for c in store.clips if c != lost}
    metrics["stores"]["audio"] = str(write_clip_features(tmp_path / "fewer_audio", clips, "audio"))
    (fewer / "metrics.json").write_text(json.dumps(metrics))
    assert main([*args, "--compare", str(fewer)]) == 2
    err = capsys.readouterr().err
    assert f"cannot compare runs {raver} and {fewer}: split 0 has different test clips (1 only in the first, 0 only in the second, e.g. {lost})" in err
    # fewer splits trained
    (fewer / "split_01" / "model.safetensors").unlink()
    assert main([*args, "--compare", str(fewer)]) == 2
    assert "they have trained splits [0, 1] and [0]; choose common ones with splits=[...]" in capsys.readouterr().err
    # a run whose labels changed since it was trained
    stale = _copy_run(raver, tmp_path / "stale")
    inputs = json.loads((stale / "inputs.json").read_text())
    (stale / "inputs.json").write_text(json.dumps({**inputs, "labels_sha256": "0" * 64}))
    assert main(["robustness", "--run", str(stale), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert f"run {stale} is stale" in capsys.readouterr().err


def test_the_test_split_is_streamed_one_batch_at_a_time(runs, tmp_path, monkeypatch):
    raver, _ = runs
    collate = AVDataset.collate
    alive: list[weakref.ref] = []
    most = [0]

    def counting(self, items):
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        batch = collate(self, items)
        alive.append(weakref.ref(batch["targets"]))
        return batch

    monkeypatch.setattr(AVDataset, "collate", counting)
    assert main(["robustness", "--run", str(raver), "--out", str(tmp_path / "out"), "batch_size=2", "splits=[0]", *FAST]) == 0
    assert len(alive) >= 4 and most[0] <= 1


def test_mer_run_on_rated_valence_keeps_its_clip_columns(tiny_crema, tmp_path):
    stores = _stores(tiny_crema, tmp_path / "stores")
    clips = crema_d_labels(load_votes(tiny_crema / "processedResults" / "tabulatedVotes.csv"), tie_break="intensity")["clip"]
    csv = tmp_path / "valence.csv"
    pd.DataFrame({"clip": clips, "valence": np.linspace(-1, 1, len(clips))}).to_csv(csv, index=False)
    run = tmp_path / "mer"
    finetune(finetune_config("recipes/finetune/mer_demo.yaml", [
        f"data.root={tiny_crema}", f"output_dir={run}", f"features.audio.store={stores['audio']}", f"features.video.store={stores['video']}",
        f"data.clip_columns={csv}", "model.valence_source=clip_columns", "model.audio_groups=null", "model.dim=8", "splits.k=1", "train.epochs=2",
        "train.batch_size=16", "eval.bootstrap=0", "progress=false"]))
    out = tmp_path / "rob"
    assert main(["robustness", "--run", str(run), "--out", str(out), *FAST, "random.levels=[0.5]", "markov.modes=[]"]) == 0
    mer = json.loads((out / "robustness.json").read_text())["runs"][0]
    trained = json.loads((run / "metrics.json").read_text())["overall"]["macro_f1"]["mean"]
    assert mer["clean"]["macro_f1"]["mean"] == pytest.approx(trained, abs=1e-6)


def test_demo_stage_reports_both_fills(runs, tmp_path):
    from types import SimpleNamespace

    from ssl_aver.app.stages.robustness import robustness_stage

    raver, _ = runs
    ctx = SimpleNamespace(results={"raver": {"run": str(raver)}}, stage_dir=lambda name: tmp_path / name)
    summary = robustness_stage(ctx)
    assert summary["fills"] == ["mask", "zero"]
    entry = summary["runs"]["raver (raver)"]
    assert {"missing_audio_mask", "missing_audio_zero", "random_video_90_mask", "random_video_90_zero", "fill_gap"} <= set(entry)
    assert summary["headline"].startswith("(mask/zero) raver (raver): clean ") and "mask-zero gap" in summary["headline"]
    assert all(Path(p).is_file() for p in summary["plots"])
