"""`ssl-aver experiment --config recipes/experiments/table2_crema_d.yaml`: paper 1's Table 2.

Fine-tunes every system (supervised baseline, wav2vec 2.0 baseline, pretext-pretrained encoder,
or any list) with the same base recipe on the same K splits and the same cached features, then
writes the table of mean macro/micro precision, recall and F1 with the paired t-tests. A system
whose run directory already holds metrics.json for the same resolved config is reused, so an
interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import read_json, write_json

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/experiments/table2_crema_d",
    "seed": 0,
    "title": "CREMA-D: SSL pre-trained and fine-tuned models vs supervised learning",
    "finetune": {"config": "recipes/finetune/ser_crema_d.yaml", "overrides": []},
    "data": {"root": None},
    "splits": {"k": 20, "seed": 0},
    "systems": [{"name": "supervised", "encoder": None}],
    "reference": "supervised",
    "test": {"metric": "macro_f1", "alternative": "greater", "alpha": 0.05},
}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    cfg = load_config(config, overrides, DEFAULTS)
    names = [str(s.get("name")) for s in cfg.systems]
    if len(set(names)) != len(names) or "None" in names:
        raise UserError(f"systems need unique names, got {names}")
    if cfg.reference not in names:
        raise UserError(f"reference '{cfg.reference}' is not one of the systems {names}")
    return cfg


def run_system(cfg: DictConfig, name: str, encoder: str | None, out: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Fine-tune one system on the experiment's shared splits and features (reused when done)."""
    from finetune.run import build_config as finetune_config
    from finetune.run import finetune

    run_dir = out / "systems" / name
    overrides = [
        f"output_dir={run_dir}", f"seed={cfg.seed}", f"data.root={cfg.data.root}", f"splits.k={cfg.splits.k}",
        f"splits.seed={cfg.splits.seed}", f"features.cache={out / 'features'}",
        f"encoder={encoder if encoder else 'null'}", f"splits.file={shared_splits(cfg, out)}", *cfg.finetune.overrides, *extra,
    ]
    sub = finetune_config(cfg.finetune.config, overrides)
    resolved = OmegaConf.to_yaml(sub)
    if (run_dir / "metrics.json").is_file() and (run_dir / "config.yaml").is_file() and (run_dir / "config.yaml").read_text() == resolved:
        return read_json(run_dir / "metrics.json")
    return finetune(sub)


def shared_splits(cfg: DictConfig, out: Path) -> Path:
    """The K actor partitions every system of the experiment uses (made once, then reused)."""
    from finetune.data import crema_d_task
    from finetune.run import build_config as finetune_config
    from ssl_aver.splits import make_splits, save_splits

    path = out / "splits.csv"
    if not path.is_file():
        base = finetune_config(cfg.finetune.config, [f"data.root={cfg.data.root}", *cfg.finetune.overrides])
        task = crema_d_task(base.data.root, base.data.condition, base.data.target, base.data.tie_break, base.data.votes, base.data.demographics)
        actors = sorted(task.labels["actor"].astype(str).unique())
        save_splits(make_splits(actors, int(cfg.splits.k), int(cfg.splits.seed), tuple(base.splits.fractions)), path)
    return path


def experiment(cfg: DictConfig) -> dict[str, Any]:
    from finetune.tables import compare, markdown, table_rows

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    results = {}
    for system in cfg.systems:
        encoder = system.get("encoder")
        if encoder and not Path(encoder).is_dir():
            raise UserError(f"system '{system.name}': encoder directory not found: {encoder}")
        results[str(system.name)] = run_system(cfg, str(system.name), encoder, out)
    significance = compare(results, str(cfg.reference), str(cfg.test.metric), str(cfg.test.alternative), float(cfg.test.alpha))
    rows = table_rows(results)
    report = {"rows": rows, "significance": significance, "systems": {k: v["overall"] for k, v in results.items()}}
    write_json(out / "table.json", report)
    (out / "table.md").write_text(markdown(str(cfg.title), rows, significance), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. recipes/experiments/table2_crema_d.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args.config, args.overrides)
    experiment(cfg)
    print((Path(cfg.output_dir) / "table.md").read_text())
    return 0


def demo_stage(ctx: Any) -> dict[str, Any]:
    """Demo stage `ser`: the pretext-pretrained encoder vs the supervised baseline on 3 splits."""
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "experiments" / "demo.yaml"
    encoder = ctx.results["pretrain"]["encoder"]
    cfg = build_config(recipe, [
        f"output_dir={ctx.stage_dir('ser')}", f"seed={ctx.seed}", f"data.root={ctx.data / 'crema-d'}",
        f"systems=[{{name: supervised, encoder: null}}, {{name: pretext, encoder: {encoder}}}]",
        f"finetune.overrides=[{','.join([*OmegaConf.load(recipe).finetune.overrides, 'features.audio.store=' + ctx.results['features']['audio_store']])}]",
    ])
    report = experiment(cfg)
    f1 = {name: round(summary["macro_f1"]["mean"], 4) for name, summary in report["systems"].items()}
    test = report["significance"]["tests"]["supervised"]
    return {
        "run": str(Path(cfg.output_dir)),
        "macro_f1": f1,
        "p_value": test["p"],
        "significant": test["significant"],
        "headline": f"macro-F1 supervised {f1['supervised']:.3f} vs pretext {f1['pretext']:.3f} (one-tailed p = {test['p'] if test['p'] is None else round(test['p'], 4)})",
    }
