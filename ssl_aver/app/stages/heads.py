"""Demo stages of the fine-tuning heads: `vavl`, `regression` (VAVL on attributes), `two_stage`
and `raver`, each its tiny recipe in recipes/finetune on the demo stores."""

from __future__ import annotations

from typing import Any

from finetune.run import CONDITION_NAMES, build_config, finetune
from ssl_aver.app.demo import RECIPES, DemoContext
from ssl_aver.errors import UserError


def _head_recipe(ctx: DemoContext, recipe: str, stage: str, label: str) -> dict[str, Any]:
    """A head's demo stage: its tiny recipe on the demo CREMA-D stores (features stage), 3 splits.

    Returns the run directory, macro-F1 per test condition and a headline for the demo table.
    The demo recomputes whatever changed since an earlier demo in the same folder (force).
    """
    features = ctx.results.get("features", {})
    if not features.get("audio_store") or not features.get("video_store"):
        raise UserError(f"the {stage} demo stage needs the features stage's audio_store and video_store")
    out = ctx.stage_dir(stage)
    cfg = build_config(RECIPES / "finetune" / recipe, [
        f"data.root={ctx.data / 'crema-d'}", f"output_dir={out}", f"seed={ctx.seed}",
        f"features.audio.store={features['audio_store']}", f"features.video.store={features['video_store']}",
    ])
    summary = finetune(cfg, force=True)
    f1 = {m: round(v["macro_f1"]["mean"], 4) for m, v in summary["by_modality"].items()}
    return {
        "run": str(out),
        "macro_f1": f1,
        "clips": summary["clips"],
        "splits": len(summary["splits"]),
        "headline": f"{label} macro-F1 " + ", ".join(f"{CONDITION_NAMES.get(m, m)} {v:.3f}" for m, v in f1.items()) + f" ({len(summary['splits'])} splits)",
    }


def vavl_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `vavl`: VAVL on the demo CREMA-D stores, 3 splits, AV / audio / video macro-F1."""
    return _head_recipe(ctx, "vavl_demo.yaml", "vavl", "VAVL")


def regression_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `regression`: VAVL on the MSP-IMPROV-layout demo corpus's arousal / valence /
    dominance, read through its manifest (features extracted from its media), per-attribute CCC
    in each test condition over 4 speaker-independent folds."""
    out = ctx.stage_dir("regression")
    cfg = build_config(RECIPES / "finetune" / "vavl_msp_improv_demo.yaml", [
        f"data.root={ctx.data / 'msp-improv'}", f"output_dir={out}", f"seed={ctx.seed}", f"features.cache={out / 'features'}",
    ])
    summary = finetune(cfg, force=True)
    attributes = [k.removeprefix("ccc_") for k in summary["overall"] if k.startswith("ccc_")]
    ccc = {m: {a: round(v[f"ccc_{a}"]["mean"], 3) for a in attributes} for m, v in summary["by_modality"].items()}
    return {
        "run": str(out),
        "ccc": ccc,
        "clips": summary["clips"],
        "splits": len(summary["splits"]),
        "headline": "VAVL CCC (arousal/valence/dominance) " + ", ".join(
            f"{CONDITION_NAMES.get(m, m)} " + "/".join(f"{c[a]:.2f}" for a in attributes) for m, c in ccc.items()
        ) + f" ({summary['clips']} MSP-IMPROV-layout clips, {len(summary['splits'])} folds)",
    }


def two_stage_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `two_stage`: model 12 (Proposed) on the demo CREMA-D stores, 3 splits."""
    return _head_recipe(ctx, "two_stage_demo.yaml", "two_stage", "two-stage (Proposed)")


def raver_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `raver`: a tiny RAVER (recipes/finetune/raver_demo.yaml) on the demo CREMA-D
    stores, 3 splits."""
    return _head_recipe(ctx, "raver_demo.yaml", "raver", "RAVER")
