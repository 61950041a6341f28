"""MER2023 (Lian et al., 2023) in its release layout, as the challenge's own preprocessing reads it
(github zeroQiaoba/MERTools: MER2023/main-baseline.py and MERBench/toolkit/preprocess/mer2023.py):

    ROOT/train/<name>.mp4|.avi        3,373 labelled training clips (videos with their sound track)
    ROOT/train-label.csv              name, discrete, valence
    ROOT/test1/, test2/, test3/       MER-MULTI, MER-NOISE (noise-corrupted), MER-SEMI clips
    ROOT/test<k>-label.csv            the same columns, once the organisers released the test labels;
                                      test3's file may lack valence (MER-SEMI scores only the class)

Classes, in the challenge's order: neutral, angry, happy, sad, worried, surprise; valence keeps its
own [-5, 5] scale (a value outside makes the row malformed). partition = train / test1 / test2 /
test3. A training clip needs its row in train-label.csv (a video in train/ without one is reported
and left out). A test clip is every video of its folder plus every row of its label file: clips
without a label keep empty targets, so they can still be predicted for a submission. When all
partitions share one video folder (`video_dir` without {partition}), the label files alone say which
clip belongs where, so only listed clips are read.

The label file names and media folders are options (`label_file`, `video_dir`, `audio_dir`: templates
filled with the partition) because the challenge code, not a listing of the release, is what
confirms them. The baseline's processed layout keeps all videos in one `video/` folder and extracted
16 kHz wavs in `audio/`: with the release's label files beside them that is `video_dir="video",
audio_dir="audio"`. Its label-6way.npz holds pickled dicts and is not read (this toolkit loads
nothing that can run code). Without `audio_dir` the audio is the video's own sound track. Only
file existence is checked here; decoding happens when features are extracted.

MER2023 has no speaker ids: each clip is its own speaker, so a k-fold over speakers is a k-fold over
clips, MER2023's own protocol (the baseline's five-fold cross-validation over the training clips,
MER2023/main-release.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ssl_aver.corpora.labelled import LabelledCorpus
from ssl_aver.corpora.tables import Rows, Table, build_corpus, clip_name, media_index, number, one_hot, pick, read_table
from ssl_aver.errors import UserError
from ssl_aver.media import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

CLASSES: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
PARTITIONS: tuple[str, ...] = ("train", "test1", "test2", "test3")
VALENCE_RANGE: tuple[float, float] = (-5.0, 5.0)
LABEL_COLUMNS: list[str] = [*(f"cls_{c}" for c in CLASSES), "valence"]


def _template(template: str, partition: str, option: str) -> str:
    try:
        return template.format(partition=partition)
    except (KeyError, IndexError, ValueError):
        raise UserError(f"data.options.{option} '{template}' may only use {{partition}}") from None


def _labels(cells: dict[str, str], columns: Sequence[str]) -> dict[str, float]:
    """One-hot class and valence of a label row (NaN where the row or the file has none)."""
    discrete = cells["discrete"].lower()
    if discrete and discrete not in CLASSES:
        raise ValueError(f"discrete '{cells['discrete']}' is not one of {', '.join(CLASSES)}")
    valence = number(cells["valence"], "valence", *VALENCE_RANGE) if "valence" in columns else math.nan
    return {**dict(zip(LABEL_COLUMNS, one_hot(discrete or None, CLASSES))), "valence": valence}


def prepare_mer2023(
    root: str | Path,
    partitions: Sequence[str] = PARTITIONS,
    label_file: str = "{partition}-label.csv",
    video_dir: str = "{partition}",
    audio_dir: str | None = None,
) -> LabelledCorpus:
    """The manifest of a MER2023 release under `root` (see the module docstring)."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"MER2023 folder not found: {base}")
    unknown = [p for p in partitions if p not in PARTITIONS]
    if unknown:
        raise UserError(f"data.options.partitions: '{unknown[0]}' is no MER2023 partition; choose from {', '.join(PARTITIONS)}")
    rows = Rows()
    read: list[str] = []
    for partition in partitions:
        labels_path = base / _template(label_file, partition, "label_file")
        videos_path = base / _template(video_dir, partition, "video_dir")
        if partition == "train" and not labels_path.is_file():
            raise UserError(f"MER2023 training labels not found: {labels_path}; pass data.options.label_file or leave train out of data.options.partitions")
        table: Table | None = None
        if labels_path.is_file():
            table = read_table(labels_path, "MER2023 label file")
            table.require(["name", "discrete"], " (MER2023 label files have name, discrete, valence)")
            rows.failures += table.failures
            read.append(labels_path.name)
        videos = media_index(videos_path, VIDEO_EXTENSIONS)
        audios = media_index(base / _template(audio_dir, partition, "audio_dir"), AUDIO_EXTENSIONS) if audio_dir else {}
        if table is None and not videos:
            continue
        entries: list[tuple[str, str, int | None, dict[str, float]]] = []
        listed: set[str] = set()
        for line, cells in table.rows if table is not None else []:
            clip = clip_name(cells["name"], VIDEO_EXTENSIONS)
            if not clip:
                rows.fail(labels_path.name, line, "empty name")
                continue
            listed.add(clip)
            try:
                entries.append((clip, labels_path.name, line, _labels(cells, table.columns)))
            except ValueError as err:
                rows.fail(labels_path.name, line, str(err), clip)
        for clip in sorted(set(videos) - listed) if "{partition}" in video_dir else []:
            if partition == "train":
                rows.fail(f"{videos_path.name}/", None, f"no row in {labels_path.name}", clip)
            else:
                entries.append((clip, f"{videos_path.name}/", None, dict.fromkeys(LABEL_COLUMNS, math.nan)))
        for clip, source, line, labels in entries:
            try:
                video = pick(videos, clip)
                audio = pick(audios, clip) if audio_dir else video
            except ValueError as err:
                rows.fail(source, line, str(err), clip)
                continue
            if not video and not audio:
                rows.fail(source, line, f"no video {clip}.* in {videos_path}" + (" and no audio" if audio_dir else ""), clip)
                continue
            rows.add(source, line, {
                "clip": clip, "audio": audio, "video": video,
                "speaker": clip, "session": None, "sex": None, "age": None, "race": None, "partition": partition, **labels,
            })
    targets = {"multiclass": {"emotion": LABEL_COLUMNS[:-1]}, "regression": {"valence": ["valence"]}}
    return build_corpus("mer2023", base, rows, LABEL_COLUMNS, list(CLASSES), targets, ", ".join(read) or "the media folders")
