"""The statistics behind `workbench compare`: McNemar's test and the bootstrap interval of
macro-F1 checked against cases computed by hand, and the Pareto front of accuracy vs latency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from workbench.measure import stats


def correctness(b: int, c: int, both_right: int = 10, both_wrong: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two correctness vectors with exactly b (A right, B wrong) and c (A wrong, B right) images."""
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    other = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(other)


def test_mcnemar_exact_binomial_when_few_discordant_pairs():
    result = stats.mcnemar(*correctness(1, 6))
    # 2 * sum_{k<=1} C(7, k) / 2^7 = 2 * (1 + 7) / 128
    assert (result.b, result.c, result.method) == (1, 6, "exact")
    assert result.p_value == pytest.approx(0.125)
    assert result.statistic == 1


def test_mcnemar_chi_square_with_continuity_correction():
    result = stats.mcnemar(*correctness(10, 30))
    assert (result.b, result.c, result.method) == (10, 30, "chi2")
    assert result.statistic == pytest.approx((abs(10 - 30) - 1) ** 2 / 40) == pytest.approx(9.025)
    # One degree of freedom: P[chi2 > x] = erfc(sqrt(x / 2)).
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert result.p_value == pytest.approx(0.002663, abs=1e-6)


def test_mcnemar_switches_method_at_25_discordant_pairs_and_is_symmetric():
    assert stats.mcnemar(*correctness(20, 4)).method == "exact"
    assert stats.mcnemar(*correctness(20, 5)).method == "chi2"
    forward, backward = stats.mcnemar(*correctness(2, 9)), stats.mcnemar(*reversed(correctness(2, 9)))
    assert (backward.b, backward.c) == (9, 2) and backward.p_value == pytest.approx(forward.p_value)


def test_mcnemar_without_disagreement_or_with_a_tie_gives_p_one():
    assert stats.mcnemar(*correctness(0, 0)).p_value == 1.0
    # 2 * P[X <= 3], X ~ Bin(6, 1/2), is 1.3125: capped at 1.
    assert stats.mcnemar(*correctness(3, 3)).p_value == 1.0


def test_mcnemar_refuses_unpaired_arrays():
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar([True, False], [True])


LABELS = ["fake", "real", "with_mask"]


def predictions(n: int, accuracy: float, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    truth = [LABELS[i % 3] for i in range(n)]
    wrong = rng.random(n) > accuracy
    return truth, [LABELS[(LABELS.index(t) + 1) % 3] if w else t for t, w in zip(truth, wrong)]


def test_f1_macro_matches_sklearn_and_counts_an_absent_class_as_zero():
    truth, guess = predictions(90, 0.8)
    assert stats.f1_macro(truth, guess, LABELS) == pytest.approx(f1_score(truth, guess, labels=LABELS, average="macro"))
    assert stats.f1_macro(["a", "b"], ["a", "b"], ["a", "b", "c"]) == pytest.approx(2 / 3)


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic_by_seed():
    truth, guess = predictions(120, 0.75)
    point = stats.f1_macro(truth, guess, LABELS)
    low, high = stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=1000, seed=0)
    assert 0 <= low < point < high <= 1
    assert stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=1000, seed=0) == (low, high)
    assert stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=1000, seed=1) != (low, high)
    narrower = stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=1000, seed=0, level=0.5)
    assert low < narrower[0] <= narrower[1] < high


def test_bootstrap_interval_shrinks_with_more_data():
    small = stats.bootstrap_f1_macro(*predictions(60, 0.8), LABELS, seed=0)
    large = stats.bootstrap_f1_macro(*predictions(6000, 0.8), LABELS, seed=0)
    assert large[1] - large[0] < (small[1] - small[0]) / 4


def test_bootstrap_is_blockwise_equal_to_one_pass(monkeypatch):
    """Large test sets are resampled in blocks; the blocks must not change the answer."""
    truth, guess = predictions(200, 0.7)
    whole = stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=300, seed=3)
    monkeypatch.setattr(stats, "BLOCK_CELLS", 200 * 7)  # 7 resamples per block
    assert stats.bootstrap_f1_macro(truth, guess, LABELS, resamples=300, seed=3) == pytest.approx(whole)


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="not among labels"):
        stats.bootstrap_f1_macro(["a", "zebra"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_f1_macro(["a"], ["a"], ["a"], level=95)
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_f1_macro([], [], ["a"])


def test_pareto_front_maximises_accuracy_and_minimises_latency():
    accuracy = [0.90, 0.85, 0.80, 0.95, 0.70, np.nan]
    latency = [5.0, 2.0, 3.0, 9.0, 1.0, 0.5]
    # 0.80 at 3 ms is beaten by 0.85 at 2 ms; a run without accuracy is never on the front.
    assert stats.pareto_front(accuracy, latency).tolist() == [True, True, False, True, True, False]
    assert stats.pareto_front([0.9, 0.9], [1.0, 1.0]).tolist() == [True, True]  # ties do not dominate
