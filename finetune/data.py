"""CREMA-D fine-tuning data: label tables from the real rating counts, joined with features.

The labels come from `ssl_aver.crema_d_labels` (vote distributions per rating condition). A
head trains on one condition (`voice`, `face` or `av`; paper 1 uses the audio-visual ratings)
with single-label targets (`multiclass`: one-hot of the plurality vote, paper 1), multi-label
targets (`multilabel`: multi-hot above 1/C) or the vote distributions themselves
(`distribution`: the share of raters per emotion, papers 3-4: "The labels are distributional
labels for the training stage, and are converted into binary vectors when the values are
higher than the defined threshold"). A distribution task is a multi-label task to the heads
(sigmoid outputs, BCE against the shares, class-balanced counts by the 1/C rule) and is
evaluated like one: `evaluate_predictions` binarises the shares above 1/C, which gives exactly
the multi-hot labels. Extra target groups (voice / face / av) follow the primary target's kind.
Acoustic inputs are openSMILE LLD frames from a feature store (extracted once per corpus, then
reused) or raw waveforms for wav2vec2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_aver.crema_d_labels import EMOTIONS
from ssl_aver.corpora.crema_d import rated_clips
from ssl_aver.errors import MediaError, UserError
from ssl_aver.media import load_audio

from finetune.valence import SOURCE_COLUMN, valence_targets

CONDITIONS = ("voice", "face", "av")


@dataclass
class TaskData:
    """The label table of a corpus for one rating condition and target type.

    `targets` are the primary target columns (what the head is evaluated on); `extra` maps
    each extra target (another rating condition's multi-hot labels, a regression target) to
    its columns, which batches carry after the primary ones (see `target_layout`).
    """

    labels: Any  # pandas.DataFrame: clip, actor, demographics, target columns
    classes: list[str]  # class names, or attribute names of a regression task
    targets: list[str]
    task: str  # multiclass | multilabel (distribution targets are multi-label shares) | regression
    dropped: list[dict[str, str]]
    extra: dict[str, list[str]] = field(default_factory=dict)
    #: {"audio"|"video": {clip: path}} of a manifest corpus (features are extracted from exactly
    #: these files); None for a CREMA-D folder, whose layout the extractors read themselves
    media: dict[str, dict[str, str]] | None = None

    @property
    def all_targets(self) -> list[str]:
        """Primary then extra target columns, in the order batches carry them."""
        return self.targets + [c for cols in self.extra.values() for c in cols]

    def target_layout(self) -> dict[str, slice]:
        """Where each target group sits in a batch's `targets` [B, n]: "primary" first."""
        layout = {"primary": slice(0, len(self.targets))}
        at = len(self.targets)
        for name, cols in self.extra.items():
            layout[name] = slice(at, at + len(cols))
            at += len(cols)
        return layout


TARGETS = ("multiclass", "multilabel", "distribution")


def _condition_targets(table: Any, condition: str, target: str) -> list[str]:
    """Another rating condition's labels (two-stage training uses voice/face labels): multi-hot,
    or for distribution targets its vote shares, all zero where that condition has no ratings
    (as the multi-hot labels are)."""
    if target != "distribution":
        return [f"{condition}_{e}" for e in EMOTIONS]
    columns = [f"{condition}_{e}_share" for e in EMOTIONS]
    for emotion, column in zip(EMOTIONS, columns):
        table[column] = table[f"{condition}_{emotion}_p"].fillna(0.0)
    return columns


#: extra target name -> function(label table, primary target kind) -> its column names (added to the table if needed).
EXTRA_TARGETS: dict[str, Callable[[Any, str], list[str]]] = {
    "voice": lambda table, target: _condition_targets(table, "voice", target),
    "face": lambda table, target: _condition_targets(table, "face", target),
    "av": lambda table, target: _condition_targets(table, "av", target),
    "valence": lambda table, target: valence_targets(table),
}


def crema_d_task(
    root: str | Path,
    condition: str = "av",
    task: str = "multiclass",
    tie_break: str = "intensity",
    votes: str | Path | None = None,
    demographics: str | Path | None = None,
    extra: Sequence[str] = (),
    clip_columns: str | Path | None = None,
) -> TaskData:
    """Labels of the clips present under a CREMA-D folder that have media and ratings.

    `clip_columns`: a CSV with a `clip` column whose other columns (e.g. valence ratings) are
    joined onto the label table before the extra targets are built.
    """
    if condition not in CONDITIONS:
        raise UserError(f"data.condition must be one of {CONDITIONS}, got {condition!r}")
    if task not in TARGETS:
        raise UserError(f"data.target must be one of {', '.join(TARGETS)}, got {task!r}")
    table, _, dropped = rated_clips(root, votes, demographics, tie_break)
    if task == "multiclass":
        label = table[f"{condition}_label"]
        for clip in table.loc[label.isna(), "clip"]:
            dropped.append({"clip": clip, "reason": f"no single {condition} label (tie dropped or no ratings)"})
        table = table[label.notna()].reset_index(drop=True)
        targets = [f"target_{e}" for e in EMOTIONS]
        for emotion, column in zip(EMOTIONS, targets):
            table[column] = (table[f"{condition}_label"] == emotion).astype(np.float32)
    else:
        empty = table[f"{condition}_votes"] == 0
        for clip in table.loc[empty, "clip"]:
            dropped.append({"clip": clip, "reason": f"no {condition} ratings"})
        table = table[~empty].reset_index(drop=True)
        targets = _condition_targets(table, condition, task)
    if table.empty:
        raise UserError(f"no clip under {root} has both media and {condition} ratings")
    unknown = sorted(set(extra) - set(EXTRA_TARGETS))
    if unknown:
        raise UserError(f"unknown data.extra_targets {unknown}; choose from {sorted(EXTRA_TARGETS)}")
    if clip_columns is not None:
        table = join_clip_columns(table, clip_columns)
    extra_columns = {name: EXTRA_TARGETS[name](table, task) for name in extra}
    return TaskData(table, list(EMOTIONS), targets, "multilabel" if task == "distribution" else task, dropped, extra_columns)


#: `valence_source` of a valence target read from a corpus's own `valence` target group (MER2023).
CORPUS_VALENCE_SOURCE = "corpus"


def load_task(data: Any) -> TaskData:
    """The task of a recipe's `data:` node: any registered corpus (`data.corpus`, options in
    `data.options`) through its manifest (`ssl_aver.corpora`); CREMA-D through `crema_d_task`,
    which adds its rating conditions as extra targets and the derived valence.

    On a manifest corpus `data.extra_targets` names target groups of the corpus (e.g. MER2023's
    rated `valence`): a `valence` group is the MER head's valence target with source `corpus`,
    on the corpus's own scale (`model.valence_source` / `model.valence_scale` say which)."""
    name, extra, clip_columns = str(data.get("corpus") or "crema_d"), list(data.get("extra_targets") or []), data.get("clip_columns")
    if name == "crema_d":
        return crema_d_task(
            data.root, data.get("condition", "av"), data.target, data.get("tie_break", "intensity"), data.get("votes"), data.get("demographics"),
            extra=extra, clip_columns=clip_columns,
        )
    from ssl_aver.corpora.labelled import prepare_corpus

    corpus = prepare_corpus(name, str(data.root), **dict(data.get("options") or {}))
    task = corpus_task(corpus, str(data.target), data.get("target_set"), extra)
    if "valence" in task.extra:
        task.labels[SOURCE_COLUMN] = CORPUS_VALENCE_SOURCE
    if clip_columns is not None:
        task.labels = join_clip_columns(task.labels, clip_columns)
    return task


def _unlabelled(table: Any, columns: list[str], kind: str) -> Any:
    """Rows without a label of this kind (a NaN target would poison the loss)."""
    missing = table[columns].isna().any(axis=1)
    if kind == "distribution":  # shares of nobody's votes (a multi-hot row of zeros is a label: no emotion above 1/C)
        missing |= table[columns].sum(axis=1) <= 0
    return missing


def _extra_group(corpus: Any, name: str, target: str) -> tuple[str, str]:
    """(kind, group) of an extra target named `group` or `kind/group`; a group offered in several
    kinds is taken in the primary target's kind (as CREMA-D's extra rating conditions are)."""
    kind, _, group = name.rpartition("/")
    found = [k for k, groups in corpus.targets.items() if group in groups and kind in ("", k)]
    if len(found) > 1 and target in found:
        found = [target]
    if len(found) != 1:
        choices = ", ".join(sorted(f"{k}/{g}" for k, groups in corpus.targets.items() for g in groups))
        what = "is offered in several kinds" if found else "is no target group"
        raise UserError(f"data.extra_targets: '{name}' {what} of corpus '{corpus.name}'; choose from {choices}")
    return found[0], group


def corpus_task(corpus: Any, target: str, target_set: str | None = None, extra: Sequence[str] = ()) -> TaskData:
    """The task of a labelled corpus for target kind `target` (group `target_set`, or its only one).

    Distribution targets become a multi-label task (as for CREMA-D); regression targets keep the
    corpus's scale. `extra` names further target groups of the corpus (`group` or `kind/group`),
    whose columns batches carry after the primary ones. Clips without a label of that kind, or
    without one of an extra group, are dropped with their reason.
    """
    offered = corpus.targets.get(target)
    if not offered:
        raise UserError(f"corpus '{corpus.name}' offers no {target} target; it offers: {', '.join(sorted(corpus.targets)) or 'none'}")
    if target_set is None and len(offered) > 1:
        raise UserError(f"corpus '{corpus.name}' offers several {target} targets {sorted(offered)}; choose one with data.target_set")
    group = str(target_set) if target_set is not None else next(iter(offered))
    if group not in offered:
        raise UserError(f"data.target_set '{group}' is not a {target} target of corpus '{corpus.name}'; choose from {sorted(offered)}")
    columns = list(offered[group])
    table = corpus.clips.rename(columns={"speaker": "actor"}).copy()
    dropped = [{"clip": str(f.get("clip", f.get("line", ""))), "reason": str(f.get("reason", ""))} for f in corpus.failures]
    missing = _unlabelled(table, columns, target)
    for clip in table.loc[missing, "clip"]:
        dropped.append({"clip": str(clip), "reason": f"no {target} label ({group})"})
    extra_columns: dict[str, list[str]] = {}
    for name in map(str, extra):
        extra_kind, extra_group = _extra_group(corpus, name, target)
        extra_columns[name] = list(corpus.targets[extra_kind][extra_group])
        lacking = _unlabelled(table, extra_columns[name], extra_kind) & ~missing
        for clip in table.loc[lacking, "clip"]:
            dropped.append({"clip": str(clip), "reason": f"no {extra_kind} label ({extra_group}) for data.extra_targets"})
        missing |= lacking
    table = table[~missing].reset_index(drop=True)
    if table.empty:
        also = f" and every data.extra_targets label ({', '.join(extra_columns)})" if extra_columns else ""
        raise UserError(f"no clip of corpus '{corpus.name}' under {corpus.root} has a {target} label ({group}){also}")
    names = columns if target == "regression" else list(corpus.classes)
    media = {m: {str(c): str(p) for c, p in zip(table["clip"], table[m]) if p} for m in ("audio", "video")}
    kind = "multilabel" if target == "distribution" else target
    return TaskData(table, names, columns, kind, dropped, extra_columns, media=media)


def join_clip_columns(table: Any, path: str | Path) -> Any:
    """The label table with the columns of a clip-keyed CSV joined on (clips it lacks get NaN)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"data.clip_columns file not found: {p}")
    side = pd.read_csv(p, dtype={"clip": str})
    if "clip" not in side.columns:
        raise UserError(f"{p} has no 'clip' column; expected a CSV like clip,valence")
    clash = sorted(set(side.columns) - {"clip"} & set(table.columns))
    if clash:
        raise UserError(f"{p}: column(s) {clash} already exist in the label table; rename them")
    if side["clip"].duplicated().any():
        raise UserError(f"{p}: clip {side.loc[side['clip'].duplicated(), 'clip'].iloc[0]} appears twice")
    return table.merge(side, on="clip", how="left")


def ensure_smile_store(root: str | Path, store_dir: str | Path, progress: bool = True) -> Path:
    """The openSMILE LLD store of the corpus's audio, extracted on first use and then reused."""
    from ssl_aver.features.extract import extract_features

    summary = extract_features(root, store_dir, extractor="smile", progress=progress)
    return Path(summary["store"])


class WaveformDataset(Dataset):
    """Raw 16 kHz audio per clip (for wav2vec2 branches); items match AVDataset's batches."""

    def __init__(self, labels: Any, targets: Sequence[str], paths: dict[str, str]) -> None:
        self.rows = [(str(c), paths[str(c)], t) for c, t in zip(labels["clip"], labels[list(targets)].to_numpy(np.float32)) if str(c) in paths]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        clip, path, target = self.rows[i]
        try:
            audio = load_audio(path)
        except MediaError as err:
            raise UserError(f"clip {clip}: {err}") from None
        return clip, (audio - audio.mean()) / (audio.std() + 1e-7), target

    @staticmethod
    def collate(items: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
        longest = max(len(a) for _, a, _ in items)
        audio = torch.zeros(len(items), longest)
        valid = torch.zeros(len(items), longest, dtype=torch.bool)
        for row, (_, wave, _) in enumerate(items):
            audio[row, : len(wave)] = torch.from_numpy(wave)
            valid[row, : len(wave)] = True
        return {
            "clips": [c for c, _, _ in items],
            "audio": audio,
            "audio_mask": valid,
            "targets": torch.from_numpy(np.stack([t for _, _, t in items])),
        }
