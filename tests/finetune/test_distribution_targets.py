"""Distribution targets (papers 3-4): train on the vote shares, evaluate on multi-hot above 1/C;
missing demographics stay missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from finetune.data import crema_d_task
from finetune.run import build_config, finetune, split_setup
from finetune.heads import head_class
from ssl_aver.crema_d_labels import EMOTIONS
from ssl_aver.metrics import binarize
from ssl_aver.models.losses import positive_counts
from ssl_aver.splits import make_splits

TINY = [
    "model.encoder.d_model=16", "model.encoder.n_heads=2", "model.encoder.n_plain_layers=1", "model.encoder.n_scaled_layers=1",
    "model.encoder.ff_dim=32", "model.hidden=16", "train.batch_size=8", "train.epochs=2", "eval.bootstrap=0", "progress=false",
]


def _shares_from_votes(root) -> pd.DataFrame:
    """The AV vote shares per clip straight from tabulatedVotes.csv (independent of crema_d_labels)."""
    raw = pd.read_csv(root / "processedResults" / "tabulatedVotes.csv")
    av = raw[raw.iloc[:, 0].astype(str).str.startswith("3")].set_index("fileName")
    counts = av[["A", "D", "F", "H", "N", "S"]].to_numpy(float)
    return pd.DataFrame(counts / counts.sum(1, keepdims=True), index=av.index, columns=list(EMOTIONS))


def test_distribution_targets_are_the_vote_shares_and_binarise_to_the_multi_hot_labels(tiny_crema):
    dist = crema_d_task(tiny_crema, "av", "distribution", extra=["voice", "face"])
    hot = crema_d_task(tiny_crema, "av", "multilabel", extra=["voice", "face"])
    assert dist.task == "multilabel" and list(dist.labels["clip"]) == list(hot.labels["clip"])
    shares = dist.labels.set_index("clip")[dist.targets].to_numpy(float)
    expected = _shares_from_votes(tiny_crema).loc[dist.labels["clip"]].to_numpy()
    np.testing.assert_allclose(shares, expected, atol=1e-6)
    assert ((shares > 0) & (shares < 1)).any()  # soft, not 0/1
    multi_hot = hot.labels[hot.targets].to_numpy()
    np.testing.assert_array_equal(binarize(shares), multi_hot)
    np.testing.assert_array_equal(positive_counts(shares), multi_hot.sum(0))
    # the extra label groups follow: voice/face shares, rows summing to 1 (0 where a condition is unrated)
    for name in ("voice", "face"):
        extra = dist.labels[dist.extra[name]].to_numpy(float)
        assert np.all(np.isclose(extra.sum(1), 1.0) | np.isclose(extra.sum(1), 0.0))
        np.testing.assert_array_equal(binarize(extra), hot.labels[hot.extra[name]].to_numpy())


def test_heads_train_on_shares_and_are_scored_on_the_binarised_labels(tiny_crema, tmp_path):
    cfg = build_config("recipes/finetune/ser_crema_d_multilabel.yaml", [
        f"data.root={tiny_crema}", f"output_dir={tmp_path / 'run'}", "data.target=distribution", "splits.k=1", *TINY,
    ])
    task = crema_d_task(tiny_crema, "av", "distribution")
    split = make_splits(task.labels["actor"], 1, 0)[0]
    from finetune.run import feature_store

    stores = {"audio": feature_store(cfg, "audio", tmp_path / "run")}
    parts, data, ctx = split_setup(cfg, head_class("ser"), task, split, stores, {}, False, 0)
    batch = data["train"].collate([data["train"][i] for i in range(len(data["train"]))])
    targets = batch["targets"].numpy()
    assert ((targets > 0) & (targets < 1)).any() and np.allclose(targets.sum(1), 1.0, atol=1e-5)
    summary = finetune(cfg)
    predictions = pd.read_csv(tmp_path / "run" / "split_00" / "predictions.csv")
    metrics = json.loads((tmp_path / "run" / "split_00" / "metrics.json").read_text())
    hot = crema_d_task(tiny_crema, "av", "multilabel").labels.set_index("clip").loc[predictions["clip"]]
    truth = hot[[f"av_{e}" for e in EMOTIONS]].to_numpy()
    pred = binarize(predictions[list(EMOTIONS)].to_numpy())
    tp, fp, fn = (truth & pred).sum(0), ((1 - truth) & pred).sum(0), (truth & (1 - pred)).sum(0)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    assert metrics["macro_f1"] == pytest.approx(f1.mean())
    assert summary["task"] == "multilabel"


def test_missing_demographics_are_counted_never_a_group(tiny_crema, tmp_path):
    root = tmp_path / "crema"
    shutil.copytree(tiny_crema, root)
    demo = pd.read_csv(root / "VideoDemographics.csv")
    demo.loc[demo["ActorID"] == demo["ActorID"].iloc[0], ["Race", "Sex"]] = np.nan
    demo.to_csv(root / "VideoDemographics.csv", index=False)
    cfg = build_config("recipes/finetune/ser_crema_d.yaml", [f"data.root={root}", f"output_dir={tmp_path / 'run'}", "splits.k=1",
                                                              "splits.fractions=[0.34,0.33,0.33]", *TINY])
    finetune(cfg)
    fairness = json.loads((tmp_path / "run" / "split_00" / "metrics.json").read_text())["fairness"]
    for attribute in ("race", "sex"):
        assert not {"None", "nan", ""} & set(fairness[attribute]["groups"])
    missing_actor = str(demo["ActorID"].iloc[0])
    test = pd.read_csv(tmp_path / "run" / "splits.csv")
    tested = set(test.loc[test["set"] == "test", "actor"].astype(str))
    clips = pd.read_csv(tmp_path / "run" / "split_00" / "predictions.csv")["clip"]
    expected = int(clips.str.startswith(missing_actor + "_").sum()) if missing_actor in tested else 0
    assert fairness["race"]["n_missing"] == expected
