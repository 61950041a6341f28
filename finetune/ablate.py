"""`ssl-aver ablate --config recipes/ablations/pretext_sets.yaml`: paper 1's Table 3.

For each pretext task set (SSL1-SSL5 by default) the encoder is pretrained on the same window
store with the same base recipe, then fine-tuned like every system of `ssl-aver experiment`
on shared splits; the table reports mean macro/micro precision, recall and F1 with paired
t-tests against the reference set (SSL1). Pretraining resumes from its checkpoints and
finished fine-tuning runs are reused, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import write_json
from ssl_aver.pretrain import TASK_SETS
from ssl_aver.store import TASKS

#: Paper 1, Table 3 / Sec. 5.1. T1 = energy, T2 = landmarks (upper/lower, or one whole-face centroid), T3 = AUs.
PAPER_SETS: dict[str, list[str]] = {name.upper(): list(tasks) for name, tasks in TASK_SETS.items()}

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/ablations/pretext_sets",
    "seed": 0,
    "title": "CREMA-D: ablation over pretext task sets",
    "pretrain": {"config": "recipes/pretrain/msp_face.yaml", "store": None, "overrides": []},
    "finetune": {"config": "recipes/finetune/ser_crema_d.yaml", "overrides": []},
    "data": {"root": None},
    "splits": {"k": 20, "seed": 0},
    "sets": None,  # name -> task list; null = PAPER_SETS
    "select": [],  # names of the sets to run; empty = all
    "reference": "SSL1",
    "test": {"metric": "macro_f1", "alternative": "greater", "alpha": 0.05},
}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    cfg = load_config(config, overrides, DEFAULTS)
    if cfg.sets is None:
        cfg.sets = PAPER_SETS
    unknown = sorted(set(cfg.select) - set(cfg.sets))
    if unknown:
        raise UserError(f"select names unknown set(s) {unknown}; sets are {list(cfg.sets)}")
    if cfg.select:
        cfg.sets = {name: list(tasks) for name, tasks in cfg.sets.items() if name in set(cfg.select)}
    if cfg.reference not in cfg.sets:
        raise UserError(f"reference '{cfg.reference}' is not one of the sets {list(cfg.sets)}")
    if not cfg.pretrain.store:
        raise UserError("pretrain.store is not set: give the output folder of `ssl-aver pretext build`")
    return cfg


def _pretrain(cfg: DictConfig, name: str, tasks: list[str], out: Path) -> str:
    from ssl_aver.pretrain import build_config as pretrain_config
    from ssl_aver.pretrain import list_checkpoints, pretrain

    run_dir = out / "pretrain" / name
    encoder = run_dir / "encoder"
    if (encoder / "config.json").is_file():
        return str(encoder)
    resume = "true" if list_checkpoints(run_dir / "checkpoints") else "false"
    overrides = [
        f"data.store={cfg.pretrain.store}", f"output_dir={run_dir}", f"seed={cfg.seed}",
        "tasks=[" + ",".join(tasks) + "]", f"resume={resume}", *cfg.pretrain.overrides,
    ]
    return str(pretrain(pretrain_config(cfg.pretrain.config, overrides))["encoder"])


def ablate(cfg: DictConfig) -> dict[str, Any]:
    from finetune.experiment import run_system
    from finetune.tables import compare, markdown, table_rows

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    known = set(TASKS)
    results = {}
    for name, tasks in cfg.sets.items():
        unknown = sorted(set(tasks) - known)
        if unknown:
            raise UserError(f"set {name}: unknown pretext task(s) {unknown}; known: {sorted(known)}")
        encoder = _pretrain(cfg, str(name), list(tasks), out)
        results[str(name)] = run_system(cfg, str(name), encoder, out)
    significance = compare(results, str(cfg.reference), str(cfg.test.metric), str(cfg.test.alternative), float(cfg.test.alpha))
    rows = table_rows(results)
    marks = {
        str(name): ["✓" if "energy" in tasks else "", _landmark_mark(tasks), "✓" if "au_emotion" in tasks else ""]
        for name, tasks in cfg.sets.items()
    }
    report = {"rows": rows, "significance": significance, "sets": {k: list(v) for k, v in cfg.sets.items()}}
    write_json(out / "table.json", report)
    text = markdown(str(cfg.title), rows, significance, extra_heads=("T1", "T2", "T3"), extra=marks)
    (out / "table.md").write_text(text, encoding="utf-8")
    return report


def _landmark_mark(tasks: Sequence[str]) -> str:
    """Paper 1's T2 column: ✓ for upper+lower centroids, ~ for the single whole-face centroid."""
    if "face_upper" in tasks or "face_lower" in tasks:
        return "✓"
    return "~" if "face_whole" in tasks else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="ablation YAML, e.g. recipes/ablations/pretext_sets.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. pretrain.store=runs/pretext data.root=/data/CREMA-D")


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args.config, args.overrides)
    ablate(cfg)
    print((Path(cfg.output_dir) / "table.md").read_text())
    return 0


def demo_stage(ctx: Any) -> dict[str, Any]:
    """Demo stage `ablation`: SSL1-SSL5 pretrained briefly on the demo store, fine-tuned on 3 splits."""
    from omegaconf import OmegaConf

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "ablations" / "demo.yaml"
    overrides = [*OmegaConf.load(recipe).finetune.overrides, "features.audio.store=" + ctx.results["features"]["audio_store"]]
    cfg = build_config(recipe, [
        f"output_dir={ctx.stage_dir('ablation')}", f"seed={ctx.seed}", f"data.root={ctx.data / 'crema-d'}",
        f"pretrain.store={ctx.results['pretext']['out']}", f"finetune.overrides=[{','.join(overrides)}]",
    ])
    report = ablate(cfg)
    f1 = {row["system"]: round(row["macro_f1"] / 100, 4) for row in report["rows"]}
    p = {name: test["p"] for name, test in report["significance"]["tests"].items()}
    return {
        "run": str(Path(cfg.output_dir)),
        "macro_f1": f1,
        "p_vs_SSL1": p,
        "headline": "macro-F1 " + ", ".join(f"{k} {v:.3f}" for k, v in f1.items()),
    }
