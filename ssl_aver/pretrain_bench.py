"""Throughput of the pretraining loop: is the store fast enough, and what does fused attention buy?

    python -m ssl_aver.pretrain_bench --store STORE_DIR [--steps 30] [key=value ...]

Measures windows/s of the same training step (forward, masked multi-task loss, backward, Adam)
fed (a) by the DataLoader over the memory-mapped store and (b) by the same batches already in
memory; their ratio says whether data loading starves training (goal >= 0.95); `store_batch_ms`
is the time to read and collate one batch from the (page-cached) store on its own. Then fused
(SDPA) vs explicit attention on those in-memory batches, and the paper-size encoder (d=130,
10 heads, 5 layers) on batches of 32 two-second windows. The runs compared with each other
take their training steps in turn (interleaved), so load from other processes on a shared
machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ssl_aver.config import to_dict
from ssl_aver.errors import UserError
from ssl_aver.models.encoder import EncoderConfig, SSLEncoder
from ssl_aver.store import AU_CLASSES, WindowStore


def _trainer(cfg: Any, encoder_cfg: EncoderConfig, tasks: list[str], mean: np.ndarray, std: np.ndarray) -> Callable[[dict], int]:
    from ssl_aver.pretrain import PretextModel, task_losses

    torch.manual_seed(int(cfg.seed))
    encoder = SSLEncoder(encoder_cfg)
    encoder.set_normalization(mean, std)
    model = PretextModel(encoder, tasks, cfg.model.head_hidden, float(cfg.model.head_dropout)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.train.lr))

    def step(batch: dict) -> int:
        parts = task_losses(model(batch["features"], batch["padding_mask"]), batch["labels"])
        loss = sum(per.sum() / valid.sum().clamp_min(1) for per, valid, _ in parts.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return int(batch["features"].shape[0])

    return step


def _interleaved_rates(runs: list[tuple[Callable[[dict], int], Iterable[dict]]], warmup: int = 2) -> list[float]:
    """Windows per second of each (training step, batches) run, their steps taken in turn (one
    step of each run, then the next round), so that load from other processes on a shared
    machine hits every run alike; each run's first `warmup` steps are untimed. Fetching a batch
    counts towards its run's time (that is what a store-fed run pays)."""
    iterators = [iter(batches) for _, batches in runs]
    seconds, seen = [0.0] * len(runs), [0] * len(runs)
    round_ = 0
    while True:
        for k, ((step, _), it) in enumerate(zip(runs, iterators, strict=True)):
            start = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                return [n / max(t, 1e-9) for n, t in zip(seen, seconds, strict=True)]
            windows = step(batch)
            if round_ >= warmup:
                seconds[k] += time.perf_counter() - start
                seen[k] += windows
        round_ += 1


def _synthetic_batches(n: int, batch: int, frames: int, dim: int, tasks: list[str], seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = {t: torch.randint(0, len(AU_CLASSES), (batch,), generator=gen) if t == "au_emotion" else torch.randint(0, 2, (batch,), generator=gen).float() for t in tasks}
        out.append({"features": torch.randn(batch, frames, dim, generator=gen), "padding_mask": torch.zeros(batch, frames, dtype=torch.bool), "labels": labels})
    return out


def benchmark_pretrain(store_dir: str | Path, config: Any, steps: int = 30) -> dict[str, Any]:
    """windows/s: store-fed vs in-memory (ratio), fused vs explicit attention, paper-size encoder."""
    from torch.utils.data import DataLoader

    from ssl_aver.pretrain import WindowDataset, collate_windows

    cfg = config
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    store = WindowStore(store_dir)
    tasks = list(cfg.tasks)
    n = min(len(store), (steps + 2) * int(cfg.train.batch_size))
    if n < 3 * int(cfg.train.batch_size):
        raise UserError(f"store {store_dir} has too few windows ({len(store)}) for a benchmark at batch {cfg.train.batch_size}")
    indices = np.arange(n)
    mean, std = store.feature_stats(indices)
    dataset = WindowDataset(store.root, indices, store.labels(tasks))
    loader = DataLoader(
        dataset, batch_size=int(cfg.train.batch_size), shuffle=False, collate_fn=collate_windows,
        num_workers=int(cfg.data.num_workers), persistent_workers=int(cfg.data.num_workers) > 0,
    )  # fmt: skip
    enc = to_dict(cfg.model.encoder)
    fused_cfg = EncoderConfig(**{**enc, "attention": "sdpa"})
    in_memory = list(loader)  # also brings the store's pages into the page cache
    start = time.perf_counter()
    batches_read = sum(1 for _ in loader)
    results: dict[str, Any] = {"windows": n, "batch_size": int(cfg.train.batch_size), "threads": torch.get_num_threads()}
    results["store_batch_ms"] = 1000 * (time.perf_counter() - start) / max(batches_read, 1)
    fed, memory = _interleaved_rates([(_trainer(cfg, fused_cfg, tasks, mean, std), loader), (_trainer(cfg, fused_cfg, tasks, mean, std), in_memory)])
    results["store_fed_windows_per_s"], results["in_memory_windows_per_s"] = fed, memory
    results["store_vs_memory_ratio"] = fed / memory
    explicit_cfg = EncoderConfig(**{**enc, "attention": "explicit"})
    fused, explicit = _interleaved_rates([(_trainer(cfg, fused_cfg, tasks, mean, std), in_memory), (_trainer(cfg, explicit_cfg, tasks, mean, std), in_memory)])
    results["fused_windows_per_s"], results["explicit_windows_per_s"] = fused, explicit
    results["fused_vs_explicit_speedup"] = fused / explicit
    paper = EncoderConfig()
    batches = _synthetic_batches(min(steps, 10) + 2, 32, 124, paper.input_dim, tasks, int(cfg.seed))
    ones = np.ones(paper.input_dim, dtype=np.float32)
    results["paper_size_windows_per_s"], results["paper_size_explicit_windows_per_s"] = _interleaved_rates(
        [(_trainer(cfg, paper, tasks, ones * 0, ones), batches), (_trainer(cfg, EncoderConfig(attention="explicit"), tasks, ones * 0, ones), batches)])
    return results


def main(argv: list[str] | None = None) -> int:
    from ssl_aver.pretrain import build_config

    parser = argparse.ArgumentParser(prog="python -m ssl_aver.pretrain_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="window store folder")
    parser.add_argument("--config", default=None, help="pretraining recipe (defaults: paper settings)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args.config, [*args.overrides, f"data.store={args.store}", "output_dir=unused"])
        print(json.dumps(benchmark_pretrain(args.store, cfg, args.steps), indent=2))
    except UserError as err:
        sys.stderr.write(f"pretrain_bench: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
