"""Likely label errors among images a model scored out of sample, by confident learning
(Northcutt et al., "Confident Learning: Estimating Uncertainty in Dataset Labels", 2021, as
implemented by cleanlab): an image is flagged when the model's out-of-sample probability for
another class clears that class's own average self-confidence while its given label's does not,
and images are ranked by self-confidence (the probability of the given label), lowest first.

Values in, values out: given labels and probabilities that did not come from training on those
very images (a run's validation and test splits; `workbench data audit`'s K-fold predictions),
returned as a frame the caller joins to file names. cleanlab is imported only when called (it
takes a second to import).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def rank(y: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per image, most suspect first: `row` (its index in the inputs), `given` and
    `suggested` label, `score` (the given label's probability: low is suspect) and `issue`
    (whether confident learning flags it)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(y, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    p = p / p.sum(axis=1, keepdims=True)  # cleanlab insists rows sum to one; float32 softmax is close
    with warnings.catch_warnings():
        # Small splits: cleanlab warns it may miss issues in classes with few examples, which
        # is true and said in the README; the warning itself would drown a command's output.
        warnings.simplefilter("ignore")
        flagged = np.zeros(len(y), dtype=bool)
        if len(set(y.tolist())) > 1:
            # n_jobs=1: cleanlab would fork a pool of processes, which a TensorFlow process must not
            # do (and a few hundred images take milliseconds anyway).
            flagged = find_label_issues(y, p, filter_by="prune_by_noise_rate", n_jobs=1)
        score = get_label_quality_scores(y, p, method="self_confidence")
    order = np.argsort(score, kind="stable")
    return pd.DataFrame({"row": order, "given": [classes[i] for i in y[order]],
                         "suggested": [classes[i] for i in p[order].argmax(axis=1)],
                         "score": score[order].round(6), "issue": flagged[order]})


def recall_at(ranking: pd.DataFrame, planted: set[int], k: int) -> float:
    """The share of `planted` rows (known wrong labels) among the first k of a ranking."""
    if not planted:
        return float("nan")
    return len(set(ranking["row"].iloc[:k].tolist()) & planted) / len(planted)
