"""Any folder of media as a corpus: clip id = path relative to the root without extension."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssl_aver.errors import MediaError, UserError
from ssl_aver.media import MEDIA_EXTENSIONS, probe


@dataclass(frozen=True)
class ClipRecord:
    clip: str
    path: str
    duration: float
    has_audio: bool
    has_video: bool


@dataclass
class Manifest:
    """The usable clips of a corpus plus the files that could not be read, with reasons."""

    root: str
    clips: list[ClipRecord] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.clips], columns=list(ClipRecord.__dataclass_fields__))


def clip_id(root: Path, path: Path) -> str:
    """Stable clip id: POSIX path relative to the corpus root, without extension."""
    return path.relative_to(root).with_suffix("").as_posix()


def scan_folder(root: str | Path, workers: int = 4) -> Manifest:
    """Find every media file under `root` (recursively) and probe it with ffprobe."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"corpus folder not found: {base}")
    paths = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
    ids = [clip_id(base, p) for p in paths]
    dupes = {i for i in ids if ids.count(i) > 1}
    manifest = Manifest(root=str(base))

    def _probe(path: Path):
        try:
            return probe(path), None
        except MediaError as err:
            return None, str(err)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(_probe, paths))
    for path, cid, (info, reason) in zip(paths, ids, results):
        if cid in dupes:
            manifest.failures.append({"clip": path.relative_to(base).as_posix(), "reason": "several files share this clip id (same name, different extension)"})
        elif info is None:
            manifest.failures.append({"clip": cid, "reason": reason or "unreadable"})
        else:
            manifest.clips.append(ClipRecord(cid, str(path), round(info.duration, 4), info.has_audio, info.has_video))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help="folder to scan recursively")
    parser.add_argument("--out", required=True, help="manifest CSV to write")


def run(args: argparse.Namespace) -> int:
    from ssl_aver.io import write_dataframe

    manifest = scan_folder(args.corpus)
    write_dataframe(args.out, manifest.to_frame())
    print(f"{len(manifest.clips)} clips, {len(manifest.failures)} unreadable -> {args.out}")
    for failure in manifest.failures:
        print(f"  skipped {failure['clip']}: {failure['reason']}")
    return 0
