"""VAVL (paper 2): conformers over time, Algorithm 1's three phases, unpaired training, analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.data import crema_d_task
from finetune.heads import BuildContext
from finetune.heads.vavl import VAVLHead, ccc_loss
from finetune.run import build_config, finetune
from finetune.trainer import TrainSettings, make_optimizer
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.features.store import ClipFeatures, write_clip_features
from ssl_aver.models.conformer import Conformer
from ssl_aver.models.encoder import SSLEncoder

TINY = ["model.d_model=16", "model.n_heads=2", "model.audio_layers=1", "model.video_layers=1", "model.shared_layers=1",
        "model.conv_kernel=3", "model.ff_expansion=2", "model.head_hidden=[16,16]", "train.batch_size=16", "eval.bootstrap=20", "progress=false"]


def make_stores(root, out, audio_dim=8, drop_video_every=4, seed=0):
    """Audio [T, audio_dim] and face [T, 6] features whose mean encodes the clip's AV label;
    every `drop_video_every`-th clip has no video (unpaired training data)."""
    labels = crema_d_task(root, "av", "multiclass").labels
    rng = np.random.default_rng(seed)
    mu_a, mu_v = rng.standard_normal((6, audio_dim)) * 2, rng.standard_normal((6, 6)) * 2
    audio, video = {}, {}
    for i, (clip, target) in enumerate(zip(labels["clip"], labels[[c for c in labels.columns if c.startswith("target_")]].to_numpy())):
        e = int(target.argmax())
        audio[clip] = ClipFeatures((mu_a[e] + rng.standard_normal((int(rng.integers(12, 20)), audio_dim))).astype(np.float32), 50.0)
        if drop_video_every and i % drop_video_every == 0:
            continue
        v = (mu_v[e] + rng.standard_normal((int(rng.integers(6, 10)), 6))).astype(np.float32)
        video[clip] = ClipFeatures(v, 25.0, np.ones(len(v), bool))
    return write_clip_features(out / "audio", modality="audio", clips=audio), write_clip_features(out / "video", modality="video", clips=video)


def _tiny_head(**over) -> VAVLHead:
    cfg = {**VAVLHead.defaults(), "d_model": 16, "n_heads": 2, "audio_layers": 1, "video_layers": 1, "shared_layers": 1,
           "conv_kernel": 3, "ff_expansion": 2, "head_hidden": [16, 16], **over}
    task = "multiclass" if cfg["objective"] == "auto" else "regression"
    return VAVLHead(cfg, 6 if cfg["objective"] == "auto" else 3, BuildContext(n_classes=6, task=task, audio_shape=(5,), video_shape=(7,)))


def _batch(n=6, audio_rows=None, video_rows=None, targets=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio_rows = range(n) if audio_rows is None else audio_rows
    video_rows = range(n) if video_rows is None else video_rows
    a_mask, v_mask = torch.zeros(n, 9, dtype=torch.bool), torch.zeros(n, 6, dtype=torch.bool)
    for i in audio_rows:
        a_mask[i, : 5 + i % 4] = True
    for i in video_rows:
        v_mask[i, : 3 + i % 3] = True
    batch = {"clips": [str(i) for i in range(n)], "audio": torch.randn(n, 9, 5, generator=g) * a_mask[..., None],
             "video": torch.randn(n, 6, 7, generator=g) * v_mask[..., None], "audio_mask": a_mask, "video_mask": v_mask,
             "has_audio": a_mask.any(1), "has_video": v_mask.any(1)}
    batch["targets"] = torch.eye(6)[torch.arange(n) % 6] if targets is None else targets
    return batch


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_conformer_attends_over_time_with_padding_masks():
    torch.manual_seed(0)
    conformer = Conformer(8, 2, 2, dropout=0.0, kernel_size=5)
    x = torch.randn(3, 7, 8)
    lengths = [7, 4, 5]
    padded = torch.stack([torch.cat([x[i, :n], torch.full((7 - n, 8), 9.0)]) for i, n in enumerate(lengths)])
    mask = torch.tensor([[t >= n for t in range(7)] for n in lengths])
    for mode in ("train", "eval"):  # batch norm statistics come from valid frames only, also in training
        getattr(conformer, mode)()
        out = conformer(padded, mask)
        alone = conformer(x[1:2, :4])  # the unpadded clip on its own
        if mode == "eval":
            torch.testing.assert_close(out[1, :4], alone[0], atol=1e-5, rtol=1e-5)
        assert torch.all(out[mask] == 0)
    conformer.eval()
    out = conformer(padded, mask)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(conformer(padded[perm], mask[perm]), out[perm], atol=1e-5, rtol=1e-5)
    # attention runs over time: changing a frame of clip 0 changes its other frames, not clip 1
    changed = padded.clone()
    changed[0, 6] += torch.randn(8)
    out2 = conformer(changed, mask)
    assert not torch.allclose(out2[0, 0], out[0, 0]) and torch.allclose(out2[1], out[1])


@pytest.mark.parametrize("subsample", [1, 4])
def test_algorithm1_phases_update_only_their_weights(subsample):
    torch.manual_seed(0)
    head = _tiny_head(subsample=subsample, subsample_dim=7)
    head.train()
    opt = make_optimizer(head.parameters(), TrainSettings(lr=1e-2))
    batch = _batch()
    before = _state(head)
    assert head.train_phase(batch, "av", opt) is not None
    after = _state(head)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("av_head.") for k in changed)  # step 3: only the AV layer, no buffer either
    # an audio-only batch: the visual branch stays untouched, acoustic + shared layers move
    audio_only = _batch(video_rows=[])
    before = _state(head)
    losses = [head.train_phase(audio_only, p, opt) for p in ("audio", "video", "av")]
    assert losses[0] is not None and losses[1] is None and losses[2] is None
    after = _state(head)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"audio_proj", "audio_encoder", "shared", "audio_head", "audio_recon"} | ({"audio_subsample"} if subsample > 1 else set()) <= changed
    assert not changed & {"video_proj", "video_subsample", "video_encoder", "video_head", "video_recon", "av_head"}


def test_inference_picks_the_head_by_modalities_present():
    torch.manual_seed(0)
    head = _tiny_head().eval()
    batch = _batch(audio_rows=[0, 1, 2, 3], video_rows=[2, 3, 4, 5])
    pooled, present = head.pooled(batch)
    logits = head(batch)
    torch.testing.assert_close(logits[:2], head.audio_head(pooled["audio"][:2]))
    torch.testing.assert_close(logits[4:], head.video_head(pooled["video"][4:]))
    torch.testing.assert_close(logits[2:4], head.av_head(torch.cat([pooled["audio"][2:4], pooled["video"][2:4]], -1)))
    average = _tiny_head(fusion="average", residual=False, reconstruction=False).eval()
    assert not hasattr(average, "av_head") and not hasattr(average, "audio_recon")
    probs = torch.softmax(average(batch), -1)
    pooled, _ = average.pooled(batch)
    expected = (torch.softmax(average.audio_head(pooled["audio"][2:4]), -1) + torch.softmax(average.video_head(pooled["video"][2:4]), -1)) / 2
    torch.testing.assert_close(probs[2:4], expected)


def test_ccc_regression_path_learns_synthetic_attributes():
    assert float(ccc_loss(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[1.0], [2.0], [3.0]]))) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    head = _tiny_head(objective="ccc")
    batch = _batch(n=12)
    batch["targets"] = torch.stack([batch["audio"].sum((1, 2)), batch["video"].sum((1, 2)), -batch["audio"].mean((1, 2))], 1)
    opt = make_optimizer(head.parameters(), TrainSettings(lr=3e-3))
    head.train()
    first = [head.train_phase(batch, p, opt) for p in ("audio", "video", "av")]
    for _ in range(30):
        last = [head.train_phase(batch, p, opt) for p in ("audio", "video", "av")]
    assert all(b < a for a, b in zip(first, last))
    assert head.eval()(batch).shape == (12, 3)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_ccc_objective_on_class_targets_is_refused(task):
    cfg = {**VAVLHead.defaults(), "d_model": 16, "n_heads": 2, "objective": "ccc"}
    with pytest.raises(UserError, match="objective=ccc"):
        VAVLHead(cfg, 6, BuildContext(n_classes=6, task=task, audio_shape=(5,), video_shape=(7,)))


def test_ccc_objective_on_crema_d_fails_in_one_line(tiny_crema, tmp_path, capsys):
    audio, video = make_stores(tiny_crema, tmp_path)
    code = main(["finetune", "--config", "recipes/finetune/vavl_demo.yaml", f"data.root={tiny_crema}", f"output_dir={tmp_path / 'run'}",
                 f"features.audio.store={audio}", f"features.video.store={video}", "model.objective=ccc"])
    assert code == 2
    assert "objective=ccc" in capsys.readouterr().err
    assert not (tmp_path / "run" / "split_00" / "metrics.json").exists()


def test_vavl_run_trains_unpaired_reports_three_conditions_and_analysis(tiny_crema, tmp_path):
    audio, video = make_stores(tiny_crema, tmp_path)
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/vavl_crema_d.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=1", "train.epochs=6", "train.lr=2e-3",
        f"features.audio.store={audio}", f"features.video.store={video}", *TINY,
    ])
    summary = finetune(cfg)
    assert set(summary["by_modality"]) == {"av", "audio", "video"}
    history = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    assert history[-1]["train_audio_loss"] < history[0]["train_audio_loss"]
    assert history[-1]["train_av_loss"] < history[0]["train_av_loss"]
    # features encode the labels: well above chance (1/6) on held-out actors in each condition
    assert all(summary["by_modality"][m]["accuracy"]["mean"] > 0.4 for m in ("av", "audio", "video"))
    assert main(["shared-layers", "--run", str(out), "--out", str(tmp_path / "analysis")]) == 0
    report = json.loads((tmp_path / "analysis" / "shared_embedding.json").read_text())
    overall = report["runs"]["run"]["overall"]
    assert overall["n"] > 0 and 0.0 <= overall["mean"] <= 2.0 and report["runs"]["run"]["head"] == "vavl"
    assert (tmp_path / "analysis" / "shared_embedding.png").stat().st_size > 0
    assert main(["shared-layers", "--run", str(tmp_path)]) == 2


def test_vavl_with_frozen_pretrained_encoder(tiny_crema, tmp_path):
    audio, video = make_stores(tiny_crema, tmp_path, audio_dim=130, drop_video_every=0)
    encoder = SSLEncoder({"d_model": 16, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 0, "ff_dim": 32})
    encoder.save_pretrained(tmp_path / "encoder")
    out = tmp_path / "enc"
    cfg = build_config("recipes/finetune/vavl_crema_d_encoder.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=1", "train.pretrained_epochs=1", f"encoder={tmp_path / 'encoder'}",
        "freeze_encoder=true", f"features.audio.store={audio}", f"features.video.store={video}", *TINY,
    ])
    finetune(cfg)
    from safetensors.torch import load_file

    trained = load_file(str(out / "split_00" / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(trained[f"acoustic.branch.{name}"], value)


class _DemoContext:
    def __init__(self, base, crema, audio, video):
        (base / "data").mkdir(parents=True)
        (base / "data" / "crema-d").symlink_to(crema, target_is_directory=True)
        self.out, self.seed, self.data = base, 0, base / "data"
        self.results = {"features": {"audio_store": str(audio), "video_store": str(video)}}

    def stage_dir(self, name):
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def test_vavl_demo_stage_reports_three_conditions(tiny_crema, tmp_path):
    from ssl_aver.app.stages.heads import vavl_stage

    audio, video = make_stores(tiny_crema, tmp_path / "stores")
    summary = vavl_stage(_DemoContext(tmp_path / "demo", tiny_crema, audio, video))
    assert set(summary["macro_f1"]) == {"av", "audio", "video"} and "audio-only" in summary["headline"]
    assert json.dumps(summary) and (tmp_path / "demo" / "vavl" / "metrics.json").is_file()


# ---- time subsampling (Gulati et al.'s front end; default 1 = the reference code) ----------------
def test_subsampling_default_follows_the_reference_code_and_paper_size_4x_builds():
    ctx = BuildContext(n_classes=6, task="multiclass", audio_shape=(1024,), video_shape=(1408,))
    default = VAVLHead(VAVLHead.defaults(), 6, ctx)
    assert VAVLHead.defaults()["subsample"] == 1 and default.audio_proj.conv.out_channels == 512  # every frame, as the reference runs
    assert not any("subsample" in k for k in default.state_dict())
    four = VAVLHead({**VAVLHead.defaults(), "subsample": 4}, 6, ctx)
    for proj, sub in ((four.audio_proj, four.audio_subsample), (four.video_proj, four.video_subsample)):
        assert proj.conv.out_channels == 50 and len(sub.convs) == 2 and sub.out.in_features == 512 * 11  # 50 -> 24 -> 11
    extra = sum(p.numel() for p in four.parameters()) - sum(p.numel() for p in default.parameters())
    # two front ends of 5,120 + 2,359,808 (convs) + 2,884,096 (linear), minus the narrower projections
    assert extra == 2 * (5120 + 2359808 + 2884096) - 3 * (1024 + 1408) * (512 - 50) - 2 * (512 - 50)
    for bad, match in (({"subsample": 3}, "model.subsample must be one of"), ({"subsample": 4, "subsample_dim": 6}, "model.subsample_dim")):
        with pytest.raises(UserError, match=match):
            VAVLHead({**VAVLHead.defaults(), "d_model": 16, "n_heads": 2, **bad}, 6, ctx)


@pytest.mark.parametrize("subsample", [2, 4])
def test_subsampled_vavl_clip_output_independent_of_companions_and_padding(subsample):
    torch.manual_seed(0)
    head = _tiny_head(subsample=subsample, subsample_dim=7).eval()
    batch = _batch(audio_rows=[0, 1, 2, 3, 4], video_rows=[1, 2, 3, 4, 5])
    batch["audio_mask"][2, 3] = False  # a hole
    batch["video_mask"][3, 1] = False
    junk = dict(batch, audio=torch.where(batch["audio_mask"][..., None], batch["audio"], torch.randn(batch["audio"].shape) * 100),
                video=torch.where(batch["video_mask"][..., None], batch["video"], torch.randn(batch["video"].shape) * 100))
    with torch.no_grad():
        logits = head(batch)
        torch.testing.assert_close(head(junk), logits, atol=1e-5, rtol=1e-5)  # masked values do not leak
        shared_a, shared_v = head.shared_embeddings(batch)
        for i in range(6):
            alone = {"clips": ["x"], "targets": batch["targets"][i : i + 1], "has_audio": batch["has_audio"][i : i + 1],
                     "has_video": batch["has_video"][i : i + 1]}
            for m in ("audio", "video"):
                n = max(int(batch[f"{m}_mask"][i].nonzero().max()) + 1 if batch[f"{m}_mask"][i].any() else 1, 1)
                alone[m], alone[f"{m}_mask"] = batch[m][i : i + 1, :n], batch[f"{m}_mask"][i : i + 1, :n]
            torch.testing.assert_close(head(alone)[0], logits[i], atol=1e-5, rtol=1e-5)
            if i in (1, 2, 3, 4):  # the paired clips, in batch order
                a, v = head.shared_embeddings(alone)
                torch.testing.assert_close(a[0], shared_a[i - 1], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(v[0], shared_v[i - 1], atol=1e-5, rtol=1e-5)
        # the reconstruction target stays the mean of the INPUT frames (not of the subsampled ones)
        rows = torch.tensor([2, 4])
        _, target = head.encode(batch, "audio", rows)
        for k, i in enumerate(rows.tolist()):
            expected = batch["audio"][i][batch["audio_mask"][i]].double().mean(0)
            torch.testing.assert_close(target[k].double(), expected, atol=1e-5, rtol=1e-5)


def test_vavl_demo_recipe_trains_with_4x_subsampling(tiny_crema, tmp_path):
    audio, video = make_stores(tiny_crema, tmp_path)
    out = tmp_path / "run"
    code = main(["finetune", "--config", "recipes/finetune/vavl_demo.yaml", f"data.root={tiny_crema}", f"output_dir={out}",
                 f"features.audio.store={audio}", f"features.video.store={video}", "splits.k=1", "model.subsample=4"])
    assert code == 0
    history = json.loads((out / "split_00" / "metrics.json").read_text())["history"]
    assert history[-1]["train_audio_loss"] < history[0]["train_audio_loss"]
    assert history[-1]["train_video_loss"] < history[0]["train_video_loss"]
