"""`ssl-aver compare --config recipes/compare/<table>.yaml`: published systems side by side.

Papers 2-4 place their models against the same published systems (UAVM, AuxFormer, MulT, SFAV,
TSLTM, unimodal conformers, VAVL, RAVER...). Every system listed in the recipe is a registered
head (`finetune.heads.HEADS`) fine-tuned with the same base recipe (`finetune.config`: corpus,
features, training schedule, evaluation) on the same speaker-independent splits (OUT/splits.csv)
and the same cached features; a system may carry its own overrides (its paper's sizes). A
system's finished splits are reused only when their recorded inputs still match
(`ssl_aver.provenance`), so an interrupted comparison continues and a changed input is never
reported with old numbers (`--force` recomputes what changed).

The table is computed from the systems' test predictions, not from their own summaries, so
every system is scored on the SAME clips: per split and test condition, the clips that every
system reporting that condition predicted (an audio-only head also tests clips without a face,
which an audio-visual head cannot; those are left out of every row and counted in the report).
Per condition (audio-visual, audio-only, video-only) and system: macro / micro / weighted F1 and
Brier score (classification) or CCC per attribute (regression), as the mean over splits with a
percentile bootstrap interval of that mean (test clips resampled within each split, the same
resamples for every system), per-emotion F1 with intervals (paper 4 Table 4), the paired t-test
of the reference system against each system on the splits (`test`: paper 2's two-tailed test
by default), the parameter count and the training time. Writes OUT/compare.json, compare.csv,
compare.md and compare.png (the test metric per condition with its intervals). `ssl-aver
robustness --run OUT` tests every system of a comparison and draws their curves on one plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ssl_aver.config import load_config, save_config
from ssl_aver.errors import UserError
from ssl_aver.io import read_json, write_json

DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/compare/table",
    "seed": 0,
    "title": "Comparison with published systems",
    "finetune": {"config": "recipes/compare/base/crema_d_paper2.yaml", "overrides": []},
    "data": {"root": None},
    "splits": {"k": 5, "seed": 0},
    "systems": [{"name": "VAVL", "head": "vavl", "overrides": []}],
    "reference": "VAVL",
    "test": {"metric": "macro_f1", "alternative": "two-sided", "alpha": 0.05},
    "columns": ["macro_f1", "micro_f1", "weighted_f1", "brier"],
    "per_emotion": True,
    "bootstrap": 1000,
    "level": 0.95,
}
SYSTEM_KEYS = ("name", "head", "overrides")
CONDITIONS = {"av": "Audio-visual", "audio": "Audio-only", "video": "Video-only"}
LABELS = {"macro_f1": "Macro F1", "micro_f1": "Micro F1", "weighted_f1": "Weighted F1", "brier": "Brier", "accuracy": "Accuracy",
          "macro_precision": "Macro Prec.", "macro_recall": "Macro Rec.", "brier_distribution": "Brier (dist.)"}


def build_config(config: str | Path | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The comparison recipe over DEFAULTS, checked before any system is trained."""
    from finetune.heads import HEADS
    from finetune.tables import check_test
    from ssl_aver.metrics import SCALAR_METRICS

    cfg = load_config(config, overrides, DEFAULTS)
    names = [str(s.get("name")) for s in cfg.systems]
    if len(set(names)) != len(names) or "None" in names:
        raise UserError(f"systems need unique names, got {names}")
    for system in cfg.systems:
        unknown = sorted(set(system) - set(SYSTEM_KEYS))
        if unknown:
            raise UserError(f"system '{system.get('name')}': unknown key(s) {unknown}; allowed: {list(SYSTEM_KEYS)}")
        if system.get("head") not in HEADS:
            raise UserError(f"system '{system.name}': head {system.get('head')!r} is not registered; heads: {', '.join(HEADS)}")
    if cfg.reference not in names:
        raise UserError(f"reference '{cfg.reference}' is not one of the systems {names}")
    bad = [c for c in cfg.columns if c not in SCALAR_METRICS]
    if bad:
        raise UserError(f"columns {bad} are not metrics; choose from {list(SCALAR_METRICS)}")
    check_test(str(cfg.test.alternative), float(cfg.test.alpha))
    if int(cfg.bootstrap) < 0 or not 0 < float(cfg.level) < 1:
        raise UserError(f"bootstrap must be >= 0 and level in (0, 1), got {cfg.bootstrap} and {cfg.level}")
    return cfg


