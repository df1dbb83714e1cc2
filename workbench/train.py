"""The one `train()`: a single run and every sweep trial go through this function.

It reads top to bottom as a run's story: seed -> balance the training split -> build the input
pipelines -> build the model -> fit (recording validation macro-F1 every epoch) -> evaluate on
the held-out test split -> return values. Tracking lives outside (run.py passes Keras callbacks
in), so a test can train a tiny model here without any MLflow store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from workbench import backbones, pipeline
from workbench.balance import rebalance
from workbench.dataset import Dataset
from workbench.evaluate import Evaluation, evaluate, f1_macro
from workbench.spec import TrialConfig

# Every trial builds a fresh model, so tf.function retracing is expected, not a bug to warn about.
tf.get_logger().setLevel("ERROR")


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]       # per-epoch loss, accuracy, val_loss, val_accuracy, val_f1_macro
    evaluation: Evaluation                # on the test split
    train_images: int                     # after balancing
    class_weight: dict[int, float] | None
    timings: dict[str, float] = field(default_factory=dict)

    def final(self, metric: str) -> float:
        return float(self.history[metric][-1])


class EpochRecorder(keras.callbacks.Callback):
    """Adds `val_f1_macro` to each epoch's logs and keeps the full history.

    It must come first among callbacks: later ones (MLflow logging, Optuna pruning) read the
    same logs dict and so see the F1 it adds."""

    def __init__(self, val_ds, y_val: np.ndarray, num_classes: int):
        super().__init__()
        self.val_ds, self.y_val, self.num_classes = val_ds, y_val, num_classes
        self.history: dict[str, list[float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        predicted = self.model.predict(self.val_ds, verbose=0).argmax(axis=1)
        logs["val_f1_macro"] = f1_macro(self.y_val, predicted, self.num_classes)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))


def train(config: TrialConfig, data: Dataset, callbacks: list[keras.callbacks.Callback] = ()) -> TrainResult:
    keras.utils.set_random_seed(config.seed)
    balanced = rebalance(data.part("train"), config.balance, data.classes, config.seed)
    val, test = data.part("val"), data.part("test")

    def batches(frame, training=False):
        return pipeline.image_dataset(frame, data.classes, image_size=config.image_size,
                                      batch_size=config.batch_size, training=training,
                                      seed=config.seed, augmentation=config.augmentation)

    train_ds, val_ds, test_ds = batches(balanced.train, training=True), batches(val), batches(test)

    model = backbones.build_model(config, num_classes=len(data.classes))
    model.compile(optimizer=backbones.make_optimizer(config),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    recorder = EpochRecorder(val_ds, pipeline.labels_of(val, data.classes), len(data.classes))
    started = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, class_weight=balanced.class_weight,
              callbacks=[recorder, *callbacks], shuffle=False, verbose=0)  # tf.data shuffles
    train_seconds = time.perf_counter() - started

    probabilities = model.predict(test_ds, verbose=0)
    evaluation = evaluate(pipeline.labels_of(test, data.classes), probabilities, data.classes)
    return TrainResult(
        model=model,
        history=recorder.history,
        evaluation=evaluation,
        train_images=len(balanced.train),
        class_weight=balanced.class_weight,
        timings={"train_seconds": train_seconds,
                 "train_images_per_second": len(balanced.train) * config.epochs / max(train_seconds, 1e-9)},
    )
