"""Multi-task pretraining: masked losses, learning, resume equality, NaN stops, config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ssl_aver.errors import UserError
from ssl_aver.models import SSLEncoder
from ssl_aver.pretrain import NonFiniteLoss, build_config, list_checkpoints, pretrain, split_by_clip, task_losses
from ssl_aver.store import AU_CLASSES, write_store

TINY = [
    "model.encoder.input_dim=6", "model.encoder.d_model=16", "model.encoder.n_heads=2",
    "model.encoder.ff_dim=32", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "train.batch_size=4", "train.num_threads=1", "train.keep_checkpoints=100",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def make_store(root: Path, n_clips: int = 12, per_clip: int = 4, seed: int = 0) -> Path:
    """Synthetic store whose energy label is readable from feature 0 (so the loss can fall)."""
    rng = np.random.default_rng(seed)
    wins, rows = [], []
    for c in range(n_clips):
        for w in range(per_clip):
            e = int(rng.integers(0, 2))
            x = rng.normal(0, 1, (int(rng.integers(5, 12)), 6)).astype(np.float32)
            x[:, 0] += 3 * e
            wins.append(x)
            rows.append(
                {
                    "clip": f"clip{c:02d}", "window": w, "start_s": 1.5 * w, "end_s": 1.5 * w + 2,
                    "energy": e, "face_upper": None if rng.random() < 0.3 else int(x[:, 1].mean() > 0),
                    "face_lower": int(x[:, 2].mean() > 0), "face_whole": None,
                    "au_emotion": None if rng.random() < 0.3 else AU_CLASSES[int(rng.integers(0, 5))],
                }
            )  # fmt: skip
    write_store(root, wins, dim=6)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _run(store: Path, out: Path, *extra: str) -> dict:
    return pretrain(build_config(None, [f"data.store={store}", f"output_dir={out}", *TINY, *extra]))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "encoder" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_missing_labels_are_masked_out() -> None:
    logits = {"energy": torch.tensor([[2.0], [-1.0], [5.0]]), "au_emotion": torch.randn(3, 5)}
    labels = {"energy": torch.tensor([1.0, float("nan"), float("nan")]), "au_emotion": torch.tensor([-1, -1, -1])}
    parts = task_losses(logits, labels)
    per, valid, correct = parts["energy"]
    assert valid.tolist() == [True, False, False]
    assert torch.isfinite(per).all() and per[1:].abs().sum() == 0
    assert correct.tolist() == [True, False, False]
    per, valid, _ = parts["au_emotion"]
    assert valid.sum() == 0 and per.sum() == 0


def test_split_is_by_clip_and_seeded() -> None:
    clips = [f"c{i // 3}" for i in range(30)]
    train, dev = split_by_clip(clips, 0.2, seed=1)
    assert {clips[i] for i in train}.isdisjoint({clips[i] for i in dev})
    assert len({clips[i] for i in dev}) == 2 and len(train) + len(dev) == 30
    again = split_by_clip(clips, 0.2, seed=1)
    assert np.array_equal(again[1], dev)


def test_pretraining_learns_and_writes_its_outputs(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    summary = _run(store, tmp_path / "run", "train.epochs=6", "train.lr=3e-3", "tasks=[energy,face_upper,au_emotion]")
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["train_loss/energy"] < 0.7 * rows[0]["train_loss/energy"]
    assert {"dev_loss", "dev_loss/au_emotion", "dev_acc/energy", "train_loss/face_upper"} <= rows[0].keys()
    assert (out / "config.yaml").is_file() and list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert json.loads((out / "heads" / "config.json").read_text())["tasks"] == ["energy", "face_upper", "au_emotion"]
    encoder = SSLEncoder.from_pretrained(out / "encoder")
    assert float(encoder.feature_std[0]) > 1.2  # corpus statistics travel with the encoder
    assert summary["steps"] == 60 and len(list_checkpoints(out / "checkpoints")) == 6  # 40 train windows / 4; one per epoch


def test_resume_after_an_epoch_equals_an_uninterrupted_run(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    _run(store, tmp_path / "full", "train.epochs=2")
    _run(store, tmp_path / "cut", "train.epochs=1")
    _run(store, tmp_path / "cut", "train.epochs=2", "resume=true")
    assert _max_diff(_weights(tmp_path / "full"), _weights(tmp_path / "cut")) <= 1e-6
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(a)["train_loss"] for a in full] == [json.loads(b)["train_loss"] for b in cut]


def test_resume_refuses_checkpoints_made_from_other_inputs(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    _run(store, tmp_path / "run", "train.epochs=1")
    with pytest.raises(UserError, match=r"changed: config\.train\.lr\)"):
        _run(store, tmp_path / "run", "train.epochs=2", "train.lr=0.5", "resume=true")
    labels = pd.read_csv(store / "labels.csv")
    labels["energy"] = 1 - labels["energy"]
    labels.to_csv(store / "labels.csv", index=False)
    with pytest.raises(UserError, match=r"store\.labels\.csv"):
        _run(store, tmp_path / "run", "train.epochs=2", "resume=true")
    record = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert record["config"]["train"]["epochs"] == 1 and "output_dir" not in record["config"]


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    _run(store, tmp_path / "full", "train.epochs=2", "train.checkpoint_every=3")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    ckpts = tmp_path / "cut" / "checkpoints"
    for (step, _), path in list_checkpoints(ckpts):
        if step > 3:
            shutil.rmtree(path)
    shutil.rmtree(tmp_path / "cut" / "encoder")
    (_, latest), = list_checkpoints(ckpts)
    assert json.loads((latest / "trainer_state.json").read_text())["step_in_epoch"] == 3
    _run(store, tmp_path / "cut", "train.epochs=2", "train.checkpoint_every=3", "resume=true")
    assert _max_diff(_weights(tmp_path / "full"), _weights(tmp_path / "cut")) <= 1e-6
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in full] == pytest.approx([r["train_loss"] for r in cut], rel=1e-6)


def test_gradient_accumulation_runs(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    summary = _run(store, tmp_path / "run", "train.epochs=1", "train.grad_accum=2", "data.dev_fraction=0")
    assert summary["steps"] == 6  # 12 clips x 4 windows / batch 4 = 12 batches, 2 per update


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    features = np.memmap(store / "features.f32", dtype=np.float32, mode="r+").reshape(-1, 6)
    clean = features[:3].copy()
    features[:3] = np.nan
    features.flush()
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step (\d+) .*energy") as err:
        _run(store, tmp_path / "run", "train.epochs=2", "train.checkpoint_every=1")
    failed_step = int(err.value.args[0].split("step ")[1].split()[0])
    found = list_checkpoints(tmp_path / "run" / "checkpoints")
    if failed_step > 1:
        (step, _), latest = found[-1]
        assert step == failed_step - 1
        assert all(torch.isfinite(t).all() for t in load_file(str(latest / "model.safetensors")).values())
    features[:3] = clean
    features.flush()
    summary = _run(store, tmp_path / "run", "train.epochs=2", "train.checkpoint_every=1", "resume=true")
    assert summary["steps"] == 2 * 10 and (tmp_path / "run" / "encoder").is_dir()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks=[energy,pitch]", "unknown task"),
        ("train.epochz=3", "train.epochz"),
        ("train.max_steps=0", "train.max_steps"),
        ("model.encoder.n_heads=3", "divisible"),
    ],
)
def test_config_mistakes_are_user_errors(tmp_path, override, message) -> None:
    store = make_store(tmp_path / "store", n_clips=3)
    with pytest.raises(UserError, match=message):
        _run(store, tmp_path / "run", override)


def test_existing_run_needs_resume(tmp_path) -> None:
    store = make_store(tmp_path / "store", n_clips=3)
    _run(store, tmp_path / "run", "train.epochs=1")
    with pytest.raises(UserError, match="resume=true"):
        _run(store, tmp_path / "run", "train.epochs=1")


def test_max_steps_stops_mid_epoch_and_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    from ssl_aver import progress

    totals: list[int] = []
    bar = progress.tqdm

    def recorded(*args, **kwargs):
        totals.append(kwargs["total"])
        return bar(*args, **kwargs)

    monkeypatch.setattr(progress, "tqdm", recorded)
    store = make_store(tmp_path / "store")
    # 10 batches per epoch: step 13 is batch 3 of epoch 2, and train.epochs=1 no longer limits the run
    summary = _run(store, tmp_path / "full", "train.epochs=1", "train.max_steps=13", "train.checkpoint_every=5")
    assert summary["steps"] == 13 and totals == [13]
    assert [(r["epoch"], r["step"]) for r in summary["history"]] == [(1, 10), (2, 13)]
    assert (tmp_path / "full" / "encoder" / "model.safetensors").is_file()
    (last_step, _), last = list_checkpoints(tmp_path / "full" / "checkpoints")[-1]
    assert last_step == 13 and json.loads((last / "trainer_state.json").read_text())["step_in_epoch"] == 3

    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for (step, _), path in list_checkpoints(tmp_path / "cut" / "checkpoints"):
        if step > 5:
            shutil.rmtree(path)
    shutil.rmtree(tmp_path / "cut" / "encoder")
    resumed = _run(store, tmp_path / "cut", "train.epochs=1", "train.max_steps=13", "train.checkpoint_every=5", "resume=true")
    assert resumed["steps"] == 13 and totals[-1] == 13
    assert _max_diff(_weights(tmp_path / "full"), _weights(tmp_path / "cut")) <= 1e-6
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx([r["train_loss"] for r in summary["history"]], rel=1e-6)
