"""Speaker-independent splits: disjoint, complete, seeded, saved and validated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ssl_aver.cli import main
from ssl_aver.errors import UserError
from ssl_aver.splits import SETS, apply_split, load_splits, make_splits, save_splits

ACTORS = [str(1001 + i) for i in range(91)]


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
