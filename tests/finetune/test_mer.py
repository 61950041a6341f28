"""MER2023-style head: joint emotion/valence decoding, uncertainty loss, AFG structures, fusion, Table 1."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from finetune.data import crema_d_task
from finetune.heads.mer import JointDecoder, UncertaintyLoss, mer_score
from finetune.mer_fusion import choose_weights, fuse, mer_table, simplex_grid
from finetune.run import build_config, finetune
from finetune.valence import VALENCE_BY_EMOTION, derived_crema_d_valence
from ssl_aver.cli import main
from ssl_aver.crema_d_labels import EMOTIONS
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, write_clip_features

TINY = ["model.dim=16", "model.dropout=0.0", "train.batch_size=16", "eval.bootstrap=20", "progress=false", "splits.k=1", "train.num_threads=1"]


@pytest.fixture(scope="module")
def mer_stores(tiny_crema, tmp_path_factory):
    """A 3-layer acoustic store whose layer 1 carries the AV label, and a noisy face store."""
    root = tmp_path_factory.mktemp("mer_stores")
    task = crema_d_task(tiny_crema)
    rng = np.random.default_rng(0)
    audio, video = {}, {}
    for clip, label in zip(task.labels["clip"], task.labels["av_label"]):
        code = np.eye(8, dtype=np.float32)[EMOTIONS.index(label)]
        frames = rng.standard_normal((int(rng.integers(5, 9)), 3, 8)).astype(np.float32) * 0.3
        frames[:, 1] += 2 * code
        audio[clip] = ClipFeatures(frames, 50.0)
        faces = rng.standard_normal((4, 6)).astype(np.float32)
        faces[:, :6] += code[:6]
        video[clip] = ClipFeatures(faces, 30.0, np.array([True, True, False, True]))
    return write_clip_features(root / "audio", modality="audio", clips=audio), write_clip_features(root / "video", modality="video", clips=video)


def _cfg(tiny_crema, stores, out, *extra):
    return build_config("recipes/finetune/mer_demo.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", f"features.audio.store={stores[0]}", f"features.video.store={stores[1]}", *TINY, *extra,
    ])


def test_tiny_mer_head_trains_and_reports_mer_score(tiny_crema, mer_stores, tmp_path):
    out = tmp_path / "run"
    summary = finetune(_cfg(tiny_crema, mer_stores, out, "train.epochs=40", "train.early_stop_patience=40", "train.lr_patience=null", "train.lr=1e-2"))
    history = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    split = json.loads((out / "split_00" / "metrics.json").read_text())
    assert split["valence_source"] == "derived_crema_d"
    assert split["mer_score"] == pytest.approx(split["weighted_f1"] - 0.25 * split["valence_mse"])
    assert set(summary["by_modality"]) == {"av", "audio", "video"}
    assert "mer_score" in summary["overall"] and "valence_mse" in summary["by_modality"]["audio"]
    preds = pd.read_csv(out / "split_00" / "predictions.csv")
    assert list(preds.columns) == ["clip", *EMOTIONS, "valence"]
    assert (out / "split_00" / "predictions_dev.csv").is_file()
    # the learned signal: well above chance on held-out actors
    assert summary["overall"]["accuracy"]["mean"] > 0.4


def _emotion_grad_from_valence(joint: bool) -> float:
    torch.manual_seed(0)
    decoder = JointDecoder(8, 6, joint=joint)
    logits, valence = decoder(torch.randn(5, 8))
    torch.nn.functional.mse_loss(valence, torch.randn(5)).backward()
    return float(decoder.emotion.weight.grad.abs().sum()) if decoder.emotion.weight.grad is not None else 0.0


def test_jdev_valence_reads_the_emotion_posterior_and_baseline_does_not():
    assert _emotion_grad_from_valence(joint=True) > 0
    assert _emotion_grad_from_valence(joint=False) == 0.0
    torch.manual_seed(0)
    decoder = JointDecoder(8, 6, joint=True)
    h = torch.randn(3, 8)
    _, before = decoder(h)
    with torch.no_grad():
        decoder.emotion.bias[0] += 5.0  # shift the posterior only
        decoder.emotion_valence.weight.fill_(1.0)
        decoder.emotion_valence.weight[0, 0] = -3.0
    assert not torch.allclose(decoder(h)[1], before)


def test_uncertainty_loss_deltas_get_gradients_and_stay_positive():
    loss = UncertaintyLoss(init_delta=1.0)
    assert torch.allclose(loss.deltas, torch.ones(2))
    value = loss(torch.tensor(2.0), torch.tensor(0.3))
    # Eq. 9 at delta = 1: L_e + L_v / 2 + 2 log 2
    assert value.item() == pytest.approx(2.0 + 0.15 + 2 * np.log(2.0))
    value.backward()
    assert (loss.rho.grad.abs() > 0).all()
    optimizer = torch.optim.SGD(loss.parameters(), lr=5.0)
    for _ in range(50):  # tiny task losses push the deltas down hard
        optimizer.zero_grad()
        loss(torch.tensor(1e-3), torch.tensor(1e-3)).backward()
        optimizer.step()
    assert (loss.deltas > 0).all() and (loss.deltas < 1).all()


def test_mer_score_and_fusion_weights():
    assert mer_score(0.7, 0.8) == pytest.approx(0.5)
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and np.allclose(grid.sum(1), 1.0) and (grid >= 0).all()
    targets = np.eye(3)[[0, 1, 2, 0]]
    good = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.1
    bad = np.eye(3)[[1, 2, 0, 1]] * 0.8 + 0.1
    valence = np.array([0.5, -0.5, 0.0, 0.5])
    weights, score = choose_weights([bad, good, bad], [valence + 1, valence, valence - 1], targets, valence, step=0.25)
    assert weights.sum() == pytest.approx(1.0) and weights[1] == pytest.approx(1.0) and score == pytest.approx(1.0)
    probs, fused_valence = fuse([bad, good], [valence + 1, valence - 1], np.array([0.5, 0.5]))
    assert np.allclose(fused_valence, valence) and np.allclose(probs, (bad + good) / 2)
    # hand computation: F1 per class 0.5, 0, 2/3 on supports 2, 1, 1 -> weighted (1 + 2/3) / 4; MSE 0.25
    from finetune.mer_fusion import scores

    preds = np.eye(3)[[0, 0, 2, 2]]
    result = scores(preds, valence + 0.5, targets, valence)
    assert result["weighted_f1"] == pytest.approx((2 * 0.5 + 0 + 2 / 3) / 4)
    assert result["valence_mse"] == pytest.approx(0.25)
    assert result["mer_score"] == pytest.approx(result["weighted_f1"] - 0.0625)


def test_derived_crema_d_valence(tiny_crema):
    task = crema_d_task(tiny_crema, extra=["valence"])
    table = task.labels
    assert task.extra == {"valence": ["valence"]} and set(table["valence_source"]) == {"derived_crema_d"}
    row = table.iloc[0]
    expected = sum(row[f"av_{e}_p"] * np.nan_to_num(row[f"av_{e}_intensity"]) / 100 * VALENCE_BY_EMOTION[e] for e in EMOTIONS)
    assert row["valence"] == pytest.approx(expected, abs=1e-6)
    assert table["valence"].between(-1, 1).all()
    happy, sad = table[table["av_label"] == "happiness"], table[table["av_label"] == "sadness"]
    if len(happy) and len(sad):
        assert happy["valence"].mean() > sad["valence"].mean()
    assert np.allclose(derived_crema_d_valence(table), table["valence"], atol=1e-6)


def test_rated_valence_from_clip_columns_and_source_check(tiny_crema, mer_stores, tmp_path):
    clips = crema_d_task(tiny_crema).labels["clip"]
    csv = tmp_path / "valence.csv"
    pd.DataFrame({"clip": clips, "valence": np.linspace(-1, 1, len(clips))}).to_csv(csv, index=False)
    task = crema_d_task(tiny_crema, extra=["valence"], clip_columns=csv)
    assert set(task.labels["valence_source"]) == {"clip_columns"} and task.labels["valence"].iloc[-1] == pytest.approx(1.0)
    with pytest.raises(UserError, match="valence_source"):
        finetune(_cfg(tiny_crema, mer_stores, tmp_path / "x", f"data.clip_columns={csv}", "train.epochs=1"))
    pd.DataFrame({"clip": clips[:3], "valence": [0.1, 0.2, 0.3]}).to_csv(csv, index=False)
    with pytest.raises(UserError, match="no valence"):
        crema_d_task(tiny_crema, extra=["valence"], clip_columns=csv)


def test_mer_head_needs_the_valence_target(tiny_crema, mer_stores, tmp_path, capsys):
    args = ["finetune", "--config", "recipes/finetune/mer_demo.yaml", f"data.root={tiny_crema}", f"output_dir={tmp_path}",
            f"features.audio.store={mer_stores[0]}", f"features.video.store={mer_stores[1]}", "progress=false"]
    assert main([*args, "data.extra_targets=[]"]) == 2
    assert "data.extra_targets: [valence]" in capsys.readouterr().err
    assert main([*args, "model.structure=serial"]) == 2
    assert "model.structure" in capsys.readouterr().err


def test_mer_table_runs_structures_decoders_and_fuses(tiny_crema, mer_stores, tmp_path):
    out = tmp_path / "table"
    overrides = [f"data.root={tiny_crema}", f"output_dir={out}", f"features.audio.store={mer_stores[0]}", f"features.video.store={mer_stores[1]}",
                 *TINY, "splits.k=2", "train.epochs=6", "model.audio_layers=[0,1]"]
    result = mer_table("recipes/finetune/mer_demo.yaml", overrides, step=0.5)
    rows = pd.read_csv(out / "table1.csv")
    assert len(rows) == 8 and set(rows["structure"]) == {"parallel", "pairwise", "hierarchical", "fused"}
    assert np.allclose(rows["mer_score"], rows["weighted_f1"] - 0.25 * rows["valence_mse"])
    for decoder in ("baseline", "jdev"):
        for split in result["fusion"][decoder]["splits"]:
            assert sum(split["weights"]) == pytest.approx(1.0)
    assert "Com (MER score, up)" in (out / "table1.md").read_text()
    # paired two-tailed t-test of the fused JDEV system vs each column on the MER score, by hand
    fused = {s["split"]: s["mer_score"] for s in result["fusion"]["jdev"]["splits"]}
    single = json.loads((out / "parallel_jdev" / "metrics.json").read_text())
    single = dict(zip([s["split"] for s in single["splits"]], single["overall"]["mer_score"]["values"]))
    assert sorted(fused) == sorted(single) == [0, 1]
    d = np.array([fused[k] - single[k] for k in (0, 1)])
    test = result["significance"]["tests"]["parallel_jdev"]
    assert result["significance"]["reference"] == "fused_jdev" and set(result["significance"]["tests"]) == {
        f"{s}_{dec}" for s in ("parallel", "pairwise", "hierarchical", "fused") for dec in ("baseline", "jdev")} - {"fused_jdev"}
    t = d.mean() / (d.std(ddof=1) / math.sqrt(2))
    assert test["t"] == pytest.approx(t) and test["p"] == pytest.approx(2 * stats.t.sf(abs(t), 1))
    text = (out / "table1.md").read_text()
    assert "| p vs fused_jdev (mer_score) |" in text and f"| {test['p']:.3g}{'†' if test['p'] < 0.05 else ''} |" in text
    assert json.loads((out / "table1.json").read_text())["significance"]["tests"]["parallel_jdev"]["p"] == test["p"]
    stamp = (out / "parallel_jdev" / "split_00" / "model.safetensors").stat().st_mtime_ns
    mer_table("recipes/finetune/mer_demo.yaml", overrides, structures=["parallel", "pairwise"], decoders=["jdev"], step=0.5)
    assert (out / "parallel_jdev" / "split_00" / "model.safetensors").stat().st_mtime_ns == stamp  # finished runs are reused
