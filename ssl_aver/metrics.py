"""The evaluation every head reports: recognition, calibration, fairness, uncertainty, tests.

Conventions (papers 3 and 4, Sec. "Evaluation metrics"):

* Multi-label: predictions and targets are normalised per row (divided by the row sum; an
  all-zero row stays zero) and a class is present when its share is strictly above 1/C
  (C = number of classes). Targets may be counts, proportions or 0/1. The comparison allows
  1e-6 of floating-point noise (THRESHOLD_TOL), so a share of exactly 1/C (2 of 12 votes) is
  never positive, also when it was stored as float32 (2/12 rounds to 1/6 + 5e-9); real vote
  shares that are above 1/C are so by at least 1e-3. Accuracy is then exact-match (subset) accuracy.
* Multi-class: the class is the argmax of a row (of probabilities, or of targets given as
  one-hot, counts or proportions); ties go to the first class.
* Precision, recall and F1 follow scikit-learn with zero_division=0 (a class never predicted
  has precision 0; a class with no true and no predicted positive has F1 0); weighted
  averages weigh by true support; sample precision is scikit-learn's average="samples".
* Brier (paper 4, Eq. BS; paper 3, Eq. 1 with N^e = N): mean over samples and classes of
  (p - y)^2 with p the probabilities as given and y the BINARY target (multi-hot for
  multi-label, one-hot for multi-class), as both papers define it. `brier_distribution`
  compares row-normalised probabilities with the normalised target distribution instead.
* Performance bias (paper 3, Eq. 2): 100 x the mean absolute macro-F1 difference over all
  unordered pairs of groups (for two groups: 100 x |A1 - A2|).
* DPD / EOD: fairlearn's demographic_parity_difference / equalized_odds_difference on each
  class as a binary one-vs-rest problem, averaged over classes.
* Bootstrap: percentile intervals (2.5-97.5 for level 0.95) over `n` resamples of the
  samples with replacement, seeded.
* Absent groups: a fairness table can only be trusted when every group of the corpus is
  tested. The caller passes the corpus's group values (`known_groups`, e.g. the label table's
  sex and race columns); a group among them without a test sample is listed in the
  attribute's `absent_groups`, named in `warnings` and logged once per evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from ssl_aver.errors import UserError

log = logging.getLogger(__name__)

THRESHOLD_TOL = 1e-6
TASKS: tuple[str, ...] = ("multilabel", "multiclass")
SCALAR_METRICS: tuple[str, ...] = (
    "accuracy", "macro_f1", "micro_f1", "weighted_f1", "macro_precision", "macro_recall",
    "micro_precision", "micro_recall", "weighted_precision", "weighted_recall", "sample_precision",
    "brier", "brier_distribution",
)
_CHUNK = 200  # bootstrap replicates evaluated per matrix product (bounds memory)


def _matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"{name} must be a non-empty (samples, classes) table, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{name} holds NaN or infinite values")
    if (arr < 0).any():
        raise UserError(f"{name} holds negative values; expected probabilities, counts or proportions")
    return arr


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows summing to zero stay zero)."""
    arr = np.asarray(x, dtype=float)
    total = arr.sum(axis=1, keepdims=True)
    return np.divide(arr, total, out=np.zeros_like(arr), where=total > 0)


def binarize(x: np.ndarray) -> np.ndarray:
    """Multi-hot 0/1 (int8): classes whose row-normalised share is strictly above 1/C."""
    arr = np.asarray(x, dtype=float)
    return (normalise_rows(arr) > 1.0 / arr.shape[1] + THRESHOLD_TOL).astype(np.int8)


def argmax_one_hot(x: np.ndarray) -> np.ndarray:
    """One-hot 0/1 (int8) of each row's argmax (first class on ties)."""
    arr = np.asarray(x, dtype=float)
    out = np.zeros(arr.shape, dtype=np.int8)
    out[np.arange(arr.shape[0]), np.argmax(arr, axis=1)] = 1
    return out


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def _sample_stats(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, dist_true: np.ndarray) -> np.ndarray:
    """Per-sample additive statistics; every metric is a function of their column sums.

    Columns: tp (C), fp (C), fn (C), exact match, sample precision, squared error to the binary
    target (summed over classes), squared error of normalised probs to the target distribution.
    """
    t = y_true.astype(bool)
    p = y_pred.astype(bool)
    tp, fp, fn = t & p, ~t & p, t & ~p
    exact = (t == p).all(axis=1)
    sample_prec = _div(tp.sum(axis=1), p.sum(axis=1))
    se = ((probs - y_true) ** 2).sum(axis=1)
    se_dist = ((normalise_rows(probs) - dist_true) ** 2).sum(axis=1)
    return np.column_stack([tp, fp, fn, exact, sample_prec, se, se_dist]).astype(float)


