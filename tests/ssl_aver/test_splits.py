"""Speaker-independent splits: disjoint, complete, seeded, stratified, saved and validated."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ssl_aver.app.cli import main
from ssl_aver.data import CREMA_D_DIR
from ssl_aver.errors import UserError
from ssl_aver.splits import (
    SETS,
    ClipSplit,
    actors_in_test,
    apply_split,
    group_coverage,
    groups_in_test,
    load_splits,
    make_splits,
    save_splits,
)

ACTORS = [str(1001 + i) for i in range(91)]
#: the CREMA-D groups of at least 7 actors: in every test set of either protocol
LARGE_GROUPS = {"sex": {"Female", "Male"}, "race": {"Caucasian", "African American", "Asian"}}


@pytest.fixture(scope="module")
def real_labels(tmp_path_factory) -> Path:
    """labels.csv of the real vendored CREMA-D ratings and demographics (91 actors)."""
    out = tmp_path_factory.mktemp("crema_labels")
    assert main(["crema-d", "labels", "--votes", str(CREMA_D_DIR / "tabulatedVotes.csv"), "--out", str(out)]) == 0
    return out / "labels.csv"


def _test_sets(splits_csv: Path, labels_csv: Path) -> list[pd.DataFrame]:
    """Per split, the test actors with their sex and race (from the labels)."""
    splits = pd.read_csv(splits_csv, dtype=str)
    actors = pd.read_csv(labels_csv, dtype=str).drop_duplicates("actor").set_index("actor")[["sex", "race"]]
    return [actors.loc[g.loc[g["set"] == "test", "actor"]] for _, g in splits.groupby("split")]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kfold_on_real_crema_d_tests_every_actor_once_with_every_large_group(real_labels: Path, tmp_path: Path, seed: int) -> None:
    out = tmp_path / "splits.csv"
    assert main(["crema-d", "splits", "--labels", str(real_labels), "--protocol", "kfold", "--k", "5", "--seed", str(seed),
                 "--out", str(out)]) == 0
    tests = _test_sets(out, real_labels)
    assert len(tests) == 5
    assert sorted(a for t in tests for a in t.index) == sorted(pd.read_csv(real_labels, dtype=str)["actor"].unique())
    for test in tests:
        assert set(test["sex"]) >= LARGE_GROUPS["sex"] and set(test["race"]) >= LARGE_GROUPS["race"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_protocol_on_real_crema_d_tests_every_large_group(real_labels: Path, tmp_path: Path, seed: int) -> None:
    out = tmp_path / "splits.csv"
    assert main(["crema-d", "splits", "--labels", str(real_labels), "--k", "20", "--seed", str(seed), "--out", str(out)]) == 0
    tests = _test_sets(out, real_labels)
    assert len(tests) == 20 and all(len(t) == 13 for t in tests)
    for test in tests:
        assert set(test["sex"]) >= LARGE_GROUPS["sex"] and set(test["race"]) >= LARGE_GROUPS["race"]


@pytest.mark.parametrize(("protocol", "k"), [("random", 20), ("kfold", 5)])
def test_each_race_gets_its_proportional_share_of_every_test_set_to_one_actor(protocol: str, k: int) -> None:
    from ssl_aver.corpora.crema_d import read_demographics

    demographics = read_demographics(CREMA_D_DIR / "VideoDemographics.csv")
    races = Counter(d["race"] for d in demographics.values())
    for seed in range(3):
        for split in make_splits(demographics, k, seed, protocol=protocol, demographics=demographics):
            tested = actors_in_test(split)
            counts = Counter(demographics[a]["race"] for a in tested)
            for race, n in races.items():
                share = n * len(tested) / len(demographics)  # e.g. Caucasian 61 x 13 / 91 = 8.7 -> 8 or 9 test actors
                assert math.floor(share) <= counts[race] <= math.ceil(share), (race, counts[race], share)


def test_without_demographics_splits_are_unstratified_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ssl_aver.splits"):
        splits = make_splits(ACTORS, 2, seed=0)
    assert "not stratified" in caplog.text
    # the unstratified draw of earlier releases, so splits saved by them repeat
    assert sorted(a for a, s in splits[0].items() if s == "test") == [
        "1008", "1030", "1034", "1042", "1055", "1057", "1060", "1064", "1070", "1077", "1078", "1079", "1080"]


def test_a_later_stratum_group_is_in_every_test_set_when_it_is_needed() -> None:
    # ten races of two actors (one of each sex): no race is needed in a 3-actor test set (2 x 3 < 20),
    # both sexes are (10 x 3 >= 20), but with race outermost a draw can deal three men to test
    actors = [f"{r}{s}" for r in range(10) for s in "FM"]
    demographics = {a: {"race": f"race{a[0]}", "sex": a[1]} for a in actors}
    splits = make_splits(actors, 200, seed=0, demographics=demographics)
    assert all({a[1] for a in actors_in_test(s)} == {"F", "M"} for s in splits)
    assert all(Counter(s.values()) == {"train": 14, "dev": 3, "test": 3} for s in splits)


def test_kfold_sizes_dev_share_and_limits() -> None:
    splits = make_splits(ACTORS, 5, seed=3, protocol="kfold")
    assert Counter(a for s in splits for a in actors_in_test(s)) == Counter(ACTORS)
    for split in splits:
        sizes = Counter(split.values())
        assert sizes["test"] in (18, 19) and sizes["dev"] == 13  # 15/85 of the 72-73 actors outside the test fold
    assert make_splits(ACTORS, 5, seed=3, protocol="kfold") == splits
    with pytest.raises(UserError, match="kfold needs 2 <= k"):
        make_splits(ACTORS, 1, seed=0, protocol="kfold")
    with pytest.raises(UserError, match="kfold needs 2 <= k"):
        make_splits(["a", "b", "c"], 4, seed=0, protocol="kfold")
    with pytest.raises(UserError, match="fewer than 2"):
        make_splits(["a", "b", "c"], 2, seed=0, protocol="kfold")
    with pytest.raises(UserError, match="unknown splits protocol"):
        make_splits(ACTORS, 5, seed=0, protocol="loso")


def test_coverage_and_test_groups_count_actors() -> None:
    demographics = {"a": {"sex": "F", "race": "X"}, "b": {"sex": "M", "race": "X"}, "c": {"sex": "M", "race": ""}}
    split = {"a": "train", "b": "test", "c": "test"}
    assert group_coverage([split, {**split, "a": "test", "b": "train"}], demographics) == {
        "race": {"X": 2}, "sex": {"F": 1, "M": 2}}
    table = pd.DataFrame({"clip": ["a_1", "b_1", "b_2", "c_1"], "actor": ["a", "b", "b", "c"],
                          "sex": ["F", "M", "M", "M"], "race": ["X", "X", "X", None]})
    assert groups_in_test(table, split, ["sex", "race"]) == {"actors": 2, "sex": {"M": 2}, "race": {"X": 1}}


def test_splits_partition_the_actors_without_overlap() -> None:
    splits = make_splits(ACTORS, k=20, seed=3)
    assert len(splits) == 20
    for split in splits:
        assert sorted(split) == sorted(ACTORS)
        members = {s: {a for a, v in split.items() if v == s} for s in SETS}
        assert not (members["train"] & members["dev"] or members["train"] & members["test"]
                    or members["dev"] & members["test"])
        # 70/15/15 of 91 actors by largest remainder: 63.7 -> 64, 13.65 -> 14, 13.65 -> 13
        assert [len(members[s]) for s in SETS] == [64, 14, 13]
    assert len({tuple(sorted(s.items())) for s in splits}) == 20


def test_splits_repeat_with_the_seed_and_ignore_input_order() -> None:
    assert make_splits(ACTORS, 5, seed=7) == make_splits(list(reversed(ACTORS)), 5, seed=7)
    assert make_splits(ACTORS, 5, seed=7) != make_splits(ACTORS, 5, seed=8)


def test_every_set_gets_an_actor_or_the_request_is_refused() -> None:
    tiny = make_splits(["a", "b", "c"], k=4, seed=0)
    assert all(sorted(s.values()) == ["dev", "test", "train"] for s in tiny)
    with pytest.raises(UserError, match="at least 3 actors"):
        make_splits(["a", "b"], k=1, seed=0)
    with pytest.raises(UserError, match="fractions"):
        make_splits(ACTORS, k=1, seed=0, fractions=(0.8, 0.2, 0.0))
    with pytest.raises(UserError, match="fractions"):
        make_splits(ACTORS, k=1, seed=0, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="at least 1"):
        make_splits(ACTORS, k=0, seed=0)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    splits = make_splits(ACTORS, k=3, seed=1)
    path = save_splits(splits, tmp_path / "splits.csv")
    assert load_splits(path) == splits
    table = pd.read_csv(path)
    assert list(table.columns) == ["split", "actor", "set"] and len(table) == 3 * 91


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("split,actor,set\n0,a,train\n0,a,dev\n0,b,test\n", "appears twice"),
        ("split,actor,set\n0,a,train\n0,b,train\n0,c,test\n", "no actor in \\['dev'\\]"),
        ("split,actor,set\n0,a,train\n0,b,valid\n0,c,test\n", "unknown set names"),
        ("split,actor\n0,a\n", "lacks columns"),
        ("split,actor,set\n0,a,train\n0,b,dev\n0,c,test\n1,a,train\n1,b,dev\n1,d,test\n", "different actors"),
    ],
)
def test_load_rejects_malformed_files(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(body)
    with pytest.raises(UserError, match=message):
        load_splits(path)


def test_apply_split_groups_clips_by_their_actor() -> None:
    split = {"a": "train", "b": "dev", "c": "test"}
    clips = pd.DataFrame({"clip": ["a_1", "a_2", "b_1", "c_1"], "actor": ["a", "a", "b", "c"]})
    parts = apply_split(clips, split)
    assert list(parts["train"]["clip"]) == ["a_1", "a_2"] and list(parts["test"]["clip"]) == ["c_1"]
    with pytest.raises(UserError, match="not in the split"):
        apply_split(pd.DataFrame({"actor": ["z"]}), split)


def test_cli_splits_from_a_labels_table(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"clip": [f"{a}_X" for a in ACTORS], "actor": ACTORS}).to_csv(labels, index=False)
    out = tmp_path / "splits.csv"
    assert main(["crema-d", "splits", "--labels", str(labels), "--k", "2", "--seed", "4", "--out", str(out)]) == 0
    assert load_splits(out) == make_splits(ACTORS, 2, seed=4)


def test_clip_level_splits_round_trip_and_leave_unlisted_clips_out(tmp_path: Path) -> None:
    split = ClipSplit({"a_1": "train", "b_1": "dev", "c_1": "test", "c_2": "test"}, {"a_1": "a", "b_1": "b", "c_1": "c", "c_2": "c"})
    other = ClipSplit({"a_2": "test", "b_1": "train", "c_1": "dev"}, {"a_2": "a", "b_1": "b", "c_1": "c"})
    path = save_splits([split, other], tmp_path / "splits.csv")
    assert list(pd.read_csv(path).columns) == ["split", "actor", "clip", "set"]
    loaded = load_splits(path)
    assert loaded == [split, other] and all(isinstance(s, ClipSplit) for s in loaded)
    assert loaded[0].actors == split.actors and actors_in_test(loaded[0]) == {"c"}
    clips = pd.DataFrame({"clip": ["a_1", "a_2", "b_1", "c_1", "c_2"], "actor": ["a", "a", "b", "c", "c"]})
    parts = apply_split(clips, loaded[0])
    assert list(parts["train"]["clip"]) == ["a_1"] and list(parts["test"]["clip"]) == ["c_1", "c_2"]
    assert "a_2" not in pd.concat(parts.values())["clip"].tolist()
    with pytest.raises(UserError, match="actor-level and clip-level"):
        save_splits([split, {"a": "train", "b": "dev", "c": "test"}], tmp_path / "mixed.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("split,actor,clip,set\n0,a,a_1,train\n0,,b_1,dev\n0,c,c_1,test\n")
    with pytest.raises(UserError, match="needs a clip and its actor"):
        load_splits(bad)
