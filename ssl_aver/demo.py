"""`ssl-aver demo`: every pipeline stage end to end on the embedded demo data.

Stages run in order; each is a function `stage(ctx) -> dict` in its own module, named in
`STAGES` as "module:function" (imported lazily, so `ssl_aver` never imports `pretext` or
`finetune` at import time). Adding a stage is one line. After every stage the report
`OUT/report.json` = {"stages": {name: summary}} is rewritten, so a failed run keeps what it did.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ssl_aver.io import write_json

#: (stage name, "module:function"); each function takes a DemoContext and returns its summary.
STAGES: list[tuple[str, str]] = [
    ("corpus", "ssl_aver.demo_corpus:demo_stage"),
    ("face", "ssl_aver.face:demo_stage"),
    ("pretext", "pretext.build:demo_stage"),
    ("pretrain", "ssl_aver.pretrain:demo_stage"),
    ("crema_labels", "ssl_aver.crema_d_labels:demo_stage"),
    ("features", "ssl_aver.features.extract:demo_stage"),
    ("ser", "finetune.experiment:demo_stage"),
    ("ablation", "finetune.ablate:demo_stage"),
    ("vavl", "finetune.heads.vavl:demo_stage"),
    ("regression", "finetune.heads.vavl:regression_demo_stage"),
    ("two_stage", "finetune.heads.two_stage:demo_stage"),
    ("raver", "finetune.heads.raver:demo_stage"),
    ("mer", "finetune.mer_fusion:demo_stage"),
    ("robustness", "finetune.robustness:demo_stage"),
    ("predict", "finetune.predict:demo_stage"),
]


@dataclass
class DemoContext:
    """What a stage needs: where to write, the demo data, and the earlier stages' summaries."""

    out: Path
    seed: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        """The generated demo corpora: data/unlabeled, data/openface, data/crema-d."""
        return self.out / "data"

    def stage_dir(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _load(target: str) -> Callable[[DemoContext], dict[str, Any]]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _headline(summary: dict[str, Any]) -> str:
    """A stage's short line for the printed table: its `headline`, else its scalar fields."""
    if "headline" in summary:
        return str(summary["headline"])
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str))]
    return ", ".join(parts[:6])


def run_demo(out: str | Path, only: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the stages (all, or those named in `only` plus what they need) and write report.json."""
    ctx = DemoContext(out=Path(out), seed=seed)
    ctx.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"stages": {}}
    rows: list[tuple[str, float, str]] = []
    names = [n for n, _ in STAGES]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            from ssl_aver.errors import UserError

            raise UserError(f"unknown stage(s) {unknown}; stages are: {', '.join(names)}")
        last = max(names.index(n) for n in only)
        names = names[: last + 1]
    for name, target in STAGES:
        if name not in names:
            continue
        print(f"== stage {name}", flush=True)
        start = time.perf_counter()
        summary = _load(target)(ctx)
        seconds = time.perf_counter() - start
        summary = {**summary, "seconds": round(seconds, 2)}
        ctx.results[name] = summary
        report["stages"][name] = summary
        write_json(ctx.out / "report.json", report)
        rows.append((name, seconds, _headline(summary)))
    width = max(len(r[0]) for r in rows)
    print("\nssl-aver demo results")
    print(f"{'stage':<{width}}  {'time':>7}  result")
    for name, seconds, line in rows:
        print(f"{name:<{width}}  {seconds:6.1f}s  {line}")
    print(f"\nreport: {ctx.out / 'report.json'}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    parser.add_argument("--stages", default=None, help="comma-separated stages to run, with the ones before them")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    run_demo(args.out, only=only, seed=args.seed)
    return 0