def _scores_from_sums(sums: np.ndarray, n: np.ndarray | float, n_classes: int) -> dict[str, np.ndarray]:
    """All scalar metrics (and per-class F1) from summed sample statistics; any leading shape."""
    c = n_classes
    tp, fp, fn = sums[..., :c], sums[..., c : 2 * c], sums[..., 2 * c : 3 * c]
    exact, sp, se, se_dist = (sums[..., 3 * c + i] for i in range(4))
    support = tp + fn
    prec, rec, f1 = _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)
    total_support = support.sum(axis=-1)
    TP, FP, FN = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    return {
        "accuracy": _div(exact, n),
        "macro_precision": prec.mean(axis=-1),
        "macro_recall": rec.mean(axis=-1),
        "macro_f1": f1.mean(axis=-1),
        "micro_precision": _div(TP, TP + FP),
        "micro_recall": _div(TP, TP + FN),
        "micro_f1": _div(2 * TP, 2 * TP + FP + FN),
        "weighted_precision": _div((prec * support).sum(axis=-1), total_support),
        "weighted_recall": _div((rec * support).sum(axis=-1), total_support),
        "weighted_f1": _div((f1 * support).sum(axis=-1), total_support),
        "sample_precision": _div(sp, n),
        "brier": _div(se, np.asarray(n) * c),
        "brier_distribution": _div(se_dist, np.asarray(n) * c),
        "per_class_f1": f1,
    }


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro/micro/weighted precision-recall-F1, sample precision, per-class F1.

    Inputs are 0/1 indicator matrices (samples, classes): multi-hot for multi-label, one-hot
    for multi-class (where micro-F1 equals accuracy, as in scikit-learn).
    """
    t = np.asarray(y_true, dtype=np.int8)
    p = np.asarray(y_pred, dtype=np.int8)
    if t.shape != p.shape or t.ndim != 2:
        raise UserError(f"targets and predictions must have the same (samples, classes) shape: {t.shape} vs {p.shape}")
    sums = _sample_stats(t, p, p.astype(float), normalise_rows(t)).sum(axis=0)
    scores = _scores_from_sums(sums, float(t.shape[0]), t.shape[1])
    return {k: (v.tolist() if k == "per_class_f1" else float(v)) for k, v in scores.items() if not k.startswith("brier")}


def brier_score(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over samples and classes of (p - y)^2 (paper 4's BS); y is whatever target is given
    (evaluate_predictions passes the binary multi-hot / one-hot target)."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(targets, dtype=float)
    if p.shape != y.shape:
        raise UserError(f"probabilities and targets differ in shape: {p.shape} vs {y.shape}")
    return float(np.mean((p - y) ** 2))


def ccc(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Lin's concordance correlation coefficient, 2 cov / (var_t + var_p + (mean_t - mean_p)^2),
    with population (ddof=0) moments; two identical constant series score 1."""
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape or t.size < 2:
        raise UserError(f"CCC needs two series of equal length >= 2, got {t.size} and {p.size}")
    cov = np.mean((t - t.mean()) * (p - p.mean()))
    den = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    if den == 0:
        return 1.0
    return float(2 * cov / den)


