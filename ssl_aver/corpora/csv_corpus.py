"""A user's own labelled corpus: one CSV row per clip, its columns mapped to the manifest.

    data.corpus: csv
    data.root: /data/my_corpus                     relative media paths in the CSV are resolved against it
    data.options:
      manifest: labels.csv                          (relative to the root; default manifest.csv)
      columns: {clip: name, audio: wav, video: mp4, speaker: actor, label: emotion, valence: val}
      classes: [angry, happy, neutral, sad]         (default: the distribution's classes, else the sorted labels)
      distribution: {angry: p_ang, happy: p_hap, neutral: p_neu, sad: p_sad}
      attributes: [arousal]

`columns` maps the manifest fields (clip, audio, video, speaker, session, sex, age, race, partition)
and `label` to CSV columns; a field not mapped is read from the column of its own name when there
is one. Any other key of `columns` is an attribute (a regression target) read from the column it
names; `attributes` lists more attributes read from columns of their own names. clip and at least
one of audio / video are required. Without a speaker column every clip is its own speaker (a
speaker-independent split is then a split over clips); an empty speaker cell is speaker None.

Targets: `label` (categorical) gives the multiclass group "label"; `distribution` (a list of
columns named like the classes, or {class: column}) gives vote shares or counts per class,
normalised per row, as the distribution and multilabel (share above 1/C) groups "votes" and the
multiclass group "plurality" (the top share, empty on a tie); attributes give the regression group
"attributes" on their own scale. Empty cells are missing labels: such clips stay in the manifest and
a task of that kind leaves them out. A label outside `classes` or a cell that is not a number makes
the row malformed: it is reported with its line number and left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ssl_aver.corpora.labelled import MANIFEST_COLUMNS, LabelledCorpus
from ssl_aver.corpora.tables import Rows, build_corpus, multi_hot, number, one_hot, plurality, read_table
from ssl_aver.errors import UserError

FIELDS: tuple[str, ...] = (*MANIFEST_COLUMNS, "label")


def _media(base: Path, cell: str, modality: str) -> tuple[str, str | None]:
    """(path, why it is missing): a relative path is resolved against the corpus root."""
    if not cell:
        return "", f"no {modality} path"
    path = base / cell
    return (str(path), None) if path.is_file() else ("", f"{modality} not found: {path}")


def _shares(cells: Mapping[str, str], columns: Sequence[str]) -> list[float]:
    """A row's shares or counts normalised to sum 1 (NaN when the row has none or they sum to 0)."""
    values = [number(cells[c], c, 0.0) for c in columns]
    if all(math.isnan(v) for v in values):
        return values
    if any(math.isnan(v) for v in values):
        raise ValueError(f"distribution cells partly empty ({', '.join(c for c, v in zip(columns, values) if math.isnan(v))})")
    total = sum(values)
    return [v / total for v in values] if total > 0 else [math.nan] * len(values)


