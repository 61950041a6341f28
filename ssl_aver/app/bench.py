"""`ssl-aver bench`: one table of the toolkit's speed, each figure next to the goal it must meet.

    ssl-aver bench --out DIR [--quick | --preset full] [--device cpu|cuda] [--heads ser,vavl]

Everything runs on data generated here (demo clips from `ssl_aver.app.demo_corpora`: real faces,
espeak-ng speech, simulated OpenFace tracks), in one run on one machine, and lands in
DIR/bench.json (a list of rows {stage, metric, value, unit, ratio, goal, met, note}) and
DIR/bench.md (the same as a markdown table). Stages:

1. audio: the pretext energy statistics + ComParE LLD features (`pretext.energy`,
   `ssl_aver.acoustic`) vs the raw librosa / openSMILE calls on the same audio (goal >= 0.8).
2. faces: the mediapipe label pipeline vs raw FaceMesh on the same decoded frames, every k-th
   frame (`pretext.bench.benchmark_faces`; goal >= 0.8 per processed frame).
3. pretrain: `ssl_aver.pretrain_bench.benchmark_pretrain` on the window store built in stage 5
   (store-fed vs in-memory batches, goal >= 0.95; fused vs explicit attention; paper-size
   encoder windows/s); on a GPU also bf16 vs fp32 of the paper-size encoder.
4. heads: every head registered in `finetune.heads.HEADS` at its defaults() (the papers' sizes),
   one training epoch of its own `fit` on synthetic batches, in a subprocess per head: clips/s and
   peak memory (peak RSS on CPU, torch.cuda.max_memory_allocated on a GPU). A head that fails
   to build or train gets a row with the error, not a crash.
5. scaling: `pretext.build.build` (openface backend) on corpora of 1x, 4x, 16x the base clips, a
   subprocess per size: the exponent of the log-log fit of build time against size (goal <= 1.1)
   and the growth of peak resident memory from 1x to 16x (goal <= 1.25).
6. fine-tuning: VAVL's paper-size Algorithm-1 step with conformer subsampling 4 vs 1; bf16
   autocast vs fp32 training of `precision_heads` (subprocesses, as stage 4); the loader's read
   rate of a float16 WavLM-shaped store with 0 and 2 reader workers; and one comparison
   grid (`finetune.grid`) in 2 `accelerate launch` processes vs 1 process (goal >= 1.7x on 2
   cores; `ssl_aver.app.bench_scale.grid_speedup`).

CPU measurements run torch with ONE thread (torch.set_num_threads(1); on a small shared machine
two threads were measured 20-100x slower under contention) and OMP/MKL limited to one thread in
the subprocesses; the table says so. Throughputs are best-of-N where the stage repeats.
Heads at the papers' sizes are large (RAVER: ~370M parameters), so the presets train them on
small batches on a CPU: clips/s depends on the batch size, which every row's note gives; the
first step of every training pass is untimed warm-up. With --device cuda the heads and the GPU
pretraining rows run on the GPU; stages 1, 2, 5 and the data-path rows stay on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, write_json

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
ROW_KEYS = ("stage", "metric", "value", "unit", "ratio", "goal", "met", "note")
STAGE_NAMES = ("1 audio", "2 faces", "3 pretrain", "4 heads", "5 scaling", "6 fine-tuning")

#: goals: (comparison, limit)
GOAL_AUDIO = (">=", 0.8)
GOAL_FACES = (">=", 0.8)
GOAL_DATA_PATH = (">=", 0.95)
GOAL_EXPONENT = ("<=", 1.1)
GOAL_RSS_GROWTH = ("<=", 1.25)
GOAL_GRID = (">=", 1.7)  # 2 processes vs 1 on 2 cores


@dataclass
class BenchSettings:
    """Sizes of one bench run. `preset` names the sizes (see PRESETS); every field can differ.

    Choices (the brief gives no sizes): a CREMA-D clip is taken as `clip_seconds`=2.5 s (its mean
    length), its acoustic input as openSMILE LLD frames (130-d, 62.5 frames/s) read by a random
    paper-size pretrained encoder, its visual input as MobileNetV2 face embeddings (1280-d) at
    30 frames/s: the inputs of the `*_encoder` recipes, which every head accepts.
    """

    preset: str = "quick"
    device: str = "cpu"
    seed: int = 0
    corpus_clips: int = 2
    audio_seconds: float = 60.0
    audio_repeats: int = 3
    face_frames: int = 150
    face_every: tuple[int, ...] = (1, 3)
    face_repeats: int = 3
    pretrain_steps: int = 6
    pretrain_batch: int = 32
    heads: tuple[str, ...] | None = None
    head_batch: int = 4
    head_batches: int = 2
    head_timeout_s: float = 240.0
    clip_seconds: float = 2.5
    audio_fps: float = 62.5
    video_fps: float = 30.0
    video_dim: int = 1280
    n_classes: int = 6
    scale_base: int = 2
    scale_factors: tuple[int, ...] = (1, 4, 16)
    scale_timeout_s: float = 300.0
    threads: int = 1
    precision: str = "no"  # the head children's train.mixed_precision
    precision_heads: tuple[str, ...] = ("vavl", "raver")  # bf16 vs fp32 in stage 6
    subsample_batch: int = 32  # VAVL Algorithm-1 step at paper size, subsample 4 vs 1
    grid: bool = True  # stage 6: the comparison grid in 2 processes vs 1


PRESETS: dict[str, BenchSettings] = {
    # smoke-test sizes (the test suite): every code path, figures too small to mean much
    "tiny": BenchSettings(
        preset="tiny", corpus_clips=1, audio_seconds=10.0, audio_repeats=1, face_frames=16, face_every=(1, 2), face_repeats=1,
        pretrain_steps=1, pretrain_batch=4, head_batch=2, head_batches=2, head_timeout_s=120.0, scale_base=2, scale_factors=(1, 2),
        precision_heads=("mult",), subsample_batch=2, grid=False,
    ),
    "quick": BenchSettings(preset="quick"),
    "full": BenchSettings(
        preset="full", corpus_clips=4, audio_seconds=300.0, audio_repeats=5, face_frames=150, face_repeats=5, pretrain_steps=12,
        head_batch=8, head_batches=3, head_timeout_s=600.0, scale_base=4, scale_timeout_s=600.0,
    ),
}


# ----------------------------------------------------------------------------- rows


def make_row(stage: str, metric: str, value: float | None, unit: str, ratio: float | None = None,
             goal: tuple[str, float] | None = None, note: str = "") -> dict[str, Any]:
    """One table row; `met` is whether `ratio` satisfies `goal` (None without a goal or a figure)."""
    met = None
    if goal is not None and ratio is not None and math.isfinite(ratio):
        met = bool(ratio >= goal[1]) if goal[0] == ">=" else bool(ratio <= goal[1])
    return {
        "stage": stage, "metric": metric, "value": _round(value), "unit": unit, "ratio": _round(ratio),
        "goal": f"{goal[0]} {goal[1]}" if goal else None, "met": met, "note": note,
    }


def _round(x: float | None) -> float | None:
    if x is None or not math.isfinite(float(x)):
        return None
    x = float(x)
    return round(x, 3) if abs(x) < 100 else round(x, 1)


def error_row(stage: str, metric: str, err: BaseException | str) -> dict[str, Any]:
    """A row that records why a measurement has no figure."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return make_row(stage, metric, None, "", note=f"failed: {text.strip().splitlines()[-1] if text.strip() else text}"[:300])


