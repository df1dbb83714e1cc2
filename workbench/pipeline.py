"""The tf.data input pipeline: files -> decoded, resized images -> cached -> shuffled -> batched ->
(augmented) -> float -> prefetched. Labels are class indices in the order of `Dataset.classes`.

Images are decoded once per pipeline and cached at the model's input size as uint8 (a quarter of
float32's bytes; the cast to float happens per batch, where it costs nothing measurable), so later
epochs cost only the model's own compute. A split that would not fit the memory budget (a quarter
of the machine's memory unless `WORKBENCH_CACHE_BUDGET` says otherwise) is cached in a file
instead, so peak memory stays bounded whatever the dataset's size: Face Mask 12K at 224 px is
1.5 GB as uint8, and would be 6 GB as float32.

Online augmentation policies (one axis of the registry, `spec.AUGMENTATIONS`) are small stacks of
Keras preprocessing layers applied to training batches only; validation and test batches are
never augmented. A Keras rotation factor is a fraction of a full turn, so 10 degrees is 10/360.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from workbench.spec import AUGMENTATIONS

BYTES_PER_PIXEL = 3  # uint8 RGB


def memory_budget() -> int:
    """Bytes the decoded-image caches of one run may hold in memory: $WORKBENCH_CACHE_BUDGET
    (a number of bytes, or with a K/M/G suffix), else a quarter of the machine's memory."""
    text = os.environ.get("WORKBENCH_CACHE_BUDGET", "").strip()
    if text:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)I?B?", text.upper())
        if not match:
            raise ValueError(f"WORKBENCH_CACHE_BUDGET={text!r}: give bytes, e.g. 512M or 4G")
        return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " "))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 2 * 1024**3


@dataclass
class CachePlan:
    """Where each pipeline of one run keeps its decoded images: memory while the budget lasts,
    then files under `disk_dir` (which the caller removes when the run ends)."""

    budget: int = field(default_factory=memory_budget)
    disk_dir: Path | None = None
    on_disk: list[str] = field(default_factory=list)

    def cache(self, ds: tf.data.Dataset, images: int, image_size: int, name: str) -> tf.data.Dataset:
        need = images * image_size * image_size * BYTES_PER_PIXEL
        if need <= self.budget:
            self.budget -= need
            return ds.cache()
        if self.disk_dir is None:
            return ds  # no room and nowhere to spill: decode every epoch
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        self.on_disk.append(name)
        return ds.cache(str(self.disk_dir / name))


def _load(size: int):
    def load(path, label):
        raw = tf.io.read_file(path)
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return tf.ensure_shape(image, (size, size, 3)), label
    return load


def _as_float(images, labels):
    return tf.cast(images, tf.float32), labels


def image_dataset(frame: pd.DataFrame, classes: tuple[str, ...], *, image_size: int, batch_size: int,
                  training: bool = False, seed: int = 0, augmentation: str = "none",
                  augmentation_options: dict | None = None, cache: CachePlan | None = None,
                  name: str = "images") -> tf.data.Dataset:
    """Batches of (float32 RGB pixels in [0, 255], class index) for the rows of `frame`."""
    ds = tf.data.Dataset.from_tensor_slices((frame["file"].to_numpy(dtype=str), labels_of(frame, classes, "int32")))
    ds = ds.map(_load(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = (cache or CachePlan()).cache(ds, len(frame), image_size, name)
    if training:
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)
    # Validation and test batches are never augmented: they must show the model real images.
    policy = build_policy(augmentation, seed, augmentation_options) if training else None
    if policy is not None:
        ds = ds.map(lambda x, y: (policy(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def labels_of(frame: pd.DataFrame, classes: tuple[str, ...], dtype: str = "int64") -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype=dtype)


def load_images(files: list[str], image_size: int) -> np.ndarray:
    """A few images exactly as the model saw them (uint8 RGB at its input size), for figures."""
    if not files:
        return np.zeros((0, image_size, image_size, 3), dtype="uint8")
    load = _load(image_size)
    return np.stack([load(tf.constant(f), 0)[0].numpy() for f in files])


def build_policy(name: str, seed: int, options: dict | None = None) -> keras.Sequential | None:
    """The layers of one policy, or None when it has none (so the pipeline skips the map entirely)."""
    params = AUGMENTATIONS[name] if name != "custom" else (options or {})
    layers = []
    if params.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.get("rotation"):
        layers.append(keras.layers.RandomRotation(params["rotation"] / 360, fill_mode="reflect", seed=seed))
    if params.get("zoom"):
        layers.append(keras.layers.RandomZoom(params["zoom"], fill_mode="reflect", seed=seed))
    if params.get("shift"):
        layers.append(keras.layers.RandomTranslation(params["shift"], params["shift"], fill_mode="reflect", seed=seed))
    if params.get("shear"):
        layers.append(keras.layers.RandomShear(params["shear"], params["shear"], fill_mode="reflect", seed=seed))
    if params.get("brightness"):
        layers.append(keras.layers.RandomBrightness(params["brightness"], value_range=(0, 255), seed=seed))
    if params.get("contrast"):
        layers.append(keras.layers.RandomContrast(params["contrast"], value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name=f"augment_{name}") if layers else None
