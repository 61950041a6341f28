"""`ssl-aver experiment --config recipes/experiments/table2_crema_d.yaml`: paper 1's Table 2.

Fine-tunes every system (supervised baseline, wav2vec 2.0 baseline, pretext-pretrained encoder,
or any list) with the same base recipe on the same K splits and the same cached features, then
writes the table of mean macro/micro precision, recall and F1 with the paired t-tests. A system
may carry its own fine-tuning overrides (`systems[i].overrides`, e.g. paper 1's 1,200-iteration
schedule of the wav2vec 2.0 baseline). A system's finished splits are reused only when their
recorded inputs (config, encoder sha256, stores, labels, splits) still match, so an interrupted
experiment continues where it stopped and a changed encoder is never reported with old numbers
(`--force` recomputes what changed).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import write_json

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/experiments/table2_crema_d",
    "seed": 0,
    "title": "CREMA-D: SSL pre-trained and fine-tuned models vs supervised learning",
    "finetune": {"config": "recipes/finetune/ser_crema_d.yaml", "overrides": []},
    "data": {"root": None},
    "splits": {"k": 20, "seed": 0},
    "systems": [{"name": "supervised", "encoder": None, "overrides": []}],
    "reference": "supervised",
    "test": {"metric": "macro_f1", "alternative": "greater", "alpha": 0.05},
}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    cfg = load_config(config, overrides, DEFAULTS)
    names = [str(s.get("name")) for s in cfg.systems]
    if len(set(names)) != len(names) or "None" in names:
        raise UserError(f"systems need unique names, got {names}")
    check_systems(cfg.systems, ("name", "encoder", "overrides"))
    if cfg.reference not in names:
        raise UserError(f"reference '{cfg.reference}' is not one of the systems {names}")
    return cfg


def check_systems(systems: Any, allowed: Sequence[str]) -> None:
    """Each system entry is a mapping of known keys (a misspelt key names itself)."""
    for system in systems:
        unknown = sorted(set(system) - set(allowed))
        if unknown:
            raise UserError(f"system '{system.get('name')}': unknown key(s) {unknown}; allowed: {list(allowed)}")


def system_config(cfg: DictConfig, name: str, encoder: str | None, out: Path, extra: Sequence[str] = ()) -> DictConfig:
    """The fine-tuning recipe of one system on the experiment's shared splits and features
    (`extra` = the system's own overrides, applied last)."""
    from finetune.run import build_config as finetune_config

    overrides = [
        f"output_dir={out / 'systems' / name}", f"seed={cfg.seed}", f"data.root={cfg.data.root}", f"splits.k={cfg.splits.k}",
        f"splits.seed={cfg.splits.seed}", f"features.cache={out / 'features'}",
        f"encoder={encoder if encoder else 'null'}", f"splits.file={shared_splits(cfg, out)}", *cfg.finetune.overrides, *extra,
    ]
    return finetune_config(cfg.finetune.config, overrides)


def shared_splits(cfg: DictConfig, out: Path) -> Path:
    """OUT/splits.csv: the K actor partitions every system of the experiment uses."""
    from finetune.run import build_config as finetune_config
    from finetune.run import write_shared_splits

    from finetune.grid import process_state

    base = finetune_config(cfg.finetune.config, [f"data.root={cfg.data.root}", *cfg.finetune.overrides])
    state = process_state()
    if state.is_main_process:
        write_shared_splits(base, int(cfg.splits.k), int(cfg.splits.seed), out / "splits.csv")
    state.wait_for_everyone()
    return out / "splits.csv"


def experiment(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Fine-tune every system on the shared splits (one grid, `finetune.grid`); write table.json and table.md."""
    from finetune.grid import is_main_process, run_grid
    from finetune.tables import compare, markdown, table_rows

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out)
    configs = {}
    for system in cfg.systems:
        encoder = system.get("encoder")
        if encoder and not Path(encoder).is_dir():
            raise UserError(f"system '{system.name}': encoder directory not found: {encoder}")
        configs[str(system.name)] = system_config(cfg, str(system.name), encoder, out, list(system.get("overrides") or []))
    results = run_grid(configs, force=force)
    if not is_main_process():
        return {}
    significance = compare(results, str(cfg.reference), str(cfg.test.metric), str(cfg.test.alternative), float(cfg.test.alpha))
    rows = table_rows(results)
    report = {"rows": rows, "significance": significance, "systems": {k: v["overall"] for k, v in results.items()}}
    write_json(out / "table.json", report)
    (out / "table.md").write_text(markdown(str(cfg.title), rows, significance), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. recipes/experiments/table2_crema_d.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")
    parser.add_argument("--force", action="store_true", help="recompute systems whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    from finetune.grid import is_main_process

    cfg = build_config(args.config, args.overrides)
    experiment(cfg, force=args.force)
    if is_main_process():
        print((Path(cfg.output_dir) / "table.md").read_text())
    return 0
