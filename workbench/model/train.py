"""The one `train()`: a single run and every sweep trial go through this function.

It reads top to bottom as a run's story: seed -> runtime (device, mixed precision, XLA) -> input
pipelines over the (already balanced) training split and the validation and test splits ->
model -> fit (phase one, with the base frozen when transfer learning) -> optionally fine-tune the
top of the base at a lower learning rate (phase two, epochs numbered on from phase one) ->
fit the calibrating temperature on the validation split -> evaluate on the held-out test
split -> (for a fold that holds a source out: score the training sources' own validation images
too) -> rank likely label errors among the validation and test images -> measure the model's
cost -> pick the mistakes worth showing -> return values. It writes nothing: data are
materialised before (`dataset.balanced`) and tracking lives outside (`run.py` passes Keras
callbacks in and writes what comes back), so a test can train a tiny model here without any
MLflow store.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from workbench import errors, vocabulary
from workbench.data.balance import Balanced
from workbench.data.dataset import IN_DISTRIBUTION_VAL, Dataset
from workbench.measure import calibration, label_issues
from workbench.measure.evaluate import (
    Evaluation,
    cost,
    evaluate,
    most_confident_mistakes,
)
from workbench.measure.stats import f1_macro_of_indices
from workbench.model import backbones, pipeline
from workbench.spec import TrialConfig
from workbench.spec.registry import SCHEDULES

# Every trial builds a fresh model, so tf.function retracing is expected, not a bug to warn about.
tf.get_logger().setLevel("ERROR")
MISTAKES_SHOWN = 16
ISSUES_SHOWN = 16


@dataclass
class TrainResult:
    model: keras.Model                    # the calibrated classifier: what is logged and served
    history: dict[str, list[float]]       # per epoch: loss, accuracy, val_loss, val_accuracy, val_f1_macro, lr
    evaluation: Evaluation                # on the test split, before calibration
    test_frame: pd.DataFrame              # the test split's rows, in the evaluation's order
    train_images: int                     # after balancing
    class_weight: dict[int, float] | None
    runtime: backbones.Runtime
    cost: dict[str, float]                # parameters, size, latency
    mistakes: list[int]                   # rows of test_frame: the most confident wrong predictions
    mistake_images: np.ndarray            # those images as the model saw them
    phase_boundary: int | None = None     # first epoch of fine-tuning, when there was a phase two
    timings: dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0              # fitted on the validation split; the model applies it
    calibrated: np.ndarray | None = None  # test probabilities after the temperature, in test_frame's order
    calibration: dict[str, float] = field(default_factory=dict)   # temperature; ECE, Brier, log loss after
    label_issues: pd.DataFrame | None = None   # validation and test images ranked by label quality
    issue_images: np.ndarray | None = None     # the first ISSUES_SHOWN flagged ones, as the model saw them
    # A fold's: validation_scores on the training sources' own validation images (IN_DISTRIBUTION_VAL).
    in_distribution: dict[str, float] = field(default_factory=dict)

    def objective(self, metric: str, restore_best: bool) -> float:
        """The value a sweep optimises: the last epoch's, or the best one when its weights were kept."""
        values = self.history[metric]
        if not restore_best:
            return float(values[-1])
        return float(min(values) if vocabulary.lower_is_better(metric) else max(values))


class EpochRecorder(keras.callbacks.Callback):
    """Scores the validation split once per epoch, adding `val_loss`, `val_accuracy`,
    `val_f1_macro` and the learning rate to the epoch's logs, and keeps the full history.

    One prediction pass gives all three validation figures, so Keras' own validation pass (a
    second sweep over the data and a third compiled function) is not needed. It must come first
    among callbacks: later ones (MLflow logging, Optuna pruning, early stopping, plateau
    schedules) read the same logs dict and so see what it adds."""

    def __init__(self, val_ds, y_val: np.ndarray, num_classes: int):
        super().__init__()
        self.val_ds, self.y_val, self.num_classes = val_ds, y_val, num_classes
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        errors.raise_if_interrupted()   # a Ctrl-C that was swallowed where it struck stops the run here
        if not math.isfinite(float(logs.get("loss", 0.0))):
            # Fail loudly: a diverged trial must be recorded as failed, not as a bad score.
            raise FloatingPointError(f"training loss became {logs['loss']} at epoch {epoch + 1} "
                                     "(learning rate too high?)")
        logs.update(validation_scores(self.model.predict(self.val_ds, verbose=0), self.y_val, self.num_classes))
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))


