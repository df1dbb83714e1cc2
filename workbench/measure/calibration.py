"""Calibration: making a model's probabilities mean what they say, by temperature scaling (Guo et
al., "On Calibration of Modern Neural Networks", 2017). One scalar T divides the logits before the
softmax; it is fitted on the validation split by minimising the negative log-likelihood, so it
never sees a test image, and it leaves every argmax (hence accuracy and F1) unchanged. T > 1
softens an over-confident model, T < 1 sharpens an under-confident one.

Values in, values out: logits or probabilities and labels, no Keras and no MLflow. The model
applies the fitted T itself (`model.backbones.with_temperature`), so what is served is what was
measured here. The metrics are the test split's before and after: expected calibration error,
Brier score (mean squared distance between the probability vector and the one-hot label) and log
loss; `reliability` gives the per-bin accuracy and confidence a reliability diagram draws.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from workbench.measure.evaluate import (
    ECE_BINS,
    PROBABILITY_FLOOR,
    expected_calibration_error,
)

# T is searched in this range: beyond it a model is so over- or under-confident that a single
# scalar is the wrong fix, and the bound keeps an all-correct validation split (whose NLL falls
# without limit as T shrinks) from driving T to zero.
T_MIN, T_MAX = 0.05, 20.0


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] minimising the mean NLL of softmax(logits / T) on labels y."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if logits.ndim != 2 or len(logits) != len(y) or not len(y):
        raise ValueError(f"need (n, classes) logits for n labels, got {logits.shape} for {len(y)} labels")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, y].mean())

    found = minimize_scalar(nll, bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


def scaled(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T), in float64."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def brier(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over images of sum_k (p_k - [y == k])^2: 0 is perfect, 2 is confidently wrong."""
    p = np.asarray(probabilities, dtype=float)
    onehot = np.eye(p.shape[1])[np.asarray(y, dtype=int)]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def log_loss(y: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, dtype=float)[np.arange(len(y)), np.asarray(y, dtype=int)],
                PROBABILITY_FLOOR, 1.0)
    return float(-np.log(p).mean())


def metrics(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, temperature: float,
            prefix: str = "test") -> dict[str, float]:
    """The figures a run logs: T, and ECE, Brier and log loss before and after it.
    `<prefix>_ece` and `<prefix>_log_loss` before it are `evaluate()`'s own."""
    return {"temperature": temperature,
            f"{prefix}_brier": brier(y, raw), f"{prefix}_brier_calibrated": brier(y, calibrated),
            f"{prefix}_ece_calibrated": expected_calibration_error(y, calibrated),
            f"{prefix}_log_loss_calibrated": log_loss(y, calibrated)}


def reliability(y: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty confidence bin (as `expected_calibration_error` cuts them): its edges, the
    images in it, their mean top-1 confidence and their accuracy."""
    p = np.asarray(probabilities, dtype=float)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == np.asarray(y)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "images": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]
