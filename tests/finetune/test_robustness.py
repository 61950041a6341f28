from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.robustness import ClipFrames, Condition, degrade, sample_stats, summarise
from finetune.run import build_config as finetune_config
from finetune.run import finetune
from ssl_aver.cli import main
from ssl_aver.crema_d_labels import EMOTIONS, crema_d_labels, load_votes
from ssl_aver.features.store import ClipFeatures, StoreWriter
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
    by_head = {r["head"]: r for r in report["runs"]}
    assert set(by_head) == {"raver", "ser"}
    rv, sr = by_head["raver"], by_head["ser"]
    assert rv["splits"] == [0, 1] and rv["seeds"] == [0, 1]
    # every condition of the grid, with the measured share of dropped frames matching the level
    assert set(rv["random"]) == {"audio", "video", "both"} and set(rv["markov"]) == {"sync", "async"}
    for name, points in rv["random"].items():
        assert [p["level"] for p in points] == [0.0, 0.5, 1.0]
        for p in points:
            for share in p["dropped_pct"].values():
                assert share == pytest.approx(100 * p["level"], abs=1.5)
            assert 0.0 <= p["macro_f1"]["ci"][0] <= p["macro_f1"]["ci"][1] <= 1.0 and 0.0 <= p["macro_f1"]["mean"] <= 1.0
    sync = rv["markov"]["sync"][0]
    assert sync["adf_expected"] == pytest.approx(40.0) and 0.0 < sync["adf"] < 100.0
    assert set(rv["missing"]) == {"audio", "video"} and set(rv["clean"]["per_class_f1"]) == set(EMOTIONS)
    # the clean point equals the fine-tuning run's own test evaluation (the heads were rebuilt exactly)
    run_metrics = json.loads((raver / "metrics.json").read_text())
    assert rv["clean"]["macro_f1"]["mean"] == pytest.approx(run_metrics["by_modality"]["av"]["macro_f1"]["mean"], abs=1e-6)
    assert rv["missing"]["video"]["macro_f1"]["mean"] == pytest.approx(run_metrics["by_modality"]["audio"]["macro_f1"]["mean"], abs=1e-6)
    # the 100%-masking level of random audio is the missing-audio condition
    assert rv["random"]["audio"][-1]["macro_f1"]["mean"] == pytest.approx(rv["missing"]["audio"]["macro_f1"]["mean"])
    # an audio-only head gets only the audio conditions
    assert set(sr["random"]) == {"audio"} and sr["markov"] == {} and set(sr["missing"]) == {"audio"}
    assert sr["clean"]["macro_f1"]["mean"] == pytest.approx(json.loads((ser / "metrics.json").read_text())["overall"]["macro_f1"]["mean"], abs=1e-6)
    assert {p.rsplit("/", 1)[-1] for p in report["plots"]} >= {"random_audio.png", "random_video.png", "markov_sync.png"}
    assert (out / "random_audio.png").stat().st_size > 1000
    assert "Brier" in (out / "robustness.md").read_text()


def test_robustness_errors(tmp_path, capsys):
    assert main(["robustness", "--run", str(tmp_path)]) == 2
    assert "not an `ssl-aver finetune` run" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "markov.grid=[[0.5]]"]) == 2
    assert "[p_L, p_N] pairs" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "markov.grid=[[0.5,1.5]]"]) == 2
    assert "p_N must be a probability" in capsys.readouterr().err
    assert main(["robustness", "--run", str(tmp_path), "seed=3"]) == 2
    assert "seed" in capsys.readouterr().err


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
        assert report["data_set"] == "dev" and set(report["runs"][0]["random"]) == {"audio", "video"}
