"""`ssl-aver splits import FILE [FILE ...] --out splits.csv`: published partitions as a splits file.

Each FILE is one split, at clip level, in the style of MSP-Podcast's labels_consensus.csv and of
the CREMA-D partitions paper 2's authors publish (one CSV per trial: `FileName, angry, sad,
disgust, fear, neutral, happy, SpkrID, Gender, Split_Set`, 5,820 of the 7,442 clips): a clip
column (`FileName` or `clip`; a file extension such as .wav and any folder are stripped) and a
set column (`Split_Set` or `set`: Train / Development / Test or train / dev / test, any case).
Other columns are ignored. A clip the file does not list is not used in that split.

The actor of a clip is the corpus's own speaker id, the first field of a CREMA-D clip name
(so imported splits and the label table agree); clips not named like CREMA-D take it from a
`SpkrID` or `actor` column. A split that puts one actor's clips in two sets is refused (it is
not speaker independent) unless --allow-shared-speakers is given. The output is the splits CSV
with clip-level rows (split, actor, clip, set), written atomically, for `splits.file=...`.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ssl_aver.errors import UserError
from ssl_aver.splits import ClipSplit, check_speaker_independent, save_splits

CLIP_COLUMNS: tuple[str, ...] = ("FileName", "clip")
SET_COLUMNS: tuple[str, ...] = ("Split_Set", "set")
SPEAKER_COLUMNS: tuple[str, ...] = ("SpkrID", "actor")
#: set names of published partitions (lower case) -> ours
SET_NAMES: dict[str, str] = {"train": "train", "development": "dev", "dev": "dev", "test": "test"}
ALLOW_HINT = "pass --allow-shared-speakers to import it anyway"


def _column(table, choices: Sequence[str], path: Path, what: str) -> str | None:
    found = [c for c in choices if c in table.columns]
    if len(found) > 1:
        raise UserError(f"{path} has both {found[0]!r} and {found[1]!r} columns; keep one {what} column")
    return found[0] if found else None


def _clip_name(value: str) -> str:
    """`AudioWAV/1001_DFA_ANG_XX.wav` -> `1001_DFA_ANG_XX`."""
    return os.path.splitext(value.strip().replace("\\", "/").rsplit("/", 1)[-1])[0]


def read_partition(path: str | Path, allow_shared_speakers: bool = False) -> ClipSplit:
    """One published split file as a ClipSplit; a malformed file raises UserError naming the fault."""
    import pandas as pd

    from ssl_aver.corpora.crema_d import parse_clip_name

    p = Path(path)
    if not p.is_file():
        raise UserError(f"partition file not found: {p}")
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{p} is not a readable CSV: {err}") from err
    clip_col = _column(table, CLIP_COLUMNS, p, "clip")
    set_col = _column(table, SET_COLUMNS, p, "set")
    if clip_col is None or set_col is None:
        raise UserError(f"{p} needs a clip column ({' or '.join(CLIP_COLUMNS)}) and a set column ({' or '.join(SET_COLUMNS)})")
    speaker_col = _column(table, SPEAKER_COLUMNS, p, "speaker")
    clips = [_clip_name(v) for v in table[clip_col]]
    if "" in clips:
        raise UserError(f"{p}: row {clips.index('') + 2} has no clip name in column {clip_col}")
    dup = sorted(c for c, n in Counter(clips).items() if n > 1)
    if dup:
        raise UserError(f"{p}: clip {dup[0]} is listed twice")
    sets = []
    for value in table[set_col]:
        name = SET_NAMES.get(value.strip().lower())
        if name is None:
            raise UserError(f"{p}: unknown set {value!r} in column {set_col}; use Train/Development/Test or train/dev/test")
        sets.append(name)
    actors = {}
    for i, clip in enumerate(clips):
        fields = parse_clip_name(clip)
        speaker = fields["actor"] if fields else (table[speaker_col].iloc[i].strip() if speaker_col else "")
        if not speaker:
            raise UserError(f"{p}: clip {clip} is not a CREMA-D clip name and has no speaker; add a SpkrID column")
        actors[clip] = speaker
    split = ClipSplit(dict(zip(clips, sets)), actors)
    missing = [s for s in ("train", "dev", "test") if s not in sets]
    if missing:
        raise UserError(f"{p}: no clip in {missing}; a partition needs train, development and test clips")
    if not allow_shared_speakers:
        check_speaker_independent(split, str(p), ALLOW_HINT)
    return split


def import_partitions(paths: Sequence[str | Path], out: str | Path, allow_shared_speakers: bool = False) -> list[ClipSplit]:
    """Read one partition file per split (split i = the i-th file) and write the splits CSV `out`."""
    splits = [read_partition(p, allow_shared_speakers) for p in paths]
    save_splits(splits, out)
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="published clip-level partitions (one CSV per split) -> a splits CSV")
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="one CSV per split with FileName/clip and Split_Set/set columns (split i = the i-th file)")
    imp.add_argument("--out", required=True, help="splits CSV to write (split, actor, clip, set), for splits.file=...")
    imp.add_argument("--allow-shared-speakers", action="store_true",
                     help="accept a partition that puts one actor's clips in two sets (not speaker independent)")


def run(args: argparse.Namespace) -> int:
    splits = import_partitions(args.files, args.out, args.allow_shared_speakers)
    for i, (path, split) in enumerate(zip(args.files, splits)):
        clips = {s: sum(v == s for v in split.values()) for s in ("train", "dev", "test")}
        actors = {s: len({split.actors[c] for c, v in split.items() if v == s}) for s in ("train", "dev", "test")}
        print(f"split {i} ({Path(path).name}): clips {clips['train']}/{clips['dev']}/{clips['test']}, "
              f"actors {actors['train']}/{actors['dev']}/{actors['test']} (train/dev/test)")
    print(f"wrote {args.out}: {len(splits)} clip-level splits")
    return 0
