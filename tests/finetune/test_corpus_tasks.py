"""Fine-tuning on a corpus read through its manifest (`data.corpus`), attribute regression end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from scipy import stats

from finetune.run import build_config, concordance_loss, default_loss, finetune
from finetune.trainer import _epoch_loss
from ssl_aver.corpora import labelled
from ssl_aver.corpora.labelled import LabelledCorpus
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, write_clip_features
from ssl_aver.metrics import evaluate_regression

ATTRIBUTES = ["arousal", "valence", "dominance"]
SER_TINY = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "eval.bootstrap=20", "progress=false",
]
VAVL_TINY = ["model.d_model=16", "model.n_heads=2", "model.audio_layers=1", "model.video_layers=1", "model.shared_layers=1",
             "model.conv_kernel=3", "model.ff_expansion=2", "model.head_hidden=[16,16]", "train.batch_size=16", "eval.bootstrap=20", "progress=false"]


def _toy(root, n_speakers: int = 6, per_speaker: int = 12, seed: int = 0) -> LabelledCorpus:
    """Tones whose pitch and loudness follow arousal/valence (1-5 scale); partitions by speaker."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for s in range(n_speakers):
        for i in range(per_speaker):
            clip = f"spk{s}_{i:02d}"
            a, v, d = rng.uniform(1, 5, 3)
            t = np.arange(int(16000 * rng.uniform(0.8, 1.2))) / 16000
            wave = (0.05 + 0.08 * a) * np.sin(2 * np.pi * (150 + 60 * v) * t) + 0.005 * rng.standard_normal(len(t))
            sf.write(root / "wav" / f"{clip}.wav", wave.astype(np.float32), 16000)
            part = "Train" if s < n_speakers - 2 else ("Development" if s == n_speakers - 2 else "Test1")
            rows.append({"clip": clip, "audio": str(root / "wav" / f"{clip}.wav"), "video": "", "speaker": f"spk{s}", "session": None,
                         "sex": "Female" if s % 2 else "Male", "age": None, "race": None, "partition": part,
                         "arousal": a, "valence": v, "dominance": d})
    table = pd.DataFrame(rows)
    return LabelledCorpus("toy", str(root), table, [], {"regression": {"attributes": ATTRIBUTES}})


@pytest.fixture()
def toy_corpus(tmp_path, monkeypatch):
    root = tmp_path / "toy"
    corpus = _toy(root)
    module = type(labelled)("toy_reader")
    module.prepare_toy = lambda r, **options: corpus  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "toy_reader", module)
    monkeypatch.setitem(labelled.CORPORA, "toy", "toy_reader:prepare_toy")
    return root, corpus


def test_regression_metrics_match_an_independent_computation():
    rng = np.random.default_rng(0)
    y = rng.normal(3, 1, (40, 2))
    p = y * 0.7 + rng.normal(0, 0.5, (40, 2)) + 0.3
    scores = evaluate_regression(p, y, ["a", "b"], bootstrap=50)
    for j, name in enumerate(["a", "b"]):
        t, q = y[:, j], p[:, j]
        ccc = 2 * np.cov(t, q, bias=True)[0, 1] / (t.var() + q.var() + (t.mean() - q.mean()) ** 2)
        assert scores[f"ccc_{name}"] == pytest.approx(ccc)
        assert scores[f"pearson_{name}"] == pytest.approx(stats.pearsonr(t, q)[0])
        assert scores[f"mse_{name}"] == pytest.approx(np.mean((t - q) ** 2))
        lo, hi = scores["ci"][f"ccc_{name}"]
        assert lo <= scores[f"ccc_{name}"] <= hi
    assert scores["ccc"] == pytest.approx(np.mean([scores["ccc_a"], scores["ccc_b"]]))


def test_model_selection_uses_the_corpus_level_ccc_not_a_mean_over_batches():
    torch.manual_seed(0)
    targets = torch.randn(16, 2)
    outputs = targets * 0.5 + torch.randn(16, 2) * 0.3
    loader = [{"out": outputs[i : i + 4], "targets": targets[i : i + 4], "clips": list("abcd")} for i in range(0, 16, 4)]

    class Echo(torch.nn.Module):
        def forward(self, batch):
            return batch["out"]

    loss = default_loss("regression", 2, "ccc")
    whole = float(concordance_loss(outputs, targets))
    assert _epoch_loss(Echo(), loader, loss, torch.device("cpu")) == pytest.approx(whole)
    batch_mean = float(np.mean([float(concordance_loss(b["out"], b["targets"])) for b in loader]))
    assert abs(batch_mean - whole) > 1e-3  # the two differ: a batch mean would select another model


