"""What the table-driven corpus readers share (MSP-Podcast, MER2023, a user's CSV): a label table
read row by row with its line numbers, media found by clip id, targets derived from vote shares,
and the LabelledCorpus built from the rows that could be used.

A row that cannot be used is reported in `failures` as {"clip" (when known), "source", "line",
"reason"} and the reader goes on; only a missing or unreadable table or a missing column stops
it, with a one-line UserError.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ssl_aver.corpora.labelled import MANIFEST_COLUMNS, LabelledCorpus
from ssl_aver.errors import UserError

log = logging.getLogger(__name__)

#: published vote shares carry 6-9 decimals: shares this close count as equal (ties, the 1/C threshold)
SHARE_TOLERANCE = 1e-6
#: cells that mean "no value" in a numeric column (pandas writes NaN as an empty cell, R as NA)
MISSING = frozenset({"", "nan", "na"})


@dataclass
class Table:
    """A CSV as (line number, {column: stripped cell}) rows; rows with the wrong number of fields
    are already in `failures`."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    failures: list[dict[str, Any]]

    def require(self, columns: Sequence[str], hint: str = "") -> None:
        """UserError naming the first absent column, the option that names it and the columns there are."""
        for column in columns:
            if column not in self.columns:
                raise UserError(f"{self.path} has no column '{column}'{hint}; available columns: {', '.join(self.columns)}")


def read_table(path: Path, what: str) -> Table:
    """Read a CSV (UTF-8, an optional BOM) keeping each row's line number for the failure reports."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    rows: list[tuple[int, dict[str, str]]] = []
    failures: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise UserError(f"{path} is empty; expected a CSV with a header row")
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise UserError(f"{path} names column '{repeated[0]}' twice; rename one")
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(header):
                    failures.append({"source": path.name, "line": reader.line_num, "reason": f"{len(cells)} fields where the header has {len(header)}"})
                    continue
                rows.append((reader.line_num, {name: cell.strip() for name, cell in zip(header, cells)}))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a readable CSV: {err}") from None
    return Table(path, header, rows, failures)


def number(text: str, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A numeric cell, NaN when empty; ValueError naming the cell when it is no number or out of range."""
    if text.lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} '{text}' is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} {text} is outside [{low:g}, {high:g}]")
    return value


def clip_name(file_name: str, extensions: frozenset[str]) -> str:
    """Clip id of a file name: any folder and a media extension stripped (`Audios/x.wav` -> `x`)."""
    path = PurePosixPath(file_name.replace("\\", "/"))
    return path.stem if path.suffix.lower() in extensions else path.name


def media_index(folder: Path, extensions: frozenset[str]) -> dict[str, list[Path]]:
    """clip id -> the media files of that name directly in `folder` ({} when there is no folder):
    one listing instead of a file-system lookup per row."""
    index: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in extensions and path.is_file():
                index.setdefault(path.stem, []).append(path)
    return index


def pick(index: Mapping[str, list[Path]], clip: str) -> str:
    """The one media file of a clip ("" when none); ValueError when several share its id."""
    found = index.get(clip, [])
    if len(found) > 1:
        raise ValueError(f"several media files share clip id {clip}: {', '.join(p.name for p in found)}")
    return str(found[0]) if found else ""


def one_hot(label: str | None, classes: Sequence[str]) -> list[float]:
    """One-hot over `classes`; all NaN when the clip has no class label."""
    if label is None:
        return [math.nan] * len(classes)
    return [1.0 if label == c else 0.0 for c in classes]


def multi_hot(shares: Sequence[float]) -> list[float]:
    """Classes whose share is strictly above 1/C (paper 3's rule; within SHARE_TOLERANCE counts as equal)."""
    if any(math.isnan(s) for s in shares):
        return [math.nan] * len(shares)
    return [1.0 if s > 1.0 / len(shares) + SHARE_TOLERANCE else 0.0 for s in shares]


def plurality(shares: Sequence[float]) -> list[float]:
    """One-hot of the class with the most votes; NaN (no single label) when the top share is tied."""
    if any(math.isnan(s) for s in shares):
        return [math.nan] * len(shares)
    top = max(shares)
    if sum(1 for s in shares if s >= top - SHARE_TOLERANCE) > 1:
        return [math.nan] * len(shares)
    return [1.0 if s == top else 0.0 for s in shares]


@dataclass
class Rows:
    """The manifest records of a corpus being read and what could not be used; a clip id seen
    before is a failure (the first row of an id wins)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)

    def fail(self, source: str, line: int | None, reason: str, clip: str | None = None) -> None:
        failure: dict[str, Any] = {"clip": clip} if clip else {}
        failure["source"] = source
        if line is not None:
            failure["line"] = line
        failure["reason"] = reason
        self.failures.append(failure)

    def add(self, source: str, line: int | None, record: dict[str, Any]) -> None:
        clip = str(record["clip"])
        if clip in self.seen:
            self.fail(source, line, f"clip id {clip} repeats {self.seen[clip]}", clip)
            return
        self.seen[clip] = f"{source} line {line}" if line is not None else source
        self.records.append(record)


def build_corpus(name: str, root: Path, rows: Rows, label_columns: Sequence[str], classes: Sequence[str],
                 targets: dict[str, dict[str, list[str]]], source: str) -> LabelledCorpus:
    """The LabelledCorpus of the usable rows (UserError when there are none, naming the earliest reason),
    with a one-line summary of what was read in the log."""
    import pandas as pd

    if not rows.records:
        first = min(rows.failures, key=lambda f: f.get("line", math.inf)) if rows.failures else None
        why = f" (first: {first.get('source')} line {first.get('line', '-')}: {first['reason']})" if first else ""
        raise UserError(f"{name}: no usable clip in {source} under {root}{why}; check data.root and data.options")
    clips = pd.DataFrame.from_records(rows.records, columns=[*MANIFEST_COLUMNS, *label_columns])
    for column in label_columns:
        clips[column] = clips[column].astype(float)
    corpus = LabelledCorpus(name=name, root=str(root), clips=clips, classes=list(classes), targets=targets, failures=rows.failures)
    summary = corpus.summary()
    labelled = ", ".join(f"{k} {v['labelled']}" for k, v in summary["targets"].items())
    log.info("%s: %d clips of %d speakers from %s (audio %d, video %d; labelled: %s); %d rows left out",
             name, summary["clips"], summary["speakers"], source, summary["audio_found"], summary["video_found"], labelled, len(rows.failures))
    return corpus
