"""`ssl-aver compare`: systems on shared splits, scored on the same clips, with reuse, robustness and
the shared-layer analysis over a comparison folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from finetune import compare
from finetune.data import crema_d_task
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError

from tests.finetune.test_vavl import make_stores

VAVL = ["model.d_model=16", "model.n_heads=2", "model.audio_layers=1", "model.video_layers=1", "model.shared_layers=1",
        "model.conv_kernel=3", "model.ff_expansion=2", "model.head_hidden=[16,16]"]
UNI = ["model.d_model=16", "model.n_heads=2", "model.layers=1", "model.conv_kernel=3", "model.ff_expansion=2", "model.head_hidden=16"]


@pytest.fixture(scope="module")
def setup(tiny_crema, tmp_path_factory):
    """A base recipe and a comparison of VAVL, VAVL with averaged outputs (paper 2's ablation 3) and
    the unimodal audio conformer; every 4th clip has no video, so only the audio-only system tests it."""
    root = tmp_path_factory.mktemp("compare")
    audio, video = make_stores(tiny_crema, root)
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"condition": "av", "target": "multiclass"}, "progress": False,
        "features": {"audio": {"store": str(audio)}, "video": {"store": str(video)}},
        "train": {"epochs": 3, "lr": 2e-3, "batch_size": 16, "lr_patience": None, "early_stop_patience": None, "num_threads": 1},
        "eval": {"bootstrap": 0},
    }))
    recipe = root / "compare.yaml"
    recipe.write_text("# ssl-aver compare --config (test)\n" + yaml.safe_dump({
        "output_dir": str(root / "out"), "title": "test table", "finetune": {"config": str(base), "overrides": []},
        "data": {"root": str(tiny_crema)}, "splits": {"k": 2, "seed": 0}, "bootstrap": 50,
        "systems": [{"name": "VAVL", "head": "vavl", "overrides": VAVL},
                    {"name": "VAVL avg", "head": "vavl", "overrides": [*VAVL, "model.fusion=average"]},
                    {"name": "Uni (A)", "head": "conformer_uni_audio", "overrides": UNI}],
        "reference": "VAVL",
    }))
    assert main(["compare", "--config", str(recipe)]) == 0
    return root, recipe, tiny_crema


def test_every_system_is_scored_on_the_same_clips_against_sklearn(setup):
    root, _, crema = setup
    out = root / "out"
    report = json.loads((out / "compare.json").read_text())
    assert list(report["conditions"]) == ["av", "audio", "video"]
    audio = report["conditions"]["audio"]
    assert set(audio["systems"]) == {"VAVL", "VAVL avg", "Uni (A)"}
    # the unimodal system also predicted the clips without video: they are left out of every row
    assert audio["left_out"]["Uni (A)"] > 0 and audio["left_out"]["VAVL"] == 0
    labels = crema_d_task(crema, "av", "multiclass").labels.set_index("clip")
    targets = labels[[c for c in labels.columns if c.startswith("target_")]].to_numpy().argmax(1)
    y_of = dict(zip(labels.index, targets))
    for name, run in (("VAVL", "VAVL"), ("Uni (A)", "Uni (A)")):
        primary = "predictions_audio.csv" if name == "VAVL" else "predictions.csv"
        per_split = []
        for k in range(2):
            frames = {n: pd.read_csv(out / "systems" / n / f"split_{k:02d}" / ("predictions_audio.csv" if n != "Uni (A)" else "predictions.csv"))
                      for n in ("VAVL", "VAVL avg", "Uni (A)")}
            common = sorted(set.intersection(*(set(f["clip"]) for f in frames.values())))
            mine = pd.read_csv(out / "systems" / run / f"split_{k:02d}" / primary).set_index("clip").loc[common]
            per_split.append(f1_score([y_of[c] for c in common], mine.to_numpy().argmax(1), average="macro", labels=range(6), zero_division=0))
        assert np.allclose(audio["systems"][name]["values"]["macro_f1"], per_split)
        assert audio["systems"][name]["mean"]["macro_f1"] == pytest.approx(np.mean(per_split))
    assert report["conditions"]["video"]["systems"].keys() == {"VAVL", "VAVL avg"}
    av = report["conditions"]["av"]
    lo, hi = av["systems"]["VAVL"]["ci"]["macro_f1"]
    assert lo <= av["systems"]["VAVL"]["mean"]["macro_f1"] <= hi
    assert av["significance"]["tests"]["VAVL avg"]["n"] == 2 and "Uni (A)" not in av["significance"]["tests"]
    assert report["systems"]["Uni (A)"]["parameters"] > 0 and report["systems"]["VAVL"]["train_seconds"] > 0
    md = (out / "compare.md").read_text()
    assert "## Audio-only" in md and "| Uni (A) |" in md and "Per-emotion F1" in md and "p vs VAVL" in md
    assert (out / "compare.png").stat().st_size > 0
    assert len(pd.read_csv(out / "compare.csv")) == 2 + 3 + 2  # Uni (A) has no audio-visual row


def test_rerun_reuses_finished_systems_and_refuses_changed_inputs(setup, capsys):
    root, recipe, _ = setup
    weights = root / "out" / "systems" / "VAVL" / "split_00" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert main(["compare", "--config", str(recipe)]) == 0
    assert weights.stat().st_mtime_ns == before
    capsys.readouterr()
    changed = yaml.safe_load(recipe.read_text())
    changed["systems"][0]["overrides"] = [*VAVL, "model.head_dropout=0.3"]
    other = recipe.with_name("changed.yaml")
    other.write_text(yaml.safe_dump(changed))
    assert main(["compare", "--config", str(other)]) == 2
    err = capsys.readouterr().err
    assert "head_dropout" in err and "--force" in err
    assert weights.stat().st_mtime_ns == before  # nothing recomputed, nothing reported from the old weights
    assert main(["compare", "--config", str(recipe), "systems.0.head=mult"]) == 2
    assert "cannot change one item of a list" in capsys.readouterr().err


def test_bad_system_entries_name_themselves(setup):
    _, recipe, _ = setup
    bad = yaml.safe_load(recipe.read_text())
    bad["systems"][2]["head"] = "nope"
    bad["systems"][1]["modle"] = 1
    path = recipe.with_name("bad.yaml")
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match=r"unknown key\(s\) \['modle'\]"):
        compare.build_config(path)
    del bad["systems"][1]["modle"]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="head 'nope' is not registered"):
        compare.build_config(path)
    with pytest.raises(UserError, match="reference 'MulT' is not one of the systems"):
        compare.build_config(recipe, ["reference=MulT"])


def test_robustness_and_shared_layers_take_the_comparison_folder(setup, tmp_path):
    root, _, _ = setup
    out = tmp_path / "robust"
    args = ["robustness", "--run", str(root / "out"), "--out", str(out), "seeds=[0]", "bootstrap=0", "fills=[mask]",
            "random.modalities=[audio]", "random.levels=[0.5]", "markov.modes=[]", "plot=true", "splits=[0]"]
    assert main(args) == 0
    report = json.loads((out / "robustness.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["vavl (VAVL)", "vavl (VAVL avg)", "conformer_uni_audio (Uni (A))"]
    assert report["clips"] == "auto" and report["left_out"]["conformer_uni_audio (Uni (A))"] > 0
    assert len({tuple(r["clips"]) for r in report["runs"]}) == 1  # every system tested on the same clips
    assert main(["shared-layers", "--run", str(root / "out"), "--out", str(tmp_path / "shared")]) == 0
    shared = json.loads((tmp_path / "shared" / "shared_embedding.json").read_text())
    assert set(shared["runs"]) == {"VAVL", "VAVL avg"} and shared["skipped"] == ["Uni (A)"]