def validation_scores(probabilities: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """`val_loss`, `val_accuracy` and `val_f1_macro` of one prediction pass: what every epoch
    logs, and what a fold scores on the training sources' own validation images."""
    predicted = probabilities.argmax(axis=1)
    chosen = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return {"val_loss": float(-np.log(chosen).mean()),  # Keras' sparse categorical cross-entropy
            "val_accuracy": float((predicted == y).mean()),
            "val_f1_macro": f1_macro_of_indices(y, predicted, num_classes)}


def schedule_callbacks(config: TrialConfig, base_lr: float, epochs: int, first_epoch: int = 0) -> list:
    """The learning-rate schedule of one phase (epochs are counted within the phase), as the
    registry's entry for `config.schedule` builds it."""
    return SCHEDULES[config.schedule].callbacks(config.schedule_options, base_lr, epochs, first_epoch)


def train(config: TrialConfig, data: Dataset, balanced: Balanced | None = None, *, scratch: Path,
          callbacks: list[keras.callbacks.Callback] = (), monitor: str = "val_f1_macro") -> TrainResult:
    """Train one configuration on `data` (its training split as `balanced` gives it; unbalanced
    when None) and return everything the run records. Splits over the memory budget spill to
    files under `scratch` (a workspace's `scratch("cache")`) for the run's duration."""
    keras.utils.set_random_seed(config.seed)
    device = backbones.detect_runtime(config.mixed_precision, config.xla)
    balanced = balanced or Balanced(data.part("train"))
    val, test = data.part("val"), data.part("test")
    caches = pipeline.CachePlan(disk_dir=scratch)  # the folder is created only when a split spills
    try:
        def batches(frame, name, training=False):
            return pipeline.image_dataset(frame, data.classes, image_size=config.image_size,
                                          batch_size=config.batch_size, training=training, seed=config.seed,
                                          augmentation=config.augmentation,
                                          augmentation_options=config.augmentation_options, cache=caches, name=name)

        train_ds = batches(balanced.train, "train", training=True)
        val_ds, test_ds = batches(val, "val"), batches(test, "test")
        model = backbones.build_model(config, num_classes=len(data.classes))
        recorder = EpochRecorder(val_ds, pipeline.labels_of(val, data.classes), len(data.classes))

        def fit(learning_rate: float, first_epoch: int, epochs: int) -> None:
            _compile(model, config, learning_rate, jit_compile=device.xla)
            stopping = _early_stopping(config, monitor, epochs)
            model.fit(train_ds, initial_epoch=first_epoch, epochs=first_epoch + epochs,
                      class_weight=balanced.class_weight, shuffle=False, verbose=0,  # tf.data shuffles
                      callbacks=[recorder, *callbacks, *schedule_callbacks(config, learning_rate, epochs, first_epoch),
                                 *stopping])

        started, cpu_started = time.perf_counter(), time.process_time()
        fit(config.learning_rate, 0, config.epochs)
        boundary = None
        if config.fine_tune_epochs:
            boundary = len(recorder.history["loss"]) + 1
            backbones.unfreeze_for_fine_tuning(model, config)
            fit(config.fine_tune_learning_rate or config.learning_rate / 10, boundary - 1, config.fine_tune_epochs)
        train_seconds = time.perf_counter() - started
        # CPU seconds of every thread of this process: unlike wall time, unmoved by other jobs
        # sharing the machine, so two runs' costs compare even on a busy one.
        train_cpu_seconds = time.process_time() - cpu_started
        epochs_run = len(recorder.history["loss"])
        logits = backbones.logits_of(model)
        logits.run_eagerly = config.eager   # a smoke run's new model must not trace a DenseNet graph either
        val_logits, test_logits = logits.predict(val_ds, verbose=0), logits.predict(test_ds, verbose=0)
        home = data.part(IN_DISTRIBUTION_VAL)
        in_distribution = validation_scores(calibration.scaled(logits.predict(batches(home, "home"), verbose=0)),
                                            pipeline.labels_of(home, data.classes), len(data.classes)) \
            if len(home) else {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = _result(model, config, data, recorder, balanced, device, val_logits, test_logits, boundary,
                     _timings(train_seconds, train_cpu_seconds, epochs_run, len(balanced.train)))
    result.in_distribution = in_distribution
    return result


def _result(model: keras.Model, config: TrialConfig, data: Dataset, recorder: EpochRecorder, balanced: Balanced,
            device: backbones.Runtime, val_logits: np.ndarray, test_logits: np.ndarray, boundary: int | None,
            timings: dict[str, float]) -> TrainResult:
    """A trained model's scoring: the temperature fitted on validation, the test evaluation
    before it, the calibrated model, the mistakes and likely label errors worth showing."""
    val, test = data.part("val"), data.part("test")
    y_val, y_test = recorder.y_val, pipeline.labels_of(test, data.classes)
    temperature = calibration.fit_temperature(val_logits, y_val)
    probabilities, calibrated = calibration.scaled(test_logits), calibration.scaled(test_logits, temperature)
    served = backbones.with_temperature(model, temperature)
    served.run_eagerly = config.eager
    mistakes = most_confident_mistakes(y_test, probabilities, k=MISTAKES_SHOWN)
    issues = _label_issues(val, test, np.concatenate([y_val, y_test]),
                           np.concatenate([calibration.scaled(val_logits, temperature), calibrated]), data.classes)
    shown = issues[issues["issue"]].head(ISSUES_SHOWN)
    return TrainResult(
        model=served, history=recorder.history, evaluation=evaluate(y_test, probabilities, data.classes),
        test_frame=test, train_images=len(balanced.train), class_weight=balanced.class_weight, runtime=device,
        cost=cost(served, config.image_size), mistakes=mistakes,
        mistake_images=pipeline.load_images([test["file"].iloc[i] for i in mistakes], config.image_size),
        phase_boundary=boundary, timings=timings, temperature=temperature, calibrated=calibrated,
        calibration=calibration.metrics(y_test, probabilities, calibrated, temperature),
        label_issues=issues, issue_images=pipeline.load_images(shown["file"].tolist(), config.image_size),
    )


def _label_issues(val: pd.DataFrame, test: pd.DataFrame, y: np.ndarray, probabilities: np.ndarray,
                  classes: tuple[str, ...]) -> pd.DataFrame:
    """Validation and test images (both out of sample: no weight was fitted on them) ranked by
    confident learning, most suspect first, with the file each row is."""
    scored = pd.concat([val, test], ignore_index=True)
    ranked = label_issues.rank(y, probabilities, classes)
    rows = scored.iloc[ranked["row"].to_numpy()].reset_index(drop=True)
    return pd.concat([rows[[c for c in ("file", "path", "source", "sha256", "split") if c in rows]],
                      ranked.drop(columns="row")], axis=1)


def _compile(model: keras.Model, config: TrialConfig, learning_rate: float, jit_compile: bool) -> None:
    """Compile `model` for one training phase at `learning_rate` and build its optimizer eagerly."""
    # Tracing cost: Keras (TF backend, no distribution strategy) creates the optimizer's slots
    # and a string metric's variables inside the first traced train step, and a tf.function
    # that creates variables is traced twice. A metric object (variables made here) and an
    # optimizer built eagerly halve the first step: MobileNetV2 at 48 px, 25 s -> 11 s on 2 cores.
    model.compile(optimizer=backbones.make_optimizer(config, learning_rate),
                  loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile, run_eagerly=config.eager)
    model.optimizer.build(model.trainable_variables)


def _early_stopping(config: TrialConfig, monitor: str, epochs: int) -> list[keras.callbacks.Callback]:
    """The phase's early-stopping callback, when the config stops early or keeps the best weights."""
    if not (config.early_stopping or config.restore_best):
        return []
    return [keras.callbacks.EarlyStopping(
        monitor=monitor, mode=vocabulary.better(monitor),
        patience=config.early_stopping or epochs, restore_best_weights=config.restore_best)]


def _timings(train_seconds: float, train_cpu_seconds: float, epochs_run: int, train_images: int) -> dict[str, float]:
    """The run's training time figures: wall and CPU seconds, epochs and throughput."""
    return {"train_seconds": train_seconds, "train_cpu_seconds": train_cpu_seconds, "epochs_run": epochs_run,
            # Includes the per-epoch validation pass that computes macro-F1.
            "train_images_per_second": train_images * epochs_run / max(train_seconds, 1e-9)}

