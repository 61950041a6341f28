"""CREMA-D emotion labels from the corpus's own rating counts, per rating condition.

CREMA-D was rated under three stimulus conditions (Cao et al., 2014): voice only, face only
and audio-visual. tabulatedVotes.csv holds one row per clip and condition; the first digit
of its unnamed id column is the condition (1 voice, 2 face, 3 audio-visual), columns A, D,
F, H, N, S count the raters who chose each emotion and meanXxxResp is the mean intensity
they gave it (-1 when nobody chose it).

Per clip and condition this module derives (papers 3 and 4, Sec. "Task definition"):

* the distribution: vote count / number of raters for each of the six emotions;
* the mean rated intensity of each emotion among the raters who chose it (0-100; empty when
  nobody chose it), e.g. for deriving a valence target (finetune/valence.py);
* the multi-hot label: emotions whose proportion is strictly above 1/C, C = 6 (compared on
  the integer counts, count * C > raters, so 2 of 12 votes is exactly 1/6 and not positive);
* a single label: the plurality emotion. Ties are resolved by `tie_break` (the papers use
  multi-label targets and never need one, so the rule is a choice here):
  "intensity" (default) picks the tied emotion with the highest mean rated intensity, then
  the fixed EMOTIONS order; "order" takes the first tied emotion in EMOTIONS order; "drop"
  leaves the label empty. `{c}_tie` counts the emotions sharing the top vote (1 = no tie).

Demographics (sex, age, race, ethnicity, plus `age_group` binned by `age_edges`) are
joined by actor id, the first four digits of the clip name.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import write_dataframe, write_json
from ssl_aver.splits import PROTOCOLS, STRATA

log = logging.getLogger(__name__)

EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness")
CONDITIONS: dict[str, str] = {"1": "voice", "2": "face", "3": "av"}
COUNT_COLUMNS: tuple[str, ...] = ("A", "D", "F", "H", "N", "S")
INTENSITY_COLUMNS: tuple[str, ...] = (
    "meanAngerResp", "meanDisgustResp", "meanFearResp", "meanHappyResp", "meanNeutralResp", "meanSadResp",
)
ID_COLUMN = "id"
REQUIRED_COLUMNS: tuple[str, ...] = (ID_COLUMN, *COUNT_COLUMNS, "fileName", *INTENSITY_COLUMNS)
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "numResponses", "agreement", "emoVote", "meanEmoResp", "medianEmoResp", "meanEmoRespNorm",
    "meanAngerRespNorm", "meanDisgustRespNorm", "meanFearRespNorm", "meanHappyRespNorm",
    "meanNeutralRespNorm", "meanSadRespNorm", "medianEmoRespNorm",
)
TIE_BREAKS: tuple[str, ...] = ("intensity", "order", "drop")
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("sex", "age", "age_group", "race", "ethnicity")
#: upper-exclusive age edges of the age groups: <30 is "20-29"... (a choice: paper 3 slices by
#: age without giving its bins; decades keep every group at 6+ of the 91 actors)
AGE_EDGES: tuple[int, ...] = (30, 40, 50, 60)


def load_votes(path: str | Path):  # -> pandas.DataFrame
    """Read and validate tabulatedVotes.csv; the unnamed first column becomes `id` (a string).

    Missing required columns and columns this format does not have both raise UserError
    naming them, so a different table is never silently misread.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"votes file not found: {p} (CREMA-D's processedResults/tabulatedVotes.csv)")
    try:
        table = pd.read_csv(p, dtype={"fileName": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{p} is not a readable CSV: {err}") from err
    first = table.columns[0] if len(table.columns) else None
    if first is not None and (first == "" or str(first).startswith("Unnamed")):
        table = table.rename(columns={first: ID_COLUMN})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    unknown = [c for c in table.columns if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown}")
        raise UserError(f"{p}: {'; '.join(parts)}; expected CREMA-D's tabulatedVotes.csv (unnamed id column first)")
    table[ID_COLUMN] = table[ID_COLUMN].astype(str).str.strip()
    for column in (*COUNT_COLUMNS, *INTENSITY_COLUMNS):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | ((values < 0) if column in COUNT_COLUMNS else False)
        if bad.any():
            row = table.loc[bad.idxmax()]
            raise UserError(f"{p}: column {column} has a non-numeric or negative value for clip {row['fileName']}")
        table[column] = values
    return table


def _age_group(age: object, edges: Sequence[int]) -> str | None:
    try:
        value = int(str(age))
    except ValueError:
        return None
    lower = None
    for edge in edges:
        if value < edge:
            return f"<{edge}" if lower is None else f"{lower}-{edge - 1}"
        lower = edge
    return f"{lower}+"


def crema_d_labels(
    votes,
    demographics: Mapping[str, Mapping[str, str]] | None = None,
    tie_break: str = "intensity",
    age_edges: Sequence[int] = AGE_EDGES,
):  # -> pandas.DataFrame
    """One row per clip: distributions, multi-hot and single labels for voice/face/av + demographics.

    Columns: clip, actor; per condition c in voice, face, av: {c}_<emotion>_p (proportions),
    {c}_<emotion>_intensity (mean rated intensity, NaN when nobody chose the emotion),
    {c}_votes (raters), {c}_<emotion> (multi-hot 0/1), {c}_label, {c}_tie; then sex, age,
    age_group, race, ethnicity (empty when `demographics` lacks the actor or is None).
    A condition without ratings for a clip gets empty proportions/labels and 0 votes.
    """
    import pandas as pd

    if tie_break not in TIE_BREAKS:
        raise UserError(f"unknown tie-break rule '{tie_break}'; choose one of {', '.join(TIE_BREAKS)}")
    cond = votes[ID_COLUMN].astype(str).str[0]
    bad_ids = votes.loc[~cond.isin(list(CONDITIONS)), ID_COLUMN]
    if len(bad_ids):
        raise UserError(f"vote id {bad_ids.iloc[0]!r} does not start with 1 (voice), 2 (face) or 3 (audio-visual)")
    keyed = votes.assign(_cond=cond.map(CONDITIONS))
    dup = keyed[keyed.duplicated(["fileName", "_cond"], keep=False)]
    if not dup.empty:
        raise UserError(f"clip {dup['fileName'].iloc[0]} has two {dup['_cond'].iloc[0]} rows in the votes table")

    clips = sorted(keyed["fileName"].unique())
    out = pd.DataFrame({"clip": clips, "actor": [c.split("_", 1)[0] for c in clips]})
    n_classes = len(EMOTIONS)
    for name in CONDITIONS.values():
        part = keyed[keyed["_cond"] == name].set_index("fileName").reindex(clips)
        present = part[ID_COLUMN].notna().to_numpy()
        counts = part[list(COUNT_COLUMNS)].fillna(0).to_numpy(dtype=np.int64)
        intensity = part[list(INTENSITY_COLUMNS)].fillna(-1).to_numpy(dtype=float)
        raters = counts.sum(axis=1)
        rated = present & (raters > 0)
        safe = np.where(rated, raters, 1)[:, None]
        props = np.where(rated[:, None], counts / safe, np.nan)
        multi_hot = (counts * n_classes > raters[:, None]) & rated[:, None]
        top = counts.max(axis=1)
        tied = (counts == top[:, None]) & rated[:, None]
        n_tied = tied.sum(axis=1)
        if tie_break == "intensity":
            score = np.where(tied, intensity, -np.inf)
            choice = np.argmax(score, axis=1)  # argmax keeps the first (EMOTIONS order) on equal scores
        else:
            choice = np.argmax(tied, axis=1)
        labels = np.array(EMOTIONS, dtype=object)[choice]
        keep = rated & ((n_tied == 1) | (tie_break != "drop"))
        for j, emotion in enumerate(EMOTIONS):
            out[f"{name}_{emotion}_p"] = props[:, j]
        for j, emotion in enumerate(EMOTIONS):
            out[f"{name}_{emotion}_intensity"] = np.where(counts[:, j] > 0, intensity[:, j], np.nan)
        out[f"{name}_votes"] = raters
        for j, emotion in enumerate(EMOTIONS):
            out[f"{name}_{emotion}"] = multi_hot[:, j].astype(np.int8)
        out[f"{name}_label"] = np.where(keep, labels, None)
        out[f"{name}_tie"] = n_tied
    demo = demographics or {}
    for column in ("sex", "age", "race", "ethnicity"):
        out[column] = [demo.get(a, {}).get(column) for a in out["actor"]]
    out["age_group"] = [_age_group(a, age_edges) if a is not None else None for a in out["age"]]
    return out[[c for c in out.columns if c not in DEMOGRAPHIC_COLUMNS] + list(DEMOGRAPHIC_COLUMNS)]


def label_summary(labels, tie_break: str) -> dict:
    """Counts a user checks labels.csv against: positives and cardinality per condition, ties."""
    summary: dict = {
        "clips": int(len(labels)),
        "actors": int(labels["actor"].nunique()),
        "threshold": 1.0 / len(EMOTIONS),
        "tie_break": tie_break,
        "positives": {},
        "cardinality": {},
        "ties": {},
        "unlabeled": {},
        "no_ratings": {},
    }
    for name in CONDITIONS.values():
        hot = labels[[f"{name}_{e}" for e in EMOTIONS]].to_numpy()
        summary["positives"][name] = {e: int(hot[:, j].sum()) for j, e in enumerate(EMOTIONS)}
        card = hot.sum(axis=1)
        summary["cardinality"][name] = {str(k): int((card == k).sum()) for k in range(1 + int(card.max(initial=0)))}
        summary["ties"][name] = int((labels[f"{name}_tie"] > 1).sum())
        summary["unlabeled"][name] = int(labels[f"{name}_label"].isna().sum())
        summary["no_ratings"][name] = int((labels[f"{name}_votes"] == 0).sum())
    missing = sorted(labels.loc[labels["sex"].isna(), "actor"].unique())
    summary["actors_without_demographics"] = missing
    return summary


def _default_demographics() -> Path:
    from ssl_aver.data import CREMA_D_DIR

    return CREMA_D_DIR / "VideoDemographics.csv"


def write_labels(
    votes_path: str | Path,
    out_dir: str | Path,
    demographics_path: str | Path | None = None,
    tie_break: str = "intensity",
) -> dict:
    """Build the labels from files and write OUT/labels.csv and OUT/summary.json; returns the summary."""
    from ssl_aver.corpora.crema_d import read_demographics

    votes = load_votes(votes_path)
    demo_path = Path(demographics_path) if demographics_path is not None else _default_demographics()
    labels = crema_d_labels(votes, read_demographics(demo_path), tie_break=tie_break)
    summary = label_summary(labels, tie_break)
    summary["votes"] = str(votes_path)
    summary["demographics"] = str(demo_path)
    out = Path(out_dir)
    write_dataframe(out / "labels.csv", labels)
    write_json(out / "summary.json", summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    lab = sub.add_parser("labels", help="labels.csv + summary.json from tabulatedVotes.csv")
    lab.add_argument("--votes", required=True, help="CREMA-D processedResults/tabulatedVotes.csv")
    lab.add_argument("--demographics", default=None,
                     help="VideoDemographics.csv (default: the copy shipped in ssl_aver/data/crema_d)")
    lab.add_argument("--tie-break", default="intensity", choices=TIE_BREAKS,
                     help="single-label rule for tied plurality votes (default: intensity)")
    lab.add_argument("--out", required=True, help="output folder")
    spl = sub.add_parser("splits", help="K speaker-independent train/dev/test splits of the actors, stratified by sex and race")
    spl.add_argument("--labels", required=True, help="a CSV with an 'actor' column and the strata columns (e.g. labels.csv)")
    spl.add_argument("--protocol", default="random", choices=PROTOCOLS,
                     help="random: K repeated partitions (paper 1, default); kfold: K actor-disjoint folds, every actor tested once")
    spl.add_argument("--k", type=int, default=20, help="number of random splits (paper 1: 20) or of folds")
    spl.add_argument("--seed", type=int, default=0)
    spl.add_argument("--fractions", default="0.7,0.15,0.15",
                     help="train,dev,test fractions of the actors (kfold: train:dev ratio of the actors outside the test fold)")
    spl.add_argument("--strata", default=",".join(STRATA), help="columns to stratify by, outermost first (default race,sex; '' for none)")
    spl.add_argument("--out", required=True, help="splits CSV to write (split, actor, set)")


def _run_splits(args: argparse.Namespace) -> int:
    import pandas as pd

    from collections import Counter

    from ssl_aver.splits import actor_groups, actors_in_test, group_coverage, make_splits, save_splits

    path = Path(args.labels)
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    table = pd.read_csv(path, dtype=str)
    if "actor" not in table.columns:
        raise UserError(f"{path} has no 'actor' column; pass the labels.csv written by 'ssl-aver crema-d labels'")
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
    except ValueError as err:
        raise UserError(f"--fractions must be three numbers like 0.7,0.15,0.15, got {args.fractions!r}") from err
    strata = [s.strip() for s in args.strata.split(",") if s.strip()]
    table = table.dropna(subset=["actor"])
    demographics = actor_groups(table, strata)
    splits = make_splits(table["actor"], args.k, args.seed, fractions, args.protocol, demographics, strata)
    save_splits(splits, args.out)
    sizes = {s: sum(v == s for v in splits[0].values()) for s in ("train", "dev", "test")}
    tested = Counter(a for split in splits for a in actors_in_test(split))
    print(f"wrote {args.out}: {len(splits)} {args.protocol} splits of {len(splits[0])} actors (split 0: {sizes}); "
          f"{len(tested)} actors tested, {min(tested.values())}-{max(tested.values())} times each")
    for stratum, groups in group_coverage(splits, demographics or {}, strata).items():
        print(f"test sets holding each {stratum} group: " + ", ".join(f"{g} {n}/{len(splits)}" for g, n in groups.items()))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "splits":
        return _run_splits(args)
    summary = write_labels(args.votes, args.out, args.demographics, args.tie_break)
    if summary["actors_without_demographics"]:
        log.warning("actors without demographics (left empty): %s", ", ".join(summary["actors_without_demographics"]))
    print(f"wrote {Path(args.out) / 'labels.csv'}: {summary['clips']} clips, {summary['actors']} actors; "
          f"ties voice/face/av = {summary['ties']['voice']}/{summary['ties']['face']}/{summary['ties']['av']}")
    return 0