def evaluate_regression(
    predictions: np.ndarray, targets: np.ndarray, names: Sequence[str], bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
) -> dict[str, Any]:
    """Attribute regression scores over the whole set (never averaged over batches): per attribute
    CCC, Pearson r and MSE, their means over the attributes (`ccc`, `pearson`, `mse`), and
    bootstrap intervals of each CCC (clips resampled with replacement)."""
    p, y = np.asarray(predictions, dtype=float), np.asarray(targets, dtype=float)
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise UserError("regression predictions and targets must be finite numbers")
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(names) or len(p) < 2:
        raise UserError(f"predictions {p.shape}, targets {y.shape} and {len(names)} attributes do not match")
    if bootstrap < 0:
        raise UserError(f"bootstrap must be >= 0, got {bootstrap}")
    result: dict[str, Any] = {"task": "regression", "n": int(len(p)), "attributes": [str(n) for n in names], "ci": {}}
    for j, name in enumerate(names):
        t, q = y[:, j], p[:, j]
        result[f"ccc_{name}"] = ccc(t, q)
        result[f"pearson_{name}"] = float(np.corrcoef(t, q)[0, 1]) if t.std() > 0 and q.std() > 0 else 0.0
        result[f"mse_{name}"] = float(np.mean((t - q) ** 2))
    for key in ("ccc", "pearson", "mse"):
        result[key] = float(np.mean([result[f"{key}_{n}"] for n in names]))
    if bootstrap:
        rng = np.random.default_rng([seed, 11])
        draws = rng.integers(0, len(p), size=(bootstrap, len(p)))
        for j, name in enumerate(names):
            values = np.array([ccc(y[d, j], p[d, j]) for d in draws])
            result["ci"][f"ccc_{name}"] = _percentiles(values, level).tolist()
    result["bootstrap"] = {"n": bootstrap, "seed": seed, "level": level}
    return result


def macro_f1_bias(scores: Mapping[str, float]) -> float:
    """Paper 3's performance bias: 100 x mean |A_g - A_i| over unordered pairs of groups."""
    values = list(scores.values())
    if len(values) < 2:
        raise UserError("performance bias needs at least two groups")
    return float(100.0 * np.mean([abs(a - b) for a, b in combinations(values, 2)]))


def _group_labels(groups: Any, n: int, attr: str) -> np.ndarray:
    import pandas as pd

    raw = np.asarray(groups, dtype=object)
    if raw.shape != (n,):
        raise UserError(f"group attribute '{attr}' has {raw.size} values for {n} samples")
    return np.array(["" if pd.isna(v) else str(v) for v in raw], dtype=object)


def _group_values(values: Iterable[Any]) -> set[str]:
    """The distinct non-missing group names among `values`, written as _group_labels writes them."""
    import pandas as pd

    return {str(v) for v in values if not pd.isna(v) and str(v) != ""}


def parity_differences(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-class DPD and EOD (fairlearn, between groups, worst case) of 0/1 indicator matrices."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    dpd, eod = [], []
    for j in range(y_true.shape[1]):
        dpd.append(float(demographic_parity_difference(y_true[:, j], y_pred[:, j], sensitive_features=groups)))
        eod.append(float(equalized_odds_difference(y_true[:, j], y_pred[:, j], sensitive_features=groups)))
    return dpd, eod


def _percentiles(values: np.ndarray, level: float) -> np.ndarray:
    tail = (1.0 - level) / 2.0 * 100.0
    return np.percentile(values, [tail, 100.0 - tail], axis=0)


def _bootstrap_weights(n: int, replicates: int, seed: int):
    """Yield (chunk, n) count matrices: how often each sample is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < replicates:
        size = min(_CHUNK, replicates - done)
        draws = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
        done += size
        yield np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)


def bootstrap_ci(
    metric: Callable[..., float], *arrays: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of any metric(*arrays) over `n` seeded resamples of the rows.

    All arrays are resampled with the same row indices (predictions stay paired with targets).
    """
    if n < 1:
        raise UserError(f"the number of bootstrap resamples must be >= 1, got {n}")
    data = [np.asarray(a) for a in arrays]
    rows = data[0].shape[0]
    if any(a.shape[0] != rows for a in data):
        raise UserError("bootstrap arrays must have the same number of rows")
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, rows, size=rows)
        values[b] = metric(*(a[idx] for a in data))
    lo, hi = _percentiles(values, level)
    return float(lo), float(hi)


