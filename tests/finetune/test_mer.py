"""MER2023-style head: joint emotion/valence decoding, uncertainty loss, AFG structures, fusion, Table 1,
the valence scale and several visual models."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from finetune.data import crema_d_task
from finetune.heads.mer import JointDecoder, UncertaintyLoss, mer_score, stack_face_stores
from finetune.mer_fusion import choose_weights, fuse, fuse_runs, mer_table, simplex_grid
from finetune.run import build_config, finetune
from finetune.valence import derived_crema_d_valence
from ssl_aver.app.cli import main
from ssl_aver.crema_d_labels import EMOTIONS, crema_d_labels, load_votes
from ssl_aver.data import CREMA_D_DIR
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, FeatureStore, write_clip_features

TINY = ["model.dim=16", "model.dropout=0.0", "train.batch_size=16", "eval.bootstrap=20", "progress=false", "splits.k=1", "train.num_threads=1",
        "model.audio_groups=null"]


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


@pytest.fixture(scope="module")
def second_face_store(tiny_crema, tmp_path_factory):
    """Another visual model's face store (4-d) over the same frames, missing a face the first found."""
    task = crema_d_task(tiny_crema)
    rng = np.random.default_rng(1)
    video = {}
    for clip, label in zip(task.labels["clip"], task.labels["av_label"]):
        faces = rng.standard_normal((4, 4)).astype(np.float32) * 0.5
        faces[:, 0] += EMOTIONS.index(label) / 3
        video[clip] = ClipFeatures(faces, 30.0, np.array([True, False, True, True]))
    return write_clip_features(tmp_path_factory.mktemp("face2") / "video", modality="video", clips=video)


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
    # MSE and MSE / variance of the test set's valence targets, by hand from the written predictions
    written = pd.read_csv(out / "split_00" / "predictions.csv").set_index("clip")
    target = crema_d_task(tiny_crema, extra=["valence"]).labels.set_index("clip").loc[written.index, "valence"].to_numpy(np.float64)
    mse = np.mean((written["valence"].to_numpy() - target) ** 2)
    assert split["valence_mse"] == pytest.approx(mse, rel=1e-5)
    assert split["valence_nmse"] == pytest.approx(mse / np.mean((target - target.mean()) ** 2), rel=1e-5)
    assert "valence_nmse" in summary["overall"] and "valence_nmse" in split["modalities"]["audio"]
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
    # variance of [0.5, -0.5, 0, 0.5]: mean 0.125, squared deviations 0.140625 + 0.390625 + 0.015625 + 0.140625 over 4
    assert result["valence_nmse"] == pytest.approx(0.25 / 0.171875)
    assert result["mer_score"] == pytest.approx(result["weighted_f1"] - 0.0625)
    # an MSE on a 1..7 rating scale counts on MER2023's [-5, 5]: x (10 / 6)^2
    assert scores(preds, valence + 0.5, targets, valence, (1.0, 7.0))["mer_score"] == pytest.approx(result["weighted_f1"] - 0.0625 * 100 / 36)
    assert mer_score(0.7, 0.36, (1, 7)) == pytest.approx(0.45)


#: The category valences on MER2023's [-5, 5] (finetune/valence.py): each side stretched to the scale's end.
ON_MER_SCALE = {"anger": -5 * 0.6 / 0.7, "disgust": -5 * 0.6 / 0.7, "fear": -5.0, "happiness": 5.0, "neutral": 0.0, "sadness": -5.0}


def _unanimous(emotion: str, intensity: float) -> dict[str, float]:
    return {**{f"av_{e}_p": float(e == emotion) for e in EMOTIONS}, **{f"av_{e}_intensity": intensity if e == emotion else np.nan for e in EMOTIONS}}


def test_derived_crema_d_valence_spans_the_mer2023_scale():
    # the theoretical bounds: every rater gives the same extreme category at intensity 100
    rows = [_unanimous("happiness", 100), _unanimous("sadness", 100), _unanimous("fear", 100), _unanimous("anger", 100),
            _unanimous("neutral", 100), _unanimous("happiness", 50)]
    values = derived_crema_d_valence(pd.DataFrame(rows), conditions=("av",))
    assert np.allclose(values, [5.0, -5.0, -5.0, -30 / 7, 0.0, 2.5])
    # the real CREMA-D ratings use most of the scale (before: -0.65..0.73, variance 0.097)
    real = derived_crema_d_valence(crema_d_labels(load_votes(CREMA_D_DIR / "tabulatedVotes.csv")))
    assert -5 <= real.min() < -4 and 4 < real.max() <= 5 and real.var() > 4


