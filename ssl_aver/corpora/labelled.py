"""Labelled corpora as typed manifests: what fine-tuning, the table runners, robustness and predict
read instead of a corpus's own files.

One module per corpus provides `prepare_<corpus>(root, **options) -> LabelledCorpus`, registered
with one line in `CORPORA` (`data.corpus` in a recipe, options in `data.options`). The manifest is
a table with one row per usable clip:

    clip      clip id (unique; what feature stores are keyed by)
    audio     path of its audio (or a video with a sound track), "" when absent
    video     path of its video, "" when absent
    speaker   speaker id (speaker-independent splits cut between speakers)
    session   recording session, None when the corpus has none
    sex, age, race    demographics where the corpus has them, None when unknown
    partition the corpus's own partition of the clip (e.g. Train / Development / Test1), None when none
    + the label columns named in `targets`

`targets` maps what a corpus offers to its columns (a recipe's `data.target` picks the kind, and
`data.target_set` the group when a corpus offers several):
    "multiclass":   {group: one-hot columns of the consensus class, in `classes` order}
    "multilabel":   {group: multi-hot columns (share of raters strictly above 1/C)}
    "distribution": {group: rater vote shares per class}
    "regression":   {group: attribute columns (e.g. arousal, valence, dominance), on the corpus's scale}
Rows whose label of the chosen kind is missing are left out of a task with their reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ssl_aver.errors import UserError

MANIFEST_COLUMNS: tuple[str, ...] = ("clip", "audio", "video", "speaker", "session", "sex", "age", "race", "partition")
TARGET_KINDS: tuple[str, ...] = ("multiclass", "multilabel", "distribution", "regression")

#: corpus name -> "module:function" returning a LabelledCorpus (adding a corpus is one line here).
CORPORA: dict[str, str] = {
    "crema_d": "ssl_aver.corpora.crema_d:prepare_crema_d",
    "msp_improv": "ssl_aver.corpora.msp_improv:prepare_msp_improv",
    "msp_podcast": "ssl_aver.corpora.msp_podcast:prepare_msp_podcast",
    "mer2023": "ssl_aver.corpora.mer2023:prepare_mer2023",
    "csv": "ssl_aver.corpora.csv_corpus:prepare_csv",
}


@dataclass
class LabelledCorpus:
    """A labelled corpus: the clip table, its classes, the targets it offers, what could not be read."""

    name: str
    root: str
    clips: Any  # pandas.DataFrame: MANIFEST_COLUMNS + label columns
    classes: list[str] = field(default_factory=list)
    targets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in MANIFEST_COLUMNS if c not in self.clips.columns]
        if missing:
            raise ValueError(f"{self.name} manifest lacks columns {missing}")
        unknown = sorted(set(self.targets) - set(TARGET_KINDS))
        if unknown:
            raise ValueError(f"{self.name} offers unknown target kinds {unknown}")
        for kind, groups in self.targets.items():
            for group, columns in groups.items():
                absent = [c for c in columns if c not in self.clips.columns]
                if absent:
                    raise ValueError(f"{self.name} target {kind}/{group} names absent columns {absent}")
        if self.clips["clip"].duplicated().any():
            raise UserError(f"{self.name}: clip id {self.clips.loc[self.clips['clip'].duplicated(), 'clip'].iloc[0]} appears twice")

    def summary(self) -> dict[str, Any]:
        """What was read: clips, speakers, media found / missing, label counts per target group."""
        table = self.clips
        out: dict[str, Any] = {
            "corpus": self.name,
            "root": self.root,
            "clips": int(len(table)),
            "speakers": int(table["speaker"].nunique()),
            "audio_found": int((table["audio"] != "").sum()),
            "video_found": int((table["video"] != "").sum()),
            "partitions": {str(k): int(v) for k, v in table["partition"].dropna().value_counts().sort_index().items()},
            "targets": {},
            "failures": len(self.failures),
        }
        for kind, groups in self.targets.items():
            for group, columns in groups.items():
                values = table[columns]
                entry: dict[str, Any] = {"labelled": int(values.notna().all(axis=1).sum())}
                if kind == "regression":
                    entry.update({c: {"mean": float(values[c].mean()), "min": float(values[c].min()), "max": float(values[c].max())} for c in columns})
                else:
                    entry["positives"] = {c: int((values[c] > 1.0 / max(len(columns), 1) + 1e-6).sum()) for c in columns}
                out["targets"][f"{kind}/{group}"] = entry
        return out


def prepare_corpus(name: str, root: str, **options: Any) -> LabelledCorpus:
    """The manifest of corpus `name` under `root` (UserError naming the choices when unknown)."""
    if name not in CORPORA:
        raise UserError(f"unknown data.corpus '{name}'; choose one of: {', '.join(sorted(CORPORA))}")
    module, _, func = CORPORA[name].partition(":")
    try:
        return getattr(importlib.import_module(module), func)(root, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise UserError(f"data.options: {str(err).split('() ', 1)[-1]} for corpus '{name}'") from None
        raise
