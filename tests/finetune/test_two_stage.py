"""Paper 3's two-stage training: label sources per set, frozen stage-1 weights, models 1-12 tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import finetune.heads.two_stage as two_stage
from finetune.data import crema_d_task
from finetune.run import build_config, finetune
from finetune import two_stage_tables
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, write_clip_features

COMMON = ["model.d_model=16", "model.ff_dim=16", "model.n_heads=2", "model.audio_layers=2", "model.video_layers=2", "model.pool_hidden=8",
          "model.head_hidden=16", "train.batch_size=16", "train.lr=3e-3", "eval.bootstrap=20", "progress=false"]


@pytest.fixture(scope="module")
def stores(tiny_crema, tmp_path_factory):
    """A layer-stacked acoustic store [T, 3, 8] encoding the voice-rated emotion distribution and a
    face store [T, 6] encoding the face-rated one (so each label source has its own signal)."""
    out = tmp_path_factory.mktemp("two_stage_stores")
    labels = crema_d_task(tiny_crema, "av", "multilabel", extra=["voice", "face"]).labels
    rng = np.random.default_rng(0)
    mu_a, mu_v = rng.standard_normal((6, 3, 8)) * 2, rng.standard_normal((6, 6)) * 2
    audio, video = {}, {}
    for _, row in labels.iterrows():
        voice = row[[f"voice_{e}" for e in ("anger", "disgust", "fear", "happiness", "neutral", "sadness")]].to_numpy(float)
        face = row[[f"face_{e}" for e in ("anger", "disgust", "fear", "happiness", "neutral", "sadness")]].to_numpy(float)
        a = np.einsum("e,eld->ld", voice, mu_a) + rng.standard_normal((int(rng.integers(10, 16)), 3, 8))
        v = face @ mu_v + rng.standard_normal((int(rng.integers(5, 9)), 6))
        audio[row["clip"]] = ClipFeatures(a.astype(np.float32), 50.0)
        video[row["clip"]] = ClipFeatures(v.astype(np.float32), 25.0, np.ones(len(v), bool))
    return write_clip_features(out / "audio", modality="audio", clips=audio), write_clip_features(out / "video", modality="video", clips=video)


def test_stage2_leaves_stage1_weights_unchanged_and_losses_fall(tiny_crema, stores, tmp_path, monkeypatch):
    audio, video = stores
    snapshots = {}
    original = two_stage.fit

    def recording_fit(model, *args, **kwargs):
        if isinstance(model, two_stage.TwoStageHead):  # stage 2 starts: remember every stage-1 weight
            snapshots["stage1"] = {n: p.detach().clone() for m in model.stage1_modules() for n, p in m.named_parameters()}
            snapshots["model"] = model
        return original(model, *args, **kwargs)

    monkeypatch.setattr(two_stage, "fit", recording_fit)
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/two_stage_crema_d.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=1", "train.epochs=8", "model.shared_layers=1",
        f"features.audio.store={audio}", f"features.video.store={video}", *COMMON,
    ])
    summary = finetune(cfg)
    model = snapshots["model"]
    after = {n: p for m in model.stage1_modules() for n, p in m.named_parameters()}
    assert snapshots["stage1"] and all(torch.equal(snapshots["stage1"][n], after[n]) for n in after)
    assert len(model.audio_sets) == 2 and len(model.video_sets) == 2  # model 12: voice + av, face + av sets
    history = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    for stage in (1, 2):
        losses = [h["train_loss"] for h in history if h["stage"] == stage]
        assert losses[-1] < losses[0]
    assert set(summary["by_modality"]) == {"av", "audio", "video"}
    assert 0.0 <= summary["overall"]["macro_f1"]["mean"] <= 1.0


def test_sets_train_on_their_own_label_source():
    ctx = two_stage.BuildContext(n_classes=6, task="multilabel", audio_shape=(3, 8), video_shape=(6,),
                                 extra={"target_layout": {"primary": slice(0, 6), "voice": slice(6, 12), "face": slice(12, 18), "av": slice(18, 24)}})
    cfg = {**two_stage.TwoStageHead.defaults(), "d_model": 16, "ff_dim": 16, "n_heads": 2}
    head = two_stage.TwoStageHead(cfg, 6, ctx)
    targets = torch.zeros(4, 24)
    targets[:, 6] = 1.0  # voice: anger only
    targets[:, 12 + 3] = 1.0  # face: happiness only
    head.losses = {s: (lambda logits, t, sl=ctx.extra["target_layout"][s]: torch.nn.functional.binary_cross_entropy_with_logits(logits, t[:, sl]))
                   for s in ("voice", "face", "av")}
    logits = torch.zeros(4, 4, 6)
    logits[:, 0, 0] = 20.0  # the voice-trained acoustic set predicts exactly its labels
    logits[:, 0, 1:] = -20.0
    logits[:, 2, 3] = 20.0  # the face-trained visual set too
    logits[:, 2, [0, 1, 2, 4, 5]] = -20.0
    exact = float(head.stage1_loss(logits, targets))
    swapped = float(head.stage1_loss(logits[:, [2, 1, 0, 3]], targets))
    assert exact < swapped
    with pytest.raises(UserError, match="data.extra_targets"):
        two_stage.TwoStageHead(cfg, 6, two_stage.BuildContext(n_classes=6, task="multilabel", audio_shape=(3, 8), video_shape=(6,)))


LAYOUT = {"primary": slice(0, 6), "voice": slice(6, 12), "face": slice(12, 18), "av": slice(18, 24)}


def _head(**model: object) -> two_stage.TwoStageHead:
    ctx = two_stage.BuildContext(n_classes=6, task="multilabel", audio_shape=(3, 8), video_shape=(6,), extra={"target_layout": LAYOUT})
    return two_stage.TwoStageHead({**two_stage.TwoStageHead.defaults(), "d_model": 16, "ff_dim": 16, "n_heads": 2, **model}, 6, ctx)


def test_model_12_splits_each_modality_to_the_size_of_model_10():
    """Paper 3: model 12 divides each modality's layers "into two equal sets"; models 10-12 compare at equal size."""
    model_10 = _head(audio_sets=["av"], video_sets=["av"])
    model_11 = _head(audio_sets=["voice"], video_sets=["face"])
    model_12 = _head()  # defaults: [voice, av] / [face, av], 3 acoustic and 3 visual layers
    sizes = {name: {m: sum(p.numel() for p in getattr(h, f"{m}_sets").parameters()) for m in ("audio", "video")}
             for name, h in (("10", model_10), ("11", model_11), ("12", model_12))}
    assert sizes["12"] == sizes["10"] == sizes["11"]
    assert [len(s.encoder.layers) for s in model_12.audio_sets] == [2, 1] and [len(s.encoder.layers) for s in model_12.video_sets] == [2, 1]
    counts = model_12.parameter_counts()
    assert (counts["audio_sets"], counts["video_sets"]) == (sizes["10"]["audio"], sizes["10"]["video"])
    assert counts["total"] == sum(p.numel() for p in model_12.parameters())
    full = _head(set_layers="full")  # the earlier reading: every set has its own front end and all the layers
    assert full.parameter_counts()["audio_sets"] == 2 * sizes["10"]["audio"] and full.parameter_counts()["video_sets"] == 2 * sizes["10"]["video"]
    batch = {"clips": ["a", "b"], "audio": torch.randn(2, 5, 3, 8), "audio_mask": torch.ones(2, 5, dtype=torch.bool), "has_audio": torch.ones(2),
             "video": torch.randn(2, 4, 6), "video_mask": torch.ones(2, 4, dtype=torch.bool), "has_video": torch.ones(2)}
    assert model_12(batch).shape == (2, 6) and model_12.stage1_logits(batch).shape == (2, 4, 6)
    with pytest.raises(UserError, match="audio_layers=1 cannot be split over 2 audio sets"):
        _head(audio_layers=1)


