"""Demo stages that write the papers' tables in miniature: `ser` (paper 1 Table 2), `ablation`
(paper 1 Table 3), `compare` (papers 2-4's comparison tables) and `mer` (paper 5 Table 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from finetune.ablate import ablate
from finetune.ablate import build_config as ablation_config
from finetune.compare import build_config as compare_config
from finetune.compare import compare_systems
from finetune.experiment import build_config as experiment_config
from finetune.experiment import experiment
from finetune.mer_fusion import DECODERS, SCORES, mer_table
from ssl_aver.app.demo import RECIPES, DemoContext
from ssl_aver.errors import UserError


def ser_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `ser`: the pretext-pretrained encoder vs the supervised baseline on 3 splits."""
    recipe = RECIPES / "experiments" / "demo.yaml"
    encoder = ctx.results["pretrain"]["encoder"]
    cfg = experiment_config(recipe, [
        f"output_dir={ctx.stage_dir('ser')}", f"seed={ctx.seed}", f"data.root={ctx.data / 'crema-d'}",
        f"systems=[{{name: supervised, encoder: null}}, {{name: pretext, encoder: {encoder}}}]",
        f"finetune.overrides=[{','.join([*OmegaConf.load(recipe).finetune.overrides, 'features.audio.store=' + ctx.results['features']['audio_store']])}]",
    ])
    report = experiment(cfg, force=True)
    f1 = {name: round(summary["macro_f1"]["mean"], 4) for name, summary in report["systems"].items()}
    test = report["significance"]["tests"]["supervised"]
    return {
        "run": str(Path(cfg.output_dir)),
        "macro_f1": f1,
        "p_value": test["p"],
        "significant": test["significant"],
        "headline": f"macro-F1 supervised {f1['supervised']:.3f} vs pretext {f1['pretext']:.3f} (one-tailed p = {test['p'] if test['p'] is None else round(test['p'], 4)})",
    }


def compare_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `compare`: every comparison system (recipes/compare/demo.yaml) on the demo CREMA-D
    stores, on the demo heads' 3 splits, scored on common clips against RAVER."""
    features = ctx.results.get("features", {})
    if not features.get("audio_store") or not features.get("video_store"):
        raise UserError("the compare demo stage needs the features stage's audio_store and video_store")
    cfg = compare_config(RECIPES / "compare" / "demo.yaml", [
        f"output_dir={ctx.stage_dir('compare')}", f"seed={ctx.seed}", f"data.root={ctx.data / 'crema-d'}",
        f"finetune.overrides=[features.audio.store={features['audio_store']},features.video.store={features['video_store']}]",
    ])
    report = compare_systems(cfg, force=True)
    av = report["conditions"]["av"]["systems"]
    f1 = {name: round(scores["mean"]["macro_f1"], 4) for name, scores in av.items()}
    tests = report["conditions"]["av"]["significance"]["tests"]
    unimodal = {f"{name} ({condition})": round(entry["systems"][name]["mean"]["macro_f1"], 4)
                for condition, entry in report["conditions"].items() if condition != "av" for name in entry["systems"] if name not in av}
    return {
        "run": str(Path(cfg.output_dir)),
        "macro_f1_av": f1,
        "macro_f1_unimodal": unimodal,
        "p_vs_reference": {name: test["p"] for name, test in tests.items()},
        "parameters": {name: info["parameters"] for name, info in report["systems"].items()},
        "headline": "AV macro-F1 " + ", ".join(f"{k} {v:.3f}" for k, v in f1.items())
                    + "; " + ", ".join(f"{k} {v:.3f}" for k, v in unimodal.items()),
    }


def ablation_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `ablation`: SSL1-SSL5 on the demo store (SSL1 = the pretrain stage's encoder), 3 splits."""
    recipe = RECIPES / "ablations" / "demo.yaml"
    overrides = [*OmegaConf.load(recipe).finetune.overrides, "features.audio.store=" + ctx.results["features"]["audio_store"]]
    cfg = ablation_config(recipe, [
        f"output_dir={ctx.stage_dir('ablation')}", f"seed={ctx.seed}", f"data.root={ctx.data / 'crema-d'}",
        f"pretrain.store={ctx.results['pretext']['out']}", f"finetune.overrides=[{','.join(overrides)}]",
        f"reuse={{SSL1: {ctx.stage_dir('pretrain')}}}",
    ])
    report = ablate(cfg, force=True)
    f1 = {row["system"]: round(row["macro_f1"] / 100, 4) for row in report["rows"]}
    p = {name: test["p"] for name, test in report["significance"]["tests"].items()}
    return {
        "run": str(Path(cfg.output_dir)),
        "macro_f1": f1,
        "p_vs_SSL1": p,
        "ssl1_encoder": report["encoders"].get("SSL1"),
        "headline": "macro-F1 " + ", ".join(f"{k} {v:.3f}" for k, v in f1.items()),
    }


def mer_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `mer`: a tiny MER head (recipes/finetune/mer_demo.yaml) on the demo CREMA-D
    stores, the baseline and JDEV decoders with each AFG structure, fused at the decision level. Acoustic
    inputs: the openSMILE store's LLDs and their deltas (two AFG inputs, so the structures
    differ; the demo's tiny WavLM has random weights and carries no emotion); visual: the face
    store, or the stack of the features stage's `video_stores` when it gives several face
    models. Reports the MER score on MER2023's [-5, 5] valence scale (weighted F1 - 0.25 x MSE
    of the DERIVED CREMA-D valence) and the MSE over the test set's valence variance."""
    features = ctx.results.get("features", {})
    if not features.get("audio_store") or not features.get("video_store"):
        raise UserError("the mer demo stage needs the features stage's audio_store and video_store")
    out = ctx.stage_dir("mer")
    faces = list(features.get("video_stores") or [])
    result = mer_table(RECIPES / "finetune/mer_demo.yaml", [
        f"data.root={ctx.data / 'crema-d'}", f"output_dir={out}", f"seed={ctx.seed}",
        f"features.audio.store={features['audio_store']}", f"features.video.store={features['video_store']}",
    ], step=0.25, force=True, video_stores=faces if len(faces) > 1 else ())
    table = {f"{r['structure']}_{r['decoder']}": {k: round(float(r[k]), 4) for k in SCORES} for r in result["rows"]}
    best = {d: max((r for r in result["rows"] if r["decoder"] == d), key=lambda r: r["mer_score"]) for d in DECODERS}
    inputs = result["inputs"]
    return {
        "table": str(out / "table1.md"),
        "rows": table,
        "inputs": inputs,
        "valence_source": result["valence_source"],
        "valence_scale": result["valence_scale"],
        "headline": f"MER score (wF1 - 0.25 MSE, derived valence on [-5, 5]; {inputs['acoustic']} acoustic + {inputs['visual']} visual inputs): "
        + ", ".join(f"{d} {table[f'fused_{d}']['mer_score']:.3f} fused (MSE/var {table[f'fused_{d}']['valence_nmse']:.2f}) / "
                    f"best {best[d]['structure']} {best[d]['mer_score']:.3f}" for d in DECODERS),
    }
