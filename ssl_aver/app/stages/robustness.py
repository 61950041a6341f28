"""Demo stage `robustness`: missing-modality tests of the demo's head runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from finetune.robustness import MODALITIES, build_config, robustness
from ssl_aver.app.demo import RECIPES, DemoContext
from ssl_aver.errors import UserError


def robustness_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `robustness`: the suite on the demo's RAVER run (+ the other demo head runs and
    every system of the compare stage, on one plot), coarse grid, one seed, both fills.

    `fill_gap` is the mean over the random-masking points of macro-F1 (mask) - macro-F1 (zero):
    how much a head gains from being told which frames are missing.
    """
    runs = [ctx.results.get(name, {}).get("run") for name in ("raver", "vavl", "two_stage", "mer", "compare")]
    runs = [r for r in runs if r and Path(r).is_dir()]
    if not runs:
        raise UserError("the robustness demo stage needs the raver stage's run")
    out = ctx.stage_dir("robustness")
    cfg = build_config(RECIPES / "robustness/demo.yaml", [f"output_dir={out}"])
    report = robustness(cfg, runs)
    compact = {}
    for r in report["runs"]:
        fills = r["fills"]
        entry: dict[str, Any] = {"clean": round(r["clean"]["macro_f1"]["mean"], 4)}
        for fill, by_fill in fills.items():
            entry |= {f"missing_{m}_{fill}": round(v["macro_f1"]["mean"], 4) for m, v in by_fill["missing"].items()}
            entry |= {f"random_{m}_90_{fill}": round(next(p["macro_f1"]["mean"] for p in pts if p["level"] == 0.9), 4)
                      for m, pts in by_fill["random"].items() if any(p["level"] == 0.9 for p in pts)}
        if {"mask", "zero"} <= set(fills):
            gaps = [a["macro_f1"]["mean"] - b["macro_f1"]["mean"] for m in fills["mask"]["random"]
                    for a, b in zip(fills["mask"]["random"][m], fills["zero"]["random"][m])]
            entry["fill_gap"] = round(float(np.mean(gaps)), 4) if gaps else 0.0
        compact[r["label"]] = entry

    def line(label: str, v: dict[str, Any]) -> str:
        parts = [f"clean {v['clean']:.3f}"]
        for m in MODALITIES:
            if f"missing_{m}_mask" in v and f"missing_{m}_zero" in v:
                parts.append(f"no {m} {v[f'missing_{m}_mask']:.3f}/{v[f'missing_{m}_zero']:.3f}")
        if "fill_gap" in v:
            parts.append(f"mask-zero gap {v['fill_gap']:+.3f}")
        return f"{label}: " + ", ".join(parts)

    return {
        "runs": compact,
        "fills": list(report["fills"]),
        "plots": report["plots"],
        "report": str(out / "robustness.json"),
        "headline": "(mask/zero) " + "; ".join(line(label, v) for label, v in compact.items()),
    }
