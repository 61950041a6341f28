"""`ssl-aver two-stage-tables --config recipes/two_stage/tables.yaml`: paper 3's Tables 1, 3, 4 and 5.

Trains every listed model (recipes/two_stage/model_01..12.yaml) on the same K speaker-independent
splits with the same cached features, then pools each model's test predictions over the splits
(every (split, clip) prediction against the clip's audio-visual multi-hot label) and evaluates
them once with `ssl_aver.metrics.evaluate_predictions`:
    Table 1  macro-F1 and weighted-F1 with bootstrap intervals
    Table 3  F1 per emotion (with intervals) and the Brier score
    Table 4  macro-F1 per race group, performance bias (with interval), DPD, EOD
    Table 5  the same per sex
Choice: the paper does not say how its intervals were drawn; pooling the test predictions of all
splits and bootstrapping the pooled samples gives one interval per model. A model's finished
splits are reused when their recorded inputs (inputs.json: config, stores, labels, splits) still
match, so an interrupted run continues where it stopped; changed inputs stop the run naming them
(`--force` recomputes). Writes OUT/tables.json (machine-readable) and OUT/tables.md.

Significance (`test:`): the paper's tables say only "Bold results assert statistical
significance", without naming the test. The default follows paper 2 (VAVL, the same group's
protocol this model builds on: "a two-tailed t-test, asserting a significance level at p-value <
0.05"): a paired two-tailed t-test of the reference model (`test.reference`, default 12, the
paper's "Proposed") against every other model on `test.metric` (macro-F1), over the per-split
test scores of the shared splits (finetune.tables.compare: paired by split id). Table 1 stars
the reference when it is significantly better than every other model and gives each model's p.
Each model's parameter count (whole head; acoustic and visual sets) is in both outputs, so the
equal-capacity comparison of models 10, 11 and 12 can be checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import write_json

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/two_stage/tables",
    "seed": 0,
    "progress": True,
    "data": {"root": None},
    "splits": {"k": 5, "seed": 0},
    "overrides": [],
    "eval": {"bootstrap": 1000, "level": 0.95},
    "test": {"reference": 12, "metric": "macro_f1", "alternative": "two-sided", "alpha": 0.05},
    "models": [],
}

HEAD_INPUTS = {"two_stage_audio": (True, False), "two_stage_video": (False, True), "two_stage": (True, True)}
TABLE3_ORDER = ("anger", "sadness", "disgust", "fear", "neutral", "happiness")


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The tables config (checked strictly), with data.root, at least one model and a valid test."""
    from finetune.run import SUMMARY_METRICS
    from finetune.tables import check_test

    cfg = load_config(config, overrides, DEFAULTS)
    if not cfg.data.root:
        raise UserError("data.root is not set: give the CREMA-D folder, e.g. data.root=/data/CREMA-D")
    if not cfg.models:
        raise UserError("no models listed: give `models: [{index: 1, recipe: recipes/two_stage/model_01.yaml, elicited: Voice}, ...]`")
    indices = [int(m.index) for m in cfg.models]
    if len(set(indices)) != len(indices):
        raise UserError(f"model indices must be unique, got {indices}")
    if int(cfg.test.reference) not in indices:
        raise UserError(f"test.reference={cfg.test.reference} is not a listed model index {sorted(indices)}; set test.reference to one of them")
    if cfg.test.metric not in SUMMARY_METRICS:
        raise UserError(f"test.metric={cfg.test.metric} is not a per-split score; choose one of {list(SUMMARY_METRICS)}")
    check_test(str(cfg.test.alternative), float(cfg.test.alpha))
    return cfg


def _model_config(cfg: DictConfig, model: Any, out: Path, splits_file: Path) -> DictConfig:
    from finetune.run import build_config as finetune_config

    run_dir = out / "models" / f"model_{int(model.index):02d}"
    return finetune_config(str(model.recipe), [
        f"output_dir={run_dir}", f"seed={cfg.seed}", f"data.root={cfg.data.root}", f"splits.k={cfg.splits.k}",
        f"splits.seed={cfg.splits.seed}", f"splits.file={splits_file}", f"features.cache={out / 'features'}",
        "eval.bootstrap=0", f"progress={str(bool(cfg.progress)).lower()}", *cfg.overrides,
    ])


