"""Fine-tuning on stratified k-fold splits and on imported clip-level partitions; what the summary reports."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from finetune.data import crema_d_task
from finetune.run import _splits, build_config, finetune, write_shared_splits
from ssl_aver.app.cli import main
from ssl_aver.errors import UserError
from ssl_aver.splits import load_splits

TINY = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "train.epochs=1", "eval.bootstrap=0", "progress=false",
]


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def _demographics(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "VideoDemographics.csv", dtype=str).set_index("ActorID")


def test_kfold_run_reports_test_actors_per_group_and_absent_groups(tiny_crema, feature_cache, tmp_path):
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={tiny_crema}", f"output_dir={out}", "splits.protocol=kfold",
                                                              "splits.k=3", f"features.cache={feature_cache}", *TINY])
    finetune(cfg)
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    tested = splits[splits["set"] == "test"]
    assert sorted(tested["actor"]) == sorted(splits["actor"].unique())  # every actor tested exactly once
    demo = _demographics(tiny_crema)
    corpus = {attr: set(demo.loc[splits["actor"].unique(), column]) for attr, column in (("sex", "Sex"), ("race", "Race"))}
    summary = json.loads((out / "metrics.json").read_text())
    for entry in summary["splits"]:
        actors = tested.loc[tested["split"] == str(entry["split"]), "actor"]
        assert entry["test_actors"]["actors"] == len(actors)
        for attr, column in (("sex", "Sex"), ("race", "Race")):
            assert entry["test_actors"][attr] == demo.loc[actors, column].value_counts().sort_index().to_dict()
            absent = corpus[attr] - set(entry["test_actors"][attr])
            assert all(any(group in w for w in entry["warnings"] if w.startswith(attr)) for group in absent)
    # 2 of the 9 actors are African American: a 3-actor test set without them is warned about
    assert any("race group(s) African American" in w for entry in summary["splits"] for w in entry["warnings"])


def test_imported_clip_level_partition_trains_and_tests_only_the_clips_it_lists(tiny_crema, feature_cache, tmp_path):
    clips = sorted(p.stem for p in (tiny_crema / "AudioWAV").glob("*.wav"))
    sets = {"1001": "Train", "1002": "Train", "1003": "Train", "1004": "Train", "1005": "Development", "1006": "Test", "1007": "Test"}
    listed = {c: sets[c[:4]] for c in clips if c[:4] in sets}
    for clip in [c for c in clips if c.startswith("1006_")][:3]:  # the partition leaves 3 test clips out (and actors 1008-1009)
        del listed[clip]
    trial = tmp_path / "trial_1.csv"
    trial.write_text("FileName,SpkrID,Split_Set\n" + "".join(f"{c}.wav,{c[:4]},{s}\n" for c, s in listed.items()))
    assert main(["splits", "import", str(trial), "--out", str(tmp_path / "imported.csv")]) == 0
    out = tmp_path / "run"
    cfg = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={tiny_crema}", f"output_dir={out}", "splits.k=5",
                                                              f"splits.file={tmp_path / 'imported.csv'}", f"features.cache={feature_cache}", *TINY])
    summary = finetune(cfg)
    labelled = set(crema_d_task(tiny_crema).labels["clip"])
    predicted = set(pd.read_csv(out / "split_00" / "predictions.csv")["clip"])
    assert predicted == {c for c, s in listed.items() if s == "Test"} & labelled
    assert len(summary["splits"]) == 1 and summary["splits"][0]["test_actors"]["actors"] == len({c[:4] for c in predicted})
    assert load_splits(out / "splits.csv") == load_splits(tmp_path / "imported.csv")


def test_a_clip_level_file_with_shared_speakers_is_refused_unless_allowed(tiny_crema, tmp_path):
    labels = crema_d_task(tiny_crema).labels
    rows = [(0, a, c, "test" if a == "1003" else "dev" if a == "1002" else "train") for c, a in zip(labels["clip"], labels["actor"])]
    shared = next(c for c, a in zip(labels["clip"], labels["actor"]) if a == "1001")
    frame = pd.DataFrame(rows, columns=["split", "actor", "clip", "set"])
    frame.loc[frame["clip"] == shared, "set"] = "test"
    frame.to_csv(tmp_path / "splits.csv", index=False)
    cfg = OmegaConf.create({"splits": {"file": str(tmp_path / "splits.csv"), "k": 20, "allow_shared_speakers": False, "protocol": "random"}})
    with pytest.raises(UserError, match="actor 1001 has clips in train and test.*splits.allow_shared_speakers=true"):
        _splits(cfg, labels)
    cfg.splits.allow_shared_speakers = True
    assert _splits(cfg, labels)[0][shared] == "test"


def test_shared_splits_follow_the_recipe_protocol_or_its_splits_file(tiny_crema, tmp_path):
    base = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={tiny_crema}", "splits.protocol=kfold"])
    path = write_shared_splits(base, 3, 0, tmp_path / "shared.csv")
    tested = [a for s in load_splits(path) for a, part in s.items() if part == "test"]
    assert len(load_splits(path)) == 3 and sorted(tested) == sorted(crema_d_task(tiny_crema).labels["actor"].unique())
    given = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={tiny_crema}", f"splits.file={path}"])
    assert load_splits(write_shared_splits(given, 2, 5, tmp_path / "copy.csv")) == load_splits(path)[:2]
