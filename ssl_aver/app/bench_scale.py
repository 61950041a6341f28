"""Fine-tuning at scale, for `ssl-aver bench` stage 6 (app layer: reaches finetune/).

`vavl_step_seconds` times what conformer time subsampling (`model.subsample`) buys VAVL: one
Algorithm-1 step at CREMA-D-like lengths (wav2vec2 frames at 50/s and video at 30/s of a 3 s clip).
`grid_speedup` runs one comparison grid in 1 process vs sharded over 2 `accelerate launch`
processes (issue goal: >= 1.7x on 2 cores), on a generated CSV-manifest corpus whose feature
stores encode the labels (so every job trains for real).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssl_aver.errors import UserError


def vavl_step_seconds(subsample: int, batch: int = 32, audio_frames: int = 150, video_frames: int = 90, threads: int = 1) -> float:
    """Seconds of one Algorithm-1 step (`VAVLHead.train_phase` for audio, video, av) of a paper-size
    VAVL (defaults: 512-d conformers 3 + 3 + 2 layers; 1024-d audio, 1408-d video frames of random
    data, every frame valid, every clip paired) with `model.subsample=subsample`, on the CPU with
    `threads` torch threads; best of 2 steps after one untimed warm-up step."""
    import torch

    from finetune.heads import BuildContext
    from finetune.heads.vavl import VAVLHead
    from finetune.trainer import TrainSettings, make_optimizer

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        ctx = BuildContext(n_classes=6, task="multiclass", audio_shape=(1024,), video_shape=(1408,))
        head = VAVLHead({**VAVLHead.defaults(), "subsample": subsample}, 6, ctx)
        head.train()
        optimizer = make_optimizer(head.parameters(), TrainSettings(lr=5e-5))
        g = torch.Generator().manual_seed(0)
        data = {
            "clips": [str(i) for i in range(batch)],
            "audio": torch.randn(batch, audio_frames, 1024, generator=g), "audio_mask": torch.ones(batch, audio_frames, dtype=torch.bool),
            "video": torch.randn(batch, video_frames, 1408, generator=g), "video_mask": torch.ones(batch, video_frames, dtype=torch.bool),
            "has_audio": torch.ones(batch, dtype=torch.bool), "has_video": torch.ones(batch, dtype=torch.bool),
            "targets": torch.eye(6)[torch.arange(batch) % 6],
        }

        def step() -> float:
            start = time.perf_counter()
            for phase in ("audio", "video", "av"):
                head.train_phase(data, phase, optimizer)
            return time.perf_counter() - start

        step()  # warm-up: allocator, kernels, optimizer state
        return min(step() for _ in range(2))
    finally:
        torch.set_num_threads(previous)


CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def grid_corpus(root: Path, speakers: int = 16, clips_per_speaker: int = 20, seed: int = 0) -> tuple[Path, Path, Path]:
    """A CSV corpus (manifest + empty media placeholders: the runs read the stores) and its audio
    [T, 32] / video [T, 48] stores whose frame means follow each clip's label."""
    from ssl_aver.features.store import ClipFeatures, write_clip_features

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    mu_a, mu_v = rng.standard_normal((len(CLASSES), 32)), rng.standard_normal((len(CLASSES), 48))
    lines, audio, video = ["clip,audio,video,speaker,sex,label"], {}, {}
    for s in range(speakers):
        for i in range(clips_per_speaker):
            clip, label = f"s{s:02d}_{i:03d}", int(rng.integers(len(CLASSES)))
            for ext in ("wav", "mp4"):
                (root / f"{clip}.{ext}").touch()
            lines.append(f"{clip},{clip}.wav,{clip}.mp4,spk{s:02d},{'F' if s % 2 else 'M'},{CLASSES[label]}")
            audio[clip] = ClipFeatures((mu_a[label] + rng.standard_normal((int(rng.integers(40, 60)), 32))).astype(np.float32), 50.0)
            v = (mu_v[label] + rng.standard_normal((int(rng.integers(20, 30)), 48))).astype(np.float32)
            video[clip] = ClipFeatures(v, 25.0, np.ones(len(v), bool))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    stores = root.parent / "stores"
    return (root, write_clip_features(stores / "audio", modality="audio", clips=audio),
            write_clip_features(stores / "video", modality="video", clips=video))


