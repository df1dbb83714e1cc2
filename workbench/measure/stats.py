"""The statistics behind "is the winner really better?": McNemar's paired test on two classifiers'
per-image correctness, bootstrap confidence intervals of macro-F1 and of the paired difference in
macro-F1 between two runs, Holm's correction when several runs are compared with the best at
once, and the Pareto front of two competing objectives (accuracy up, latency down).

Values in, values out: arrays of labels or booleans, no pandas, no MLflow, so every number can
be checked by hand in a test. Both paired procedures assume the caller lined the arrays up image
by image (same test set, same order); `workbench.analysis.compare` does that from the runs' logged
`evaluation/test_predictions.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25
# Resamples are processed in blocks so a large test set does not need resamples x images memory at once.
BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class McNemarResult:
    b: int             # images A got right and B got wrong
    c: int             # images A got wrong and B got right
    statistic: float   # exact: min(b, c); chi2: (|b - c| - 1)^2 / (b + c)
    p_value: float     # two-sided
    method: str        # "exact" or "chi2"


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's test of whether two classifiers scored on the same images err equally often.

    Only the discordant images count: b (A right, B wrong) and c (A wrong, B right). With
    b + c < `exact_below` the p-value is the exact two-sided binomial one,
    min(1, 2 * P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2); otherwise the chi-square
    statistic with continuity correction (|b - c| - 1)^2 / (b + c) on one degree of freedom.
    No discordant pair at all means no evidence of a difference: p = 1.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise ValueError(f"correctness arrays must be 1-D and the same length, got {a.shape} and {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n < exact_below:
        if n == 0:
            return McNemarResult(b, c, 0.0, 1.0, "exact")
        low = min(b, c)
        p = min(1.0, 2.0 * float(scipy_stats.binom.cdf(low, n, 0.5)))
        return McNemarResult(b, c, float(low), p, "exact")
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemarResult(b, c, float(statistic), float(scipy_stats.chi2.sf(statistic, 1)), "chi2")


def _encode(y_true, y_pred, labels) -> tuple[np.ndarray, np.ndarray, int]:
    index = {label: i for i, label in enumerate(labels)}
    if len(labels) == 0 or len(index) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {list(labels)}")
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"need as many predictions as labels, and at least one: got {len(y_true)} and {len(y_pred)}")
    unknown = sorted({str(v) for v in (*y_true, *y_pred) if v not in index})
    if unknown:
        raise ValueError(f"values {unknown} are not among labels {list(labels)}")
    return (np.array([index[v] for v in y_true]), np.array([index[v] for v in y_pred]), len(labels))


def _f1_macro_from_confusion(confusion: np.ndarray, over: Sequence[int] | None = None) -> np.ndarray:
    """Macro-F1 of a stack of confusion matrices (..., k, k), rows true and columns predicted.

    A class with no true and no predicted images scores 0, as sklearn's zero_division=0 does and
    as the logged test_f1_macro (averaged over every class of the run) does."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(float)
    denominator = confusion.sum(axis=-1) + confusion.sum(axis=-2)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return (f1 if over is None else f1[..., list(over)]).mean(axis=-1)


def f1_macro(y_true, y_pred, labels: Sequence) -> float:
    """Macro-F1 over `labels` (every class counts, present or not)."""
    t, p, k = _encode(y_true, y_pred, labels)
    return f1_macro_of_indices(t, p, k)


def f1_macro_of_indices(t: np.ndarray, p: np.ndarray, k: int) -> float:
    """Macro-F1 of class indices in [0, k): the one definition training's per-epoch validation
    score and the comparison statistics use (test evaluation uses scikit-learn's, which agrees
    with it and adds the per-class report)."""
    t, p = np.asarray(t, dtype=np.int64), np.asarray(p, dtype=np.int64)
    return float(_f1_macro_from_confusion(np.bincount(t * k + p, minlength=k * k).reshape(k, k)))


