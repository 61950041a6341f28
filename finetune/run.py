"""`ssl-aver finetune --config RECIPE [key=value ...]`: fine-tune a head over K speaker-independent splits.

For every split the head is trained on train actors, chosen on dev (early stopping on dev loss,
best-dev weights restored) and evaluated once on test. The run directory holds the resolved
config, the splits CSV, per split its predictions (clip + one probability column per emotion),
its metrics and its weights, and overall `metrics.json` (per split + mean/std over splits) and
`metrics.md`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ssl_aver.config import load_config, save_config, to_dict
from ssl_aver.errors import UserError
from ssl_aver.io import seed_everything, write_dataframe, write_json
from ssl_aver.models.encoder import EncoderConfig

SUMMARY_METRICS = (
    "accuracy", "macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1",
    "weighted_f1", "sample_precision", "brier",
)

DEFAULTS: dict[str, Any] = {
    "head": "ser",
    "output_dir": "runs/finetune",
    "seed": 0,
    "device": "auto",
    "encoder": None,
    "freeze_encoder": False,
    "progress": True,
    "data": {
        "root": None,
        "votes": None,
        "demographics": None,
        "condition": "av",
        "target": "multiclass",
        "tie_break": "intensity",
        "features": None,
    },
    "splits": {"k": 20, "seed": 0, "file": None, "fractions": [0.7, 0.15, 0.15]},
    "model": {"hidden": 256, "dropout": 0.25, "encoder": asdict(EncoderConfig())},
    "train": {
        "epochs": 20,
        "pretrained_epochs": 5,
        "lr": 7.25e-4,
        "batch_size": 32,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "lr_patience": 5,
        "lr_factor": 0.1,
        "early_stop_patience": 5,
        "grad_clip": 0.0,
        "num_workers": 0,
    },
    "eval": {"bootstrap": 1000, "groups": ["sex", "race", "age_group"]},
}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    cfg = load_config(config, overrides, DEFAULTS)
    if not cfg.data.root:
        raise UserError("data.root is not set: give a CREMA-D-layout folder (AudioWAV/, processedResults/tabulatedVotes.csv), e.g. data.root=/data/CREMA-D")
    if not Path(cfg.data.root).is_dir():
        raise UserError(f"data.root not found: {cfg.data.root}")
    if cfg.encoder is not None and not Path(cfg.encoder).is_dir():
        raise UserError(f"encoder directory not found: {cfg.encoder} (the `encoder/` folder of an `ssl-aver pretrain` run, or null)")
    if int(cfg.splits.k) < 1:
        raise UserError(f"splits.k must be >= 1, got {cfg.splits.k}")
    return cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device=cuda but no GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def _splits(cfg: DictConfig, actors: list[str], out: Path) -> list[dict[str, str]]:
    from ssl_aver.splits import load_splits, make_splits, save_splits

    if cfg.splits.file:
        splits = load_splits(cfg.splits.file)[: int(cfg.splits.k)]
        unknown = sorted(set(actors) - set(splits[0]))
        if unknown:
            raise UserError(f"splits file {cfg.splits.file} has no set for actors {unknown[:5]}")
    else:
        splits = make_splits(actors, int(cfg.splits.k), int(cfg.splits.seed), tuple(cfg.splits.fractions))
    save_splits(splits, out / "splits.csv")
    return splits


def _loader(dataset: Any, batch_size: int, shuffle: bool, seed: int, workers: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=dataset.collate, generator=generator, num_workers=workers,
    )


def _datasets(cfg: DictConfig, kind: str, task: Any, parts: dict[str, Any], store: Path | None, paths: dict[str, str]) -> dict[str, Any]:
    from ssl_aver.av_dataset import AVDataset

    from finetune.data import WaveformDataset

    if kind == "wav2vec2":
        return {name: WaveformDataset(frame, task.targets, paths) for name, frame in parts.items()}
    return {name: AVDataset(frame, task.targets, audio=store, require="audio") for name, frame in parts.items()}


def _train_stats(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of the LLD frames of the training clips (z-normalisation of paper 1, Sec. 4.2)."""
    total = np.zeros(dataset.audio_shape, np.float64)
    square = np.zeros_like(total)
    count = 0
    for clip, _ in dataset.rows:
        frames = np.asarray(dataset.audio.get(clip)[0], np.float64)
        total += frames.sum(0)
        square += (frames**2).sum(0)
        count += len(frames)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(square / max(count, 1) - mean**2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _loss_fn(task: str):
    if task == "multiclass":
        return lambda logits, targets: torch.nn.functional.cross_entropy(logits, targets.argmax(dim=1))
    return lambda logits, targets: torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)


