"""What a model costs, measured on the machine that trained it: parameters, size on disk and
inference latency per image at batch 1 (an app classifying camera frames) and batch 32 (bulk
scoring). Latency is the median of a few timed calls after a warm-up call, so one-off graph
tracing is not counted. Values in, values out."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np


def parameter_counts(model: keras.Model) -> dict[str, float]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    return {"total_params": total, "trainable_params": trainable, "frozen_params": total - trainable}


def size_on_disk(model: keras.Model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.stat().st_size


def latency_ms(model: keras.Model, image_size: int, batch: int, repeats: int = 5) -> float:
    """Median milliseconds per image for one `predict_on_batch` call of `batch` images."""
    images = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32")
    model.predict_on_batch(images)  # warm-up: traces and compiles the predict function
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict_on_batch(images)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / batch


def measure(model: keras.Model, image_size: int) -> dict[str, float]:
    return {
        **parameter_counts(model),
        "model_size_mb": size_on_disk(model) / 2**20,
        "latency_ms_batch1": latency_ms(model, image_size, 1),
        "latency_ms_per_image_batch32": latency_ms(model, image_size, 32, repeats=3),
    }
