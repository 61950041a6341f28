"""Paper-style comparison tables over repeated splits, with paired t-tests (paper 1, Sec. 5).

Every system is run on the same K speaker-independent splits, so their per-split scores are
paired; a system is marked with `*` when it is significantly better (p < alpha, paired t-test
over the K splits) than every other system it is compared with.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ssl_aver.metrics import paired_ttest

COLUMNS = (
    ("macro_precision", "Macro Prec."), ("macro_recall", "Macro Rec."), ("macro_f1", "Macro F1"),
    ("micro_precision", "Micro Prec."), ("micro_recall", "Micro Rec."), ("micro_f1", "Micro F1"),
)


def _values(summary: Mapping[str, Any], metric: str) -> list[float]:
    return list(summary["overall"][metric]["values"])


def compare(
    results: Mapping[str, Mapping[str, Any]],
    reference: str,
    metric: str = "macro_f1",
    alternative: str = "greater",
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired t-tests of `reference` against every other system on `metric` over the splits.

    alternative="greater" is paper 1's one-tailed test (reference better than the other).
    """
    if reference not in results:
        raise KeyError(f"reference system {reference!r} was not run")
    tests: dict[str, Any] = {}
    ref = _values(results[reference], metric)
    for name, summary in results.items():
        if name == reference:
            continue
        other = _values(summary, metric)
        if len(ref) < 2 or len(ref) != len(other):
            tests[name] = {"t": None, "p": None, "significant": False, "reason": "needs >= 2 paired splits"}
            continue
        result = paired_ttest(ref, other, alternative=alternative)
        t, p = result["t"], result["p"]
        if math.isnan(p):  # identical scores on every split: no evidence either way
            t, p = None, None
        tests[name] = {"t": t, "p": p, "significant": bool(p is not None and p < alpha)}
    return {
        "reference": reference,
        "metric": metric,
        "alternative": alternative,
        "alpha": alpha,
        "tests": tests,
        "reference_significant_over_all": bool(tests) and all(v["significant"] for v in tests.values()),
    }


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
    """Table 2/3-style markdown (means over splits, %), `*` on a system better than all others.

    `extra_heads` / `extra` add columns before the scores (Table 3's task marks T1-T3).
    """
    extra = extra or {}
    star = significance["reference"] if significance["reference_significant_over_all"] else None
    head = ["System", *extra_heads, *[label for _, label in COLUMNS]]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = row["system"] + ("*" if row["system"] == star else "")
        cells = [name, *extra.get(row["system"], []), *[f"{row[key]:.1f}" for key, _ in COLUMNS]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired t-tests of {significance['reference']} vs each system on {significance['metric']} ({significance['alternative']}):"]
    for name, test in significance["tests"].items():
        p = "n/a" if test["p"] is None else f"{test['p']:.4g}"
        lines.append(f"- vs {name}: p = {p}{' (significant)' if test['significant'] else ''}")
    return "\n".join(lines) + "\n"