def _aggregate(per_split: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SUMMARY_METRICS:
        values = [m[key] for m in per_split if m.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}
    return out


def _markdown(cfg: DictConfig, summary: dict[str, Any]) -> str:
    lines = [f"# {cfg.head} on CREMA-D ({cfg.data.condition} ratings, {cfg.data.target}), {len(summary['splits'])} splits", ""]
    lines += ["| metric | mean | std |", "| --- | --- | --- |"]
    for key, value in summary["overall"].items():
        lines.append(f"| {key} | {value['mean']:.4f} | {value['std']:.4f} |")
    return "\n".join(lines) + "\n"


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Run the recipe; returns the summary also written to OUT/metrics.json."""
    import pandas as pd
    from safetensors.torch import save_file

    from ssl_aver.metrics import evaluate_predictions
    from ssl_aver.splits import apply_split

    from finetune.data import crema_d_task, ensure_smile_store
    from finetune.heads import head_class
    from finetune.heads.ser import encoder_kind
    from finetune.trainer import TrainSettings, fit, predict

    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    seed_everything(int(cfg.seed))
    device = _device(str(cfg.device))
    task = crema_d_task(cfg.data.root, cfg.data.condition, cfg.data.target, cfg.data.tie_break, cfg.data.votes, cfg.data.demographics)
    kind = encoder_kind(cfg.encoder) if cfg.encoder else "encoder"
    store = None
    paths: dict[str, str] = {}
    if kind == "encoder":
        store = ensure_smile_store(cfg.data.root, cfg.data.features or out / "features" / "smile", progress=bool(cfg.progress))
    else:
        from ssl_aver.corpora.crema_d import read_crema_d

        paths = {c.clip: c.audio for c in read_crema_d(cfg.data.root).clips if c.audio}
    splits = _splits(cfg, sorted(task.labels["actor"].astype(str).unique()), out)
    epochs = int(cfg.train.pretrained_epochs if cfg.encoder else cfg.train.epochs)
    settings = TrainSettings(
        epochs=epochs, lr=float(cfg.train.lr), batch_size=int(cfg.train.batch_size), optimizer=str(cfg.train.optimizer),
        weight_decay=float(cfg.train.weight_decay), betas=tuple(cfg.train.betas), lr_patience=int(cfg.train.lr_patience),
        lr_factor=float(cfg.train.lr_factor), early_stop_patience=int(cfg.train.early_stop_patience), grad_clip=float(cfg.train.grad_clip),
    )
    head_cls = head_class(str(cfg.head))
    groups_cols = [g for g in cfg.eval.groups if g in task.labels.columns]
    per_split: list[dict[str, Any]] = []
    for k, split in enumerate(splits):
        seed_everything(int(cfg.seed) + k)
        parts = apply_split(task.labels, split)
        for name, frame in parts.items():
            if len(frame) == 0:
                raise UserError(f"split {k}: the {name} set is empty; use more actors or other splits.fractions")
        data = _datasets(cfg, kind, task, parts, store, paths)
        stats = _train_stats(data["train"]) if kind == "encoder" and cfg.encoder is None else None
        model = head_cls.build(len(task.classes), cfg.encoder, to_dict(cfg.model.encoder), int(cfg.model.hidden), float(cfg.model.dropout), stats)
        if cfg.freeze_encoder:
            for p in model.branch.parameters():
                p.requires_grad_(False)
        batch = int(cfg.train.batch_size)
        workers = int(cfg.train.num_workers)
        result = fit(
            model, _loader(data["train"], batch, True, int(cfg.seed) + k, workers), _loader(data["dev"], batch, False, 0, workers),
            _loss_fn(task.task), settings, device, progress=bool(cfg.progress),
        )
        clips, probs = predict(model, _loader(data["test"], batch, False, 0, workers), device, multilabel=task.task == "multilabel")
        test = parts["test"].set_index("clip").loc[clips]
        groups = {g: test[g].astype(str).to_numpy() for g in groups_cols}
        metrics = evaluate_predictions(
            probs, test[task.targets].to_numpy(np.float32), task.task, task.classes, groups=groups or None,
            bootstrap=int(cfg.eval.bootstrap), seed=int(cfg.seed) + k,
        )
        metrics.update({"split": k, "best_epoch": result.best_epoch, "best_dev_loss": result.best_dev_loss, "history": result.history})
        split_dir = out / f"split_{k:02d}"
        write_dataframe(split_dir / "predictions.csv", pd.DataFrame(probs, columns=task.classes).assign(clip=clips)[["clip", *task.classes]])
        write_json(split_dir / "metrics.json", metrics)
        save_file({n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}, str(split_dir / "model.safetensors"))
        per_split.append(metrics)
    summary = {
        "head": str(cfg.head),
        "encoder": cfg.encoder,
        "task": task.task,
        "condition": str(cfg.data.condition),
        "clips": len(task.labels),
        "dropped": task.dropped,
        "splits": [{k: m[k] for k in ("split", "best_epoch", "macro_f1", "micro_f1", "accuracy")} for m in per_split],
        "overall": _aggregate(per_split),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "metrics.json", summary)
    (out / "metrics.md").write_text(_markdown(cfg, summary), encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/finetune/ser_crema_d.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")


def run(args: argparse.Namespace) -> int:
    summary = finetune(build_config(args.config, args.overrides))
    overall = summary["overall"]
    print(f"{summary['head']}: macro-F1 {overall['macro_f1']['mean']:.4f} +- {overall['macro_f1']['std']:.4f} over {len(summary['splits'])} splits")
    return 0