def _bootstrap_scores(t: np.ndarray, predictions: Sequence[np.ndarray], k: int, resamples: int,
                      seed: int, over: Sequence[int] | None = None) -> np.ndarray:
    """Macro-F1 of each prediction vector on `resamples` resamples of the images, (n_predictions,
    resamples). Every vector is scored on the same resampled indices: the pairing."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = len(t)
    rng = np.random.default_rng(seed)
    scores = np.empty((len(predictions), resamples))
    block = max(1, BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        picked = rng.integers(0, n, size=(size, n))
        offsets = np.arange(size)[:, None] * k * k
        for row, p in enumerate(predictions):
            # One bincount for the whole block: cell (true, pred) of resample r lands at r*k*k + true*k + pred.
            cells = (offsets + t[picked] * k + p[picked]).ravel()
            confusion = np.bincount(cells, minlength=size * k * k).reshape(size, k, k)
            scores[row, start:start + size] = _f1_macro_from_confusion(confusion, over)
    return scores


def _interval(scores: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    tail = (1 - level) / 2
    low, high = np.quantile(scores, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_f1_macro(y_true, y_pred, labels: Sequence, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95, average_over: Sequence | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of macro-F1: resample the test images with replacement
    `resamples` times and take the (1 - level)/2 and (1 + level)/2 quantiles of the scores.

    The resampled image indices depend only on `seed`, `resamples` and the number of images, so
    two runs scored on the same test set in the same order are resampled identically (paired),
    and the interval is reproducible. `average_over` limits the average to some labels (the
    classes a cross-dataset test set holds)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    t, p, k = _encode(y_true, y_pred, labels)
    over = None if average_over is None else [list(labels).index(label) for label in average_over]
    return _interval(_bootstrap_scores(t, [p], k, resamples, seed, over)[0], level)


def bootstrap_accuracy(correct, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy from per-image correctness, resampled exactly
    as `bootstrap_f1_macro` resamples (same seed, same indices)."""
    c = np.asarray(correct, dtype=float)
    if c.ndim != 1 or not len(c):
        raise ValueError(f"need a non-empty 1-D array of correctness, got shape {c.shape}")
    rng = np.random.default_rng(seed)
    scores = np.empty(resamples)
    block = max(1, BLOCK_CELLS // len(c))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        scores[start:start + size] = c[rng.integers(0, len(c), size=(size, len(c)))].mean(axis=1)
    return _interval(scores, level)


def bootstrap_f1_macro_difference(y_true, y_pred_a, y_pred_b, labels: Sequence, resamples: int = 1000,
                                  seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Macro-F1(a) - macro-F1(b) on the same images, and the paired percentile bootstrap interval
    of that difference: both runs are scored on each resample, so what they share (which images
    happen to be hard) cancels out. An interval excluding 0 says the gap is more than the luck
    of which images were drawn."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    t, a, k = _encode(y_true, y_pred_a, labels)
    _, b, _ = _encode(y_true, y_pred_b, labels)
    scores = _bootstrap_scores(t, [a, b], k, resamples, seed)
    low, high = _interval(scores[0] - scores[1], level)
    return f1_macro_of_indices(t, a, k) - f1_macro_of_indices(t, b, k), low, high


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of p-values for testing several hypotheses at once (the top
    runs each against the best): sorted ascending, the i-th smallest (0-based) is multiplied by
    (m - i), a running maximum keeps the order, and nothing exceeds 1. NaN entries are ignored."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for i, index in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[index]))
        adjusted[index] = running
    return adjusted


def pareto_front(maximise: Sequence[float], minimise: Sequence[float]) -> np.ndarray:
    """Which points no other point beats: a boolean mask, True where no point has at least as
    high a `maximise` value and at most as low a `minimise` value while being strictly better
    in one. Points with a missing (NaN) value are never on the front."""
    up = np.asarray(maximise, dtype=float)
    down = np.asarray(minimise, dtype=float)
    if up.shape != down.shape or up.ndim != 1:
        raise ValueError(f"both objectives must be 1-D and the same length, got {up.shape} and {down.shape}")
    valid = ~(np.isnan(up) | np.isnan(down))
    front = np.zeros(len(up), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (up >= up[i]) & (down <= down[i]) & ((up > up[i]) | (down < down[i]))
        front[i] = not others.any()
    return front
