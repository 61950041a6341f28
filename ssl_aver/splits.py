"""Speaker-independent train/dev/test partitions, repeated K times, that test every speaker group.

Protocols (`protocol`):

* ``random`` (default, paper-faithful): K repeated partitions, paper 1's 70% train / 15%
  development / 15% test (K=20; papers 2-4 likewise). Paper 1 states the fractions "of the
  data"; a speaker-independent split can only cut between speakers, so the fractions apply to
  the ACTORS (CREMA-D actors have 70-82 clips each, so actor fractions track clip fractions
  closely). Set sizes use the largest-remainder rule; every set holds at least one actor.
* ``kfold``: K actor-disjoint folds; split i tests fold i, so every actor is tested exactly once
  over the K splits. Its dev actors are a stratified share f_dev / (f_train + f_dev) of the
  other folds' actors (a choice: the next fold as dev would cost train actors, 60/20/20 at K=5;
  this keeps the train:dev ratio of `fractions`, whose test fraction kfold ignores: it is 1/K).

Stratification (`demographics`: actor -> {"race": ..., "sex": ...}; `strata` orders them). The
actors are laid out in nested blocks, by the first stratum and inside each block by the next,
with block order and order within blocks shuffled, and the sets are dealt along that order
evenly spaced from a random phase. Any run of L consecutive actors then holds floor or ceil of
L x |set| / N actors of a set: every group of the first stratum gets its proportional share of
every set to within one actor, a group of a later stratum to within one actor per block.

"As needed": a group of n_g actors is NEEDED in a test set of m of the N actors when its
proportional share there is at least one actor, n_g x m >= N. On CREMA-D at 70/15/15 (13 test
actors) that is every group of >= 7 actors: both sexes, Caucasian (61), African American (22)
and Asian (7); the one Unknown-race actor is not (kfold, K=5: groups of >= 5 actors). Needed
groups of the first stratum are in every test set by construction; a draw whose test set
misses a needed group of a later stratum is redrawn (up to REDRAWS times, then a warning names
the group). Without demographics the actors are dealt unstratified -- the random protocol then
gives exactly the splits of earlier releases -- and a warning says so.

Published partitions list clips, not actors (paper 2's CREMA-D trials: 5,820 of 7,442 clips):
they load as ClipSplit (clip -> set). `apply_split` takes either kind; a clip that a clip-level
split does not list is not used in that split. Split i of a seed is always the same, and every
split can be saved and reloaded (save_splits / load_splits), so runs repeat from the CSV.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import write_dataframe

log = logging.getLogger(__name__)

SETS: tuple[str, str, str] = ("train", "dev", "test")
PROTOCOLS: tuple[str, ...] = ("random", "kfold")
#: stratification attributes, outermost first: race has the small groups (Asian 7, Unknown 1)
STRATA: tuple[str, ...] = ("race", "sex")
#: draws tried before a test set that misses a needed group of a later stratum is accepted
REDRAWS = 100
Split = dict[str, str]
Demographics = Mapping[str, Mapping[str, Any]]


class ClipSplit(dict[str, str]):
    """One clip-level partition, clip -> set, with each clip's actor in `actors` (clip -> actor).

    Its actors let a speaker-independence check and the test set's demographics work without
    the label table; equality with another split compares the clip -> set mapping.
    """

    def __init__(self, sets: Mapping[str, str], actors: Mapping[str, str]) -> None:
        super().__init__(sets)
        unknown = sorted(set(sets) - set(actors))
        if unknown:
            raise UserError(f"clip {unknown[0]} has no actor; every clip of a clip-level split needs one")
        self.actors: dict[str, str] = {clip: str(actors[clip]) for clip in sets}


def _set_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of n actors to the sets, each at least one."""
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


def _value(value: Any) -> str:
    """A demographic value as text; missing (None, NaN, empty) is ''."""
    import pandas as pd

    return "" if pd.isna(value) else str(value).strip()


def actor_groups(table: Any, strata: Sequence[str] = STRATA, actor_column: str = "actor") -> dict[str, dict[str, str]] | None:
    """actor -> {stratum: value} from a table with one row per clip (e.g. labels.csv).

    None when the table has none of the strata columns, so make_splits says it cannot stratify.
    """
    present = [s for s in strata if s in table.columns]
    if not present:
        return None
    first = table.drop_duplicates(actor_column)
    return {str(row[actor_column]): {s: _value(row[s]) for s in present} for _, row in first.iterrows()}