def test_derived_crema_d_valence(tiny_crema):
    task = crema_d_task(tiny_crema, extra=["valence"])
    table = task.labels
    assert task.extra == {"valence": ["valence"]} and set(table["valence_source"]) == {"derived_crema_d"}
    row = table.iloc[0]
    expected = sum(row[f"av_{e}_p"] * np.nan_to_num(row[f"av_{e}_intensity"]) / 100 * ON_MER_SCALE[e] for e in EMOTIONS)
    assert row["valence"] == pytest.approx(expected, abs=1e-5)
    assert table["valence"].between(-5, 5).all()
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
    rated = [f"data.clip_columns={csv}", "model.valence_source=clip_columns", "train.epochs=1"]
    with pytest.raises(UserError, match=r"outside model.valence_scale \[1.0, 7.0\]"):
        finetune(_cfg(tiny_crema, mer_stores, tmp_path / "x", *rated, "model.valence_scale=[1,7]"))
    with pytest.raises(UserError, match=r"MER2023's \[-5, 5\]"):
        finetune(_cfg(tiny_crema, mer_stores, tmp_path / "x", "model.valence_scale=[-1,1]", "train.epochs=1"))
    # rated valence keeps its own scale [-1, 1]; the MER score weighs its MSE as on [-5, 5] (x 25)
    finetune(_cfg(tiny_crema, mer_stores, tmp_path / "rated", *rated, "model.valence_scale=[-1,1]"))
    split = json.loads((tmp_path / "rated" / "split_00" / "metrics.json").read_text())
    assert split["valence_source"] == "clip_columns"
    assert split["mer_score"] == pytest.approx(split["weighted_f1"] - 0.25 * 25 * split["valence_mse"])
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
    single = json.loads((out / "pairwise_jdev" / "metrics.json").read_text())["overall"]["valence_nmse"]["mean"]
    assert rows.set_index(["structure", "decoder"]).loc[("pairwise", "jdev"), "valence_nmse"] == pytest.approx(single)
    assert "Dim / test variance (down)" in (out / "table1.md").read_text() and result["inputs"] == {"acoustic": 2, "visual": 1}
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
    # fusion takes the splits of the runs' config, not the split_* folders on disk
    runs = [out / f"{s}_jdev" for s in ("parallel", "pairwise", "hierarchical")]
    for run in runs:
        shutil.copytree(run / "split_00", run / "split_07")  # stale, from an earlier run with more splits
    assert [s["split"] for s in fuse_runs(runs, 0.5)["splits"]] == [0, 1]
    config = (runs[1] / "config.yaml").read_text()
    (runs[1] / "config.yaml").write_text(config.replace("k: 2", "k: 3"))
    with pytest.raises(UserError, match=r"reports splits \[0, 1\] but its config names \[0, 1, 2\]"):
        fuse_runs(runs, 0.5)
    (runs[1] / "config.yaml").write_text("\n".join(line for line in config.splitlines() if "valence_scale" not in line and line.strip() not in ("- -5", "- 5")))
    with pytest.raises(UserError, match="before the derived valence was put on MER2023's"):  # predictions on the old valence scale
        fuse_runs(runs, 0.5)
    (runs[1] / "config.yaml").write_text(config)
    stamp = (out / "parallel_jdev" / "split_00" / "model.safetensors").stat().st_mtime_ns
    mer_table("recipes/finetune/mer_demo.yaml", overrides, structures=["parallel", "pairwise"], decoders=["jdev"], step=0.5)
    assert (out / "parallel_jdev" / "split_00" / "model.safetensors").stat().st_mtime_ns == stamp  # finished runs are reused


