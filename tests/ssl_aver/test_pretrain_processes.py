"""Pretraining as real processes: SIGKILL mid-epoch then resume, and 2-process CPU data parallel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ssl_aver.pretrain import build_config, list_checkpoints, pretrain
from ssl_aver.store import AU_CLASSES, write_store

TINY = [
    "model.encoder.input_dim=6", "model.encoder.d_model=16", "model.encoder.n_heads=2",
    "model.encoder.ff_dim=32", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "train.batch_size=4", "train.num_threads=1", "train.keep_checkpoints=1000",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def make_store(root: Path, n_clips: int, per_clip: int = 4, seed: int = 0) -> Path:
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
                    "clip": f"clip{c:03d}", "window": w, "start_s": 1.5 * w, "end_s": 1.5 * w + 2, "energy": e,
                    "face_upper": int(x[:, 1].mean() > 0), "face_lower": None if rng.random() < 0.3 else int(x[:, 2].mean() > 0),
                    "au_emotion": None if rng.random() < 0.3 else AU_CLASSES[int(rng.integers(0, 5))],
                }
            )  # fmt: skip
    write_store(root, wins, dim=6)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "encoder" / "model.safetensors")), load_file(str(b / "encoder" / "model.safetensors"))
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path) -> None:
    store = make_store(tmp_path / "store", n_clips=80)
    args = [f"data.store={store}", *TINY, "train.epochs=3", "train.checkpoint_every=7"]
    pretrain(build_config(None, [*args, f"output_dir={tmp_path / 'full'}"]))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssl_aver.pretrain", *args, f"output_dir={killed}"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list_checkpoints(killed / "checkpoints") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "encoder").exists()
    (step, _), latest = list_checkpoints(killed / "checkpoints")[-1]
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["epoch"] < 3 and step < 3 * 72
    result = subprocess.run(
        [sys.executable, "-m", "ssl_aver.pretrain", *args, f"output_dir={killed}", "resume=true"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert _max_diff(tmp_path / "full", killed) <= 1e-6


def test_two_process_data_parallel_on_cpu(tmp_path) -> None:
    store = make_store(tmp_path / "store", n_clips=20)
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ssl_aver.pretrain",
        f"data.store={store}", f"output_dir={out}", *TINY, "train.epochs=2",
    ]  # fmt: skip
    result = subprocess.run(cmd, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["replicas_in_sync"] is True
    assert summary["steps"] == 2 * 9  # 72 train windows / (batch 4 x 2 processes)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    (_, latest), = list_checkpoints(out / "checkpoints")[-1:]
    assert sorted(p.name for p in latest.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    writers = {p.name.split(".")[-2] for p in (out / "tensorboard").rglob("events.out.tfevents*")}
    assert len(writers) == 1  # TensorBoard events come from one process id
    assert not list(out.rglob(".tmp-*"))
