"""`ssl-aver vavl-analysis --run DIR`: paper 2's shared-embedding analysis (Sec. 5.3, Fig. 2).

For each split of a finished VAVL run, the trained model embeds the audio and, separately, the
video of every paired test clip through its shared layers (the average-pooled shared output,
residual included: the representation the prediction heads read) and measures the cosine
distance 1 - cos(audio, video) per clip. A high distance means the shared layers keep the two
modalities apart (modality-specific information preserved). Writes OUT/shared_embedding.json
(mean/std/median per split and overall, per-clip distances) and OUT/shared_embedding.png (a
histogram); OUT defaults to the run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ssl_aver.errors import UserError
from ssl_aver.io import read_json, write_json


def load_split_model(run_dir: Path, split: int) -> tuple[Any, Any, Any]:
    """(VAVL model with the split's weights, the run's config, the test AVDataset of the split)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from ssl_aver.av_dataset import AVDataset
    from ssl_aver.splits import apply_split, load_splits

    from finetune.data import load_task
    from finetune.heads import BuildContext, head_class

    cfg = OmegaConf.load(run_dir / "config.yaml")
    if str(cfg.head) != "vavl":
        raise UserError(f"{run_dir} is a '{cfg.head}' run; vavl-analysis needs a VAVL run (head: vavl)")
    summary = read_json(run_dir / "metrics.json")
    stores = summary["stores"]
    task = load_task(cfg.data)
    parts = apply_split(task.labels, load_splits(run_dir / "splits.csv")[split])
    test = AVDataset(parts["test"], task.all_targets, audio=stores["audio"], video=stores["video"], require="both")
    ctx = BuildContext(
        n_classes=len(task.classes), task=task.task, encoder_dir=cfg.encoder, audio_shape=test.audio_shape, video_shape=test.video_shape,
        extra={"target_layout": task.target_layout()},
    )
    model = head_class("vavl").from_config(cfg.model, len(task.classes), ctx)
    weights = run_dir / f"split_{split:02d}" / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the run did not finish split {split}")
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), cfg, test


def cosine_distances(model: Any, dataset: Any, batch_size: int = 32) -> tuple[list[str], np.ndarray]:
    """Clip ids and 1 - cos(shared audio embedding, shared video embedding) of each paired clip."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
    clips: list[str] = []
    out: list[np.ndarray] = []
    with torch.no_grad():
        for batch in loader:
            both = (batch["has_audio"] & batch["has_video"]).tolist()
            audio, video = model.shared_embeddings(batch)
            out.append((1.0 - torch.nn.functional.cosine_similarity(audio, video, dim=-1)).numpy())
            clips += [c for c, keep in zip(batch["clips"], both) if keep]
    return clips, np.concatenate(out) if out else np.zeros(0)


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values))}


def analyse(run_dir: str | Path, out_dir: str | Path | None = None, splits: Sequence[int] | None = None) -> dict[str, Any]:
    """Cosine distances for the chosen splits (default: all); writes JSON + PNG, returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    if not (run / "metrics.json").is_file() or not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a finished fine-tuning run (no metrics.json/config.yaml); run `ssl-aver finetune` with head: vavl first")
    n_splits = len(read_json(run / "metrics.json")["splits"])
    chosen = list(range(n_splits)) if not splits else list(splits)
    bad = [k for k in chosen if not 0 <= k < n_splits]
    if bad:
        raise UserError(f"split(s) {bad} out of range: the run has splits 0..{n_splits - 1}")
    out = Path(out_dir) if out_dir else run
    out.mkdir(parents=True, exist_ok=True)
    per_split: dict[str, Any] = {}
    every = []
    for k in chosen:
        model, _, test = load_split_model(run, k)
        clips, dist = cosine_distances(model, test)
        if not dist.size:
            raise UserError(f"split {k}: no test clip has both audio and video")
        per_split[str(k)] = {**_stats(dist), "clips": dict(zip(clips, map(float, dist)))}
        every.append(dist)
    pooled = np.concatenate(every)
    report = {"run": str(run), "embedding": "average-pooled shared-layer output (residual included)", "overall": _stats(pooled), "splits": per_split}
    write_json(out / "shared_embedding.json", report)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(pooled, bins=30, range=(0.0, max(1.0, float(pooled.max()))), color="#6a51a3")
    ax.axvline(pooled.mean(), color="black", linestyle="--", label=f"mean {pooled.mean():.3f}")
    ax.set_xlabel("cosine distance, shared audio vs visual embedding")
    ax.set_ylabel("test clips")
    ax.legend()
    fig.tight_layout()
    tmp = out / ".shared_embedding.png.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out / "shared_embedding.png")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a finished VAVL fine-tuning run folder (ssl-aver finetune with head: vavl)")
    parser.add_argument("--out", default=None, help="output folder (default: the run folder)")
    parser.add_argument("--splits", default=None, help="comma-separated split numbers (default: all)")


def run(args: argparse.Namespace) -> int:
    try:
        splits = [int(s) for s in args.splits.split(",") if s.strip()] if args.splits else None
    except ValueError:
        raise UserError(f"--splits takes comma-separated split numbers, e.g. 0,1; got {args.splits!r}") from None
    report = analyse(args.run, args.out, splits)
    overall = report["overall"]
    print(f"shared-layer cosine distance (audio vs video, {overall['n']} clips): mean {overall['mean']:.4f} +- {overall['std']:.4f}")
    return 0