def test_ser_regresses_attributes_of_a_manifest_corpus_on_its_own_partitions(toy_corpus, tmp_path):
    root, corpus = toy_corpus
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/ser_crema_d.yaml", [
        f"data.root={root}", "data.corpus=toy", "data.target=regression", f"output_dir={out}", "splits.protocol=corpus",
        "train.epochs=30", "train.lr=3e-3", "train.lr_patience=null", "train.early_stop_patience=null", *SER_TINY,
    ])
    summary = finetune(cfg)
    assert summary["task"] == "regression" and summary["corpus"] == "toy" and len(summary["splits"]) == 1
    metrics = json.loads((out / "split_00" / "metrics.json").read_text())
    predictions = pd.read_csv(out / "split_00" / "predictions.csv")
    assert list(predictions.columns[1:4]) == ATTRIBUTES
    assert set(predictions["clip"]) == set(corpus.clips.loc[corpus.clips["partition"] == "Test1", "clip"])
    truth = corpus.clips.set_index("clip").loc[predictions["clip"], "arousal"].to_numpy()
    t, q = truth, predictions["arousal"].to_numpy()
    assert metrics["ccc_arousal"] == pytest.approx(2 * np.cov(t, q, bias=True)[0, 1] / (t.var() + q.var() + (t.mean() - q.mean()) ** 2), rel=1e-5)
    # loudness and pitch carry arousal and valence: well above chance on held-out speakers
    assert metrics["ccc_arousal"] > 0.5 and metrics["ccc_valence"] > 0.3
    assert "ccc" in summary["overall"] and summary["splits"][0]["ccc"] == pytest.approx(metrics["ccc"])


def test_vavl_reports_per_attribute_ccc_in_all_three_conditions(toy_corpus, tmp_path):
    root, corpus = toy_corpus
    rng = np.random.default_rng(1)
    audio, video = {}, {}
    for clip, a, v, d in corpus.clips[["clip", *ATTRIBUTES]].itertuples(index=False):
        base = np.array([a, v, d, a - v, 1.0])
        audio[clip] = ClipFeatures((base + 0.3 * rng.standard_normal((14, 5))).astype(np.float32), 50.0)
        frames = (np.array([v, a, d, 0.0, 1.0, a + d]) + 0.3 * rng.standard_normal((8, 6))).astype(np.float32)
        video[clip] = ClipFeatures(frames, 25.0, np.ones(8, bool))
    stores = write_clip_features(tmp_path / "a", modality="audio", clips=audio), write_clip_features(tmp_path / "v", modality="video", clips=video)
    out = tmp_path / "vavl"
    cfg = build_config("recipes/finetune/vavl_crema_d.yaml", [
        f"data.root={root}", "data.corpus=toy", "data.target=regression", f"output_dir={out}", "splits.protocol=corpus",
        f"features.audio.store={stores[0]}", f"features.video.store={stores[1]}", "train.epochs=40", "train.lr=3e-3", *VAVL_TINY,
    ])
    summary = finetune(cfg)
    assert set(summary["by_modality"]) == {"av", "audio", "video"}
    for condition in ("av", "audio", "video"):
        scores = summary["by_modality"][condition]
        assert {f"ccc_{a}" for a in ATTRIBUTES} <= set(scores)
        assert scores["ccc"]["mean"] > 0.4, (condition, scores["ccc"])


def test_heads_refuse_targets_they_do_not_support_and_corpora_name_their_targets(toy_corpus, tmp_path):
    root, _ = toy_corpus
    base = [f"data.root={root}", "data.corpus=toy", f"output_dir={tmp_path / 'r'}", "splits.protocol=corpus"]
    with pytest.raises(UserError, match="does not support regression"):
        finetune(build_config("recipes/finetune/raver_demo.yaml", [*base, "data.target=regression"]))
    with pytest.raises(UserError, match="offers no multiclass target; it offers: regression"):
        finetune(build_config("recipes/finetune/ser_crema_d.yaml", [*base, "data.target=multiclass", *SER_TINY]))
    with pytest.raises(UserError, match="unknown data.corpus 'nope'"):
        finetune(build_config("recipes/finetune/ser_crema_d.yaml", [*base, "data.corpus=nope", *SER_TINY]))


def test_crema_d_manifest_agrees_with_the_fine_tuning_labels(tiny_crema):
    from finetune.data import corpus_task, crema_d_task
    from ssl_aver.corpora.labelled import prepare_corpus

    corpus = prepare_corpus("crema_d", str(tiny_crema))
    assert corpus.summary()["clips"] == len(corpus.clips) and set(corpus.targets["multiclass"]) == {"voice", "face", "av"}
    for target in ("multiclass", "multilabel", "distribution"):
        generic = corpus_task(corpus, target, "av")
        special = crema_d_task(tiny_crema, "av", target)
        assert list(generic.labels["clip"]) == list(special.labels["clip"])
        np.testing.assert_allclose(generic.labels[generic.targets].to_numpy(float), special.labels[special.targets].to_numpy(float), atol=1e-9)
        assert generic.media["audio"] and all(p.endswith(".wav") for p in generic.media["audio"].values())
