"""Speaker-independent train/dev/test partitions, repeated K times.

Papers 1, 3 and 4 train every model on K random speaker-independent partitions of CREMA-D
(paper 1: K=20, 70% train / 15% development / 15% test) and compare models over the K
results. Paper 1 states the fractions "of the data"; a speaker-independent split can only
cut between speakers, so here the fractions apply to the ACTORS (CREMA-D actors have 70-82
clips each, so actor fractions track clip fractions closely). Set sizes use the
largest-remainder rule on the fractions, every set holds at least one actor, and split i of
a seed is always the same, so runs can be repeated from the saved CSV.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import write_dataframe

SETS: tuple[str, str, str] = ("train", "dev", "test")
Split = dict[str, str]


def _set_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n actors to the three sets, each at least one."""
    exact = [n * f for f in fractions]
    sizes = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    while min(sizes) == 0:
        donor = max(range(len(sizes)), key=lambda i: sizes[i])
        sizes[donor] -= 1
        sizes[sizes.index(0)] += 1
    return sizes


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise UserError(f"fractions must be three numbers (train, dev, test), got {list(fractions)}")
    values = tuple(float(f) for f in fractions)
    if any(not math.isfinite(f) or f <= 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise UserError(f"fractions must be positive and sum to 1, got {list(fractions)} (e.g. 0.7,0.15,0.15)")
    return values  # type: ignore[return-value]


def make_splits(
    actors: Iterable[str], k: int, seed: int, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> list[Split]:
    """K seeded random partitions of the actors into train/dev/test ({actor: set} per split).

    Duplicate actor ids are merged; the actor order given does not change the result (actors
    are sorted before shuffling), so the same actors and seed always give the same splits.
    """
    unique = sorted({str(a) for a in actors})
    fracs = _check_fractions(fractions)
    if k < 1:
        raise UserError(f"the number of splits must be at least 1, got {k}")
    if len(unique) < 3:
        raise UserError(f"a train/dev/test split needs at least 3 actors, got {len(unique)}")
    sizes = _set_sizes(len(unique), fracs)
    rng = np.random.default_rng(seed)
    splits: list[Split] = []
    for _ in range(k):
        order = rng.permutation(len(unique))
        labels = np.repeat(np.array(SETS), sizes)
        splits.append({unique[i]: str(labels[pos]) for pos, i in enumerate(order)})
    return splits


def splits_frame(splits: Sequence[Mapping[str, str]]):  # -> pandas.DataFrame
    """The long table (split, actor, set) that save_splits writes."""
    import pandas as pd

    rows = [(i, actor, part) for i, split in enumerate(splits) for actor, part in sorted(split.items())]
    return pd.DataFrame(rows, columns=["split", "actor", "set"])


def _validate(splits: Sequence[Mapping[str, str]], source: str) -> None:
    if not splits:
        raise UserError(f"{source}: no splits")
    actors = set(splits[0])
    for i, split in enumerate(splits):
        bad = sorted({v for v in split.values() if v not in SETS})
        if bad:
            raise UserError(f"{source}: split {i} has unknown set names {bad}; use {', '.join(SETS)}")
        empty = [s for s in SETS if s not in split.values()]
        if empty:
            raise UserError(f"{source}: split {i} has no actor in {empty}; every set needs one")
        if set(split) != actors:
            diff = sorted(set(split) ^ actors)
            raise UserError(f"{source}: split {i} covers different actors than split 0: {diff[:5]}")


def save_splits(splits: Sequence[Mapping[str, str]], path: str | Path) -> Path:
    """Write the splits as CSV (split, actor, set) atomically, after checking them."""
    _validate(splits, "splits to save")
    return write_dataframe(path, splits_frame(splits))


def load_splits(path: str | Path) -> list[Split]:
    """Read splits written by save_splits; a malformed file raises UserError naming the fault."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"splits file not found: {p}")
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{p} is not a readable CSV: {err}") from err
    missing = {"split", "actor", "set"} - set(table.columns)
    if missing:
        raise UserError(f"{p} lacks columns {sorted(missing)}; expected split,actor,set")
    if not table["split"].str.fullmatch(r"\d+").all():
        raise UserError(f"{p}: the split column must hold integers 0..K-1")
    table["split"] = table["split"].astype(int)
    if sorted(table["split"].unique()) != list(range(table["split"].nunique())):
        raise UserError(f"{p}: split numbers must run 0..K-1 without gaps")
    dup = table[table.duplicated(["split", "actor"], keep=False)]
    if not dup.empty:
        row = dup.iloc[0]
        raise UserError(f"{p}: actor {row['actor']} appears twice in split {row['split']}")
    splits = [dict(zip(g["actor"], g["set"])) for _, g in table.groupby("split", sort=True)]
    _validate(splits, str(p))
    return splits


def apply_split(frame, split: Mapping[str, str], actor_column: str = "actor") -> dict:
    """Rows of a table (one row per clip) grouped into {"train": df, "dev": df, "test": df}.

    An actor of the table that the split does not know is an error: silently dropping it
    would shrink the test set without anyone noticing.
    """
    if actor_column not in frame.columns:
        raise UserError(f"the table has no '{actor_column}' column to split by")
    actors = frame[actor_column].astype(str)
    unknown = sorted(set(actors) - set(split))
    if unknown:
        raise UserError(f"actors {unknown[:5]} are not in the split; make splits from the same actor list")
    sets = actors.map(split)
    return {name: frame[sets == name] for name in SETS}
