from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from finetune.ablate import ablate
from finetune.ablate import build_config as ablate_config
from finetune.experiment import build_config as experiment_config
from finetune.experiment import experiment
from ssl_aver.models.encoder import SSLEncoder
from ssl_aver.store import AU_CLASSES, write_store

ENC = {"d_model": 16, "n_heads": 2, "n_plain_layers": 1, "n_scaled_layers": 1, "ff_dim": 32}
FT = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "train.epochs=3", "train.pretrained_epochs=2",
    "eval.bootstrap=20", "progress=false",
]  # fmt: skip


def _store(root: Path, n_clips: int = 6, per_clip: int = 3) -> Path:
    rng = np.random.default_rng(0)
    wins, rows = [], []
    for c in range(n_clips):
        for w in range(per_clip):
            wins.append(rng.normal(0, 1, (10, 130)).astype(np.float32))
            rows.append({
                "clip": f"c{c}", "window": w, "start_s": 1.5 * w, "end_s": 1.5 * w + 2, "energy": int(rng.integers(0, 2)),
                "face_upper": int(rng.integers(0, 2)), "face_lower": int(rng.integers(0, 2)), "face_whole": int(rng.integers(0, 2)),
                "au_emotion": AU_CLASSES[int(rng.integers(0, 5))],
            })
    write_store(root, wins)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_experiment_compares_systems_on_shared_splits(tiny_crema, tmp_path):
    enc = SSLEncoder(ENC)
    enc.save_pretrained(tmp_path / "enc")
    cfg = experiment_config("recipes/experiments/table2_crema_d.yaml", [
        f"output_dir={tmp_path / 'exp'}", f"data.root={tiny_crema}", "splits.k=3",
        f"systems=[{{name: supervised, encoder: null}}, {{name: pretext, encoder: {tmp_path / 'enc'}}}]",
        "finetune.overrides=[" + ",".join(FT) + "]",
    ])
    report = experiment(cfg)
    out = tmp_path / "exp"
    assert [r["system"] for r in report["rows"]] == ["supervised", "pretext"]
    test = report["significance"]["tests"]["supervised"]
    assert report["significance"]["reference"] == "pretext" and (test["p"] is None or 0.0 <= test["p"] <= 1.0)
    text = (out / "table.md").read_text()
    assert "Macro F1" in text and "vs supervised" in text
    # both systems ran on the same partitions
    a = pd.read_csv(out / "systems" / "supervised" / "splits.csv")
    b = pd.read_csv(out / "systems" / "pretext" / "splits.csv")
    assert a.equals(b) and a["split"].nunique() == 3
    # a rerun reuses finished systems instead of training again
    before = (out / "systems" / "pretext" / "metrics.json").stat().st_mtime_ns
    experiment(cfg)
    assert (out / "systems" / "pretext" / "metrics.json").stat().st_mtime_ns == before


def test_ablation_pretrains_each_set_and_writes_table3(tiny_crema, tmp_path):
    store = _store(tmp_path / "store")
    pre = [f"model.encoder.{k}={v}" for k, v in ENC.items()] + ["train.epochs=1", "train.batch_size=4", "train.num_threads=1", "data.num_workers=0"]
    cfg = ablate_config("recipes/ablations/pretext_sets.yaml", [
        f"output_dir={tmp_path / 'abl'}", f"data.root={tiny_crema}", f"pretrain.store={store}", "splits.k=2",
        "select=[SSL1,SSL2,SSL5]",
        "pretrain.overrides=[" + ",".join(pre) + "]", "finetune.overrides=[" + ",".join(FT) + "]",
    ])
    report = ablate(cfg)
    out = tmp_path / "abl"
    for name, tasks in [("SSL1", {"energy", "face_upper", "face_lower", "au_emotion"}), ("SSL5", {"energy"})]:
        saved = json.loads((out / "pretrain" / name / "summary.json").read_text())
        trained = {key.split("/")[1] for key in saved["history"][0] if key.startswith("train_loss/")}
        assert trained == tasks
        assert (out / "pretrain" / name / "encoder" / "model.safetensors").is_file()
    assert [r["system"] for r in report["rows"]] == ["SSL1", "SSL2", "SSL5"]
    table = (out / "table.md").read_text()
    assert "| SSL2 | ✓ | ~ | ✓ |" in table and "| SSL5 | ✓ |  |  |" in table