def prepare_csv(
    root: str | Path,
    manifest: str = "manifest.csv",
    columns: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    distribution: Sequence[str] | Mapping[str, str] | None = None,
) -> LabelledCorpus:
    """The manifest of a user's CSV corpus under `root` (see the module docstring)."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"corpus folder not found: {base}")
    mapping = {str(k): str(v) for k, v in (columns or {}).items()}
    path = Path(manifest) if Path(manifest).is_absolute() else base / manifest
    table = read_table(path, "corpus manifest (data.options.manifest)")
    for key, column in mapping.items():
        table.require([column], f" (data.options.columns.{key})")
    fields = {f: mapping.get(f, f) for f in FIELDS if mapping.get(f, f) in table.columns}
    table.require([mapping.get("clip", "clip")], " (map it with data.options.columns.clip)")
    if "audio" not in fields and "video" not in fields:
        raise UserError(f"{path} has no media column; map data.options.columns.audio and/or .video; available columns: {', '.join(table.columns)}")
    listed = [str(a) for a in attributes or []]
    names = [*listed, *(k for k in mapping if k not in FIELDS and k not in listed)]
    taken = [n for n in names if n in MANIFEST_COLUMNS]
    if taken:
        raise UserError(f"data.options: attribute name '{taken[0]}' is a manifest field; give it another name")
    attribute_columns = {n: mapping.get(n, n) for n in names}
    table.require(list(attribute_columns.values()), " (data.options.attributes)")
    pairs = distribution.items() if isinstance(distribution, Mapping) else ((c, c) for c in distribution or [])
    shares_of = {str(c): str(column) for c, column in pairs}
    table.require(list(shares_of.values()), " (data.options.distribution)")

    if classes is not None:
        class_names = [str(c) for c in classes]
    elif shares_of:
        class_names = list(shares_of)
    elif "label" in fields:
        class_names = sorted({cells[fields["label"]] for _, cells in table.rows} - {""})
    else:
        class_names = []
    if shares_of and set(shares_of) != set(class_names):
        raise UserError(f"data.options.distribution classes {sorted(shares_of)} differ from the classes {sorted(class_names)}; name one column per class")
    share_columns = [shares_of[c] for c in class_names] if shares_of else []
    if "label" not in fields and not share_columns and not attribute_columns:
        raise UserError(f"{path} has no label column; map data.options.columns.label, or give data.options.distribution or attributes; available columns: {', '.join(table.columns)}")

    rows = Rows(failures=list(table.failures))
    source = path.name
    for line, cells in table.rows:
        clip = cells[fields["clip"]]
        if not clip:
            rows.fail(source, line, f"empty {fields['clip']}")
            continue
        labels: dict[str, float] = {}
        try:
            if "label" in fields:
                label = cells[fields["label"]]
                if label and label not in class_names:
                    raise ValueError(f"label '{label}' is not one of the classes {class_names}; add it to data.options.classes or fix the row")
                labels.update(zip((f"cls_{c}" for c in class_names), one_hot(label or None, class_names)))
            if share_columns:
                shares = _shares(cells, share_columns)
                labels.update(zip((f"share_{c}" for c in class_names), shares))
                labels.update(zip((f"multi_{c}" for c in class_names), multi_hot(shares)))
                labels.update(zip((f"plurality_{c}" for c in class_names), plurality(shares)))
            labels.update({n: number(cells[column], column) for n, column in attribute_columns.items()})
        except ValueError as err:
            rows.fail(source, line, str(err), clip)
            continue
        media = {m: _media(base, cells[fields[m]], m) if m in fields else ("", f"no {m} column") for m in ("audio", "video")}
        if not media["audio"][0] and not media["video"][0]:
            rows.fail(source, line, "; ".join(str(why) for _, why in media.values()), clip)
            continue
        record: dict[str, object] = {f: (cells[fields[f]] or None) if f in fields else None for f in MANIFEST_COLUMNS}
        record.update({"clip": clip, "audio": media["audio"][0], "video": media["video"][0], **labels})
        if "speaker" not in fields:
            record["speaker"] = clip
        rows.add(source, line, record)

    targets: dict[str, dict[str, list[str]]] = {}
    label_columns: list[str] = []
    if "label" in fields:
        label_columns += [f"cls_{c}" for c in class_names]
        targets.setdefault("multiclass", {})["label"] = [f"cls_{c}" for c in class_names]
    if share_columns:
        label_columns += [f"{p}_{c}" for p in ("share", "multi", "plurality") for c in class_names]
        targets["distribution"] = {"votes": [f"share_{c}" for c in class_names]}
        targets["multilabel"] = {"votes": [f"multi_{c}" for c in class_names]}
        targets.setdefault("multiclass", {})["plurality"] = [f"plurality_{c}" for c in class_names]
    if attribute_columns:
        label_columns += list(attribute_columns)
        targets["regression"] = {"attributes": list(attribute_columns)}
    return build_corpus("csv", base, rows, label_columns, class_names, targets, source)
