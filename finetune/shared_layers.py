"""`ssl-aver shared-layers --run DIR [DIR ...]`: paper 2's shared-embedding analysis (Sec. 5.3, Fig. 2).

For each split of a finished run of a system with layers shared by both modalities (VAVL,
AuxFormer, UAVM: any head with `shared_embeddings`), the trained model embeds the audio and,
separately, the video of every paired test clip through its shared layers (what each head's
`shared_embeddings` docstring names: VAVL's average-pooled shared conformer output with its
residual, UAVM's shared transformer output, AuxFormer's cross-modal stacks) and measures the
cosine distance 1 - cos(audio, video) per clip. A high distance means the shared layers keep the
two modalities apart (modality-specific information preserved). Several runs, or an `ssl-aver
compare` folder (its systems with shared layers), are reported side by side, as in Fig. 2.
Writes OUT/shared_embedding.json (mean/std/median per run, split and overall, per-clip
distances), OUT/shared_embedding.png (the mean distance per system with its spread, and the
distribution of each); OUT defaults to the (first) run folder.
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
    """(the run's head with the split's weights, the run's config, the test AVDataset of its paired clips)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from ssl_aver.av_dataset import AVDataset
    from ssl_aver.splits import apply_split, load_splits

    from finetune.data import load_task
    from finetune.heads import BuildContext, head_class

    cfg = OmegaConf.load(run_dir / "config.yaml")
    cls = head_class(str(cfg.head))
    if not hasattr(cls, "shared_embeddings"):
        raise UserError(f"{run_dir} is a '{cfg.head}' run, a system without layers shared by audio and video; "
                        "shared-layers takes runs of vavl, auxformer or uavm")
    summary = read_json(run_dir / "metrics.json")
    stores = summary["stores"]
    task = load_task(cfg.data)
    parts = apply_split(task.labels, load_splits(run_dir / "splits.csv")[split])
    test = AVDataset(parts["test"], task.all_targets, audio=stores["audio"], video=stores["video"], require="both")
    ctx = BuildContext(
        n_classes=len(task.classes), task=task.task, encoder_dir=cfg.encoder, audio_shape=test.audio_shape, video_shape=test.video_shape,
        extra={"target_layout": task.target_layout()},
    )
    model = cls.from_config(cfg.model, len(task.classes), ctx)
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


def analyse_run(run: Path, splits: Sequence[int] | None = None) -> dict[str, Any]:
    """Cosine distances of one run over the chosen splits (default: all)."""
    if not (run / "metrics.json").is_file() or not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a finished fine-tuning run (no metrics.json/config.yaml); run `ssl-aver finetune` with head: vavl, auxformer or uavm first")
    n_splits = len(read_json(run / "metrics.json")["splits"])
    chosen = list(range(n_splits)) if not splits else list(splits)
    bad = [k for k in chosen if not 0 <= k < n_splits]
    if bad:
        raise UserError(f"split(s) {bad} out of range: {run} has splits 0..{n_splits - 1}")
    per_split: dict[str, Any] = {}
    every = []
    head = ""
    for k in chosen:
        model, cfg, test = load_split_model(run, k)
        head = str(cfg.head)
        clips, dist = cosine_distances(model, test)
        if not dist.size:
            raise UserError(f"{run} split {k}: no test clip has both audio and video")
        per_split[str(k)] = {**_stats(dist), "clips": dict(zip(clips, map(float, dist)))}
        every.append(dist)
    pooled = np.concatenate(every)
    embedding = (type(model).shared_embeddings.__doc__ or "").strip().split("\n")[0]
    return {"run": str(run), "head": head, "embedding": embedding, "overall": _stats(pooled), "splits": per_split, "_values": pooled}


def expand(runs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders to analyse (a compare folder gives its systems with shared layers) and the
    systems of compare folders left out for having none."""
    from finetune.compare import system_runs
    from finetune.heads import head_class
    from omegaconf import OmegaConf

    chosen: list[Path] = []
    skipped: list[str] = []
    for path in map(Path, runs):
        if not (path / "compare.json").is_file():
            chosen.append(path)
            continue
        for run in system_runs(path):
            has_shared = hasattr(head_class(str(OmegaConf.load(run / "config.yaml").head)), "shared_embeddings")
            (chosen.append(run) if has_shared else skipped.append(run.name))
    if not chosen:
        raise UserError(f"none of {[str(r) for r in runs]} holds a system with shared layers (vavl, auxformer, uavm)")
    return chosen, skipped


def analyse(runs: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, splits: Sequence[int] | None = None) -> dict[str, Any]:
    """Cosine distances of every run (side by side); writes JSON + PNG, returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders, skipped = expand([runs] if isinstance(runs, (str, Path)) else list(runs))
    results = {}
    for run in folders:
        name = run.name if run.name not in results else str(run)
        results[name] = analyse_run(run, splits)
    out = Path(out_dir) if out_dir else folders[0]
    out.mkdir(parents=True, exist_ok=True)
    values = {name: r.pop("_values") for name, r in results.items()}
    report = {"runs": results, "skipped": skipped}
    write_json(out / "shared_embedding.json", report)
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(results)
    bars.bar(range(len(names)), [results[n]["overall"]["mean"] for n in names], yerr=[results[n]["overall"]["std"] for n in names],
             capsize=3, color="#6a51a3")
    bars.set_xticks(range(len(names)), [f"{n}\n({results[n]['head']})" for n in names], fontsize=8)
    bars.set_ylabel("mean cosine distance (audio vs video)")
    top = max(1.0, max(float(v.max()) for v in values.values()))
    for name in names:
        hist.hist(values[name], bins=30, range=(0.0, top), histtype="step", label=name)
    hist.set_xlabel("cosine distance, shared audio vs visual embedding")
    hist.set_ylabel("test clips")
    hist.legend(fontsize=7)
    fig.tight_layout()
    tmp = out / ".shared_embedding.png.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out / "shared_embedding.png")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, nargs="+",
                        help="finished runs of systems with shared layers (vavl, auxformer, uavm), or an `ssl-aver compare` folder")
    parser.add_argument("--out", default=None, help="output folder (default: the first run folder)")
    parser.add_argument("--splits", default=None, help="comma-separated split numbers (default: all)")


def run(args: argparse.Namespace) -> int:
    try:
        splits = [int(s) for s in args.splits.split(",") if s.strip()] if args.splits else None
    except ValueError:
        raise UserError(f"--splits takes comma-separated split numbers, e.g. 0,1; got {args.splits!r}") from None
    report = analyse(args.run, args.out, splits)
    for name, result in report["runs"].items():
        overall = result["overall"]
        print(f"{name} ({result['head']}): shared-layer cosine distance (audio vs video, {overall['n']} clips) mean {overall['mean']:.4f} +- {overall['std']:.4f}")
    if report["skipped"]:
        print(f"without shared layers, not analysed: {', '.join(report['skipped'])}")
    return 0