def grid_recipe(work: Path, out: Path, splits: int = 4, epochs: int = 16) -> Path:
    """A comparison of the demo's tiny systems (recipes/compare/demo.yaml, RAVER left out) on the grid corpus."""
    root, audio, video = (work / "corpus", work / "stores" / "audio", work / "stores" / "video")
    if not (root / "manifest.csv").is_file():
        root, audio, video = grid_corpus(root)
    base = work / "base.yaml"
    base.write_text(yaml.safe_dump({
        "progress": False, "data": {"corpus": "csv", "options": {"manifest": "manifest.csv"}, "target": "multiclass"},
        "features": {"audio": {"store": str(audio)}, "video": {"store": str(video)}}, "splits": {"strata": ["sex"]},
        "train": {"epochs": epochs, "lr": 2e-3, "batch_size": 32, "lr_patience": None, "early_stop_patience": None, "num_threads": 1},
        "eval": {"bootstrap": 0},
    }))
    demo = yaml.safe_load((RECIPES / "compare" / "demo.yaml").read_text(encoding="utf-8"))
    recipe = work / f"{out.name}.yaml"
    recipe.write_text(yaml.safe_dump({
        "output_dir": str(out), "finetune": {"config": str(base), "overrides": []}, "data": {"root": str(root)},
        "splits": {"k": splits, "seed": 0}, "bootstrap": 0, "per_emotion": False,
        "systems": [s for s in demo["systems"] if s["head"] != "raver"], "reference": "VAVL",
    }))
    return recipe


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise UserError(f"grid bench run failed ({' '.join(cmd[:4])} ...): {result.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def grid_speedup(work: Path, processes: int = 2) -> dict[str, Any]:
    """Wall time of the same grid in 1 process (`python -m ssl_aver compare`) and in `processes`
    processes (`accelerate launch ... -m ssl_aver compare`, launch overhead included), each from
    an empty output folder; the tables must agree."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    one, many = work / "one", work / "many"
    seconds_one = _timed([sys.executable, "-m", "ssl_aver", "compare", "--config", str(grid_recipe(work, one))], env)
    launcher = Path(sys.executable).parent / "accelerate"
    seconds_many = _timed([str(launcher), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ssl_aver", "compare", "--config",
                           str(grid_recipe(work, many))], env)
    tables = [json.loads((d / "compare.json").read_text())["conditions"] for d in (one, many)]
    same = all(tables[0][c]["systems"][n]["values"] == tables[1][c]["systems"][n]["values"] for c in tables[0] for n in tables[0][c]["systems"])
    jobs = len(tables[0]["av"]["systems"]) + 2  # the AV systems + the two unimodal ones
    return {"seconds_one": seconds_one, "seconds_many": seconds_many, "speedup": seconds_one / seconds_many, "same_table": same,
            "processes": processes, "systems": jobs}


def store_read_rate(work: Path, clips: int = 64, frames: int = 150, layers: int = 25, dim: int = 1024, batch: int = 32,
                    workers: int = 0) -> dict[str, float]:
    """Clips/s and MB/s at which fine-tuning's loader (AVDataset over a float16 layer-stacked store,
    like a 25-layer WavLM-large store of CREMA-D: 3 s clips at 50 frames/s) delivers collated
    batches with `workers` reader processes; the store is written once under `work`."""
    import torch

    from ssl_aver.av_dataset import AVDataset
    from ssl_aver.features.store import ClipFeatures, write_clip_features

    path = work / f"wavlm_like_{clips}x{frames}x{layers}x{dim}"
    names = [f"clip_{i:04d}" for i in range(clips)]
    if not (path / "meta.json").is_file():
        rng = np.random.default_rng(0)
        block = rng.standard_normal((frames, layers, dim)).astype(np.float16)
        write_clip_features(path, {n: ClipFeatures(block, 50.0) for n in names}, "audio", dtype="float16")
    import pandas as pd

    dataset = AVDataset(pd.DataFrame({"clip": names}), [], audio=path, keep_dtype=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=dataset.collate, num_workers=workers,
                                         persistent_workers=workers > 0)
    for _ in loader:  # warm-up: page cache, worker start
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    seconds = time.perf_counter() - start
    return {"clips_per_s": clips / seconds, "mb_per_s": clips * frames * layers * dim * 2 / 2**20 / seconds}
