"""`ssl-aver pretext build|finalize|bench`: pretext pseudo-labels of a corpus and its window store.

Two phases, so thresholds never force a recompute and the work can be spread out:

1. per clip (resumable): decode the audio, window it (2 s, 0.5 s overlap), compute every task's raw
   statistics per window and the clip's ComParE LLD features; write OUT/clips/<clip id>.<key>.npy
   (features) and then OUT/clips/<clip id>.<key>.json (statistics; its presence marks the clip done).
   `key` hashes the per-clip settings and the JSON records the input files' size and mtime, so a
   result computed under other settings or from other inputs is recomputed, never reused.
   Clips are split across `--workers` processes and, under `accelerate launch` / torchrun
   (RANK / WORLD_SIZE), across processes and machines by rank; `--shard I/N` does the same by hand.
2. finalize (once, main process, after every shard): corpus thresholds, labels, OUT/labels.csv,
   the window store (features.f32, index.npy, store.json), histograms, OUT/summary.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from pretext import TASKS, load_task
from pretext.base import ClipData
from pretext.faces import BACKENDS, FaceSeries, backend_gives_aus, make_backend
from pretext.settings import ClipSettings, FinalizeSettings, from_mapping
from ssl_aver.corpora.folder import ClipRecord, scan_folder
from ssl_aver.errors import MediaError, UserError
from ssl_aver.io import read_json, write_dataframe, write_json
from ssl_aver.windows import window_bounds

BUILD_FILE = "build.json"
SUMMARY_FILE = "summary.json"
LABELS_FILE = "labels.csv"
CLIPS_DIR = "clips"
#: labels.csv columns in order (the store reads them by name); AU proportions and `path` follow
BASE_COLUMNS: tuple[str, ...] = (
    "clip", "window", "start_s", "end_s", "rms", "var_upper", "var_lower", "var_whole",
    "energy", "face_upper", "face_lower", "face_whole", "au_emotion", "face_frames",
)  # fmt: skip

_BACKEND_CACHE: dict[str, Any] = {}


# ----------------------------------------------------------------------------- per-clip phase


def result_paths(out: Path, clip: str, key: str) -> tuple[Path, Path]:
    """(statistics JSON, features .npy) of one clip under build settings `key`."""
    base = out / CLIPS_DIR / clip
    return base.parent / f"{base.name}.{key}.json", base.parent / f"{base.name}.{key}.npy"


def _stat(path: Path | None) -> list[int] | None:
    if path is None or not path.is_file():
        return None
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _fingerprint(clip: ClipRecord, settings: ClipSettings) -> dict[str, Any]:
    face_file = Path(settings.face_dir) / f"{clip.clip}.csv" if settings.face_dir and settings.needs_face else None
    return {"media": _stat(Path(clip.path)), "face": _stat(face_file)}


def _backend(settings: ClipSettings) -> Any:
    key = settings.key()
    if key not in _BACKEND_CACHE:
        _BACKEND_CACHE[key] = make_backend(settings.face_backend, settings)
    return _BACKEND_CACHE[key]


def _load_face(clip: ClipRecord, settings: ClipSettings) -> tuple[FaceSeries | None, str | None]:
    try:
        face = _backend(settings).load(clip)
    except MediaError as err:
        return None, str(err)
    if not face.present.any():
        return None, "no usable face frames (no face found, or every frame failed the success/confidence filter)"
    return face, None


def _compute(clip: ClipRecord, settings: ClipSettings) -> tuple[dict[str, Any], np.ndarray | None]:
    from ssl_aver.acoustic import compare_lld, window_frames
    from ssl_aver.media import SAMPLE_RATE, load_audio

    if not clip.has_audio:
        raise MediaError("no audio stream (the pretext tasks predict from speech)")
    audio = load_audio(clip.path, SAMPLE_RATE)
    if not np.isfinite(audio).all():
        raise MediaError("audio holds NaN or infinite samples")
    if not np.any(audio):
        raise MediaError("silent audio (all samples are zero)")
    duration = audio.size / SAMPLE_RATE
    windows = window_bounds(duration, settings.window_s, settings.overlap_s, settings.min_clip_s)
    if not windows:
        raise MediaError(f"too short: {duration:.2f} s of audio (< {settings.min_clip_s} s)")
    face, face_reason = (None, None)
    if settings.needs_face:
        face, face_reason = _load_face(clip, settings)
    data = ClipData(clip.clip, audio, SAMPLE_RATE, face, face_reason)
    rows: list[dict[str, Any]] = [{"window": w.index, "start_s": w.start, "end_s": w.end} for w in windows]
    for w, row in zip(windows, rows):
        row["face_frames"] = int(face.in_window(w.start, w.end).sum()) if face is not None else 0
    for name in settings.tasks:
        for row, stats in zip(rows, load_task(name).window_stats(data, windows, settings)):
            row.update(stats)
    features = compare_lld(audio, SAMPLE_RATE)
    for w in windows:
        if window_frames(features, w.start, w.end).shape[0] == 0:
            raise MediaError(f"window {w.index} has no acoustic feature frames")
    result = {
        "status": "ok",
        "duration": round(duration, 6),
        "face": {"usable_frames": int(face.present.sum()) if face is not None else 0, "reason": face_reason},
        "windows": rows,
    }
    return result, features


def process_clip(clip: ClipRecord, settings: ClipSettings, out: Path) -> dict[str, Any]:
    """Per-clip phase for one clip: reuse a stored result made under the same settings and inputs,
    else compute and store it. Returns the result (status "ok", or "failed" with a reason)."""
    key = settings.key()
    json_path, npy_path = result_paths(out, clip.clip, key)
    fingerprint = _fingerprint(clip, settings)
    if json_path.is_file():
        try:
            stored = read_json(json_path)
        except ValueError:
            stored = {}
        if stored.get("status") == "ok" and stored.get("fingerprint") == fingerprint and npy_path.is_file():
            return {**stored, "reused": True}
    header = {"clip": clip.clip, "path": str(Path(clip.path).resolve()), "key": key, "fingerprint": fingerprint}
    try:
        result, features = _compute(clip, settings)
    except MediaError as err:
        result, features = {"status": "failed", "reason": str(err)}, None
    result = {**header, **result}
    if features is not None:
        npy_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy_path.with_name(f".{npy_path.name}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, npy_path)
    write_json(json_path, result)
    return result


def _worker(clip: ClipRecord, settings: dict[str, Any], out: str) -> tuple[str, str, str | None]:
    result = process_clip(clip, ClipSettings(**settings), Path(out))
    return clip.clip, result["status"], result.get("reason")


# ----------------------------------------------------------------------------- sharding


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N."""
    if text is None:
        return None
    try:
        index, _, count = text.partition("/")
        rank, world = int(index), int(count)
    except ValueError:
        raise UserError(f"--shard must look like I/N (e.g. 0/4), got '{text}'") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"--shard {text}: need 0 <= I < N")
    return rank, world