def _strata_keys(actors: Sequence[str], demographics: Demographics | None, strata: Sequence[str]) -> dict[str, tuple[str, ...]] | None:
    """actor -> its values of the strata, or None when no actor has any (nothing to stratify by)."""
    if not demographics or not strata:
        return None
    keys = {a: tuple(_value(demographics.get(a, {}).get(s)) for s in strata) for a in actors}
    return keys if any(any(k) for k in keys.values()) else None


def _nested_order(actors: list[str], keys: Mapping[str, tuple[str, ...]] | None, depth: int, rng: np.random.Generator) -> list[str]:
    """Actors in nested blocks by stratum value (outermost first); blocks and members shuffled."""
    if keys is None or depth == len(next(iter(keys.values()))):
        return [actors[i] for i in rng.permutation(len(actors))]
    values = sorted({keys[a][depth] for a in actors})
    order: list[str] = []
    for i in rng.permutation(len(values)):
        order += _nested_order([a for a in actors if keys[a][depth] == values[i]], keys, depth + 1, rng)
    return order


def _spread(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Mask of `count` of n ordered positions, evenly spaced from a random phase.

    Any run of L positions holds floor or ceil of L * count / n of them (integer arithmetic).
    """
    marks = (np.arange(n + 1) * count + int(rng.integers(n))) // n
    return np.diff(marks) > 0


def actors_in_test(split: Mapping[str, str]) -> set[str]:
    """The actors of a split's test set (of either kind)."""
    if isinstance(split, ClipSplit):
        return {split.actors[clip] for clip, part in split.items() if part == "test"}
    return {actor for actor, part in split.items() if part == "test"}


def _uncovered(split: Split, keys: Mapping[str, tuple[str, ...]], strata: Sequence[str]) -> list[tuple[str, str]]:
    """(stratum, group) pairs NEEDED in the split's test set (module docstring) that it lacks."""
    tested = actors_in_test(split)
    counts = Counter((s, key[j]) for key in keys.values() for j, s in enumerate(strata) if key[j])
    have = {(s, keys[a][j]) for a in tested for j, s in enumerate(strata)}
    return sorted(g for g, n_g in counts.items() if n_g * len(tested) >= len(keys) and g not in have)


def _covering(draw: Callable[[], list[Split]], keys: Mapping[str, tuple[str, ...]] | None, strata: Sequence[str]) -> list[Split]:
    """The first draw whose test sets hold every needed group (see the module docstring)."""
    splits = draw()
    if keys is None:
        return splits
    for _ in range(REDRAWS - 1):
        if not any(_uncovered(s, keys, strata) for s in splits):
            return splits
        splits = draw()
    missing = sorted({g for s in splits for g in _uncovered(s, keys, strata)})
    if missing:
        log.warning("after %d draws a test set still lacks %s; fairness over these groups will have gaps", REDRAWS,
                    ", ".join(f"{s} {g}" for s, g in missing))
    return splits


def _deal(order: Sequence[str], test: np.ndarray, dev_count: int, rng: np.random.Generator) -> Split:
    """{actor: set}: the masked actors test, `dev_count` of the others spread along the order dev."""
    rest = [a for a, t in zip(order, test) if not t]
    dev = _spread(len(rest), dev_count, rng)
    split = {a: "test" for a, t in zip(order, test) if t}
    split.update({a: "dev" if d else "train" for a, d in zip(rest, dev)})
    return dict(sorted(split.items()))


def _kfold(unique: list[str], k: int, fracs: tuple[float, float, float], keys: Mapping[str, tuple[str, ...]] | None,
           rng: np.random.Generator) -> Callable[[], list[Split]]:
    n = len(unique)
    if k < 2 or k > n:
        raise UserError(f"kfold needs 2 <= k <= {n} (the number of actors), got k={k}")
    if n - math.ceil(n / k) < 2:
        raise UserError(f"kfold with k={k} leaves fewer than 2 of {n} actors for train and dev; use a larger k")
    dev_share = fracs[1] / (fracs[0] + fracs[1])

    def draw() -> list[Split]:
        order = _nested_order(unique, keys, 0, rng)
        phase = int(rng.integers(k))
        folds = np.array([(i + phase) % k for i in range(n)])
        splits = []
        for j in range(k):
            rest = n - int((folds == j).sum())
            splits.append(_deal(order, folds == j, _set_sizes(rest, (1 - dev_share, dev_share))[1], rng))
        return splits

    return draw


def make_splits(
    actors: Iterable[str],
    k: int,
    seed: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    protocol: str = "random",
    demographics: Demographics | None = None,
    strata: Sequence[str] = STRATA,
) -> list[Split]:
    """K seeded speaker-independent partitions of the actors ({actor: set} per split).

    `protocol` random or kfold, `demographics` (actor -> {stratum: value}) to stratify by
    `strata`: see the module docstring. Duplicate actor ids are merged and the actor order given
    does not change the result, so the same actors, demographics and seed give the same splits.
    """
    unique = sorted({str(a) for a in actors})
    fracs = _check_fractions(fractions)
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown splits protocol {protocol!r}; choose random (repeated 70/15/15 partitions) or kfold (every actor tested once)")
    if k < 1:
        raise UserError(f"the number of splits must be at least 1, got {k}")
    if len(unique) < 3:
        raise UserError(f"a train/dev/test split needs at least 3 actors, got {len(unique)}")
    strata = list(strata)
    keys = _strata_keys(unique, demographics, strata)
    if keys is None:
        log.warning("splits are not stratified (no actor demographics for %s): a test set may miss a whole group", "/".join(strata) or "any stratum")
    rng = np.random.default_rng(seed)
    if protocol == "kfold":
        return _covering(_kfold(unique, k, fracs, keys, rng), keys, strata)
    sizes = _set_sizes(len(unique), fracs)
    if keys is None:  # the unstratified draw of earlier releases, kept so their saved splits repeat
        labels = np.repeat(np.array(SETS), sizes)
        return [{unique[i]: str(labels[pos]) for pos, i in enumerate(rng.permutation(len(unique)))} for _ in range(k)]

    def draw() -> list[Split]:
        order = _nested_order(unique, keys, 0, rng)
        return [_deal(order, _spread(len(order), sizes[2], rng), sizes[1], rng)]

    return [_covering(draw, keys, strata)[0] for _ in range(k)]


def group_coverage(splits: Sequence[Mapping[str, str]], demographics: Demographics, strata: Sequence[str] = STRATA) -> dict[str, dict[str, int]]:
    """{stratum: {group: number of splits whose test set holds it}}; a group never tested counts 0."""
    report: dict[str, dict[str, int]] = {}
    for s in strata:
        groups = sorted({_value(d.get(s)) for d in demographics.values()} - {""})
        if groups:
            tested = [{_value(demographics.get(a, {}).get(s)) for a in actors_in_test(split)} for split in splits]
            report[s] = {g: sum(g in t for t in tested) for g in groups}
    return report


def groups_in_test(table: Any, split: Mapping[str, str], attributes: Sequence[str], actor_column: str = "actor") -> dict[str, Any]:
    """The actors of a split's test set per group: {"actors": n, attribute: {group: actors}}.

    Counted from the clips the split actually tests (`table`: one row per clip with the
    attribute columns); actors without a value are in "actors" but in no group.
    """
    test = apply_split(table, split, actor_column)["test"].drop_duplicates(actor_column)
    report: dict[str, Any] = {"actors": int(len(test))}
    for attr in attributes:
        report[attr] = dict(sorted(Counter(v for v in map(_value, test[attr]) if v).items()))
    return report


def shared_speakers(split: Mapping[str, str]) -> dict[str, list[str]]:
    """{actor: sets} of the actors whose clips fall in more than one set (clip-level splits)."""
    if not isinstance(split, ClipSplit):
        return {}
    sets: dict[str, set[str]] = {}
    for clip, part in split.items():
        sets.setdefault(split.actors[clip], set()).add(part)
    return {a: [s for s in SETS if s in found] for a, found in sorted(sets.items()) if len(found) > 1}


def check_speaker_independent(split: Mapping[str, str], source: str, allow: str) -> None:
    """Refuse a split that puts one actor's clips in two sets; `allow` says how to accept it."""
    shared = shared_speakers(split)
    if shared:
        actor, sets = next(iter(shared.items()))
        more = f" (and {len(shared) - 1} more actors)" if len(shared) > 1 else ""
        raise UserError(f"{source}: actor {actor} has clips in {' and '.join(sets)}{more}; a speaker-independent split keeps "
                        f"each actor in one set ({allow})")


def splits_frame(splits: Sequence[Mapping[str, str]]):  # -> pandas.DataFrame
    """The long table that save_splits writes: (split, actor, set), or (split, actor, clip, set)."""
    import pandas as pd

    if all(isinstance(s, ClipSplit) for s in splits):
        rows = [(i, s.actors[c], c, part) for i, s in enumerate(splits) for c, part in sorted(s.items())]
        return pd.DataFrame(rows, columns=["split", "actor", "clip", "set"])
    if any(isinstance(s, ClipSplit) for s in splits):
        raise UserError("cannot save actor-level and clip-level splits in one file")
    rows = [(i, actor, part) for i, split in enumerate(splits) for actor, part in sorted(split.items())]
    return pd.DataFrame(rows, columns=["split", "actor", "set"])


def _validate(splits: Sequence[Mapping[str, str]], source: str) -> None:
    if not splits:
        raise UserError(f"{source}: no splits")
    unit = "clip" if isinstance(splits[0], ClipSplit) else "actor"
    keys = set(splits[0])
    for i, split in enumerate(splits):
        bad = sorted({v for v in split.values() if v not in SETS})
        if bad:
            raise UserError(f"{source}: split {i} has unknown set names {bad}; use {', '.join(SETS)}")
        empty = [s for s in SETS if s not in split.values()]
        if empty:
            raise UserError(f"{source}: split {i} has no {unit} in {empty}; every set needs one")
        # published clip-level trials may each list other clips; actor-level splits cover the same actors
        if unit == "actor" and set(split) != keys:
            diff = sorted(set(split) ^ keys)
            raise UserError(f"{source}: split {i} covers different actors than split 0: {diff[:5]}")


def save_splits(splits: Sequence[Mapping[str, str]], path: str | Path) -> Path:
    """Write the splits as CSV atomically, after checking them (actor- or clip-level rows)."""
    _validate(splits, "splits to save")
    return write_dataframe(path, splits_frame(splits))


def load_splits(path: str | Path) -> list[Split]:
    """Read a splits CSV: `split, actor, set` rows (actor-level) or `split, actor, clip, set`
    rows (clip-level, loaded as ClipSplit); a malformed file raises UserError naming the fault."""
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
        raise UserError(f"{p} lacks columns {sorted(missing)}; expected split,actor,set (or split,actor,clip,set)")
    if not table["split"].str.fullmatch(r"\d+").all():
        raise UserError(f"{p}: the split column must hold integers 0..K-1")
    table["split"] = table["split"].astype(int)
    if sorted(table["split"].unique()) != list(range(table["split"].nunique())):
        raise UserError(f"{p}: split numbers must run 0..K-1 without gaps")
    unit = "clip" if "clip" in table.columns else "actor"
    if unit == "clip" and ((table["clip"].str.strip() == "") | (table["actor"].str.strip() == "")).any():
        raise UserError(f"{p}: every row of a clip-level splits file needs a clip and its actor")
    dup = table[table.duplicated(["split", unit], keep=False)]
    if not dup.empty:
        row = dup.iloc[0]
        raise UserError(f"{p}: {unit} {row[unit]} appears twice in split {row['split']}")
    groups = [g for _, g in table.groupby("split", sort=True)]
    if unit == "clip":
        splits: list[Split] = [ClipSplit(dict(zip(g["clip"], g["set"])), dict(zip(g["clip"], g["actor"]))) for g in groups]
    else:
        splits = [dict(zip(g["actor"], g["set"])) for g in groups]
    _validate(splits, str(p))
    return splits


def apply_split(frame, split: Mapping[str, str], actor_column: str = "actor") -> dict:
    """Rows of a table (one row per clip) grouped into {"train": df, "dev": df, "test": df}.

    Actor-level: an actor of the table that the split does not know is an error (silently
    dropping it would shrink the test set unnoticed). Clip-level (ClipSplit): rows are matched
    on the `clip` column, and clips the partition does not list are left out of every set.
    """
    if isinstance(split, ClipSplit):
        if "clip" not in frame.columns:
            raise UserError("the table has no 'clip' column to apply a clip-level split")
        sets = frame["clip"].astype(str).map(split)
        return {name: frame[sets == name] for name in SETS}
    if actor_column not in frame.columns:
        raise UserError(f"the table has no '{actor_column}' column to split by")
    actors = frame[actor_column].astype(str)
    unknown = sorted(set(actors) - set(split))
    if unknown:
        raise UserError(f"actors {unknown[:5]} are not in the split; make splits from the same actor list")
    sets = actors.map(split)
    return {name: frame[sets == name] for name in SETS}