def paired_ttest(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> dict[str, Any]:
    """Paired t-test of results over the same repeated splits (scipy.stats.ttest_rel).

    alternative: "two-sided" (paper 2), "greater" (a better than b, paper 1's one-tailed
    test) or "less". Returns t, p, n and the alternative.
    """
    from scipy.stats import ttest_rel

    if alternative not in ("two-sided", "greater", "less"):
        raise UserError(f"unknown alternative '{alternative}'; choose two-sided, greater or less")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise UserError(f"a paired t-test needs two equal-length result lists (>= 2 splits), got {x.size} and {y.size}")
    result = ttest_rel(x, y, alternative=alternative)
    return {"t": float(result.statistic), "p": float(result.pvalue), "n": int(x.size), "alternative": alternative}


def _fairness(
    stats: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
    n_classes: int, weights: list[np.ndarray], level: float,
) -> dict[str, Any]:
    valid = groups != ""
    names = sorted(set(groups[valid]))
    report: dict[str, Any] = {"n_missing": int((~valid).sum()), "groups": {}}
    boot_f1 = []
    for name in names:
        mask = groups == name
        sums = stats[mask].sum(axis=0)
        entry: dict[str, Any] = {
            "n": int(mask.sum()),
            "macro_f1": float(_scores_from_sums(sums, float(mask.sum()), n_classes)["macro_f1"]),
        }
        if weights:
            f1 = np.concatenate([
                _scores_from_sums(w[:, mask] @ stats[mask], w[:, mask].sum(axis=1), n_classes)["macro_f1"] for w in weights
            ])
            boot_f1.append(f1)
            entry["macro_f1_ci"] = _percentiles(f1, level).tolist()
        report["groups"][name] = entry
    if len(names) < 2:
        report.update(bias=None, dpd=None, eod=None)
        return report
    report["bias"] = macro_f1_bias({g: e["macro_f1"] for g, e in report["groups"].items()})
    if boot_f1:
        matrix = np.stack(boot_f1, axis=1)
        pair_bias = np.mean([np.abs(matrix[:, i] - matrix[:, j]) for i, j in combinations(range(len(names)), 2)], axis=0)
        report["bias_ci"] = _percentiles(100.0 * pair_bias, level).tolist()
    dpd, eod = parity_differences(y_true[valid], y_pred[valid], groups[valid])
    report["dpd"] = float(np.mean(dpd))
    report["eod"] = float(np.mean(eod))
    report["dpd_per_class"] = dpd
    report["eod_per_class"] = eod
    return report


def _indicators(p: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """0/1 targets and decisions: multi-hot above 1/C (multilabel) or the argmax (multiclass)."""
    if task == "multilabel":
        return binarize(y), binarize(p)
    if (y.sum(axis=1) == 0).any():
        row = int(np.argmax(y.sum(axis=1) == 0))
        raise UserError(f"multiclass target row {row} is all zero: every sample needs a class")
    return argmax_one_hot(y), argmax_one_hot(p)


def split_mean_scores(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    task: str,
    classes: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Every metric as the mean over repeated splits, with a bootstrap interval of that mean.

    parts: one (probabilities, targets) pair per split. A replicate resamples the test clips of
    every split with replacement (split k seeded with seed + k) and averages the metric over the
    splits, so the interval covers the number a table reports. Systems scored on the same clips
    in the same order get the same resamples (their intervals are paired). Returns {"n": clips
    per split, "mean": {metric: value}, "values": {metric: per-split values}, "ci": {metric:
    [lo, hi]}, "per_class_f1", "per_class_f1_values", "per_class_f1_ci": {class: ...}}.
    """
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; choose multilabel or multiclass")
    if not parts:
        raise UserError("no split to score")
    names = [str(c) for c in classes]
    points, boots, sizes = [], [], []
    for k, (probs, targets) in enumerate(parts):
        p, y = _matrix(probs, "predictions"), _matrix(targets, "targets")
        if p.shape != y.shape or p.shape[1] != len(names) or not len(p):
            raise UserError(f"split {k}: predictions {p.shape}, targets {y.shape} and {len(names)} classes do not match (or no clip)")
        y_true, y_pred = _indicators(p, y, task)
        stats = _sample_stats(y_true, y_pred, p, normalise_rows(y))
        n = len(p)
        sizes.append(n)
        points.append(_scores_from_sums(stats.sum(axis=0), float(n), len(names)))
        if bootstrap:
            chunks = [_scores_from_sums(w @ stats, float(n), len(names)) for w in _bootstrap_weights(n, bootstrap, seed + k)]
            boots.append({key: np.concatenate([b[key] for b in chunks]) for key in chunks[0]})
    keys = [*SCALAR_METRICS]
    out: dict[str, Any] = {"n": sizes, "mean": {}, "values": {}, "ci": {}, "bootstrap": {"n": bootstrap, "seed": seed, "level": level}}
    for key in keys:
        values = [float(pt[key]) for pt in points]
        out["values"][key] = values
        out["mean"][key] = float(np.mean(values))
        if boots:
            out["ci"][key] = _percentiles(np.mean([b[key] for b in boots], axis=0), level).tolist()
    per_class = np.stack([pt["per_class_f1"] for pt in points])
    out["per_class_f1"] = dict(zip(names, map(float, per_class.mean(axis=0))))
    out["per_class_f1_values"] = {name: per_class[:, j].tolist() for j, name in enumerate(names)}
    if boots:
        ci = _percentiles(np.mean([b["per_class_f1"] for b in boots], axis=0), level)
        out["per_class_f1_ci"] = {name: ci[:, j].tolist() for j, name in enumerate(names)}
    else:
        out["per_class_f1_ci"] = {}
    return out


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    classes: Sequence[str],
    groups: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    known_groups: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, Any]:
    """Every metric of the papers for one set of predictions, with bootstrap intervals.

    probs: (N, C) probabilities in [0, 1] (softmax or per-class sigmoid). targets: (N, C)
    counts, proportions or 0/1. groups: {attribute: N values} for fairness; empty or missing
    values leave a sample out of that attribute's groups. known_groups: {attribute: the values
    found in the whole corpus}, so a group with no test sample is warned about (`warnings`).
    bootstrap=0 skips the intervals. Returns a JSON-ready dict (see the module docstring).
    """
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; choose multilabel or multiclass")
    p = _matrix(probs, "predictions")
    y = _matrix(targets, "targets")
    names = [str(c) for c in classes]
    if p.shape != y.shape or p.shape[1] != len(names):
        raise UserError(f"predictions {p.shape}, targets {y.shape} and {len(names)} classes do not match")
    if (p > 1.0 + 1e-6).any():
        raise UserError("predictions must be probabilities in [0, 1]; apply softmax/sigmoid first")
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {bootstrap}")
    n, c = p.shape
    y_true, y_pred = _indicators(p, y, task)
    stats = _sample_stats(y_true, y_pred, p, normalise_rows(y))
    point = _scores_from_sums(stats.sum(axis=0), float(n), c)
    result: dict[str, Any] = {"task": task, "n": n, "classes": names,
                              "threshold": 1.0 / c if task == "multilabel" else None}
    result.update({k: float(point[k]) for k in SCALAR_METRICS})
    result["per_class_f1"] = dict(zip(names, map(float, point["per_class_f1"])))
    result["support"] = dict(zip(names, map(int, y_true.sum(axis=0))))
    result["predicted"] = dict(zip(names, map(int, y_pred.sum(axis=0))))
    weights = list(_bootstrap_weights(n, bootstrap, seed)) if bootstrap else []
    result["bootstrap"] = {"n": bootstrap, "seed": seed, "level": level}
    result["ci"] = {}
    result["per_class_f1_ci"] = {}
    if weights:
        boot = [_scores_from_sums(w @ stats, float(n), c) for w in weights]
        for key in SCALAR_METRICS:
            result["ci"][key] = _percentiles(np.concatenate([b[key] for b in boot]), level).tolist()
        per_class = _percentiles(np.concatenate([b["per_class_f1"] for b in boot]), level)
        result["per_class_f1_ci"] = {name: per_class[:, j].tolist() for j, name in enumerate(names)}
    result["warnings"] = []
    if groups:
        result["fairness"] = {
            attr: _fairness(stats, y_true, y_pred, _group_labels(values, n, attr), c, weights, level)
            for attr, values in groups.items()
        }
        for attr, report in result["fairness"].items():
            absent = sorted(_group_values((known_groups or {}).get(attr, ())) - set(report["groups"]))
            if absent:
                report["absent_groups"] = absent
                result["warnings"].append(f"{attr} group(s) {', '.join(absent)} of the corpus have no test sample: "
                                          f"no score for them, and the {attr} bias/DPD/EOD leave them out")
    if result["warnings"]:
        log.warning("fairness: %s", "; ".join(result["warnings"]))
    return result
