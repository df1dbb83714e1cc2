"""Scoring a trained classifier on held-out data: metrics, confusion matrix, report, figures.

Values in, values out: `evaluate()` takes true labels and predicted probabilities and returns an
`Evaluation`; the figure builders return matplotlib figures. Nothing here knows about MLflow,
so the numbers can be checked in a test without a tracking store.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score  # noqa: E402


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]         # test_accuracy, test_f1_macro, test_f1_<class>, ...
    confusion: np.ndarray             # rows: true class, columns: predicted class
    report: dict                      # sklearn's classification report as a dict
    report_text: str
    classes: tuple[str, ...]

    def confusion_json(self) -> dict:
        return {"classes": list(self.classes), "matrix": self.confusion.tolist(),
                "rows": "true", "columns": "predicted"}


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    return float(f1_score(y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0))


def evaluate(y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], prefix: str = "test") -> Evaluation:
    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    metrics = {
        f"{prefix}_accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}_f1_macro": f1_macro(y_true, y_pred, len(classes)),
        **{f"{prefix}_f1_{name}": float(score) for name, score in zip(classes, per_class)},
    }
    kwargs = dict(labels=labels, target_names=list(classes), zero_division=0, digits=4)
    return Evaluation(
        metrics=metrics,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        report=classification_report(y_true, y_pred, output_dict=True, **kwargs),
        report_text=classification_report(y_true, y_pred, **kwargs),
        classes=tuple(classes),
    )


def confusion_figure(evaluation: Evaluation, title: str = "Confusion matrix (test)"):
    cm = evaluation.confusion
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(evaluation.classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), evaluation.classes, rotation=30, ha="right")
    ax.set_yticks(range(n), evaluation.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curves_figure(history: dict[str, list[float]]):
    """Train vs validation loss, accuracy and validation macro-F1 per epoch."""
    epochs = range(1, len(history.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (metric, title) in zip(axes, (("loss", "loss"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"))):
        if metric in history:
            ax.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig
