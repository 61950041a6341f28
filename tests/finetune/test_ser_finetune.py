from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from finetune.run import build_config, finetune
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.models.encoder import SSLEncoder

TINY = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "eval.bootstrap=50", "progress=false",
]


def test_ser_supervised_learns_and_writes_outputs(tiny_crema, tmp_path):
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=2", "train.epochs=25", "train.lr=3e-3", *TINY])
    summary = finetune(cfg)
    assert (out / "config.yaml").is_file() and (out / "splits.csv").is_file() and (out / "metrics.md").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["splits"]) == 2 and metrics["clips"] == 72
    # the tones encode the labels: far above chance (1/6) on held-out actors
    assert summary["overall"]["accuracy"]["mean"] > 0.5
    preds = pd.read_csv(out / "split_00" / "predictions.csv")
    assert list(preds.columns) == ["clip", "anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert np.allclose(preds.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    test_actors = set(splits[(splits.split == "0") & (splits.set == "test")].actor)
    assert {c[:4] for c in preds["clip"]} <= test_actors
    split_metrics = json.loads((out / "split_00" / "metrics.json").read_text())
    assert "fairness" in split_metrics and "sex" in split_metrics["fairness"]
    history = split_metrics["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_ser_from_pretrained_encoder_and_multilabel(tiny_crema, tmp_path):
    enc = SSLEncoder({"d_model": 16, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 32})
    enc.save_pretrained(tmp_path / "encoder")
    out = tmp_path / "ml"
    cfg = build_config("recipes/finetune/ser_crema_d_multilabel.yaml", [
        f"data.root={tiny_crema}", f"output_dir={out}", f"encoder={tmp_path / 'encoder'}", "splits.k=1",
        f"features.cache={tmp_path / 'feats'}", *TINY,
    ])
    summary = finetune(cfg)
    assert summary["task"] == "multilabel" and summary["encoder"] == str(tmp_path / "encoder")
    # 5 epochs when starting from a pretrained encoder (paper 1)
    assert len(json.loads((out / "split_00" / "metrics.json").read_text())["history"]) <= 5
    assert 0.0 <= summary["overall"]["sample_precision"]["mean"] <= 1.0


def test_finetune_cli_errors(tmp_path, capsys):
    assert main(["finetune", "--config", "recipes/finetune/ser_crema_d.yaml"]) == 2
    assert "data.root" in capsys.readouterr().err
    assert main(["finetune", "--config", "recipes/finetune/ser_crema_d.yaml", f"data.root={tmp_path}", "encoder=/nope/encoder"]) == 2
    assert "encoder directory not found" in capsys.readouterr().err
    assert main(["finetune", "--config", "recipes/finetune/ser_crema_d.yaml", "train.epoch=3"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_interrupted_run_keeps_finished_splits(tiny_crema, tmp_path):
    out = tmp_path / "run"
    overrides = [f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=2", "train.epochs=2", *TINY]
    first = finetune(build_config("recipes/finetune/ser_crema_d.yaml", overrides))
    kept = (out / "split_00" / "model.safetensors").stat().st_mtime_ns
    (out / "split_01" / "metrics.json").unlink()  # as if the run died during split 1
    second = finetune(build_config("recipes/finetune/ser_crema_d.yaml", overrides))
    assert (out / "split_00" / "model.safetensors").stat().st_mtime_ns == kept
    assert second["overall"]["macro_f1"]["values"] == first["overall"]["macro_f1"]["values"]
    # a changed config never reuses (or silently replaces) the finished splits: it names the change ...
    changed = build_config("recipes/finetune/ser_crema_d.yaml", [*overrides, "train.lr=1e-3"])
    with pytest.raises(UserError, match=r"changed: config\.train\.lr\)"):
        finetune(changed)
    assert (out / "split_00" / "model.safetensors").stat().st_mtime_ns == kept
    # ... and --force recomputes every split, with the new inputs recorded
    finetune(changed, force=True)
    assert (out / "split_00" / "model.safetensors").stat().st_mtime_ns != kept
    assert json.loads((out / "inputs.json").read_text())["config"]["train"]["lr"] == 1e-3
