"""`ssl-aver evaluate`: score a predictions CSV against a labels CSV (and demographic groups).

P.csv and L.csv each have a `clip` column and one column per class; L may hold counts,
proportions or 0/1 (for CREMA-D's labels.csv pick a condition with --label-pattern, e.g.
"av_{}_p"). G.csv (optional) has `clip` and one column per demographic attribute (labels.csv
itself works, with --group-columns sex,race,age_group). Only clips present in both P and L
are scored; how many were left out is recorded. Every input problem is found before
anything is written, so a failed run leaves no metrics behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssl_aver.errors import UserError
from ssl_aver.io import atomic_write_text, write_json
from ssl_aver.metrics import SCALAR_METRICS, TASKS, evaluate_predictions


def _read_table(path: str | Path, what: str):  # -> pandas.DataFrame
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file not found: {p}")
    try:
        table = pd.read_csv(p, dtype={"clip": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{what} file {p} is not a readable CSV: {err}") from err
    if "clip" not in table.columns:
        raise UserError(f"{what} file {p} has no 'clip' column")
    dup = table["clip"][table["clip"].duplicated()]
    if len(dup):
        raise UserError(f"{what} file {p} lists clip {dup.iloc[0]} twice")
    return table.set_index("clip")


def _numeric(table, columns: list[str], path: str | Path, what: str):
    import pandas as pd

    out = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = out.isna()
    if bad.to_numpy().any():
        col = bad.any(axis=0).idxmax()
        clip = bad[col].idxmax()
        raise UserError(f"{what} file {path}: column '{col}' holds a non-numeric or empty value for clip {clip}")
    return out


def load_inputs(
    pred_path: str | Path,
    labels_path: str | Path,
    groups_path: str | Path | None = None,
    label_pattern: str = "{}",
    group_columns: list[str] | None = None,
) -> dict[str, Any]:
    """Read and check P, L and G; returns aligned arrays, the classes and the clip bookkeeping."""
    if "{}" not in label_pattern:
        raise UserError(f"--label-pattern must contain '{{}}' for the class name, got {label_pattern!r}")
    pred = _read_table(pred_path, "predictions")
    labels = _read_table(labels_path, "labels")
    classes = [str(c) for c in pred.columns]
    if len(classes) < 2:
        raise UserError(f"predictions file {pred_path} needs one column per class (at least two) besides 'clip'")
    wanted = [label_pattern.format(c) for c in classes]
    if label_pattern == "{}":
        extra = sorted(set(labels.columns) - set(wanted))
        missing = sorted(set(wanted) - set(labels.columns))
        if extra or missing:
            raise UserError(
                f"class columns differ: predictions have {classes}; labels lack {missing[:8]} and add "
                f"{extra[:8]}{' ...' if len(extra) > 8 else ''} (use --label-pattern to pick label columns)"
            )
    else:
        missing = [w for w in wanted if w not in labels.columns]
        if missing:
            raise UserError(f"labels file {labels_path} lacks columns {missing} (from --label-pattern {label_pattern!r})")
    common = sorted(set(pred.index) & set(labels.index))
    if not common:
        raise UserError(f"no clip appears in both {pred_path} and {labels_path}; check the clip ids")
    probs = _numeric(pred.loc[common], classes, pred_path, "predictions")
    targets = _numeric(labels.loc[common], wanted, labels_path, "labels")
    groups: dict[str, list[Any]] | None = None
    if groups_path is not None:
        table = _read_table(groups_path, "groups")
        attrs = group_columns if group_columns else [str(c) for c in table.columns]
        absent = [a for a in attrs if a not in table.columns]
        if absent:
            raise UserError(f"groups file {groups_path} lacks columns {absent}")
        if not attrs:
            raise UserError(f"groups file {groups_path} has no attribute column besides 'clip'")
        aligned = table.reindex(common)
        groups = {a: [None if v != v else str(v) for v in aligned[a].tolist()] for a in attrs}
    return {
        "probs": probs.to_numpy(dtype=float),
        "targets": targets.to_numpy(dtype=float),
        "classes": classes,
        "clips": common,
        "groups": groups,
        "n_pred_only": len(set(pred.index) - set(common)),
        "n_labels_only": len(set(labels.index) - set(common)),
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ci(pair: list[float] | None) -> str:
    return "" if not pair else f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def metrics_markdown(result: dict[str, Any]) -> str:
    """A human-readable table of a metrics dict from evaluate_predictions."""
    level = int(round(result["bootstrap"]["level"] * 100))
    lines = [f"# Evaluation: {result['task']}, {result['n']} clips", "",
             f"| metric | value | {level}% CI |", "| --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(result[k])} | {_ci(result['ci'].get(k))} |" for k in SCALAR_METRICS]
    lines += ["", "## Per class", "", f"| class | support | predicted | F1 | {level}% CI |", "| --- | --- | --- | --- | --- |"]
    for name in result["classes"]:
        lines.append(f"| {name} | {result['support'][name]} | {result['predicted'][name]} | "
                     f"{_fmt(result['per_class_f1'][name])} | {_ci(result['per_class_f1_ci'].get(name))} |")
    for attr, rep in result.get("fairness", {}).items():
        lines += ["", f"## Fairness by {attr}", "", f"| group | n | macro-F1 | {level}% CI |", "| --- | --- | --- | --- |"]
        for group, entry in rep["groups"].items():
            lines.append(f"| {group} | {entry['n']} | {_fmt(entry['macro_f1'])} | {_ci(entry.get('macro_f1_ci'))} |")
        lines += ["", f"bias (100 x mean pairwise macro-F1 gap): {_fmt(rep['bias'])} {_ci(rep.get('bias_ci'))}",
                  f"DPD: {_fmt(rep['dpd'])}; EOD: {_fmt(rep['eod'])}; clips without a value: {rep['n_missing']}"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="predictions CSV: clip + one probability column per class")
    parser.add_argument("--labels", required=True, help="labels CSV: clip + one column per class (counts, proportions or 0/1)")
    parser.add_argument("--groups", default=None, help="groups CSV: clip + one column per demographic attribute")
    parser.add_argument("--group-columns", default=None, help="comma-separated attributes of --groups to use (default: all)")
    parser.add_argument("--label-pattern", default="{}",
                        help="label column of class X, e.g. 'av_{}_p' for CREMA-D labels.csv (default: the class name)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--out", required=True, help="output folder for metrics.json and metrics.md")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.group_columns.split(",") if c.strip()] if args.group_columns else None
    data = load_inputs(args.pred, args.labels, args.groups, args.label_pattern, columns)
    result = evaluate_predictions(
        data["probs"], data["targets"], args.task, data["classes"],
        groups=data["groups"], bootstrap=args.bootstrap, seed=args.seed,
    )
    result.update(pred=str(args.pred), labels=str(args.labels), groups_file=args.groups,
                  n_pred_only=data["n_pred_only"], n_labels_only=data["n_labels_only"])
    out = Path(args.out)
    write_json(out / "metrics.json", result)
    atomic_write_text(out / "metrics.md", metrics_markdown(result))
    print(f"{result['n']} clips: macro-F1 {result['macro_f1']:.4f}, micro-F1 {result['micro_f1']:.4f}, "
          f"Brier {result['brier']:.4f} -> {out / 'metrics.json'}")
    return 0