def pooled_predictions(run_dir: Path, n_splits: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Clip ids, probabilities and class names of the primary test condition over all splits."""
    import pandas as pd

    frames = []
    for k in range(n_splits):
        path = run_dir / f"split_{k:02d}" / "predictions.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing; rerun the model (delete {run_dir / 'metrics.json'})")
        frames.append(pd.read_csv(path, dtype={"clip": str}))
    table = pd.concat(frames, ignore_index=True)
    classes = [c for c in table.columns if c != "clip"]
    return table["clip"].tolist(), table[classes].to_numpy(np.float64), classes


def parameter_counts(run_dir: Path) -> dict[str, int]:
    """Parameters of a trained model (whole head; acoustic and visual sets), rebuilt from its run."""
    from finetune.predict import load

    return load(run_dir, device="cpu", check_features=False).model.parameter_counts()


def _ci(value: float, ci: Sequence[float] | None, scale: float = 1.0) -> dict[str, Any]:
    return {"value": value * scale, "ci": [c * scale for c in ci] if ci else None}


def model_row(index: int, elicited: str, head: str, scores: dict[str, Any], parameters: dict[str, int]) -> dict[str, Any]:
    """Everything Tables 1, 3, 4 and 5 show for one model, from pooled evaluation scores."""
    audio, video = HEAD_INPUTS.get(head, (True, True))
    ci = scores.get("ci", {})
    row: dict[str, Any] = {
        "index": index, "audio": audio, "video": video, "elicited": elicited, "n": scores["n"], "parameters": parameters,
        "macro_f1": _ci(scores["macro_f1"], ci.get("macro_f1")),
        "weighted_f1": _ci(scores["weighted_f1"], ci.get("weighted_f1")),
        "per_emotion_f1": {e: _ci(v, scores.get("per_class_f1_ci", {}).get(e)) for e, v in scores["per_class_f1"].items()},
        "brier": scores["brier"],
        "fairness": {},
    }
    for attr, report in scores.get("fairness", {}).items():
        row["fairness"][attr] = {
            "groups": {g: _ci(e["macro_f1"], e.get("macro_f1_ci")) | {"n": e["n"]} for g, e in report["groups"].items()},
            "bias": None if report.get("bias") is None else _ci(report["bias"], report.get("bias_ci")),
            "dpd": report.get("dpd"),
            "eod": report.get("eod"),
        }
    return row


def _fmt(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    text = f"{entry['value']:.{digits}f}"
    if entry.get("ci"):
        lo, hi = entry["ci"]
        text += f" ({lo:.{digits}f}, {hi:.{digits}f})"
    return text


def _mark(flag: bool) -> str:
    return "✓" if flag else "-"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 100_000 else str(n)


def markdown(rows: list[dict[str, Any]], level: float, significance: dict[str, Any]) -> str:
    """Tables 1, 3, 4 and 5 in the paper's layout (values with bootstrap intervals); Table 1 adds
    the parameter counts and the paired t-tests against the reference model."""
    from finetune.tables import legend, mark, p_cell

    pct = f"{100 * level:g}%"
    lines = [f"# Paper 3 on CREMA-D: models 1-{max(r['index'] for r in rows)} (pooled test predictions, {pct} bootstrap intervals)", ""]
    lines += ["## Table 1: overall", "",
              f"| Index | Audio | Video | Elicited | Macro F1 | Weighted F1 | Params (audio sets, video sets) | p vs {significance['reference']} |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name, size = str(r["index"]), r["parameters"]
        lines.append(f"| {name}{mark(name, significance)} | {_mark(r['audio'])} | {_mark(r['video'])} | {r['elicited']} | {_fmt(r['macro_f1'])} | "
                     f"{_fmt(r['weighted_f1'])} | {_size(size['total'])} ({_size(size.get('audio_sets'))}, {_size(size.get('video_sets'))}) | "
                     f"{p_cell(name, significance)} |")
    lines += ["", *legend(significance)]
    emotions = [e for e in TABLE3_ORDER if e in rows[0]["per_emotion_f1"]] + [e for e in rows[0]["per_emotion_f1"] if e not in TABLE3_ORDER]
    lines += ["", "## Table 3: F1 per emotion and Brier score", "",
              "| Index | Audio | Video | Elicited | " + " | ".join(e.capitalize() for e in emotions) + " | BS |", "|---" * (5 + len(emotions)) + "|"]
    for r in rows:
        cells = [_fmt(r["per_emotion_f1"][e]) for e in emotions]
        lines.append(f"| {r['index']} | {_mark(r['audio'])} | {_mark(r['video'])} | {r['elicited']} | " + " | ".join(cells) + f" | {r['brier']:.3f} |")
    for number, attr in ((4, "race"), (5, "sex")):
        groups = sorted({g for r in rows for g in r["fairness"].get(attr, {}).get("groups", {})})
        if not groups:
            continue
        lines += ["", f"## Table {number}: {attr} groups (macro-F1), performance bias, fairness", "",
                  "| Index | Audio | Video | Elicited | " + " | ".join(groups) + " | Macro-F1 Bias | DPD | EOD |", "|---" * (7 + len(groups)) + "|"]
        for r in rows:
            report = r["fairness"].get(attr, {})
            cells = [_fmt(report.get("groups", {}).get(g)) for g in groups]
            dpd, eod = report.get("dpd"), report.get("eod")
            lines.append(
                f"| {r['index']} | {_mark(r['audio'])} | {_mark(r['video'])} | {r['elicited']} | " + " | ".join(cells)
                + f" | {_fmt(report.get('bias'), 2)} | {'n/a' if dpd is None else f'{dpd:.3f}'} | {'n/a' if eod is None else f'{eod:.3f}'} |"
            )
    return "\n".join(lines) + "\n"


def two_stage_tables(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Run every model, evaluate the pooled predictions and write tables.json + tables.md."""
    from finetune.data import load_task
    from finetune.grid import is_main_process, process_state, run_grid
    from finetune.run import write_shared_splits
    from finetune.tables import compare
    from ssl_aver.metrics import evaluate_predictions

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = process_state()
    models = sorted(cfg.models, key=lambda m: int(m.index))
    probe = _model_config(cfg, models[0], out, out / "splits.csv")
    if state.is_main_process:
        save_config(cfg, out)
        write_shared_splits(probe, int(cfg.splits.k), int(cfg.splits.seed), out / "splits.csv")
    state.wait_for_everyone()
    splits_file = out / "splits.csv"
    configs = {}
    for model in models:
        sub = _model_config(cfg, model, out, splits_file)
        if (sub.data.condition, sub.data.target) != (probe.data.condition, probe.data.target):
            raise UserError(f"model {model.index} is evaluated on {sub.data.condition}/{sub.data.target} labels, model {models[0].index} on "
                            f"{probe.data.condition}/{probe.data.target}: the tables compare models on the same labels")
        configs[str(int(model.index))] = sub
    summaries = run_grid(configs, force=force)
    if not is_main_process():
        return {}
    task = load_task(probe.data)
    labels = task.labels.set_index(task.labels["clip"].astype(str))
    rows = []
    for model in models:
        sub = configs[str(int(model.index))]
        summary = summaries[str(int(model.index))]
        clips, probs, classes = pooled_predictions(Path(sub.output_dir), len(summary["splits"]))
        test = labels.loc[clips]
        groups = {g: test[g].to_numpy(dtype=object) for g in ("race", "sex") if g in test.columns}
        scores = evaluate_predictions(
            probs, test[task.targets].to_numpy(np.float32), task.task, classes, groups=groups or None,
            bootstrap=int(cfg.eval.bootstrap), seed=int(cfg.seed), level=float(cfg.eval.level),
            known_groups={g: task.labels[g].to_numpy(dtype=object) for g in groups},
        )
        rows.append(model_row(int(model.index), str(model.elicited), str(sub.head), scores, parameter_counts(Path(sub.output_dir))))
    significance = compare(summaries, str(int(cfg.test.reference)), str(cfg.test.metric), str(cfg.test.alternative), float(cfg.test.alpha))
    report = {"splits": int(cfg.splits.k), "level": float(cfg.eval.level), "bootstrap": int(cfg.eval.bootstrap), "models": rows, "significance": significance}
    write_json(out / "tables.json", report)
    (out / "tables.md").write_text(markdown(rows, float(cfg.eval.level), significance), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="tables YAML, e.g. recipes/two_stage/tables.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")
    parser.add_argument("--force", action="store_true", help="recompute models whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    from finetune.grid import is_main_process

    cfg = build_config(args.config, args.overrides)
    two_stage_tables(cfg, force=args.force)
    if is_main_process():
        print((Path(cfg.output_dir) / "tables.md").read_text(encoding="utf-8"))
    return 0