class _Ranks:
    """This process's place among the processes building one corpus."""

    def __init__(self, shard: tuple[int, int] | None) -> None:
        self.state: Any = None
        if shard is not None:
            self.rank, self.world, self.can_wait = shard[0], shard[1], shard[1] == 1
            return
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank, self.world, self.can_wait = int(os.environ.get("RANK", "0") or 0), world, world == 1
        if world > 1 and os.environ.get("MASTER_ADDR"):
            from datetime import timedelta

            from accelerate import PartialState

            self.state = PartialState(timeout=timedelta(hours=24))
            self.rank, self.world, self.can_wait = self.state.process_index, self.state.num_processes, True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


# ----------------------------------------------------------------------------- build


def build(
    corpus: str | Path,
    out: str | Path,
    settings: ClipSettings | None = None,
    final: FinalizeSettings | None = None,
    workers: int = 1,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Per-clip phase over this process's shard of the corpus, then finalize on the main process.

    Returns the summary (main process, all shards done), else None (finalize runs elsewhere).
    """
    settings = settings or ClipSettings()
    final = final or FinalizeSettings()
    settings.validate()
    final.validate()
    if settings.face_dir:
        settings.face_dir = str(Path(settings.face_dir).resolve())
    if settings.needs_face:
        make_backend(settings.face_backend, settings).close()  # fail fast on a bad --face-dir
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _Ranks(shard)
    manifest = scan_folder(corpus)
    clips = manifest.clips[:limit] if limit else manifest.clips
    if not clips and not manifest.failures:
        raise UserError(f"no media files under {corpus}; expected audio/video files ({', '.join(sorted(_extensions()))})")
    plan = {
        "corpus": str(Path(corpus).resolve()),
        "key": settings.key(),
        "settings": asdict(settings),
        "clips": [asdict(c) for c in clips],
        "scan_failures": manifest.failures,
    }
    if ranks.is_main:
        write_json(out_dir / BUILD_FILE, plan)
    mine = clips[ranks.rank :: ranks.world]
    _run_clips(mine, settings, out_dir, workers, progress and ranks.is_main)
    ranks.wait()
    if not ranks.can_wait:
        print(f"shard {ranks.rank}/{ranks.world} done ({len(mine)} clips); run `ssl-aver pretext finalize --out {out_dir}` once every shard is done")
        return None
    if not ranks.is_main:
        return None
    return finalize(out_dir, final, plan=plan)


def _extensions() -> set[str]:
    from ssl_aver.media import MEDIA_EXTENSIONS

    return set(MEDIA_EXTENSIONS)


def _run_clips(clips: list[ClipRecord], settings: ClipSettings, out: Path, workers: int, progress: bool) -> None:
    from ssl_aver.progress import tqdm

    bar = tqdm(total=len(clips), desc="pretext clips", unit="clip", disable=not progress)
    try:
        if workers <= 1 or len(clips) <= 1:
            for clip in clips:
                process_clip(clip, settings, out)
                bar.update()
            return
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, clip, asdict(settings), str(out)) for clip in clips]
            for future in as_completed(futures):
                future.result()
                bar.update()
    finally:
        bar.close()
        for backend in _BACKEND_CACHE.values():
            backend.close()
        _BACKEND_CACHE.clear()


# ----------------------------------------------------------------------------- finalize


def _label_columns() -> list[str]:
    from pretext.au_emotion import STATS as AU_STATS

    return list(BASE_COLUMNS) + list(AU_STATS) + ["path"]


def _gather(out: Path, plan: dict[str, Any]) -> tuple[pd.DataFrame, list[dict[str, str]], list[dict[str, str]]]:
    key = plan["key"]
    rows: list[dict[str, Any]] = []
    failures = list(plan.get("scan_failures", []))
    face_missing: list[dict[str, str]] = []
    pending = []
    for clip in plan["clips"]:
        json_path, _ = result_paths(out, clip["clip"], key)
        if not json_path.is_file():
            pending.append(clip["clip"])
            continue
        result = read_json(json_path)
        if result.get("status") != "ok":
            failures.append({"clip": clip["clip"], "reason": result.get("reason", "failed")})
            continue
        if result["face"].get("reason") and any(t in plan["settings"]["tasks"] for t in ("landmarks", "au")):
            face_missing.append({"clip": clip["clip"], "reason": result["face"]["reason"]})
        for window in result["windows"]:
            rows.append({"clip": clip["clip"], **window, "path": result["path"]})
    if pending:
        raise UserError(
            f"{len(pending)} clip(s) have no per-clip result yet (first: {pending[0]}); "
            f"finish every shard with `ssl-aver pretext build` before finalizing"
        )
    table = pd.DataFrame(rows)
    for column in _label_columns():
        if column not in table.columns:
            table[column] = pd.Series([None] * len(table), dtype="object")
    if not table.empty:
        table = table.sort_values(["clip", "window"], kind="stable").reset_index(drop=True)
    return table, sorted(failures, key=lambda f: f["clip"]), face_missing


def _class_counts(column: pd.Series) -> dict[str, int]:
    counts = {str(k): int(v) for k, v in column.dropna().astype(str).value_counts().sort_index().items()}
    counts["missing"] = int(column.isna().sum())
    return counts


def _iter_windows(out: Path, key: str, table: pd.DataFrame) -> Iterator[np.ndarray]:
    from ssl_aver.acoustic import window_frames

    current, features = None, None
    for clip, start, end in zip(table["clip"], table["start_s"], table["end_s"]):
        if clip != current:
            current, features = clip, np.load(result_paths(out, clip, key)[1])
        yield window_frames(features, float(start), float(end))


def finalize(out: str | Path, final: FinalizeSettings | None = None, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Thresholds, labels, labels.csv, the window store, histograms and summary.json from stored results."""
    from pretext.plots import plot_class_counts, plot_histograms
    from ssl_aver.acoustic import N_FEATURES
    from ssl_aver.store import write_store

    out_dir = Path(out)
    final = final or FinalizeSettings()
    final.validate()
    if plan is None:
        if not (out_dir / BUILD_FILE).is_file():
            raise UserError(f"{out_dir / BUILD_FILE} not found; run `ssl-aver pretext build --out {out_dir}` first")
        plan = read_json(out_dir / BUILD_FILE)
    settings = from_mapping(ClipSettings, plan["settings"])
    table, failures, face_missing = _gather(out_dir, plan)
    if table.empty:
        raise UserError(f"no usable clip in {plan['corpus']} ({len(failures)} failed); see the reasons with `ssl-aver scan`")
    thresholds: dict[str, float | None] = {}
    unavailable: dict[str, str] = {}
    for name in settings.tasks:
        task = load_task(name)
        labels, info = task.make_labels(table, final)
        for column in labels.columns:
            table[column] = labels[column]
        thresholds.update(info.get("thresholds", {}))
    if "au" in settings.tasks and not backend_gives_aus(settings.face_backend):
        unavailable["au"] = f"the {settings.face_backend} backend detects no action units; au_emotion is left empty"
    for name in TASKS:
        if name not in settings.tasks:
            unavailable[name] = "not requested (--tasks)"
    columns = _label_columns()
    table = table[columns]
    write_dataframe(out_dir / LABELS_FILE, table)
    store = write_store(out_dir, _iter_windows(out_dir, plan["key"], table), dim=N_FEATURES)
    label_names = ["energy", "face_upper", "face_lower", "face_whole", "au_emotion"]
    counts = {name: _class_counts(table[name]) for name in label_names}
    plots = plot_histograms(table, thresholds, out_dir) + plot_class_counts(counts, out_dir)
    n_clips = int(table["clip"].nunique())
    summary = {
        "corpus": plan["corpus"],
        "clips": n_clips,
        "windows": int(len(table)),
        "thresholds": thresholds,
        "class_counts": counts,
        "unavailable": unavailable,
        "failures": failures,
        "face_missing": face_missing,
        "settings": {"clip": plan["settings"], "finalize": asdict(final), "key": plan["key"]},
        "store": store,
        "plots": [p.name for p in plots],
        "headline": f"{n_clips} clips, {len(table)} windows, {len(failures)} failed",
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


# ----------------------------------------------------------------------------- CLI


def _defaults() -> dict[str, Any]:
    return {**asdict(ClipSettings()), **asdict(FinalizeSettings())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{build,finalize,bench}")
    b = sub.add_parser("build", help="per-clip statistics, then thresholds, labels and the window store")
    b.add_argument("--corpus", required=True, help="folder of media (clip id = path without extension)")
    b.add_argument("--out", required=True, help="output folder (labels.csv, summary.json, the store)")
    b.add_argument("--face-backend", choices=list(BACKENDS), default=None, help="default: openface")
    b.add_argument("--face-dir", default=None, help="folder of per-clip face CSVs <clip id>.csv (OpenFace 2.0 or py-feat)")
    b.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} (default: all)")
    b.add_argument("--workers", type=int, default=1, help="worker processes for the per-clip phase")
    b.add_argument("--threshold-stat", choices=["mean", "median"], default=None, help="corpus threshold (paper: mean)")
    b.add_argument("--landmark-norm", choices=["none", "interocular", "rigid"], default=None, help="default: none (paper)")
    b.add_argument("--every", type=int, default=None, help="analyse every k-th video frame (mediapipe, py-feat)")
    b.add_argument("--limit", type=int, default=None, help="only the first N clips (sorted by clip id)")
    b.add_argument("--shard", default=None, help="I/N: process only shard I of N and skip finalize")
    b.add_argument("--config", default=None, help="YAML file of settings (keys of ClipSettings/FinalizeSettings)")
    b.add_argument("overrides", nargs="*", help="settings as key=value, e.g. min_confidence=0.9 au_match=all")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    f = sub.add_parser("finalize", help="recompute thresholds and labels from stored per-clip results")
    f.add_argument("--out", required=True, help="output folder of a build")
    f.add_argument("--threshold-stat", choices=["mean", "median"], default=None)
    f.add_argument("--au-presence", type=float, default=None, help="AU present when detected in >= this share of frames")
    f.add_argument("--au-match", choices=["any", "all"], default=None, help="EMFACS matching rule (see pretext.au_emotion)")
    k = sub.add_parser("bench", help="audio-statistics and landmark-pipeline speed")
    k.add_argument("--out", required=True, help="folder for bench.json")
    k.add_argument("--video", default=None, help="video for the landmark benchmark (default: py-feat's test clip)")
    k.add_argument("--every", type=int, default=1)
    k.add_argument("--frames", type=int, default=150, help="frames decoded for the landmark benchmark")


def _settings_from_args(args: argparse.Namespace) -> tuple[ClipSettings, FinalizeSettings]:
    from ssl_aver.config import load_config, to_dict

    cfg = to_dict(load_config(args.config, args.overrides, defaults=_defaults()))
    flags = {
        "face_backend": args.face_backend,
        "face_dir": args.face_dir,
        "threshold_stat": args.threshold_stat,
        "landmark_norm": args.landmark_norm,
        "every": args.every,
        "tasks": [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
    }
    cfg.update({k: v for k, v in flags.items() if v is not None})
    return from_mapping(ClipSettings, cfg), from_mapping(FinalizeSettings, cfg)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    print(f"{summary['headline']} -> {out / LABELS_FILE}")
    for name, value in summary["thresholds"].items():
        print(f"  threshold {name} = {value:.6g}" if value is not None else f"  threshold {name}: no data")
    for name, counts in summary["class_counts"].items():
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for failure in summary["failures"]:
        print(f"  failed {failure['clip']}: {failure['reason']}")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        settings, final = _settings_from_args(args)
        out = Path(args.out)
        summary = build(args.corpus, out, settings, final, args.workers, args.limit, parse_shard(args.shard), progress=not args.quiet)
        if summary is not None:
            from ssl_aver.config import save_config

            save_config({**asdict(settings), **asdict(final)}, out)
            _print_summary(summary, out)
        return 0
    if args.action == "finalize":
        out = Path(args.out)
        previous = read_json(out / SUMMARY_FILE)["settings"]["finalize"] if (out / SUMMARY_FILE).is_file() else {}
        final = from_mapping(FinalizeSettings, previous)
        for name in ("threshold_stat", "au_presence", "au_match"):
            if getattr(args, name) is not None:
                setattr(final, name, getattr(args, name))
        _print_summary(finalize(out, final), out)
        return 0
    from pretext.bench import benchmark_pretext

    result = benchmark_pretext(video=args.video, every=args.every, max_frames=args.frames)
    write_json(Path(args.out) / "bench.json", result)
    print(result["headline"])
    return 0


if __name__ == "__main__":  # `accelerate launch -m pretext.build build ...`, run as `ssl-aver pretext`
    from ssl_aver.command import run_command

    sys.exit(run_command("pretext", "pretext.build", __doc__.splitlines()[0], sys.argv[1:]))
