"""Paired t-tests of the comparison tables, checked against a t-test computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from finetune.tables import compare, markdown, table_rows
from ssl_aver.errors import UserError

REFERENCE = {0: 0.62, 1: 0.58, 2: 0.66, 3: 0.60, 4: 0.64}
WORSE = {0: 0.55, 1: 0.57, 2: 0.60, 3: 0.52, 4: 0.61}  # differences 0.07, 0.01, 0.06, 0.08, 0.03
CLOSE = {0: 0.63, 1: 0.55, 2: 0.64, 3: 0.62, 4: 0.60}  # differences -0.01, 0.03, 0.02, -0.02, 0.04


def summary(scores: dict[int, float], metric: str = "macro_f1") -> dict:
    """A run summary in finetune's metrics.json shape: split ids + per-split values, in that order."""
    values = list(scores.values())
    entry = {"mean": sum(values) / len(values), "std": 0.0, "values": values}
    overall = {key: entry for key in (metric, "macro_precision", "macro_recall", "micro_precision", "micro_recall", "micro_f1", "macro_f1")}
    return {"splits": [{"split": k} for k in scores], "overall": overall}


def by_hand(reference: dict[int, float], other: dict[int, float]) -> tuple[float, float, float]:
    """t = mean(d) / (sd(d) / sqrt(n)) of the differences d paired by split id, and its one-tailed
    (reference greater) and two-tailed p from Student's t with n - 1 degrees of freedom."""
    d = [reference[k] - other[k] for k in sorted(reference)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return t, 1.0 - stats.t.cdf(t, n - 1), 2.0 * (1.0 - stats.t.cdf(abs(t), n - 1))


def test_hand_computed_t_and_p_pairing_by_split_id_and_marks():
    t, p_one, p_two = by_hand(REFERENCE, WORSE)
    assert t == pytest.approx(0.05 / (math.sqrt(0.0034 / 4) / math.sqrt(5)))  # mean 0.05, sum of squares 0.0034
    shuffled = {k: WORSE[k] for k in (3, 0, 4, 2, 1)}  # listed in another order: pairs by id, not position
    result = compare({"ref": summary(REFERENCE), "worse": summary(shuffled), "close": summary(CLOSE)}, "ref", alternative="greater")
    worse = result["tests"]["worse"]
    assert worse["t"] == pytest.approx(t) and worse["p"] == pytest.approx(p_one) and worse["n"] == 5
    assert worse["p"] < 0.05 and worse["significant"] and worse["better"]
    t_close, p_close, _ = by_hand(REFERENCE, CLOSE)
    close = result["tests"]["close"]
    assert close["t"] == pytest.approx(t_close) and close["p"] == pytest.approx(p_close) and close["p"] > 0.05 and not close["significant"]
    assert not result["reference_significant_over_all"]  # not better than "close": no star
    text = markdown("T", table_rows({"ref": summary(REFERENCE), "worse": summary(shuffled), "close": summary(CLOSE)}), result)
    assert "| ref |" in text and "| ref* |" not in text and "| System | Macro Prec." in text and "p vs ref |" in text
    assert f"| {p_one:.3g}† |" in text and f"| {p_close:.3g} |" in text
    alone = compare({"ref": summary(REFERENCE), "worse": summary(shuffled)}, "ref", alternative="greater")
    assert alone["reference_significant_over_all"]
    assert "| ref* |" in markdown("T", table_rows({"ref": summary(REFERENCE), "worse": summary(shuffled)}), alone)


def test_two_tailed_p_is_twice_the_one_tailed_p():
    results = {"ref": summary(REFERENCE), "worse": summary(WORSE)}
    greater = compare(results, "ref", alternative="greater")["tests"]["worse"]
    less = compare(results, "ref", alternative="less")["tests"]["worse"]
    two = compare(results, "ref", alternative="two-sided")["tests"]["worse"]
    _, p_one, p_two = by_hand(REFERENCE, WORSE)
    assert two["p"] == pytest.approx(p_two) and two["p"] == pytest.approx(2 * greater["p"])  # t > 0: the greater tail is half
    assert less["p"] == pytest.approx(1 - p_one) and not less["significant"]
    # the reference worse than the other: a two-tailed test is significant, but the reference is not better
    swapped = compare({"ref": summary(WORSE), "other": summary(REFERENCE)}, "ref", alternative="two-sided")
    test = swapped["tests"]["other"]
    assert test["p"] == pytest.approx(p_two) and test["significant"] and not test["better"]
    assert not swapped["reference_significant_over_all"]


def test_lower_is_better_metric_marks_the_reference_with_the_lower_error():
    low = {k: 1.0 - v for k, v in REFERENCE.items()}
    high = {k: 1.0 - v for k, v in WORSE.items()}
    result = compare({"ref": summary(low, "valence_mse"), "other": summary(high, "valence_mse")}, "ref", "valence_mse", "two-sided")
    assert result["tests"]["other"]["mean_difference"] < 0 and result["tests"]["other"]["better"]
    assert result["reference_significant_over_all"]


def test_systems_run_on_different_splits_are_refused():
    fewer = {k: WORSE[k] for k in (0, 1, 2, 3)}
    with pytest.raises(UserError, match="same splits"):
        compare({"ref": summary(REFERENCE), "fewer": summary(fewer)}, "ref")
    other_ids = {0: 0.5, 1: 0.5, 2: 0.6, 3: 0.5, 7: 0.6}
    with pytest.raises(UserError, match=r"splits \[0, 1, 2, 3, 7\].*\[0, 1, 2, 3, 4\]"):
        compare({"ref": summary(REFERENCE), "other": summary(other_ids)}, "ref")
    with pytest.raises(UserError, match="reference system 'nope'"):
        compare({"ref": summary(REFERENCE)}, "nope")
    with pytest.raises(UserError, match="alternative"):
        compare({"ref": summary(REFERENCE)}, "ref", alternative="one-tailed")


def test_one_split_or_identical_scores_give_no_p_value():
    one = compare({"ref": summary({0: 0.6}), "other": summary({0: 0.5})}, "ref")
    assert one["tests"]["other"]["p"] is None and one["tests"]["other"]["reason"] == "needs >= 2 paired splits"
    same = compare({"ref": summary(REFERENCE), "copy": summary(dict(REFERENCE))}, "ref")
    assert same["tests"]["copy"]["p"] is None and not same["reference_significant_over_all"]
