"""Scoring a trained classifier: quality on held-out data, and what the model costs.

Values in, values out: `evaluate()` takes true labels and predicted probabilities and returns an
`Evaluation` whose `metrics` are plain floats ready to log; `training_summary()` condenses a
per-epoch history into the few numbers a study compares (best epoch, overfitting gap);
`most_confident_mistakes()` picks the errors worth looking at; `cost()` measures parameters,
size and inference latency on the machine that trained the model (latency is the median of a
few timed calls after a warm-up call, so one-off graph tracing is not counted). Nothing here
knows about MLflow, plotly or the filesystem, so every number can be checked in a test without a
tracking store; the figures live in `workbench.measure.figures`.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from workbench import vocabulary

ECE_BINS = 15
# Keeps log loss finite when a model puts exactly 0 on the true class (float32 softmax underflows).
PROBABILITY_FLOOR = 1e-15


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]         # test_accuracy, test_f1_macro, test_f1_<class>, test_ece, ...
    confusion: np.ndarray             # raw counts; rows: true class, columns: predicted class
    report: dict                      # sklearn's classification report as a dict
    report_text: str
    classes: tuple[str, ...]
    # Kept so figures (most confident mistakes) can be drawn later without re-predicting.
    y_true: np.ndarray | None = field(default=None, repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)

    @property
    def absent_classes(self) -> list[str]:
        """The model's classes no image of the scored set holds."""
        present = set(np.asarray(self.y_true).tolist()) if self.y_true is not None else set(range(len(self.classes)))
        return [c for i, c in enumerate(self.classes) if i not in present]

    @property
    def confusion_normalized(self) -> np.ndarray:
        """Each row divided by its true-class count; a class absent from the data keeps a zero row."""
        totals = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(self.confusion, totals, out=np.zeros(self.confusion.shape, dtype=float),
                         where=totals > 0)

    def confusion_json(self) -> dict:
        # "matrix" stays the raw counts: earlier runs' artifacts and readers rely on that key.
        return {"classes": list(self.classes), "matrix": self.confusion.tolist(),
                "matrix_normalized": self.confusion_normalized.tolist(),
                "rows": "true", "columns": "predicted"}


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 confidence.

    With confidence c_i = max_k p_ik and correctness a_i = [argmax_k p_ik == y_i], the interval
    [0, 1] is cut into `bins` equal-width bins B_b = ((b-1)/bins, b/bins] (the first also takes
    c = 0), and

        ECE = sum_b |B_b| / N * | mean_{i in B_b} a_i - mean_{i in B_b} c_i |

    i.e. the gap between accuracy and confidence, averaged over bins weighted by how many
    predictions fall in each. Empty bins contribute nothing. 0 is perfectly calibrated.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    y_true = np.asarray(y_true)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    # ceil(c * bins) - 1 puts a confidence exactly on an edge into the lower bin, as (lo, hi] says.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() / len(confidence) * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def roc_auc_ovr(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes present in `y_true`; None when fewer than two are.

    Binary problems use the plain ROC-AUC of the positive (second) column. Classes missing from
    the test split are skipped rather than scored, because their AUC is undefined (no positives).
    """
    y_true = np.asarray(y_true)
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(y_true == 1, probabilities[:, 1]))
    # Per class by hand: sklearn's multi_class="ovr" insists every column's class appears in y_true.
    return float(np.mean([roc_auc_score(y_true == c, probabilities[:, c]) for c in present]))


def evaluate(y_true: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...], prefix: str = "test",
             present_only: bool = False) -> Evaluation:
    """Every metric of a scored set. With `present_only`, the macro and weighted averages, the
    per-class figures and the classification report cover only the classes the images actually
    hold (a model scored on another dataset that lacks one of its classes is neither charged a
    zero F1 for it nor credited with a 0.0 for a class it never saw); `absent_classes` names the
    others. The confusion matrix keeps every class."""
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    k = len(classes)
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), k):
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected ({len(y_true)}, {k}) "
                         f"for {len(y_true)} labels and classes {tuple(classes)}")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate on zero examples")
    labels = list(range(k))
    y_pred = probabilities.argmax(axis=1)

    p = prefix
    metrics = {f"{p}_accuracy": float(accuracy_score(y_true, y_pred))}
    averaged = sorted(set(y_true.tolist())) if present_only else labels
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=averaged, average=average, zero_division=0)
        metrics.update({f"{p}_precision_{average}": float(precision), f"{p}_recall_{average}": float(recall),
                        f"{p}_f1_{average}": float(f1)})
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=averaged, average=None, zero_division=0)
    for i, c in enumerate(averaged):
        name = classes[c]
        metrics.update({f"{p}_precision_{name}": float(precision[i]), f"{p}_recall_{name}": float(recall[i]),
                        f"{p}_f1_{name}": float(f1[i])})
    # A class called "macro" or "weighted" would silently overwrite an aggregate: refuse instead.
    if len(metrics) != 1 + 6 + 3 * len(averaged):
        raise ValueError(f"class names {tuple(classes)} collide with metric names (macro, weighted?)")

    auc = roc_auc_ovr(y_true, probabilities)
    if auc is not None:
        metrics[f"{p}_roc_auc_ovr"] = auc
    clipped = np.clip(probabilities, PROBABILITY_FLOOR, 1.0)
    # Renormalised so float32 softmax rounding does not trip sklearn's "do not sum to one" warning.
    clipped /= clipped.sum(axis=1, keepdims=True)
    metrics[f"{p}_log_loss"] = float(log_loss(y_true, clipped, labels=labels))
    metrics[f"{p}_ece"] = expected_calibration_error(y_true, probabilities)

    # The report averages over the same classes as the metrics: one computation, one set of figures.
    kwargs = dict(labels=averaged, target_names=[classes[c] for c in averaged], zero_division=0, digits=4)
    return Evaluation(
        metrics=metrics,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
        report=classification_report(y_true, y_pred, output_dict=True, **kwargs),
        report_text=classification_report(y_true, y_pred, **kwargs),
        classes=tuple(classes),
        y_true=y_true,
        probabilities=probabilities,
    )


def training_summary(history: dict[str, list[float]], monitor: str = "val_f1_macro") -> dict[str, float]:
    """The per-epoch history condensed to what studies compare across runs.

    `best_epoch` is 1-based (as MLflow steps are) and the first epoch reaching the best value of
    `monitor` (the metric training restored its weights by; `vocabulary.better` says which way is
    best); `best_<monitor>` is that value. `overfit_gap` = final train accuracy - final
    validation accuracy; `overfit_gap_loss` = final val_loss - final loss. Each key appears only
    when the history has what it needs, so a run without validation still gets a summary.
    """
    def final(key: str) -> float | None:
        values = history.get(key)
        # Non-list entries (e.g. phase_boundary) are annotations, not per-epoch series.
        return float(values[-1]) if isinstance(values, (list, tuple, np.ndarray)) and len(values) else None

    summary: dict[str, float] = {}
    series = history.get(monitor)
    if isinstance(series, (list, tuple, np.ndarray)) and len(series):
        values = np.asarray(series, dtype=float)
        if not np.isnan(values).all():  # a diverged run can log NaN; skip those epochs, not the run
            best = int(np.nanargmax(values) if vocabulary.better(monitor) == "max" else np.nanargmin(values))
            summary["best_epoch"] = float(best + 1)
            summary[f"best_{monitor}"] = float(values[best])
    train_acc, val_acc = final("accuracy"), final("val_accuracy")
    if train_acc is not None:
        summary["final_train_accuracy"] = train_acc
    if val_acc is not None:
        summary["final_val_accuracy"] = val_acc
    if train_acc is not None and val_acc is not None:
        summary["overfit_gap"] = train_acc - val_acc
    train_loss, val_loss = final("loss"), final("val_loss")
    if train_loss is not None and val_loss is not None and math.isfinite(train_loss) and math.isfinite(val_loss):
        summary["overfit_gap_loss"] = val_loss - train_loss
    return summary


def most_confident_mistakes(y_true: np.ndarray, probabilities: np.ndarray, k: int = 16) -> list[int]:
    """Indices of wrong predictions, most confident (highest predicted-class probability) first.

    These are the examples most likely to be label noise or a shortcut the model learned, so
    they are the ones worth showing a human. Ties keep dataset order so the pick is stable.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != np.asarray(y_true))
    confidence = probabilities[wrong, y_pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return [int(i) for i in wrong[order][:max(k, 0)]]


# --- cost -------------------------------------------------------------------------------------------

def cost(model, image_size: int) -> dict[str, float]:
    """Parameters, size and latency per image at batch 1 (an app classifying camera frames) and
    batch 32 (bulk scoring). The size is the weights' bytes: what a saved model holds, to within
    its few kilobytes of configuration, measured without writing the model to disk again."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    size = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return {"total_params": total, "trainable_params": trainable, "frozen_params": total - trainable,
            "model_size_mb": size / 2**20,
            "latency_ms_batch1": latency_ms(model, image_size, 1),
            "latency_ms_per_image_batch32": latency_ms(model, image_size, 32, repeats=3)}


def latency_ms(model, image_size: int, batch: int, repeats: int = 5) -> float:
    """Median milliseconds per image for one `predict_on_batch` call of `batch` images. A model
    run eagerly (a smoke run's) is timed once, unwarmed: its figure says nothing of the served
    graph's speed, and a DenseNet's eager calls would cost a smoke run seconds each."""
    images = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32")
    if getattr(model, "run_eagerly", False):
        repeats = 1
    else:
        model.predict_on_batch(images)  # warm-up: traces and compiles the predict function
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict_on_batch(images)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / batch
