"""Recipes, entry points, the wav2vec 2.0 baseline and the demo stage of the pretrainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ssl_aver.app.demo import DemoContext
from ssl_aver.app.stages.pretraining import pretrain_stage
from ssl_aver.models.wav2vec2 import load_wav2vec2_encoder
from ssl_aver.pretrain import TASK_SETS, build_config, pretrain
from ssl_aver.store import AU_CLASSES, write_store

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes" / "pretrain").glob("*.yaml"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _store(root: Path, n: int, dim: int, frames: int = 20) -> Path:
    rng = np.random.default_rng(0)
    write_store(root, [rng.normal(size=(frames, dim)).astype(np.float32) for _ in range(n)], dim=dim)
    pd.DataFrame(
        {
            "clip": [f"c{i // 2}" for i in range(n)], "window": [i % 2 for i in range(n)],
            "start_s": [1.5 * (i % 2) for i in range(n)], "end_s": [1.5 * (i % 2) + 2.0 for i in range(n)],
            "energy": rng.integers(0, 2, n), "face_upper": rng.integers(0, 2, n), "face_lower": rng.integers(0, 2, n),
            "face_whole": rng.integers(0, 2, n), "au_emotion": [AU_CLASSES[k] for k in rng.integers(0, 5, n)],
        }
    ).to_csv(root / "labels.csv", index=False)  # fmt: skip
    return root


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_names_its_command(recipe: Path) -> None:
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and ("ssl_aver.pretrain" in first or "recipes/pretrain.py" in first)
    cfg = build_config(recipe, ["data.store=x", "output_dir=y"])
    assert set(cfg.tasks) <= set(TASK_SETS["ssl1"]) | {"face_whole"}


def test_accelerate_recipes_name_their_command() -> None:
    for recipe in sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")):
        assert "accelerate launch --config_file recipes/accelerate/" + recipe.name in recipe.read_text().splitlines()[0]


def test_cli_reports_a_missing_store_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ssl_aver.app.cli", "pretrain", f"data.store={tmp_path / 'none'}", f"output_dir={tmp_path / 'o'}"],
        env=ENV, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ssl-aver pretext build" in result.stderr


def _wav2vec2_run(tmp_path: Path) -> list[str]:
    """Overrides for a tiny wav2vec2 pretraining on 8 windows of 4 noise clips (6 train, batch 2)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for c in range(4):
        sf.write(corpus / f"c{c}.wav", (0.1 * rng.standard_normal(16000 * 4)).astype(np.float32), 16000)
    store = _store(tmp_path / "store", 8, dim=6)
    return [
        "model.type=wav2vec2", f"data.store={store}", f"data.corpus={corpus}", f"output_dir={tmp_path / 'run'}",
        "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.ff_dim=32",
        "model.wav2vec2.conv_dim=[16,16,16,16,16,16,16]", "model.wav2vec2.codevector_dim=16",
        "model.wav2vec2.num_negatives=10", "train.batch_size=2", "data.dev_fraction=0.25", "train.num_threads=1",
    ]  # fmt: skip


def test_wav2vec2_baseline_pretrains_and_loads_as_a_branch(tmp_path) -> None:
    summary = pretrain(build_config(None, [*_wav2vec2_run(tmp_path), "train.epochs=2"]))
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert np.isfinite(summary["history"][-1]["dev_loss"])
    branch = load_wav2vec2_encoder(tmp_path / "run" / "encoder").eval()
    assert branch.config.hidden_size == 16 and branch.config.num_hidden_layers == 5
    with torch.no_grad():
        hidden = branch(torch.randn(1, 32000)).last_hidden_state
    assert hidden.shape[-1] == 16


def test_wav2vec2_baseline_stops_after_max_steps_with_a_layer_norm_feature_encoder(tmp_path) -> None:
    # 3 batches per epoch: step 4 is the first batch of epoch 2; train.epochs no longer limits the run
    summary = pretrain(build_config(None, [*_wav2vec2_run(tmp_path), "train.epochs=1", "train.max_steps=4"]))
    assert summary["steps"] == 4
    assert [(row["epoch"], row["step"]) for row in summary["history"]] == [(1, 3), (2, 4)]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4
    saved = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert saved["feat_extract_norm"] == "layer" and saved["do_stable_layer_norm"] is False
    assert load_wav2vec2_encoder(tmp_path / "run" / "encoder").config.feat_extract_norm == "layer"


def test_wav2vec2_recipe_runs_paper_1s_400k_iterations() -> None:
    cfg = build_config(ROOT / "recipes" / "pretrain" / "wav2vec2.yaml", ["data.store=x", "output_dir=y"])
    assert cfg.train.max_steps == 400_000 and cfg.model.wav2vec2.feat_extract_norm == "layer"
    assert "400k" in (ROOT / "recipes" / "pretrain" / "wav2vec2.yaml").read_text().split("\nseed:")[0]


def test_demo_stage_shows_losses_and_the_encoder(tmp_path) -> None:
    store = _store(tmp_path / "store", 24, dim=130, frames=40)
    ctx = DemoContext(out=tmp_path / "demo", results={"pretext": {"out": str(store)}})
    summary = pretrain_stage(ctx)
    json.dumps(summary)
    assert Path(summary["encoder"], "model.safetensors").is_file()
    assert summary["epochs"] == 12 and set(summary["task_losses"]) == set(TASK_SETS["ssl1"])
    assert summary["train_loss"]["last"] < summary["train_loss"]["first"]
