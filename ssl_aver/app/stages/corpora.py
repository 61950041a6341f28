"""Demo stages on the corpora: `corpus` (generate the demo corpora) and `crema_labels` (CREMA-D
labels and speaker-independent splits)."""

from __future__ import annotations

from typing import Any

from ssl_aver.app.demo import DemoContext
from ssl_aver.app.demo_corpora.generate import make_demo_corpus
from ssl_aver.app.demo_corpora.msp_improv import make_demo_msp_improv
from ssl_aver.crema_d_labels import EMOTIONS, write_labels
from ssl_aver.io import atomic_write_text, write_json


def corpus_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `corpus`: generate the default demo corpora in ctx.data, or reuse a complete
    one made with the same seed (a rerun then takes well under a second); then the MSP-IMPROV-layout
    corpus of the regression stage in ctx.data / "msp-improv"."""
    summary = make_demo_corpus(ctx.data, seed=ctx.seed, force=True)
    improv = make_demo_msp_improv(ctx.data / "msp-improv", seed=ctx.seed, force=True)
    improv_headline = ("reused: " if improv["reused"] else "") + improv["headline"]
    return {
        "unlabeled_clips": summary["unlabeled"]["clips"],
        "openface_files": summary["unlabeled"]["clips"],
        "crema_d_actors": len(summary["crema_d"]["actors"]),
        "crema_d_clips": summary["crema_d"]["clips"],
        "reused": summary["reused"],
        "generation_seconds": summary["seconds"],
        "msp_improv_clips": improv["clips"],
        "msp_improv_speakers": len(improv["speakers"]),
        "msp_improv_reused": improv["reused"],
        "msp_improv_seconds": improv["seconds"],
        "msp_improv_headline": improv_headline,
        "headline": ("reused: " if summary["reused"] else "") + summary["headline"] + "; " + improv_headline,
    }


def crema_labels_stage(ctx: DemoContext) -> dict[str, Any]:
    """Demo stage `crema_labels`: labels + summary from the demo CREMA-D ratings, K=3 speaker-independent splits
    stratified by race and sex (with how many test sets hold each group),
    and a reference score: voice-only raters' distributions taken as predictions of the
    audio-visual multi-hot labels (how much the AV label differs from what the voice alone
    conveys), with fairness by sex. Writes into OUT/crema_labels/."""
    import pandas as pd

    from ssl_aver.evaluate import metrics_markdown
    from ssl_aver.metrics import evaluate_predictions
    from ssl_aver.splits import actor_groups, group_coverage, make_splits, save_splits

    root = ctx.data / "crema-d"
    out = ctx.stage_dir("crema_labels")
    summary = write_labels(root / "processedResults" / "tabulatedVotes.csv", out, root / "VideoDemographics.csv")
    labels = pd.read_csv(out / "labels.csv", dtype={"actor": str, "age": str})
    demographics = actor_groups(labels)
    splits = make_splits(labels["actor"], k=3, seed=ctx.seed, demographics=demographics)
    save_splits(splits, out / "splits.csv")
    voice = [f"voice_{e}_p" for e in EMOTIONS]
    av = [f"av_{e}_p" for e in EMOTIONS]
    rated = labels.dropna(subset=voice + av)
    result = evaluate_predictions(
        rated[voice].to_numpy(), rated[av].to_numpy(), "multilabel", EMOTIONS,
        groups={"sex": rated["sex"].tolist()}, bootstrap=200, seed=ctx.seed,
    )
    write_json(out / "voice_raters_vs_av_labels.json", result)
    atomic_write_text(out / "voice_raters_vs_av_labels.md", metrics_markdown(result))
    test_sizes = [sum(v == "test" for v in s.values()) for s in splits]
    return {
        "clips": summary["clips"],
        "actors": summary["actors"],
        "ties": summary["ties"],
        "av_positives": summary["positives"]["av"],
        "test_actors_per_split": test_sizes,
        "test_sets_per_group": group_coverage(splits, demographics or {}),
        "voice_raters_macro_f1": result["macro_f1"],
        "headline": (f"{summary['clips']} clips, {summary['actors']} actors, 3 splits; voice raters vs AV labels "
                     f"macro-F1 {result['macro_f1']:.3f} [{result['ci']['macro_f1'][0]:.3f}, "
                     f"{result['ci']['macro_f1'][1]:.3f}]"),
    }