def system_config(cfg: DictConfig, system: Mapping[str, Any], out: Path, splits: Path) -> DictConfig:
    """The fine-tuning recipe of one system: the shared base recipe, its head, its own overrides."""
    from finetune.run import build_config as finetune_config

    overrides = [
        f"head={system['head']}", f"output_dir={out / 'systems' / system['name']}", f"seed={cfg.seed}", f"data.root={cfg.data.root}",
        f"splits.k={cfg.splits.k}", f"splits.seed={cfg.splits.seed}", f"features.cache={out / 'features'}", f"splits.file={splits}",
        *cfg.finetune.overrides, *(system.get("overrides") or []),
    ]
    return finetune_config(cfg.finetune.config, overrides)


def prediction_file(run: Path, split: int, condition: str, primary: str) -> Path:
    """Where `finetune` wrote a split's test predictions for a condition (the primary one unsuffixed)."""
    return run / f"split_{split:02d}" / ("predictions.csv" if condition == primary else f"predictions_{condition}.csv")


def _regression_scores(parts: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str], bootstrap: int, seed: int, level: float) -> dict[str, Any]:
    """CCC per attribute and their mean, as the mean over splits with a bootstrap interval of it
    (clips resampled within each split, split k seeded with seed + k)."""

    def ccc(pred: np.ndarray, true: np.ndarray) -> np.ndarray:  # [..., n, k] -> [..., k]
        pm, tm = pred.mean(-2), true.mean(-2)
        cov = ((pred - pm[..., None, :]) * (true - tm[..., None, :])).mean(-2)
        return 2 * cov / (pred.var(-2) + true.var(-2) + (pm - tm) ** 2 + 1e-12)

    names = [f"ccc_{c}" for c in classes]
    points, boots = [], []
    for k, (pred, true) in enumerate(parts):
        points.append(ccc(pred, true))
        if bootstrap:
            idx = np.random.default_rng(seed + k).integers(0, len(pred), size=(bootstrap, len(pred)))
            boots.append(ccc(pred[idx], true[idx]))
    point = np.stack(points)  # [splits, k]
    out: dict[str, Any] = {"n": [len(p) for p, _ in parts], "mean": {}, "values": {}, "ci": {}}
    columns = {**{n: point[:, j] for j, n in enumerate(names)}, "ccc": point.mean(1)}
    boot = np.mean(boots, axis=0) if boots else None  # [B, k]
    tail = (1 - level) / 2 * 100
    for j, name in enumerate([*names, "ccc"]):
        out["values"][name] = [float(v) for v in columns[name]]
        out["mean"][name] = float(np.mean(columns[name]))
        if boot is not None:
            b = boot.mean(1) if name == "ccc" else boot[:, j]
            out["ci"][name] = np.percentile(b, [tail, 100 - tail]).tolist()
    return out


def score_systems(runs: Mapping[str, Path], cfg: DictConfig) -> dict[str, Any]:
    """Score every system's test predictions on the clips all of them predicted (see the module
    docstring): {"task", "classes", "conditions": {condition: {"common_clips", "left_out",
    "systems": {name: scores}}}}."""
    import pandas as pd

    from finetune.data import load_task
    from ssl_aver.metrics import split_mean_scores

    summaries = {name: read_json(run / "metrics.json") for name, run in runs.items()}
    digests = {name: read_json(run / "inputs.json")["labels_sha256"] for name, run in runs.items()}
    if len(set(digests.values())) > 1:
        raise UserError(f"the systems were fine-tuned on different label tables ({digests}); rerun them with the same data options")
    splits = {name: [s["split"] for s in summary["splits"]] for name, summary in summaries.items()}
    if len({tuple(v) for v in splits.values()}) > 1:
        raise UserError(f"the systems were run on different splits ({splits}); rerun them with the same splits file and splits.k")
    reference = runs[str(cfg.reference)]
    task = load_task(OmegaConf.load(reference / "config.yaml").data)
    targets = task.labels.assign(clip=task.labels["clip"].astype(str)).set_index("clip")[task.targets]
    split_ids = next(iter(splits.values()))
    report: dict[str, Any] = {"task": task.task, "classes": task.classes, "splits": split_ids, "conditions": {}}
    for condition in CONDITIONS:
        members = {name: list(s["by_modality"]) for name, s in summaries.items() if condition in s["by_modality"]}
        if not members:
            continue
        frames = {name: [pd.read_csv(prediction_file(runs[name], k, condition, modalities[0]), dtype={"clip": str}).set_index("clip") for k in split_ids]
                  for name, modalities in members.items()}
        common = [sorted(set.intersection(*(set(frames[name][i].index.astype(str)) for name in members))) for i in range(len(split_ids))]
        if not all(common):
            raise UserError(f"{CONDITIONS[condition]}: some split has no test clip that every system predicted; check the systems' stores")
        entry: dict[str, Any] = {"common_clips": [len(c) for c in common],
                                 "left_out": {name: sum(len(f) - len(c) for f, c in zip(frames[name], common)) for name in members},
                                 "systems": {}}
        for name in members:
            parts = [(frames[name][i].loc[clips, task.classes].to_numpy(np.float64), targets.loc[clips].to_numpy(np.float64))
                     for i, clips in enumerate(common)]
            if task.task == "regression":
                entry["systems"][name] = _regression_scores(parts, task.classes, int(cfg.bootstrap), int(cfg.seed), float(cfg.level))
            else:
                entry["systems"][name] = split_mean_scores(parts, task.task, task.classes, int(cfg.bootstrap), int(cfg.seed), float(cfg.level))
        report["conditions"][condition] = entry
    return report


