"""Paper-style comparison tables over repeated splits, with paired t-tests.

Every system is run on the same K speaker-independent splits, so their per-split scores are
paired: `compare` tests a reference system against every other one, pairing the scores by split
id (systems run on different splits are refused), and every table writer marks its result the
same way, with the legend saying which test the marks stand for (`legend`):
    name*    the reference is significantly better (p < alpha) than every other system (`mark`)
    0.012†   p of the reference vs this system; † when the difference is significant (`p_cell`)
The papers: paper 1, a one-tailed matched-pair t-test over 20 splits (alternative "greater");
paper 2, a two-tailed t-test, p < 0.05, over five trials ("two-sided").
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ssl_aver.errors import UserError
from ssl_aver.metrics import paired_ttest

COLUMNS = (
    ("macro_precision", "Macro Prec."), ("macro_recall", "Macro Rec."), ("macro_f1", "Macro F1"),
    ("micro_precision", "Micro Prec."), ("micro_recall", "Micro Rec."), ("micro_f1", "Micro F1"),
)
ALTERNATIVES = ("greater", "less", "two-sided")
LOWER_IS_BETTER = frozenset({"brier", "valence_mse"})
SIGNIFICANT = "†"


def check_test(alternative: str, alpha: float) -> None:
    """Refuse a test setting before any system is trained for it."""
    if alternative not in ALTERNATIVES:
        raise UserError(f"test alternative must be one of {ALTERNATIVES} (greater: the reference scores higher, paper 1's one-tailed test), got {alternative!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise UserError(f"test alpha must lie in (0, 1), e.g. 0.05, got {alpha}")


def split_scores(summary: Mapping[str, Any], metric: str, system: str) -> dict[Any, float]:
    """{split id: score} of one system from its run summary (`splits` ids + `overall[metric].values`)."""
    overall = summary["overall"]
    if metric not in overall or "values" not in overall[metric]:
        raise UserError(f"system {system!r} has no per-split {metric!r} scores (it has: {sorted(k for k, v in overall.items() if 'values' in v)})")
    ids = [s["split"] for s in summary["splits"]]
    values = list(overall[metric]["values"])
    if len(ids) != len(values) or len(set(ids)) != len(ids):
        raise UserError(f"system {system!r} lists splits {ids} but has {len(values)} {metric} scores: its summary is inconsistent; rerun it")
    return dict(zip(ids, (float(v) for v in values)))


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (errors and the Brier score go down)."""
    return metric not in LOWER_IS_BETTER


def compare(
    results: Mapping[str, Mapping[str, Any]],
    reference: str,
    metric: str = "macro_f1",
    alternative: str = "greater",
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired t-tests of `reference` against every other system on `metric`, paired by split id.

    `results` maps a system name to its run summary (finetune's metrics.json shape). alternative
    is scipy's, on reference minus other: "greater" (paper 1's one-tailed test), "less" or
    "two-sided" (paper 2). A test is significant when p < alpha; the reference is "better" than a
    system when the test is significant and the mean difference points the metric's good way.
    """
    check_test(alternative, alpha)
    if reference not in results:
        raise UserError(f"reference system {reference!r} was not run; systems: {list(results)}")
    ref = split_scores(results[reference], metric, reference)
    tests: dict[str, Any] = {}
    for name, summary in results.items():
        if name == reference:
            continue
        other = split_scores(summary, metric, name)
        if set(other) != set(ref):
            raise UserError(f"{name!r} was run on splits {sorted(other)} and the reference {reference!r} on {sorted(ref)}: "
                            "a paired t-test needs the same splits; rerun both with the same splits file and splits.k")
        ids = list(ref)
        diff = [ref[i] - other[i] for i in ids]
        test: dict[str, Any] = {"t": None, "p": None, "n": len(ids), "splits": ids, "mean_difference": sum(diff) / len(diff)}
        if len(ids) < 2:
            test["reason"] = "needs >= 2 paired splits"
        else:
            result = paired_ttest([ref[i] for i in ids], [other[i] for i in ids], alternative=alternative)
            if math.isnan(result["p"]):
                test["reason"] = "identical scores on every split"
            else:
                test.update(t=result["t"], p=result["p"])
        test["significant"] = test["p"] is not None and test["p"] < alpha
        gain = test["mean_difference"] if higher_is_better(metric) else -test["mean_difference"]
        test["better"] = bool(test["significant"] and gain > 0)
        tests[name] = test
    return {
        "reference": reference,
        "metric": metric,
        "alternative": alternative,
        "alpha": alpha,
        "tests": tests,
        "reference_significant_over_all": bool(tests) and all(v["better"] for v in tests.values()),
    }


def mark(name: str, significance: Mapping[str, Any]) -> str:
    """`*` for the reference when it is significantly better than every other system, else ""."""
    return "*" if name == significance["reference"] and significance["reference_significant_over_all"] else ""


def p_cell(name: str, significance: Mapping[str, Any]) -> str:
    """A table cell with the p-value of the reference vs `name` (`†` when significant)."""
    if name == significance["reference"]:
        return "ref."
    test = significance["tests"].get(name)
    if test is None or test["p"] is None:
        return "n/a"
    return f"{test['p']:.3g}" + (SIGNIFICANT if test["significant"] else "")


def legend(significance: Mapping[str, Any]) -> list[str]:
    """Markdown lines saying which test the marks stand for, then t and p per compared system."""
    tails = "two-tailed" if significance["alternative"] == "two-sided" else f"one-tailed, reference {significance['alternative']}"
    reference, alpha = significance["reference"], significance["alpha"]
    lines = [
        f"Paired t-tests ({tails}) of {reference} vs each system on {significance['metric']}, paired by split: "
        f"{SIGNIFICANT} p < {alpha:g}; * {reference} is significantly better than every other system.",
    ]
    for name, test in significance["tests"].items():
        if test["p"] is None:
            lines.append(f"- vs {name}: p = n/a ({test['reason']})")
        else:
            lines.append(f"- vs {name}: t = {test['t']:.3f}, p = {test['p']:.4g} over {test['n']} splits{' (significant)' if test['significant'] else ''}")
    return lines


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per system: mean (in %) of each Table 2/3 column over the splits."""
    rows = []
    for name, summary in results.items():
        row: dict[str, Any] = {"system": name, "splits": len(summary["splits"])}
        for key, _ in COLUMNS:
            row[key] = 100.0 * summary["overall"][key]["mean"]
            row[f"{key}_std"] = 100.0 * summary["overall"][key]["std"]
        rows.append(row)
    return rows


def markdown(
    title: str,
    rows: list[dict[str, Any]],
    significance: Mapping[str, Any],
    extra_heads: Sequence[str] = (),
    extra: Mapping[str, list[str]] | None = None,
) -> str:
    """Table 2/3-style markdown (means over splits, %) with the significance marks and p column.

    `extra_heads` / `extra` add columns before the scores (Table 3's task marks T1-T3).
    """
    extra = extra or {}
    head = ["System", *extra_heads, *[label for _, label in COLUMNS], f"p vs {significance['reference']}"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = row["system"]
        cells = [name + mark(name, significance), *extra.get(name, []), *[f"{row[key]:.1f}" for key, _ in COLUMNS], p_cell(name, significance)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *legend(significance)]) + "\n"
