"""`ssl-aver demo`: every pipeline stage end to end on the embedded demo data.

Stages run in order; each is a function `stage(ctx) -> dict` in a module of
`ssl_aver.app.stages`, named in `STAGES` as "module:function" and imported only when it runs.
Adding a stage is one line. After every stage the report `OUT/report.json` =
{"stages": {name: summary}} is rewritten, so a failed run keeps what it did.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ssl_aver.io import write_json

#: The checkout's recipes: each demo stage runs the tiny demo recipe of its command.
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

#: (stage name, "module:function"); each function takes a DemoContext and returns its summary.
STAGES: list[tuple[str, str]] = [
    ("corpus", "ssl_aver.app.stages.corpora:corpus_stage"),
    ("face", "ssl_aver.app.stages.pretraining:face_stage"),
    ("pretext", "ssl_aver.app.stages.pretraining:pretext_stage"),
    ("pretrain", "ssl_aver.app.stages.pretraining:pretrain_stage"),
    ("crema_labels", "ssl_aver.app.stages.corpora:crema_labels_stage"),
    ("features", "ssl_aver.app.stages.features:features_stage"),
    ("ser", "ssl_aver.app.stages.tables:ser_stage"),
    ("ablation", "ssl_aver.app.stages.tables:ablation_stage"),
    ("vavl", "ssl_aver.app.stages.heads:vavl_stage"),
    ("regression", "ssl_aver.app.stages.heads:regression_stage"),
    ("two_stage", "ssl_aver.app.stages.heads:two_stage_stage"),
    ("raver", "ssl_aver.app.stages.heads:raver_stage"),
    ("compare", "ssl_aver.app.stages.tables:compare_stage"),
    ("mer", "ssl_aver.app.stages.tables:mer_stage"),
    ("robustness", "ssl_aver.app.stages.robustness:robustness_stage"),
    ("predict", "ssl_aver.app.stages.predict:predict_stage"),
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