def significance(scores: Mapping[str, Any], split_ids: Sequence[Any], cfg: DictConfig, metric: str) -> dict[str, Any] | None:
    """The reference's paired t-tests in one condition (None when the reference or every other
    system is absent from it), on the per-split scores over the common clips."""
    from finetune.tables import compare

    systems = scores["systems"]
    if str(cfg.reference) not in systems or len(systems) < 2:
        return None
    results = {name: {"overall": {metric: {"values": s["values"][metric]}}, "splits": [{"split": k} for k in split_ids]} for name, s in systems.items()}
    return compare(results, str(cfg.reference), metric, str(cfg.test.alternative), float(cfg.test.alpha))


def _cell(scores: Mapping[str, Any], key: str) -> str:
    value = scores["mean"][key]
    ci = scores["ci"].get(key)
    return f"{value:.3f}" + (f" ({ci[0]:.3f}, {ci[1]:.3f})" if ci else "")


def _markdown(cfg: DictConfig, report: Mapping[str, Any]) -> str:
    from finetune.tables import legend, mark, p_cell

    columns = report["columns"]
    lines = [f"# {cfg.title}", "", f"{len(report['splits'])} speaker-independent splits; mean over splits "
             f"({100 * float(cfg.level):g}% bootstrap interval of the mean over test clips); every row of a condition is scored on the same clips.", ""]
    for condition, entry in report["conditions"].items():
        test = entry["significance"]
        head = ["System", *[LABELS.get(c, c) for c in columns], f"p vs {cfg.reference}" if test else "p", "Params", "Train time"]
        lines += [f"## {CONDITIONS[condition]} ({sum(entry['common_clips'])} test clips)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, scores in entry["systems"].items():
            info = report["systems"][name]
            params = f"{info['parameters'] / 1e6:.2f}M" if info["parameters"] else "n/a"
            cells = [name + (mark(name, test) if test else ""), *[_cell(scores, c) for c in columns],
                     p_cell(name, test) if test else "n/a", params, f"{info['train_seconds']:.0f} s"]
            lines.append("| " + " | ".join(cells) + " |")
        if test:
            lines += ["", *legend(test)]
        left = {k: v for k, v in entry["left_out"].items() if v}
        if left:
            lines += ["", "Left out (predicted by this system only, not by every system of the condition): "
                      + ", ".join(f"{k} {v} clips" for k, v in left.items())]
        lines.append("")
    if cfg.per_emotion and report["task"] != "regression":
        condition = next(iter(report["conditions"]))
        entry = report["conditions"][condition]
        classes = report["classes"]
        head = ["System", *classes, "Brier"]
        lines += [f"## Per-emotion F1, {CONDITIONS[condition]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, scores in entry["systems"].items():
            ci = scores["per_class_f1_ci"]
            cells = [f"{scores['per_class_f1'][c]:.3f}" + (f" ({ci[c][0]:.3f}, {ci[c][1]:.3f})" if ci else "") for c in classes]
            lines.append("| " + " | ".join([name, *cells, _cell(scores, "brier")]) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(report: Mapping[str, Any], metric: str, path: Path) -> None:
    """Grouped bars: the test metric of every system per condition, with its intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(report["systems"])
    conditions = list(report["conditions"])
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(conditions) + 0.4 * len(systems)), 3.4))
    for i, name in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for j, condition in enumerate(conditions):
            scores = report["conditions"][condition]["systems"].get(name)
            if scores is None:
                continue
            value = scores["mean"][metric]
            ci = scores["ci"].get(metric, [value, value])
            xs.append(j + (i - (len(systems) - 1) / 2) * width)
            ys.append(value)
            lo.append(value - ci[0])
            hi.append(ci[1] - value)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(range(len(conditions)), [CONDITIONS[c] for c in conditions])
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def compare_systems(cfg: DictConfig, force: bool = False) -> dict[str, Any]:
    """Fine-tune every system on the shared splits, score them on common clips, write the table."""
    import pandas as pd

    from ssl_aver.io import write_dataframe

    from finetune.experiment import shared_splits
    from finetune.grid import is_main_process, run_grid

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out)
    splits = shared_splits(cfg, out)
    configs = {str(system.name): system_config(cfg, system, out, splits) for system in cfg.systems}
    runs = {name: Path(c.output_dir) for name, c in configs.items()}
    summaries = run_grid(configs, force=force, progress=bool(configs) and all(bool(c.progress) for c in configs.values()))
    if not is_main_process():
        return {}
    report = score_systems(runs, cfg)
    regression = report["task"] == "regression"
    metric = str(cfg.test.metric)
    if regression and not metric.startswith("ccc"):
        metric = "ccc"  # the classification default (macro_f1) means the mean CCC on attributes
    report["columns"] = [f"ccc_{c}" for c in report["classes"]] + ["ccc"] if regression else [str(c) for c in cfg.columns]
    report["metric"] = metric
    report["reference"] = str(cfg.reference)
    report["systems"] = {
        name: {"head": str(system.head), "run": str(runs[name]), "overrides": list(system.get("overrides") or []),
               "parameters": (summaries[name].get("parameters") or {}).get("total"), "train_seconds": float(summaries[name].get("train_seconds", 0.0))}
        for name, system in ((str(s.name), s) for s in cfg.systems)
    }
    for entry in report["conditions"].values():
        entry["significance"] = significance(entry, report["splits"], cfg, metric)
    write_json(out / "compare.json", report)
    rows = []
    for condition, entry in report["conditions"].items():
        test = entry["significance"]
        for name, scores in entry["systems"].items():
            row: dict[str, Any] = {"condition": condition, "system": name, "head": report["systems"][name]["head"], "clips": sum(scores["n"])}
            for key in report["columns"]:
                row[key] = scores["mean"][key]
                if key in scores["ci"]:
                    row[f"{key}_lo"], row[f"{key}_hi"] = scores["ci"][key]
            for c, value in (scores.get("per_class_f1") or {}).items():
                row[f"f1_{c}"] = value
            row["p"] = test["tests"][name]["p"] if test and name in test["tests"] else None
            row["parameters"] = report["systems"][name]["parameters"]
            row["train_seconds"] = report["systems"][name]["train_seconds"]
            rows.append(row)
    write_dataframe(out / "compare.csv", pd.DataFrame(rows))
    (out / "compare.md").write_text(_markdown(cfg, report), encoding="utf-8")
    _plot(report, metric, out / "compare.png")
    return report


def system_runs(directory: str | Path) -> list[Path]:
    """The fine-tuning run of every system of a finished comparison folder (compare.json)."""
    path = Path(directory) / "compare.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a finished `ssl-aver compare` folder (no compare.json)")
    return [Path(info["run"]) for info in read_json(path)["systems"].values()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="comparison YAML, e.g. recipes/compare/paper2_table1.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/CREMA-D splits.k=5")
    parser.add_argument("--force", action="store_true", help="recompute systems whose inputs changed (default: stop and say what changed)")


def run(args: argparse.Namespace) -> int:
    from finetune.grid import is_main_process

    cfg = build_config(args.config, args.overrides)
    compare_systems(cfg, force=args.force)
    if is_main_process():
        print((Path(cfg.output_dir) / "compare.md").read_text())
    return 0
