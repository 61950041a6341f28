"""Demo stage `predict`: `ssl-aver predict` on held-out demo clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.predict import load
from ssl_aver.app.demo import DemoContext
from ssl_aver.corpora.crema_d import read_crema_d
from ssl_aver.errors import UserError
from ssl_aver.splits import load_splits


def predict_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `predict`: the demo SER run (pretext encoder) and an AV head run, if the demo made
    one, on a few held-out clips of split 0 (wav and flv files of its test actors)."""
    ser = ctx.results.get("ser", {}).get("run")
    if not ser:
        raise UserError("the predict demo stage needs the ser stage's run")
    runs = {"ser": Path(ser) / "systems" / "pretext"}
    for name in ("raver", "vavl", "two_stage", "mer"):
        run_dir = ctx.results.get(name, {}).get("run")
        if run_dir and (Path(run_dir) / "inference.json").is_file():
            runs[name] = Path(run_dir)
            break
    corpus = read_crema_d(ctx.data / "crema-d")
    summary: dict[str, Any] = {"runs": {k: str(v) for k, v in runs.items()}, "predictions": {}}
    lines = []
    for name, run_dir in runs.items():
        split = load_splits(run_dir / "splits.csv")[0]
        test = [c for c in corpus.clips if split.get(c.actor) == "test"][:3]
        files = [c.audio for c in test if c.audio] + [c.video for c in test if c.video]
        predictor = load(run_dir, split=0, device="cpu")
        rows = predictor.predict(files)
        summary["predictions"][name] = [
            {"file": Path(r["path"]).name, "modalities": r["modalities"], "top": r["top"], "error": r["error"],
             "probabilities": {k: round(v, 4) for k, v in r["probabilities"].items()}} for r in rows
        ]
        lines.append(f"{name} ({run_dir}):")
        lines += [f"  {Path(r['path']).name:<26} {r['modalities'] or '-':<6} {r['top'] or r['error']}" for r in rows]
    print("\n".join(lines))
    ok = sum(r["error"] is None for rows in summary["predictions"].values() for r in rows)
    total = sum(len(rows) for rows in summary["predictions"].values())
    summary["headline"] = f"{ok}/{total} held-out files predicted by {', '.join(runs)}"
    return summary
