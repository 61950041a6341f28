"""`ssl-aver ablate --config recipes/ablations/pretext_sets.yaml`: paper 1's Table 3.

For each pretext task set (SSL1-SSL5 by default) the encoder is pretrained on the same window
store with the same base recipe, then fine-tuned like every system of `ssl-aver experiment`
on shared splits; the table reports mean macro/micro precision, recall and F1 with paired
t-tests against the reference set (SSL1). Pretraining resumes from its checkpoints and
finished fine-tuning runs are reused, so an interrupted ablation continues where it stopped;
both only when their recorded inputs (inputs.json) still match, else the run stops naming what
changed (`--force` recomputes). `reuse: {SSL1: runs/pretrain/msp_face}` takes an encoder that
was pretrained elsewhere (Table 2's) when its recorded store and settings are exactly those of
the set, so Table 3's SSL1 row is Table 2's model, as in paper 1; otherwise that set is
pretrained here, with one line saying what differed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import write_json
from ssl_aver.pretrain import TASK_SETS
from ssl_aver.store import TASKS

log = logging.getLogger(__name__)

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
    "reuse": None,  # set name -> a pretraining run folder to take its encoder from when its inputs match
    "reference": "SSL1",
    "test": {"metric": "macro_f1", "alternative": "greater", "alpha": 0.05},
}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    cfg = load_config(config, overrides, DEFAULTS)
    if cfg.sets is None:
        cfg.sets = PAPER_SETS
    for key in ("select", "reuse"):
        unknown = sorted(set(cfg[key] or ()) - set(cfg.sets))
        if unknown:
            raise UserError(f"{key} names unknown set(s) {unknown}; sets are {list(cfg.sets)}")
    if cfg.select:
        cfg.sets = {name: list(tasks) for name, tasks in cfg.sets.items() if name in set(cfg.select)}
    if cfg.reference not in cfg.sets:
        raise UserError(f"reference '{cfg.reference}' is not one of the sets {list(cfg.sets)}")
    if not cfg.pretrain.store:
        raise UserError("pretrain.store is not set: give the output folder of `ssl-aver pretext build`")
    return cfg


def _reusable(name: str, source: str, record: dict[str, Any]) -> str | None:
    """The encoder of pretraining run `source` when it was trained from exactly `record`'s inputs."""
    from ssl_aver import provenance
    from ssl_aver.io import read_json

    run = Path(source)
    encoder = run / "encoder"
    if not (encoder / "config.json").is_file():
        log.warning("%s: reuse source %s holds no finished encoder; pretraining %s here", name, run, name)
        return None
    saved = run / provenance.RECORD
    changed = provenance.changed_inputs(read_json(saved) if saved.is_file() else None, record)
    if changed:
        log.warning("%s: %s was pretrained from other inputs (changed: %s); pretraining %s here", name, run, provenance.describe(changed), name)
        return None
    log.info("%s: reusing the encoder of %s (same store and settings)", name, run)
    return str(encoder)


def _pretrain(cfg: DictConfig, name: str, tasks: list[str], out: Path, force: bool) -> str:
    """The set's encoder: reused (from `reuse` or this ablation's folder) when its inputs match, else pretrained."""
    from ssl_aver import provenance
    from ssl_aver.pretrain import build_config as pretrain_config
    from ssl_aver.pretrain import inputs_record, list_checkpoints, pretrain

    run_dir = out / "pretrain" / name
    overrides = [
        f"data.store={cfg.pretrain.store}", f"output_dir={run_dir}", f"seed={cfg.seed}",
        "tasks=[" + ",".join(tasks) + "]", *cfg.pretrain.overrides,
    ]
    pcfg = pretrain_config(cfg.pretrain.config, overrides)
    record = inputs_record(pcfg)
    source = (cfg.reuse or {}).get(name)
    found = _reusable(name, str(source), record) if source else None
    if found:
        return found
    encoder = run_dir / "encoder"
    done, started = (encoder / "config.json").is_file(), bool(list_checkpoints(run_dir / "checkpoints"))
    if provenance.check_reuse(run_dir, record, finished=done or started, force=force, what=f"pretraining of {name}"):
        if done:
            return str(encoder)
        pcfg.resume = True
    elif done or started:
        from finetune.grid import process_state

        state = process_state()  # every launched process pretrains (DDP); one clears the stale run
        if state.is_main_process:
            shutil.rmtree(run_dir)
        state.wait_for_everyone()
    return str(pretrain(pcfg)["encoder"])


def ablate(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Pretrain (or reuse) and fine-tune every set; write table.json and table.md."""
    from finetune.experiment import system_config
    from finetune.grid import is_main_process, run_grid
    from finetune.tables import compare, markdown, table_rows

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out)
    known = set(TASKS)
    encoders = {}
    for name, tasks in cfg.sets.items():
        unknown = sorted(set(tasks) - known)
        if unknown:
            raise UserError(f"set {name}: unknown pretext task(s) {unknown}; known: {sorted(known)}")
    for name, tasks in cfg.sets.items():
        encoders[str(name)] = _pretrain(cfg, str(name), list(tasks), out, force)
    results = run_grid({str(name): system_config(cfg, str(name), encoders[str(name)], out) for name in cfg.sets}, force=force)
    if not is_main_process():
        return {}
    significance = compare(results, str(cfg.reference), str(cfg.test.metric), str(cfg.test.alternative), float(cfg.test.alpha))
    rows = table_rows(results)
    marks = {
        str(name): ["✓" if "energy" in tasks else "", _landmark_mark(tasks), "✓" if "au_emotion" in tasks else ""]
        for name, tasks in cfg.sets.items()
    }
    report = {"rows": rows, "significance": significance, "sets": {k: list(v) for k, v in cfg.sets.items()}, "encoders": encoders}
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
    parser.add_argument("--force", action="store_true", help="recompute encoders and runs whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    from finetune.grid import is_main_process

    cfg = build_config(args.config, args.overrides)
    ablate(cfg, force=args.force)
    if is_main_process():
        print((Path(cfg.output_dir) / "table.md").read_text())
    return 0