def test_two_stage_tables_runs_models_and_writes_tables(tiny_crema, stores, tmp_path):
    audio, video = stores
    out = tmp_path / "tables"
    overrides = [f"features.audio.store={audio}", f"features.video.store={video}", "train.epochs=1", *[o for o in COMMON if o != "progress=false"]]
    code = main(["two-stage-tables", "--config", "recipes/two_stage/tables.yaml", f"data.root={tiny_crema}", f"output_dir={out}",
                 "splits.k=1", "eval.bootstrap=20", "progress=false", f"overrides=[{','.join(overrides)}]"])
    assert code == 0
    report = json.loads((out / "tables.json").read_text())
    assert [m["index"] for m in report["models"]] == list(range(1, 13))
    first, last = report["models"][0], report["models"][-1]
    assert (first["audio"], first["video"], last["audio"], last["video"]) == (True, False, True, True)
    for row in report["models"]:
        assert 0.0 <= row["macro_f1"]["value"] <= 1.0 and len(row["macro_f1"]["ci"]) == 2
        assert set(row["per_emotion_f1"]) == {"anger", "disgust", "fear", "happiness", "neutral", "sadness"}
        assert set(row["fairness"]) == {"race", "sex"} and 0.0 <= row["brier"] <= 1.0
    text = (out / "tables.md").read_text()
    assert all(f"## Table {n}" in text for n in (1, 3, 4, 5))
    heads = {json.loads((out / "models" / f"model_{i:02d}" / "metrics.json").read_text())["head"] for i in (1, 4, 7)}
    assert heads == {"two_stage_audio", "two_stage_video", "two_stage"}
    size = {m["index"]: m["parameters"] for m in report["models"]}
    assert (size[12]["audio_sets"], size[12]["video_sets"]) == (size[10]["audio_sets"], size[10]["video_sets"])
    assert "video_sets" not in size[1] and size[1]["audio_sets"] == size[10]["audio_sets"] and size[12]["total"] > size[10]["total"]
    assert any(line.startswith("| 12 | ✓ | ✓ | Proposed |") and line.endswith("| n/a |") for line in text.splitlines())
    test = report["significance"]
    assert (test["reference"], test["alternative"], test["alpha"]) == ("12", "two-sided", 0.05) and set(test["tests"]) == {str(i) for i in range(1, 12)}
    assert all(t["p"] is None and t["reason"] == "needs >= 2 paired splits" for t in test["tests"].values())  # one split: no test
    assert "p vs 12" in text and "Params (audio sets, video sets)" in text