def markdown_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """The rows as a markdown table (goal column shows the goal and whether it was met)."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| stage | metric | value | unit | ratio | goal | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = "" if r["goal"] is None else f"{r['goal']} {'met' if r['met'] else 'NOT met' if r['met'] is False else ''}".strip()
        cells = [r["stage"], r["metric"], _fmt(r["value"]), r["unit"], _fmt(r["ratio"]), goal, str(r["note"])]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3g}"
    return str(x)


# ----------------------------------------------------------------------------- data


@dataclass
class BenchData:
    """The generated inputs: demo clips (+ their OpenFace CSVs) and a long audio signal."""

    root: Path
    clips: list[Path]
    openface: Path
    unlabeled: Path
    audio: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))


def generate_data(work: Path, settings: BenchSettings) -> BenchData:
    """Demo clips via make_demo_corpus; the audio of every clip concatenated and tiled to
    `audio_seconds` (a longer recording made of real generated speech)."""
    from ssl_aver.app.demo_corpora.generate import make_demo_corpus
    from ssl_aver.media import SAMPLE_RATE, load_audio

    root = work / "corpus"
    make_demo_corpus(root, unlabeled=settings.corpus_clips, actors=0, seed=settings.seed, workers=1, progress=False)
    unlabeled = root / "unlabeled"
    clips = sorted(unlabeled.rglob("*.mp4"))
    if not clips:
        raise UserError(f"the demo corpus under {root} holds no clips; check that ffmpeg and espeak-ng are installed")
    pieces = [load_audio(p, SAMPLE_RATE) for p in clips]
    joined = np.concatenate(pieces)
    n = int(settings.audio_seconds * SAMPLE_RATE)
    audio = np.tile(joined, math.ceil(n / joined.size))[:n].astype(np.float32)
    return BenchData(root, clips, root / "openface", unlabeled, audio)


# ----------------------------------------------------------------------------- stage 1: audio


def _best(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_audio(audio: np.ndarray, repeats: int = 3, sample_rate: int = 16000) -> dict[str, float]:
    """Seconds of the pretext energy statistics and the ComParE features on `audio`, and of the
    raw library calls doing the same work (librosa STFT + RMS per window; openSMILE
    process_signal with the same derived config). Interleaved best-of-`repeats`."""
    import librosa
    import opensmile

    from pretext import energy
    from pretext.base import ClipData
    from pretext.settings import ClipSettings
    from ssl_aver import acoustic
    from ssl_aver.windows import window_bounds

    settings = ClipSettings()
    seconds = audio.size / sample_rate
    windows = window_bounds(seconds, settings.window_s, settings.overlap_s, settings.min_clip_s)
    clip = ClipData("bench", audio, sample_rate)
    segments = [audio[round(w.start * sample_rate) : round(w.end * sample_rate)] for w in windows]
    n_fft, hop = settings.n_fft, settings.hop_length
    shared = acoustic._opensmile_root() / "shared"
    raw_smile = opensmile.Smile(
        feature_set=str(acoustic.config_path()), feature_level=acoustic._LEVEL,
        options={"bufferModeRbLagConf": str(shared / "BufferModeRbLag.conf.inc"), "bufferModeConf": str(shared / "BufferMode.conf.inc")},
    )  # fmt: skip
    pcm = np.clip(audio, -1.0, 32767.0 / 32768.0)

    def raw_rms() -> None:
        for seg in segments:
            librosa.feature.rms(S=np.abs(librosa.stft(seg, n_fft=n_fft, hop_length=hop)), frame_length=n_fft)

    def ours_rms() -> None:
        energy.window_stats(clip, windows, settings)

    def raw_lld() -> None:
        raw_smile.process_signal(pcm, sample_rate)

    def ours_lld() -> None:
        acoustic.compare_lld(audio, sample_rate)

    short = audio[: sample_rate * 2]
    energy.segment_rms(short)  # librosa's lazy imports and first-call caches, outside the timing
    acoustic.compare_lld(short, sample_rate)
    raw_smile.process_signal(short, sample_rate)
    best = {"raw_rms": math.inf, "ours_rms": math.inf, "raw_lld": math.inf, "ours_lld": math.inf}
    for _ in range(max(1, repeats)):
        for name, fn in (("raw_rms", raw_rms), ("ours_rms", ours_rms), ("raw_lld", raw_lld), ("ours_lld", ours_lld)):
            best[name] = min(best[name], _best(fn))
    return {"audio_seconds": seconds, "windows": len(windows), **best}


def stage_audio(data: BenchData, settings: BenchSettings) -> list[dict[str, Any]]:
    """Rows of stage 1 (throughputs in seconds of audio per second, ratios to the raw calls)."""
    m = measure_audio(data.audio, settings.audio_repeats)
    s = m["audio_seconds"]
    note = f"{s:.0f} s of generated speech, {m['windows']} windows, best of {settings.audio_repeats}"
    ours, raw = m["ours_rms"] + m["ours_lld"], m["raw_rms"] + m["raw_lld"]
    return [
        make_row("1 audio", "energy statistics + ComParE LLD", s / ours, "s audio/s", raw / ours, GOAL_AUDIO, f"vs raw librosa + openSMILE; {note}"),
        make_row("1 audio", "energy statistics (librosa STFT RMS)", s / m["ours_rms"], "s audio/s", m["raw_rms"] / m["ours_rms"], GOAL_AUDIO, "vs raw librosa.stft + feature.rms per window"),
        make_row("1 audio", "ComParE LLD + deltas (130-d, 32/16 ms)", s / m["ours_lld"], "s audio/s", m["raw_lld"] / m["ours_lld"], GOAL_AUDIO, "vs raw opensmile.Smile.process_signal, same config"),
    ]


# ----------------------------------------------------------------------------- stage 2: faces


def stage_faces(data: BenchData, settings: BenchSettings) -> list[dict[str, Any]]:
    """Rows of stage 2: label-pipeline fps and its ratio to raw FaceMesh, for each `every`."""
    from pretext.bench import benchmark_faces

    rows = []
    for every in settings.face_every:
        r = benchmark_faces(data.clips[0], every=every, max_frames=settings.face_frames, repeats=settings.face_repeats)
        note = (f"{r['frames']} frames of a generated clip ({r['faces_found']} faces found in the analysed ones), "
                f"raw FaceMesh {r['raw_facemesh_fps']} fps on all of them, best of {r['repeats']}")
        rows.append(make_row("2 faces", f"mediapipe label pipeline, every={every}", r["pipeline_fps"], "analysed frames/s",
                             r["pipeline_vs_raw"], GOAL_FACES, note))
        if every > 1:
            rows.append(make_row("2 faces", f"video covered, every={every}", r["pipeline_video_fps"], "video frames/s",
                                 r["pipeline_video_fps"] / r["raw_facemesh_fps"], None, "every k-th frame analysed; ratio to raw FaceMesh on every frame"))
    return rows


# ----------------------------------------------------------------------------- stage 5: scaling


def replicate_corpus(data: BenchData, clips: int, out: Path) -> tuple[Path, Path]:
    """A corpus of `clips` clips made of copies (hard links where possible) of the generated
    ones, each with its OpenFace CSV under the same clip id."""
    media, faces = out / "media", out / "openface"
    for k in range(clips):
        source = data.clips[k % len(data.clips)]
        rel = source.relative_to(data.unlabeled)
        clip_id = f"copy_{k:04d}_{rel.with_suffix('').as_posix().replace('/', '_')}"
        for src, dst in ((source, media / f"{clip_id}{source.suffix}"), (data.openface / rel.with_suffix(".csv"), faces / f"{clip_id}.csv")):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
    return media, faces


def loglog_exponent(sizes: list[float], values: list[float]) -> float:
    """Slope of log(value) against log(size): 1 = linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def stage_scaling(data: BenchData, settings: BenchSettings, work: Path) -> tuple[list[dict[str, Any]], Path | None]:
    """Rows of stage 5 and the store of the largest build (stage 3 pretrains on it)."""
    results: list[tuple[int, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    for factor in settings.scale_factors:
        n = settings.scale_base * factor
        media, faces = replicate_corpus(data, n, work / f"scale_x{factor}")
        out = work / f"scale_x{factor}" / "pretext"
        job = {"corpus": str(media), "face_dir": str(faces), "out": str(out)}
        result = run_child("build", job, settings.scale_timeout_s, settings)
        if "error" in result:
            rows.append(error_row("5 scaling", f"pretext build, {n} clips", result["error"]))
            continue
        results.append((n, result))
        rows.append(make_row("5 scaling", f"pretext build, {n} clips ({factor}x)", result["seconds"], "s", None, None,
                             f"{result['windows']} windows, {result['audio_seconds']:.0f} s of audio; peak RSS {result['peak_rss_mb']:.0f} MB"))
    if len(results) >= 2:
        sizes = [float(n) for n, _ in results]
        exponent = loglog_exponent(sizes, [r["seconds"] for _, r in results])
        per_clip, fixed = np.polyfit(sizes, [r["seconds"] for _, r in results], 1)
        growth = results[-1][1]["peak_rss_mb"] / results[0][1]["peak_rss_mb"]
        span = f"{results[0][0]}-{results[-1][0]} clips"
        rows.append(make_row("5 scaling", "build time exponent (log-log fit)", exponent, "", exponent, GOAL_EXPONENT,
                             f"{span}; 1 = linear; below 1 while the fixed cost (plots, store setup) is a large share"))
        rows.append(make_row("5 scaling", "build time per clip (linear fit)", float(per_clip), "s/clip", None, None,
                             f"fixed cost {fixed:.2f} s per build; one process, openface backend, all tasks"))
        rows.append(make_row("5 scaling", "peak RSS growth (largest / smallest)", results[-1][1]["peak_rss_mb"], "MB", growth, GOAL_RSS_GROWTH,
                             f"{span}: {results[0][1]['peak_rss_mb']:.0f} -> {results[-1][1]['peak_rss_mb']:.0f} MB (VmHWM of a subprocess per size)"))
    store = Path(results[-1][1]["store"]) if results else None
    return rows, store


def _child_build(job: dict[str, Any]) -> dict[str, Any]:
    """One pretext build, timed after the libraries it loads lazily are imported (so that the
    fit sees the work that grows with the corpus, not one-off import costs)."""
    import matplotlib.pyplot  # noqa: F401  (loaded lazily by the build's plots)
    import pandas as pd

    from pretext.build import build
    from pretext.energy import segment_rms
    from pretext.settings import ClipSettings
    from ssl_aver.acoustic import compare_lld

    warm = np.sin(np.arange(16000, dtype=np.float32) / 10)
    segment_rms(warm)  # librosa's lazy submodule imports (seconds), outside the timing
    compare_lld(warm)  # openSMILE's one-off setup, cached per process
    start = time.perf_counter()
    summary = build(job["corpus"], job["out"], ClipSettings(face_backend="openface", face_dir=job["face_dir"]), workers=1, progress=False)
    seconds = time.perf_counter() - start
    labels = pd.read_csv(Path(job["out"]) / "labels.csv")
    clips = json.loads((Path(job["out"]) / "build.json").read_text(encoding="utf-8"))["clips"]
    return {
        "seconds": seconds, "windows": len(labels), "audio_seconds": float(sum(c["duration"] for c in clips)),
        "store": str(Path(job["out"])), "failures": len(summary["failures"]) if summary else None,
    }


# ----------------------------------------------------------------------------- stage 3: pretrain


def stage_pretrain(store: Path | None, settings: BenchSettings) -> list[dict[str, Any]]:
    """Rows of stage 3 (CPU data path and attention from benchmark_pretrain; GPU precision)."""
    import torch

    from ssl_aver.pretrain import build_config
    from ssl_aver.pretrain_bench import benchmark_pretrain

    stage = "3 pretrain"
    if store is None:
        return [error_row(stage, "pretraining throughput", "no window store: the scaling stage built none")]
    cfg = build_config(None, [f"data.store={store}", "output_dir=unused", f"train.batch_size={settings.pretrain_batch}", f"train.num_threads={settings.threads}"])
    r = benchmark_pretrain(store, cfg, settings.pretrain_steps)
    cpu = f"CPU, {r['threads']} torch thread(s)"
    threads = f"{cpu}, batch {r['batch_size']}"
    rows = [
        make_row(stage, "paper-size encoder training (d=130, 10 heads, 5 layers)", r["paper_size_windows_per_s"], "windows/s", None, None,
                 f"{cpu}, batch 32 synthetic 2 s windows (124 LLD frames), forward + masked multi-task loss + backward + Adam"),
        make_row(stage, "data path: store-fed vs in-memory batches", r["store_fed_windows_per_s"], "windows/s", r["store_vs_memory_ratio"], GOAL_DATA_PATH,
                 f"{threads}, {r['windows']} windows of the stage-5 store (memory-mapped), steps interleaved; in-memory {r['in_memory_windows_per_s']:.0f} windows/s; "
                 f"reading + collating a batch alone: {r['store_batch_ms']:.1f} ms = {100 * r['store_batch_ms'] / 1000 / (r['batch_size'] / r['in_memory_windows_per_s']):.1f}% of a step"),
        make_row(stage, "fused (SDPA) vs explicit softmax(QK^T)V attention", r["fused_windows_per_s"], "windows/s", r["fused_vs_explicit_speedup"], None,
                 f"{threads}, store windows, steps interleaved; paper size: fused {r['paper_size_windows_per_s']:.0f} vs explicit {r['paper_size_explicit_windows_per_s']:.0f} windows/s"),
    ]
    w2v = wav2vec2_rate("cpu", settings)
    rows.append(make_row(stage, "wav2vec 2.0 baseline training (transformer sized like the encoder)", w2v, "windows/s", None, None,
                         f"{cpu}, batch {settings.pretrain_batch} x 2 s raw audio, Wav2Vec2ForPreTraining contrastive + diversity loss + backward + Adam"))
    if settings.device == "cuda":
        fp32 = paper_encoder_rate("cuda", "sdpa", False, settings)
        bf16 = paper_encoder_rate("cuda", "sdpa", True, settings)
        explicit = paper_encoder_rate("cuda", "explicit", False, settings)
        gpu = torch.cuda.get_device_name(0)
        rows += [
            make_row(stage, "paper-size encoder training, GPU fp32", fp32, "windows/s", None, None, f"{gpu}, batch 32"),
            make_row(stage, "bf16 autocast vs fp32 (GPU)", bf16, "windows/s", bf16 / fp32, None, f"{gpu}, batch 32, paper-size encoder"),
            make_row(stage, "fused vs explicit attention (GPU)", fp32, "windows/s", fp32 / explicit, None, f"{gpu}, batch 32, fp32, paper-size encoder"),
        ]
    else:
        rows.append(make_row(stage, "bf16 vs fp32", None, "", note="skipped: needs a GPU (run with --device cuda)"))
    return rows


def wav2vec2_rate(device: str, settings: BenchSettings) -> float:
    """windows/s of a pretraining step of paper 1's wav2vec 2.0 baseline on 2 s raw-audio windows."""
    import numpy as np
    import torch

    from ssl_aver.models.encoder import EncoderConfig
    from ssl_aver.models.wav2vec2 import build_pretraining_model, collate_audio, pretraining_loss

    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    model = build_pretraining_model(EncoderConfig()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(settings.seed)
    steps = max(settings.pretrain_steps // 3, 2)  # a step costs ~10x the encoder's on CPU
    batches = [collate_audio([rng.standard_normal(32000).astype(np.float32) for _ in range(settings.pretrain_batch)]) for _ in range(steps + 1)]
    start = 0.0
    for i, b in enumerate(batches):
        if i == 1:  # one warm-up step
            start = time.perf_counter()
        loss, _ = pretraining_loss(model, {k: v.to(device) for k, v in b.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * settings.pretrain_batch / (time.perf_counter() - start)


def paper_encoder_rate(device: str, attention: str, bf16: bool, settings: BenchSettings, batch: int = 32) -> float:
    """windows/s of a training step of the paper-size encoder + pretext heads on `device`."""
    import torch

    from ssl_aver.models.encoder import EncoderConfig, SSLEncoder
    from ssl_aver.pretrain import DEFAULTS, PretextModel, task_losses
    from ssl_aver.pretrain_bench import _synthetic_batches

    torch.manual_seed(settings.seed)
    tasks = list(DEFAULTS["tasks"])
    model = PretextModel(SSLEncoder(EncoderConfig(attention=attention)), tasks, None, 0.0).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    steps = max(settings.pretrain_steps, 3)
    batches = [{"features": b["features"].to(device), "padding_mask": b["padding_mask"].to(device), "labels": {k: v.to(device) for k, v in b["labels"].items()}}
               for b in _synthetic_batches(steps + 2, batch, 124, EncoderConfig().input_dim, tasks, settings.seed)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seen, start = 0, 0.0
    for i, b in enumerate(batches):
        if i == 2:  # two warm-up steps
            sync()
            start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            parts = task_losses(model(b["features"], b["padding_mask"]), b["labels"])
            loss = sum(per.float().sum() / valid.sum().clamp_min(1) for per, valid, _ in parts.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seen += batch if i >= 2 else 0
    sync()
    return seen / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- stage 4: heads


class _TimedLoader:
    """Precomputed batches that time every pass a `fit` makes over them (first step of each
    pass untimed: warm-up), with the `dataset.rows` that heads read class counts from."""

    def __init__(self, batches: list[dict[str, Any]], sync: Callable[[], None]) -> None:
        self.batches = batches
        self.sync = sync
        self.dataset = SimpleNamespace(rows=[(c, t.cpu().numpy()) for b in batches for c, t in zip(b["clips"], b["targets"], strict=True)])
        self.seconds = 0.0
        self.clips = 0
        self.passes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        self.passes += 1
        start = None
        for i, batch in enumerate(self.batches):
            if i == 1:
                self.sync()
                start = time.perf_counter()
            if i >= 1:
                self.clips += len(batch["clips"])
            yield batch
        self.sync()
        if start is not None:
            self.seconds += time.perf_counter() - start


def synthetic_head_batches(settings: BenchSettings, n: int, device: str, seed: int) -> list[dict[str, Any]]:
    """Batches shaped like `ssl_aver.av_dataset.collate_av` output: LLD audio, face-embedding
    video, and targets holding the primary, voice/face/av (two-stage) and valence (MER) columns."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    b, c = settings.head_batch, settings.n_classes
    ta, tv = round(settings.clip_seconds * settings.audio_fps), round(settings.clip_seconds * settings.video_fps)
    out = []
    for i in range(n):
        targets = torch.zeros(b, 4 * c + 1)
        for group in range(4):
            targets[torch.arange(b), group * c + torch.randint(0, c, (b,), generator=gen)] = 1.0
        targets[:, -1] = torch.rand(b, generator=gen) * 2 - 1
        batch = {
            "audio": torch.randn(b, ta, 130, generator=gen), "audio_mask": torch.ones(b, ta, dtype=torch.bool),
            "video": torch.randn(b, tv, settings.video_dim, generator=gen).abs(), "video_mask": torch.ones(b, tv, dtype=torch.bool),
            "has_audio": torch.ones(b, dtype=torch.bool), "has_video": torch.ones(b, dtype=torch.bool),
            "targets": targets, "clips": [f"clip_{i:03d}_{j:02d}" for j in range(b)],
        }
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return out


def target_layout(n_classes: int) -> dict[str, slice]:
    """Where each label source sits in the synthetic targets (see synthetic_head_batches)."""
    c = n_classes
    return {"primary": slice(0, c), "voice": slice(c, 2 * c), "face": slice(2 * c, 3 * c), "av": slice(3 * c, 4 * c), "valence": slice(4 * c, 4 * c + 1)}


def _child_head(job: dict[str, Any]) -> dict[str, Any]:
    import importlib

    import torch

    from finetune.heads import BuildContext
    from finetune.run import default_loss
    from finetune.trainer import TrainSettings, fit
    from ssl_aver.models.encoder import EncoderConfig, SSLEncoder

    settings = BenchSettings(**{**job["settings"], "face_every": tuple(job["settings"]["face_every"]), "scale_factors": tuple(job["settings"]["scale_factors"])})
    device = settings.device
    torch.manual_seed(settings.seed)
    encoder_dir = Path(job["work"]) / "encoder"
    if not (encoder_dir / "config.json").is_file():
        SSLEncoder(EncoderConfig()).save_pretrained(encoder_dir)
    module, _, name = job["spec"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    base_mb = peak_rss_mb()
    ctx = BuildContext(
        n_classes=settings.n_classes, task="multiclass", encoder_dir=str(encoder_dir), audio_shape=(130,), video_shape=(settings.video_dim,),
        class_counts=np.full(settings.n_classes, 10), extra={"target_layout": target_layout(settings.n_classes)},
    )
    model = cls.from_config(cls.defaults(), settings.n_classes, ctx).to(device)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    train = _TimedLoader(synthetic_head_batches(settings, settings.head_batches, device, settings.seed), sync)
    dev = synthetic_head_batches(settings, 1, device, settings.seed + 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loss_fn = getattr(model, "loss", None) or default_loss("multiclass", settings.n_classes)
    trainer = getattr(model, "fit", None) or (lambda *a, **kw: fit(model, *a, **kw))
    trainer(train, dev, loss_fn=loss_fn, settings=TrainSettings(epochs=1, batch_size=settings.head_batch, mixed_precision=settings.precision),
            device=torch.device(device), progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return {"clips_per_s": train.clips / train.seconds, "passes": train.passes, "params": params, "peak_mb": peak, "base_mb": base_mb,
            "threads": torch.get_num_threads()}


def stage_heads(settings: BenchSettings, work: Path) -> list[dict[str, Any]]:
    """Rows of stage 4: every registered head (or `settings.heads`) at its defaults."""
    from finetune.heads import HEADS

    names = list(settings.heads) if settings.heads else list(HEADS)
    rows = []
    where = f"GPU ({settings.device})" if settings.device == "cuda" else f"CPU, {settings.threads} torch thread(s)"
    for name in names:
        result = run_child("head", {"spec": HEADS[name], "settings": asdict(settings), "work": str(work)}, settings.head_timeout_s, settings)
        if "error" in result:
            rows.append(error_row("4 heads", f"{name}: training", result["error"]))
            continue
        passes = f", {result['passes']} passes (one per training stage)" if result["passes"] > 1 else ""
        rows.append(make_row("4 heads", f"{name}: training", result["clips_per_s"], "clips/s", None, None,
                             f"{where}, {result['params'] / 1e6:.1f}M params, batch {settings.head_batch} x {settings.clip_seconds} s clips{passes}"))
        memory = ("torch.cuda.max_memory_allocated" if settings.device == "cuda"
                  else f"peak RSS of its process (VmHWM; {result['base_mb']:.0f} MB before the model was built)")
        rows.append(make_row("4 heads", f"{name}: peak memory", result["peak_mb"], "MB", None, None, memory))
    return rows


def stage_finetune(settings: BenchSettings, work: Path) -> list[dict[str, Any]]:
    """Rows of stage 6: VAVL's Algorithm-1 step with conformer subsampling 4 vs 1 (paper size),
    bf16 autocast vs fp32 training of `precision_heads`, the loader's read rate of a float16
    25-layer store with and without reader workers, and the comparison grid sharded over 2
    `accelerate launch` processes vs 1 process (goal >= 1.7x on 2 cores)."""
    from finetune.heads import HEADS
    from ssl_aver.app.bench_scale import grid_speedup, store_read_rate, vavl_step_seconds

    rows = []
    where = f"GPU ({settings.device})" if settings.device == "cuda" else f"CPU, {settings.threads} torch thread(s)"
    frames = (150, 90) if settings.preset != "tiny" else (24, 16)
    plain = vavl_step_seconds(1, settings.subsample_batch, *frames, threads=settings.threads)
    sub4 = vavl_step_seconds(4, settings.subsample_batch, *frames, threads=settings.threads)
    rows.append(make_row("6 fine-tuning", "VAVL Algorithm-1 step, subsample 4 vs 1", sub4, "s/step", plain / sub4, None,
                         f"{plain:.2f} s with subsample 1; paper size, batch {settings.subsample_batch}, {frames[0]} audio x 1024 + "
                         f"{frames[1]} video x 1408 frames, CPU, {settings.threads} thread(s); ratio = speed-up"))
    for name in settings.precision_heads:
        results = {p: run_child("head", {"spec": HEADS[name], "settings": asdict(replace(settings, precision=p)), "work": str(work)},
                                settings.head_timeout_s, settings)
                   for p in ("no", "bf16")}
        bad = next((r["error"] for r in results.values() if "error" in r), None)
        if bad:
            rows.append(error_row("6 fine-tuning", f"{name}: bf16 vs fp32 training", bad))
            continue
        fp32, bf16 = results["no"], results["bf16"]
        rows.append(make_row("6 fine-tuning", f"{name}: bf16 vs fp32 training", bf16["clips_per_s"], "clips/s", bf16["clips_per_s"] / fp32["clips_per_s"],
                             None, f"{where}; fp32 {fp32['clips_per_s']:.3g} clips/s; peak {bf16['peak_mb']:.0f} vs {fp32['peak_mb']:.0f} MB; "
                             "ratio = bf16 speed / fp32 speed (CPUs without bf16 units gain nothing)"))
    shape = dict(clips=64, frames=150) if settings.preset != "tiny" else dict(clips=4, frames=10, layers=2, dim=16, batch=2)
    reads = {w: store_read_rate(work, workers=w, **shape) for w in (0, 2)}
    rows.append(make_row("6 fine-tuning", "float16 25-layer store -> batches, 2 reader workers vs 0", reads[2]["clips_per_s"], "clips/s",
                         reads[2]["clips_per_s"] / reads[0]["clips_per_s"], None,
                         f"{reads[2]['mb_per_s']:.0f} MB/s ({reads[0]['clips_per_s']:.0f} clips/s without workers); WavLM-large-shaped "
                         f"[{shape['frames']}, {shape.get('layers', 25)}, {shape.get('dim', 1024)}] float16 clips, batch {shape.get('batch', 32)}, "
                         "page cache warm; a GPU step of batch 32 needs 32 clips"))
    if settings.grid:
        result = grid_speedup(work / "grid")
        rows.append(make_row("6 fine-tuning", "comparison grid, 2 processes vs 1", result["seconds_many"], "s", result["speedup"], GOAL_GRID,
                             f"{result['systems']} tiny systems x 4 splits, 16 epochs, on a generated 320-clip corpus; 1 process {result['seconds_one']:.1f} s; "
                             f"accelerate launch overhead included; tables {'identical' if result['same_table'] else 'DIFFER'}"))
    return rows


# ----------------------------------------------------------------------------- subprocesses


CHILD_JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"build": _child_build, "head": _child_head}


def _child_env(settings: BenchSettings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.device == "cpu":
        env.update({"OMP_NUM_THREADS": str(settings.threads), "MKL_NUM_THREADS": str(settings.threads), "OPENBLAS_NUM_THREADS": str(settings.threads)})
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_child(kind: str, job: dict[str, Any], timeout_s: float, settings: BenchSettings) -> dict[str, Any]:
    """Run `CHILD_JOBS[kind](job)` in a fresh interpreter (own memory peak, own crash); returns
    its result, or {"error": why} when it failed, crashed or ran past `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="ssl-aver-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "ssl_aver.app.bench", "--child", kind, json.dumps(job), str(result_path), str(settings.threads)]
        try:
            proc = subprocess.run(command, check=False, env=_child_env(settings), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s (raise the preset's timeout or use a GPU)"}
        if result_path.is_file():
            return json.loads(result_path.read_text(encoding="utf-8"))
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        return {"error": f"exit code {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _child_main(kind: str, job_json: str, result_path: str, threads: str) -> int:
    if kind == "head":  # only then: importing torch alone adds ~0.5 GB to a build's peak memory
        import torch

        torch.set_num_threads(int(threads))
    try:
        result = CHILD_JOBS[kind](json.loads(job_json))
    except Exception as err:  # the parent turns this into an error row
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    result.setdefault("peak_rss_mb", peak_rss_mb())
    write_json(result_path, result)
    return 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM of /proc/self/status (Linux), else
    ru_maxrss. ru_maxrss alone is wrong for a subprocess on Linux: exec keeps the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


# ----------------------------------------------------------------------------- harness


def machine_rows(settings: BenchSettings, load_start: tuple[float, float, float], seconds: float, timings: dict[str, float]) -> list[dict[str, Any]]:
    """Where and under what load the figures were taken."""
    import torch

    load_end = os.getloadavg()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if settings.device == "cuda" else "none (CPU run)"
    note = (f"{os.cpu_count()} CPUs ({cpu}); GPU: {device}; preset {settings.preset}; CPU figures with torch.set_num_threads({settings.threads}) "
            f"and OMP/MKL at {settings.threads} thread(s) in subprocesses")
    return [
        make_row("machine", "load average (1/5/15 min) at start", load_start[0], "", note=f"{load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}; {note}"),
        make_row("machine", "load average (1/5/15 min) at end", load_end[0], "", note=f"{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}"),
        make_row("machine", "bench wall time", seconds, "s", note=f"python {platform.python_version()}, torch {torch.__version__}; "
                 + ", ".join(f"{name} {t:.0f} s" for name, t in timings.items())),
    ]


def run_bench(out: str | Path, settings: BenchSettings | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run every stage and write OUT/bench.json and OUT/bench.md; returns the rows.

    A stage that fails records an error row and the others still run. Work files go to a
    temporary folder beside the outputs and are removed at the end.
    """
    import torch
    from tqdm.auto import tqdm

    settings = settings or BenchSettings()
    if settings.device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got '{settings.device}'")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch; run with --device cpu")
    if settings.head_batches < 2 or min(settings.scale_factors) < 1 or settings.scale_base < 1:
        raise UserError("head_batches must be >= 2 (the first step is warm-up) and the scaling sizes >= 1")
    from finetune.heads import HEADS

    unknown = [n for n in settings.heads or () if n not in HEADS]
    if unknown:
        raise UserError(f"unknown head(s) {unknown} in --heads; registered heads: {', '.join(HEADS)}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=".bench-work-", dir=out_dir))
    bar = tqdm(total=7, desc="bench", unit="stage", disable=not progress)
    try:
        def stage(name: str, fn: Callable[[], list[dict[str, Any]]]) -> None:
            bar.set_postfix_str(name)
            begun = time.perf_counter()
            try:
                rows[name] = fn()
            except Exception as err:  # one broken stage must not hide the others' figures
                rows[name] = [error_row(name, "stage", err)]
            timings[name] = time.perf_counter() - begun
            bar.update()

        holder: dict[str, Any] = {}

        def data_stage() -> list[dict[str, Any]]:
            holder["data"] = generate_data(work, settings)
            return []

        stage("data", data_stage)
        if "data" not in holder:
            rows = {"data": rows["data"]}
        else:
            data = holder["data"]
            stage("1 audio", lambda: stage_audio(data, settings))
            stage("2 faces", lambda: stage_faces(data, settings))

            def scaling() -> list[dict[str, Any]]:
                found, holder["store"] = stage_scaling(data, settings, work)
                return found

            stage("5 scaling", scaling)
            stage("3 pretrain", lambda: stage_pretrain(holder.get("store"), settings))
            stage("4 heads", lambda: stage_heads(settings, work))
            stage("6 fine-tuning", lambda: stage_finetune(settings, work))
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
        shutil.rmtree(work, ignore_errors=True)
    ordered = [r for name in ("data", *STAGE_NAMES) for r in rows.get(name, [])]
    ordered += machine_rows(settings, load_start, time.perf_counter() - started, timings)
    write_json(out_dir / BENCH_JSON, ordered)
    atomic_write_text(out_dir / BENCH_MD, markdown_table(ordered, f"ssl-aver bench ({settings.preset}, {settings.device})"))
    return ordered


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the pretraining/head measurements")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="the quick preset (a few minutes on 2 CPU cores; the default)")
    sizes.add_argument("--preset", choices=list(PRESETS), default=None, help="sizes: tiny (smoke test), quick, full")
    parser.add_argument("--heads", default=None, help="comma-separated heads to train (default: every registered head)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = replace(PRESETS[args.preset or "quick"], device=args.device)
    if args.heads:
        settings = replace(settings, heads=tuple(h.strip() for h in args.heads.split(",") if h.strip()))
    rows = run_bench(args.out, settings, progress=not args.quiet)
    for row in rows:
        if row["goal"] is not None:
            status = "met" if row["met"] else "NOT met" if row["met"] is False else "no figure"
            print(f"{row['stage']:<10} {row['metric']:<55} ratio {_fmt(row['ratio']):>6} (goal {row['goal']}: {status})")
    failed = [r for r in rows if str(r["note"]).startswith("failed:")]
    print(f"{len(rows)} rows, {len(failed)} failed -> {Path(args.out) / BENCH_JSON}, {Path(args.out) / BENCH_MD}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        raise SystemExit(_child_main(*sys.argv[2:]))
    from ssl_aver.app.cli import main

    raise SystemExit(main(["bench", *sys.argv[1:]]))