def test_mer_table_refuses_structures_that_coincide(tiny_crema, mer_stores, tmp_path, capsys):
    overrides = [f"data.root={tiny_crema}", f"output_dir={tmp_path}", f"features.audio.store={mer_stores[0]}",
                 f"features.video.store={mer_stores[1]}", *TINY, "model.audio_layers=[1]"]
    assert main(["mer-table", "--config", "recipes/finetune/mer_demo.yaml", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 acoustic and 1 visual input(s) the structures" in err and "compute the same function" in err
    with pytest.raises(UserError, match="2 acoustic and 0 visual"):
        mer_table("recipes/finetune/mer_demo.yaml", [*overrides, "model.audio_layers=[0,1]", "model.features=[audio]"])
    assert not list(tmp_path.glob("*/split_*"))  # refused before any training
    result = mer_table("recipes/finetune/mer_demo.yaml", [*overrides, "train.epochs=1"], structures=["parallel"], decoders=["jdev"])
    assert [r["structure"] for r in result["rows"]] == ["parallel"]  # one structure: nothing to fuse, nothing refused


def test_stacked_face_stores_give_one_visual_input_per_model(tiny_crema, mer_stores, second_face_store, tmp_path):
    stacked = FeatureStore(stack_face_stores([mer_stores[1], second_face_store], tmp_path / "stack"))
    clip = stacked.clips[0]
    array, fps, present = stacked.get(clip)
    first, second = FeatureStore(mer_stores[1]).get(clip)[0], FeatureStore(second_face_store).get(clip)[0]
    assert stacked.frame_shape == (2, 6) and fps == 30.0
    assert np.allclose(array[:, 0], first) and np.allclose(array[:, 1, :4], second) and (array[:, 1, 4:] == 0).all()
    assert present.tolist() == [True, False, False, True]  # a face where both models found one
    with pytest.raises(UserError, match="two or more"):
        stack_face_stores([mer_stores[1]], tmp_path / "one")
    stamp = (tmp_path / "stack" / "index.json").stat().st_mtime_ns
    stack_face_stores([mer_stores[1], second_face_store], tmp_path / "stack")
    assert (tmp_path / "stack" / "index.json").stat().st_mtime_ns == stamp  # same sources: reused
    with pytest.raises(UserError, match="different config"):
        stack_face_stores([second_face_store, mer_stores[1]], tmp_path / "stack")
    assert FeatureStore(stack_face_stores([second_face_store, mer_stores[1]], tmp_path / "stack", replace=True)).frame_shape == (2, 6)
    short = {c: ClipFeatures(FeatureStore(second_face_store).get(c)[0][:3], 30.0) for c in FeatureStore(second_face_store).clips}
    with pytest.raises(UserError, match="hold different frames"):
        stack_face_stores([mer_stores[1], write_clip_features(tmp_path / "short", short, "video")], tmp_path / "bad")
    out = tmp_path / "table"
    overrides = [f"data.root={tiny_crema}", f"output_dir={out}", f"features.audio.store={mer_stores[0]}",
                 f"features.video.store={mer_stores[1]}", *TINY, "train.epochs=2"]
    result = mer_table("recipes/finetune/mer_demo.yaml", overrides, decoders=["jdev"], step=0.5, video_stores=[mer_stores[1], second_face_store])
    assert result["inputs"] == {"acoustic": 3, "visual": 2}
    assert json.loads((out / "parallel_jdev" / "inference.json").read_text())["context"]["video_shape"] == [2, 6]
    from safetensors.torch import load_file

    weights = load_file(str(out / "hierarchical_jdev" / "split_00" / "model.safetensors"))
    assert weights["video_proj.0.1.weight"].shape[1] == weights["video_proj.1.1.weight"].shape[1] == 6
    assert weights["fusion.top.score.weight"].shape == (3, 3 * 16)  # inter-modal AFG over {acoustic, model 1, model 2}
    with pytest.raises(UserError, match="model.video_models"):
        finetune(_cfg(tiny_crema, mer_stores, tmp_path / "x", "model.video_models=[0]"))


def test_each_face_model_of_a_stacked_store_is_its_own_visual_input():
    from finetune.heads.mer import MERHead

    torch.manual_seed(0)
    head = MERHead(6, audio_width=None, audio_layers=None, video_width=5, video_models=[1, 0], dim=4, dropout=0.0).eval()
    video = torch.randn(2, 3, 2, 5)
    batch = {"video": video, "video_mask": torch.tensor([[True, True, False], [True, False, False]])}
    before = head._visual(batch)
    assert before.shape == (2, 2, 4)
    video[:, :, 1] += torch.randn(2, 3, 5)  # change face model 1 only: the first visual input (video_models[0] = 1) moves, the second does not
    after = head._visual(batch)
    assert not torch.allclose(after[:, 0], before[:, 0]) and torch.allclose(after[:, 1], before[:, 1])


def test_audio_groups_split_a_flat_acoustic_store_into_inputs(tiny_crema, mer_stores, tmp_path):
    from finetune.heads.mer import MERHead

    torch.manual_seed(0)
    head = MERHead(6, audio_width=8, audio_layers=None, audio_groups=[5, 3], video_width=None, dim=4, dropout=0.0).eval()
    audio = torch.randn(2, 4, 8)
    batch = {"audio": audio, "audio_mask": torch.ones(2, 4, dtype=torch.bool)}
    before = head._acoustic(batch)
    audio[..., 5:] += torch.randn(2, 4, 3)  # the second group's columns only
    after = head._acoustic(batch)
    assert before.shape == (2, 2, 4) and torch.allclose(after[:, 0], before[:, 0]) and not torch.allclose(after[:, 1], before[:, 1])
    with pytest.raises(UserError, match="audio_groups splits the columns"):
        finetune(_cfg(tiny_crema, mer_stores, tmp_path / "x", "model.audio_groups=[4,4]"))