def test_two_stage_tables_marks_paired_ttests_over_shared_splits(tiny_crema, stores, tmp_path):
    audio, video = stores
    out = tmp_path / "tables"
    overrides = [f"features.audio.store={audio}", f"features.video.store={video}", "train.epochs=2", *[o for o in COMMON if o != "progress=false"]]
    models = "[{index: 10, recipe: recipes/two_stage/model_10.yaml, elicited: AV}, {index: 12, recipe: recipes/two_stage/model_12.yaml, elicited: Proposed}]"
    assert main(["two-stage-tables", "--config", "recipes/two_stage/tables.yaml", f"data.root={tiny_crema}", f"output_dir={out}", f"models={models}",
                 "splits.k=3", "eval.bootstrap=20", "progress=false", "test.alternative=greater", f"overrides=[{','.join(overrides)}]"]) == 0
    report = json.loads((out / "tables.json").read_text())
    scores = {i: json.loads((out / "models" / f"model_{i:02d}" / "metrics.json").read_text()) for i in (10, 12)}
    assert [s["split"] for s in scores[10]["splits"]] == [s["split"] for s in scores[12]["splits"]] == [0, 1, 2]
    d = np.subtract(scores[12]["overall"]["macro_f1"]["values"], scores[10]["overall"]["macro_f1"]["values"])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    test = report["significance"]["tests"]["10"]
    assert test["t"] == pytest.approx(t) and test["p"] == pytest.approx(stats.t.sf(t, 2))  # one-tailed: model 12 better
    text = (out / "tables.md").read_text()
    assert f"| {test['p']:.3g}{'†' if test['p'] < 0.05 else ''} |" in text and "one-tailed, reference greater" in text
    assert ("| 12* |" in text) == (test["p"] < 0.05)
    with pytest.raises(UserError, match="test.reference=9"):
        two_stage_tables.build_config("recipes/two_stage/tables.yaml", [f"data.root={tiny_crema}", "test.reference=9", f"models={models}"])


def test_two_stage_demo_stage_reports_three_conditions(tiny_crema, stores, tmp_path):
    from types import SimpleNamespace

    from ssl_aver.app.stages.heads import two_stage_stage

    audio, video = stores
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "crema-d").symlink_to(tiny_crema, target_is_directory=True)
    ctx = SimpleNamespace(out=tmp_path, seed=0, data=tmp_path / "data", results={"features": {"audio_store": str(audio), "video_store": str(video)}},
                          stage_dir=lambda name: (tmp_path / name).mkdir(parents=True, exist_ok=True) or tmp_path / name)
    summary = two_stage_stage(ctx)
    assert set(summary["macro_f1"]) == {"av", "audio", "video"} and json.dumps(summary)
    assert (tmp_path / "two_stage" / "metrics.json").is_file()


def test_pretrained_encoder_branch_trains_in_stage1_only(tiny_crema, tmp_path):
    from safetensors.torch import load_file

    from ssl_aver.models.encoder import SSLEncoder

    labels = crema_d_task(tiny_crema, "av", "multilabel").labels
    rng = np.random.default_rng(1)
    audio = write_clip_features(tmp_path / "lld", modality="audio", clips={c: ClipFeatures(rng.standard_normal((12, 130)).astype(np.float32), 62.5) for c in labels["clip"]})
    video = write_clip_features(tmp_path / "face", modality="video", clips={c: ClipFeatures(rng.standard_normal((5, 6)).astype(np.float32), 25.0, np.ones(5, bool)) for c in labels["clip"]})
    encoder = SSLEncoder({"d_model": 8, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 0, "ff_dim": 16})
    encoder.save_pretrained(tmp_path / "encoder")
    out = tmp_path / "run"
    finetune(build_config("recipes/finetune/two_stage_crema_d_encoder.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=1", "train.pretrained_epochs=1", f"encoder={tmp_path / 'encoder'}",
        f"features.audio.store={audio}", f"features.video.store={video}", "model.shared_layers=1", *COMMON,
    ]))
    trained = load_file(str(out / "split_00" / "model.safetensors"))
    assert not torch.equal(trained["acoustic.branch.embed.weight"], encoder.state_dict()["embed.weight"])
    assert "audio_sets.0.proj.weight" in trained  # the 8-d encoder output is projected to d_model
