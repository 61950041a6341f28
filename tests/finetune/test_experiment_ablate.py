from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from finetune.ablate import ablate
from finetune.ablate import build_config as ablate_config
from finetune.experiment import build_config as experiment_config
from finetune.experiment import experiment
from ssl_aver.app.cli import main
from ssl_aver.io import sha256_file
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
    before = (out / "systems" / "pretext" / "split_00" / "model.safetensors").stat().st_mtime_ns
    again = experiment(cfg)
    assert (out / "systems" / "pretext" / "split_00" / "model.safetensors").stat().st_mtime_ns == before
    assert again["rows"] == report["rows"]


def test_retrained_encoder_at_the_same_path_is_never_reported_with_old_numbers(tiny_crema, tmp_path, capsys):
    torch.manual_seed(0)
    SSLEncoder(ENC).save_pretrained(tmp_path / "enc")
    args = [
        "experiment", "--config", "recipes/experiments/table2_crema_d.yaml", f"output_dir={tmp_path / 'exp'}", f"data.root={tiny_crema}",
        "splits.k=2", f"systems=[{{name: supervised, encoder: null}}, {{name: pretext, encoder: {tmp_path / 'enc'}}}]",
        "finetune.overrides=[" + ",".join(FT) + "]",
    ]
    assert main(args) == 0
    run = tmp_path / "exp" / "systems" / "pretext"
    old = json.loads((run / "metrics.json").read_text())["overall"]["macro_f1"]["values"]
    old_probs = pd.read_csv(run / "split_00" / "predictions.csv")
    torch.manual_seed(1)
    SSLEncoder(ENC).save_pretrained(tmp_path / "enc")  # "re-pretrained" at the same path
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "encoder.model.safetensors" in err and "--force" in err and str(run) in err
    assert not (tmp_path / "exp" / "table.md").read_text() == "" and json.loads((run / "metrics.json").read_text())["overall"]["macro_f1"]["values"] == old
    assert main([*args, "--force"]) == 0
    new_probs = pd.read_csv(run / "split_00" / "predictions.csv")
    assert not np.allclose(new_probs.iloc[:, 1:].to_numpy(), old_probs.iloc[:, 1:].to_numpy())
    record = json.loads((run / "inputs.json").read_text())
    assert record["encoder"]["model.safetensors"] == sha256_file(tmp_path / "enc" / "model.safetensors")
    # the supervised system's inputs did not change: its splits were kept, not retrained
    supervised = tmp_path / "exp" / "systems" / "supervised" / "split_00" / "model.safetensors"
    before = supervised.stat().st_mtime_ns
    assert main([*args, "--force"]) == 0 and supervised.stat().st_mtime_ns == before


def test_a_changed_split_count_reaches_every_system(tiny_crema, tmp_path):
    base = [f"output_dir={tmp_path / 'exp'}", f"data.root={tiny_crema}", "systems=[{name: supervised, encoder: null}]",
            "reference=supervised", "finetune.overrides=[" + ",".join(FT) + "]"]
    experiment(experiment_config("recipes/experiments/table2_crema_d.yaml", [*base, "splits.k=2"]))
    report = experiment(experiment_config("recipes/experiments/table2_crema_d.yaml", [*base, "splits.k=3"]), force=True)
    assert report["rows"][0]["splits"] == 3
    assert pd.read_csv(tmp_path / "exp" / "systems" / "supervised" / "splits.csv")["split"].nunique() == 3
    assert sorted(p.name for p in (tmp_path / "exp" / "systems" / "supervised").glob("split_*")) == ["split_00", "split_01", "split_02"]


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


def test_ssl1_reuses_table2_encoder_only_when_pretrained_from_the_same_inputs(tiny_crema, tmp_path, caplog):
    from ssl_aver.errors import UserError
    from ssl_aver.pretrain import build_config as pretrain_config
    from ssl_aver.pretrain import pretrain

    store = _store(tmp_path / "store")
    pre = [f"model.encoder.{k}={v}" for k, v in ENC.items()] + ["train.epochs=1", "train.batch_size=4", "train.num_threads=1"]
    pretrain(pretrain_config("recipes/pretrain/msp_face.yaml", [f"data.store={store}", f"output_dir={tmp_path / 'table2'}", *pre]))

    def run(out: str, overrides: list[str], force: bool = False, select: tuple = ("select=[SSL1,SSL5]",)) -> dict:
        return ablate(ablate_config("recipes/ablations/pretext_sets.yaml", [
            f"output_dir={tmp_path / out}", f"data.root={tiny_crema}", f"pretrain.store={store}", "splits.k=2", *select,
            f"reuse={{SSL1: {tmp_path / 'table2'}}}", "pretrain.overrides=[" + ",".join(overrides) + "]",
            "finetune.overrides=[" + ",".join(FT) + "]",
        ]), force=force)

    same = run("abl", pre)
    assert same["encoders"]["SSL1"] == str(tmp_path / "table2" / "encoder")
    assert not (tmp_path / "abl" / "pretrain" / "SSL1").exists() and (tmp_path / "abl" / "pretrain" / "SSL5" / "encoder").is_dir()
    caplog.clear()
    other = run("abl2", [*pre, "train.lr=3e-4"])
    assert other["encoders"]["SSL1"] == str(tmp_path / "abl2" / "pretrain" / "SSL1" / "encoder")
    assert any("config.train.lr" in r.getMessage() and "pretraining SSL1 here" in r.getMessage() for r in caplog.records)
    # the store changed under a finished ablation: its encoders are not silently reused
    labels = pd.read_csv(store / "labels.csv")
    labels["energy"] = 1 - labels["energy"]
    labels.to_csv(store / "labels.csv", index=False)
    with pytest.raises(UserError, match=r"pretraining of SSL5 .*store\.labels\.csv"):
        run("abl", pre, select=["select=[SSL5]", "reference=SSL5"])
    rerun = run("abl", pre, force=True)
    assert rerun["encoders"]["SSL1"] == str(tmp_path / "abl" / "pretrain" / "SSL1" / "encoder")  # table2's store differs now
