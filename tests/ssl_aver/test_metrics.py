"""Metrics checked against scikit-learn, fairlearn, scipy and the papers' own numbers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from ssl_aver.errors import UserError
from ssl_aver.metrics import (
    binarize,
    bootstrap_ci,
    brier_score,
    ccc,
    classification_scores,
    evaluate_predictions,
    macro_f1_bias,
    paired_ttest,
)

CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]


def _random(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(6, 0.6), size=n)
    counts = rng.integers(0, 6, size=(n, 6))
    return probs, counts


def test_threshold_is_strictly_above_one_over_c() -> None:
    # paper 4, Table 1: anger x6, sadness x2 -> (0.75, 0, 0, 0, 0, 0.25) -> anger and sadness
    assert binarize(np.array([[6, 0, 0, 0, 0, 2]])).tolist() == [[1, 0, 0, 0, 0, 1]]
    # 2 of 12 votes is exactly 1/6 and stays negative; counts and proportions agree
    counts = np.array([[0, 2, 2, 0, 5, 3]])
    assert binarize(counts).tolist() == [[0, 0, 0, 0, 1, 1]]
    assert binarize(counts / 12).tolist() == [[0, 0, 0, 0, 1, 1]]
    assert binarize(np.zeros((1, 6))).tolist() == [[0] * 6]


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_scores_match_scikit_learn(seed: int) -> None:
    probs, counts = _random(seed)
    result = evaluate_predictions(probs, counts, "multilabel", CLASSES, bootstrap=0)
    t, p = binarize(counts), binarize(probs)
    for avg in ("macro", "micro", "weighted"):
        assert result[f"{avg}_f1"] == pytest.approx(skm.f1_score(t, p, average=avg, zero_division=0))
        assert result[f"{avg}_precision"] == pytest.approx(skm.precision_score(t, p, average=avg, zero_division=0))
        assert result[f"{avg}_recall"] == pytest.approx(skm.recall_score(t, p, average=avg, zero_division=0))
    assert result["sample_precision"] == pytest.approx(skm.precision_score(t, p, average="samples", zero_division=0))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    per_class = skm.f1_score(t, p, average=None, zero_division=0)
    assert list(result["per_class_f1"].values()) == pytest.approx(per_class.tolist())
    assert result["brier"] == pytest.approx(np.mean((probs - t) ** 2))
    dist = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    assert result["brier_distribution"] == pytest.approx(np.mean((probs - dist) ** 2))


def test_multiclass_scores_match_scikit_learn_and_accept_counts() -> None:
    probs, counts = _random(2)
    counts[:, 0] += 1  # no all-zero rows; argmax of counts is the class
    result = evaluate_predictions(probs, counts, "multiclass", CLASSES, bootstrap=0)
    t, p = counts.argmax(axis=1), probs.argmax(axis=1)
    labels = list(range(6))
    for avg in ("macro", "micro", "weighted"):
        assert result[f"{avg}_f1"] == pytest.approx(skm.f1_score(t, p, labels=labels, average=avg, zero_division=0))
        assert result[f"{avg}_recall"] == pytest.approx(skm.recall_score(t, p, labels=labels, average=avg, zero_division=0))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    assert result["brier"] == pytest.approx(np.mean((probs - np.eye(6)[t]) ** 2))
    one_hot = evaluate_predictions(probs, np.eye(6)[t], "multiclass", CLASSES, bootstrap=0)
    assert one_hot["macro_f1"] == result["macro_f1"]
    with pytest.raises(UserError, match="all zero"):
        evaluate_predictions(probs[:2], np.zeros((2, 6)), "multiclass", CLASSES, bootstrap=0)


def test_classification_scores_on_a_hand_example() -> None:
    t = np.array([[1, 0], [1, 1], [0, 1]])
    p = np.array([[1, 1], [1, 0], [0, 0]])
    s = classification_scores(t, p)
    # class 0: tp 2 fp 0 fn 0 -> F1 1; class 1: tp 0 fp 1 fn 2 -> F1 0
    assert s["per_class_f1"] == [1.0, 0.0] and s["macro_f1"] == 0.5
    assert s["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert s["sample_precision"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_brier_and_ccc_by_hand() -> None:
    assert brier_score(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([[1, 0], [1, 0]])) == pytest.approx(
        (0.04 + 0.04 + 0.36 + 0.36) / 4)
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, -x) == pytest.approx(-2 * 1.25 / (1.25 + 1.25 + 25.0))
    # shifted by 1: cov 1.25, variances 1.25, squared mean gap 1 -> 2.5 / 3.5
    assert ccc(x, x + 1) == pytest.approx(2.5 / 3.5)
    with pytest.raises(UserError):
        ccc([1.0], [1.0])


def test_bias_reproduces_paper_3() -> None:
    # Table 5, model 1: male 0.634 and female 0.653 are printed rounded to 3 digits; their gap
    # is 1.9 points, and the printed bias 1.86 comes from unrounded F1s that round to them.
    assert macro_f1_bias({"male": 0.634, "female": 0.653}) == pytest.approx(1.9)
    assert macro_f1_bias({"male": 0.6344, "female": 0.6530}) == pytest.approx(1.86)
    assert round(0.6344, 3) == 0.634 and round(0.6530, 3) == 0.653
    # Table 4 (four race groups): mean over the six pairs matches the printed bias within
    # the rounding of the printed group F1s.
    assert macro_f1_bias({"aa": 0.646, "as": 0.632, "ca": 0.645, "un": 0.599}) == pytest.approx(2.60, abs=0.05)
    assert macro_f1_bias({"aa": 0.662, "as": 0.677, "ca": 0.648, "un": 0.616}) == pytest.approx(3.27, abs=0.05)
    assert macro_f1_bias({"aa": 0.697, "as": 0.711, "ca": 0.694, "un": 0.572}) == pytest.approx(7.02, abs=0.05)
    with pytest.raises(UserError):
        macro_f1_bias({"only": 0.5})


def test_fairness_per_group_and_parity_by_hand() -> None:
    # two classes; group a predicts class 0 for everyone, group b class 1 for everyone
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    groups = {"sex": ["a", "a", "b", "b"], "race": ["x", None, "x", "x"]}
    r = evaluate_predictions(probs, targets, "multiclass", ["c0", "c1"], groups=groups, bootstrap=0)
    sex = r["fairness"]["sex"]
    # a: F1 c0 = 2/3 (tp 1, fp 1), c1 = 0 -> 1/3; b: c0 = 0, c1 = 2/3 -> 1/3
    assert sex["groups"]["a"]["macro_f1"] == pytest.approx(1 / 3)
    assert sex["groups"]["b"]["macro_f1"] == pytest.approx(1 / 3)
    assert sex["bias"] == pytest.approx(0.0)
    # selection rates 1 vs 0 for each class; TPR and FPR are 1 in one group, 0 in the other
    assert sex["dpd_per_class"] == [1.0, 1.0] and sex["eod_per_class"] == [1.0, 1.0]
    race = r["fairness"]["race"]
    assert race["n_missing"] == 1 and race["bias"] is None and list(race["groups"]) == ["x"]


def test_a_corpus_group_without_test_samples_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    groups = {"sex": ["a", "a", "b", "b"], "race": ["x", "x", "y", None]}
    corpus = {"sex": np.array(["a", "b", "a"], dtype=object), "race": np.array(["x", "y", "z", "Asian", None, float("nan")], dtype=object)}
    with caplog.at_level(logging.WARNING, logger="ssl_aver.metrics"):
        r = evaluate_predictions(probs, targets, "multiclass", ["c0", "c1"], groups=groups, bootstrap=0, known_groups=corpus)
    assert r["fairness"]["race"]["absent_groups"] == ["Asian", "z"] and "absent_groups" not in r["fairness"]["sex"]
    assert len(r["warnings"]) == 1 and "race group(s) Asian, z" in r["warnings"][0]
    assert [rec.getMessage() for rec in caplog.records] == ["fairness: " + r["warnings"][0]]
    json.dumps(r)
    # every group tested, or no corpus groups given: nothing to warn about
    assert evaluate_predictions(probs, targets, "multiclass", ["c0", "c1"], groups=groups, bootstrap=0,
                                known_groups={"sex": ["a", "b"]})["warnings"] == []
    assert evaluate_predictions(probs, targets, "multiclass", ["c0", "c1"], groups=groups, bootstrap=0)["warnings"] == []


def test_parity_matches_fairlearn_averaged_over_classes() -> None:
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    probs, counts = _random(5, n=200)
    sex = np.where(np.arange(200) % 3 == 0, "f", "m")
    r = evaluate_predictions(probs, counts, "multilabel", CLASSES, groups={"sex": sex}, bootstrap=0)
    t, p = binarize(counts), binarize(probs)
    dpd = [demographic_parity_difference(t[:, j], p[:, j], sensitive_features=sex) for j in range(6)]
    eod = [equalized_odds_difference(t[:, j], p[:, j], sensitive_features=sex) for j in range(6)]
    assert r["fairness"]["sex"]["dpd"] == pytest.approx(np.mean(dpd))
    assert r["fairness"]["sex"]["eod"] == pytest.approx(np.mean(eod))
    female = sex == "f"
    assert r["fairness"]["sex"]["groups"]["f"]["macro_f1"] == pytest.approx(
        skm.f1_score(t[female], p[female], average="macro", zero_division=0))


def test_bootstrap_intervals_are_seeded_and_match_the_generic_resampler() -> None:
    probs, counts = _random(4, n=120)
    a = evaluate_predictions(probs, counts, "multilabel", CLASSES, bootstrap=200, seed=9)
    b = evaluate_predictions(probs, counts, "multilabel", CLASSES, bootstrap=200, seed=9)
    assert a["ci"] == b["ci"]
    lo, hi = a["ci"]["macro_f1"]
    assert lo < a["macro_f1"] < hi
    generic = bootstrap_ci(
        lambda p, t: skm.f1_score(binarize(t), binarize(p), average="macro", zero_division=0),
        probs, counts, n=200, seed=9,
    )
    assert list(generic) == pytest.approx(a["ci"]["macro_f1"])
    assert set(a["per_class_f1_ci"]) == set(CLASSES)


def test_paired_ttest_one_and_two_tailed() -> None:
    a = [0.70, 0.72, 0.74]
    b = [0.69, 0.70, 0.71]  # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01 -> t = 2 * sqrt(3)
    two = paired_ttest(a, b)
    one = paired_ttest(a, b, alternative="greater")
    assert two["t"] == pytest.approx(2 * np.sqrt(3)) and one["t"] == two["t"]
    assert one["p"] == pytest.approx(two["p"] / 2)
    assert paired_ttest(a, b, alternative="less")["p"] == pytest.approx(1 - two["p"] / 2)
    with pytest.raises(UserError):
        paired_ttest([1.0, 2.0], [1.0])


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError, match="\\[0, 1\\]"):
        evaluate_predictions(np.array([[2.0, 0.0]]), np.array([[1, 0]]), "multilabel", ["a", "b"], bootstrap=0)
    with pytest.raises(UserError, match="task"):
        evaluate_predictions(np.array([[1.0, 0.0]]), np.array([[1, 0]]), "regression", ["a", "b"], bootstrap=0)
    with pytest.raises(UserError, match="NaN"):
        evaluate_predictions(np.array([[np.nan, 0.0]]), np.array([[1, 0]]), "multilabel", ["a", "b"], bootstrap=0)
