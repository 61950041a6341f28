"""CREMA-D in its own layout (Cao et al., 2014), with any subset of its media present.

    ROOT/AudioWAV/<clip>.wav
    ROOT/VideoFlash/<clip>.flv
    ROOT/processedResults/tabulatedVotes.csv   (rating counts per clip and condition)
    ROOT/VideoDemographics.csv                 (ActorID -> Age, Sex, Race, Ethnicity)

Clip names are ActorID_Sentence_Emotion_Level (e.g. 1001_IEO_ANG_HI). A clip is listed when
at least one of its media files exists; the rating tables turn into labels in
`ssl_aver.crema_d_labels`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ssl_aver.errors import UserError

CLIP_RE = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{2})$")
EMOTION_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}


@dataclass(frozen=True)
class CremaClip:
    clip: str
    actor: str
    sentence: str
    intended: str  # the emotion the actor was asked to portray (not the perceived label)
    level: str
    audio: str | None
    video: str | None


@dataclass
class CremaD:
    root: str
    clips: list[CremaClip]
    demographics: dict[str, dict[str, str]] = field(default_factory=dict)
    votes_path: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def actors(self) -> list[str]:
        return sorted({c.actor for c in self.clips})


def parse_clip_name(name: str) -> dict[str, str] | None:
    """Fields of a CREMA-D clip name, or None when it does not follow the corpus pattern."""
    m = CLIP_RE.match(name)
    return m.groupdict() if m else None


def read_demographics(path: str | Path) -> dict[str, dict[str, str | None]]:
    """ActorID -> {age, sex, race, ethnicity} from VideoDemographics.csv (an empty cell is None:
    a missing value, never a group called "nan")."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"demographics file not found: {p}")
    table = pd.read_csv(p, dtype=str)
    missing = {"ActorID", "Age", "Sex", "Race", "Ethnicity"} - set(table.columns)
    if missing:
        raise UserError(f"{p} lacks columns {sorted(missing)}; is it CREMA-D's VideoDemographics.csv?")
    def value(cell: object) -> str | None:
        return None if pd.isna(cell) or not str(cell).strip() else str(cell).strip()

    return {
        str(row.ActorID): {"age": value(row.Age), "sex": value(row.Sex), "race": value(row.Race), "ethnicity": value(row.Ethnicity)}
        for row in table.itertuples(index=False)
    }


def read_crema_d(root: str | Path) -> CremaD:
    """List the clips present under a CREMA-D-layout folder with their media and metadata."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"CREMA-D folder not found: {base}")
    audio = {p.stem: p for p in (base / "AudioWAV").glob("*.wav")} if (base / "AudioWAV").is_dir() else {}
    video = {p.stem: p for p in (base / "VideoFlash").glob("*.flv")} if (base / "VideoFlash").is_dir() else {}
    if not audio and not video:
        raise UserError(f"no CREMA-D media under {base}: expected AudioWAV/*.wav and/or VideoFlash/*.flv")
    clips: list[CremaClip] = []
    skipped: list[dict[str, str]] = []
    for name in sorted(set(audio) | set(video)):
        fields = parse_clip_name(name)
        if fields is None:
            skipped.append({"clip": name, "reason": "name does not follow ActorID_Sentence_Emotion_Level"})
            continue
        clips.append(
            CremaClip(
                clip=name,
                actor=fields["actor"],
                sentence=fields["sentence"],
                intended=EMOTION_CODES.get(fields["emotion"], fields["emotion"].lower()),
                level=fields["level"],
                audio=str(audio[name]) if name in audio else None,
                video=str(video[name]) if name in video else None,
            )
        )
    demo_path = base / "VideoDemographics.csv"
    votes = base / "processedResults" / "tabulatedVotes.csv"
    return CremaD(
        root=str(base),
        clips=clips,
        demographics=read_demographics(demo_path) if demo_path.is_file() else {},
        votes_path=str(votes) if votes.is_file() else None,
        skipped=skipped,
    )


def rated_clips(root: str | Path, votes: str | Path | None = None, demographics: str | Path | None = None, tie_break: str = "intensity"):
    """The label table (`crema_d_labels`) of the clips that have both media and ratings, their
    media by clip, and the clips left out with their reasons."""
    from ssl_aver.crema_d_labels import crema_d_labels, load_votes

    corpus = read_crema_d(root)
    votes_path = votes or corpus.votes_path
    if votes_path is None:
        raise UserError(f"no ratings: {Path(root) / 'processedResults' / 'tabulatedVotes.csv'} is missing (or set data.votes)")
    demo = read_demographics(demographics) if demographics else (corpus.demographics or None)
    table = crema_d_labels(load_votes(votes_path), demographics=demo, tie_break=tie_break)
    media = {c.clip: c for c in corpus.clips}
    left_out = [{"clip": c, "reason": "rated but no media under the corpus folder"} for c in sorted(set(table["clip"]) - set(media))]
    left_out += [{"clip": c, "reason": "media without ratings"} for c in sorted(set(media) - set(table["clip"]))]
    left_out += list(corpus.skipped)
    return table[table["clip"].isin(set(media))].reset_index(drop=True), media, left_out


def prepare_crema_d(root: str | Path, votes: str | Path | None = None, demographics: str | Path | None = None, tie_break: str = "intensity"):
    """CREMA-D as a labelled-corpus manifest (`ssl_aver.corpora.labelled`): one target group per
    rating condition (voice, face, av) of each kind: multiclass (the plurality label, ties by
    `tie_break`), multilabel (shares above 1/6) and distribution (the shares). Rows of a condition
    without ratings are NaN in its groups. Fine-tuning reads CREMA-D through `finetune.data.crema_d_task`,
    which adds what only CREMA-D has (a condition as primary target with the others as extra
    targets, the derived valence); this manifest serves every corpus-generic command."""
    import numpy as np
    import pandas as pd

    from ssl_aver.corpora.labelled import LabelledCorpus
    from ssl_aver.crema_d_labels import EMOTIONS

    table, media, failures = rated_clips(root, votes, demographics, tie_break)
    out = pd.DataFrame({
        "clip": table["clip"], "audio": [media[c].audio or "" for c in table["clip"]], "video": [media[c].video or "" for c in table["clip"]],
        "speaker": table["actor"], "session": None, "sex": table["sex"], "age": table["age"], "race": table["race"], "partition": None,
    })
    targets: dict[str, dict[str, list[str]]] = {"multiclass": {}, "multilabel": {}, "distribution": {}}
    for condition in ("voice", "face", "av"):
        rated = table[f"{condition}_votes"] > 0
        hot = [f"{condition}_{e}_class" for e in EMOTIONS]
        for emotion, column in zip(EMOTIONS, hot):
            out[column] = np.where(table[f"{condition}_label"].notna(), (table[f"{condition}_label"] == emotion).astype(float), np.nan)
        multi = [f"{condition}_{e}" for e in EMOTIONS]
        shares = [f"{condition}_{e}_p" for e in EMOTIONS]
        for column in multi:
            out[column] = np.where(rated, table[column].astype(float), np.nan)
        for column in shares:
            out[column] = table[column]
        targets["multiclass"][condition], targets["multilabel"][condition], targets["distribution"][condition] = hot, multi, shares
    return LabelledCorpus("crema_d", str(root), out, list(EMOTIONS), targets, failures)
