"""The tf.data input pipeline: files -> decoded, resized images -> cached -> shuffled -> batched ->
(augmented) -> float -> prefetched. Labels are class indices in the order of `Dataset.classes`.

Images are decoded once per pipeline and cached at the model's input size as uint8 (a quarter of
float32's bytes; the cast to float happens per batch, where it costs nothing measurable), so later
epochs cost only the model's own compute. A split that would not fit the memory budget (a quarter
of the machine's memory unless `WORKBENCH_CACHE_BUDGET` says otherwise) is cached in a file
instead, and shuffled by file name before decoding with only a small buffer of images after the
cache, so peak memory stays bounded whatever the dataset's size: Face Mask 12K at 224 px is
1.5 GB as uint8, and would be 6 GB as float32.

Online augmentation policies (one axis of the registry, `spec.registry.AUGMENTATIONS`, whose
entries build their own Keras preprocessing layers) are applied to training batches only;
validation and test batches are never augmented.
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

from workbench.errors import WorkbenchError
from workbench.spec import AUGMENTATIONS

BYTES_PER_PIXEL = 3  # uint8 RGB


def memory_budget() -> int:
    """Bytes the decoded-image caches of one run may hold in memory: $WORKBENCH_CACHE_BUDGET
    (a number of bytes, or with a K/M/G suffix), else a quarter of the machine's memory."""
    text = os.environ.get("WORKBENCH_CACHE_BUDGET", "").strip()
    if text:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)I?B?", text.upper())
        if not match:
            raise WorkbenchError(f"WORKBENCH_CACHE_BUDGET={text!r}: give bytes, e.g. 512M or 4G", exit_code=2)
        return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " "))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 2 * 1024**3


# A spilled split's shuffle buffer (decoded images after its file cache) may hold this share of the
# budget: enough to vary batches from epoch to epoch, never the whole split.
SHUFFLE_SHARE = 16


@dataclass
class CachePlan:
    """Where each pipeline of one run keeps its decoded images: memory while the budget lasts,
    then files under `disk_dir` (which the caller removes when the run ends)."""

    budget: int = field(default_factory=memory_budget)
    disk_dir: Path | None = None
    on_disk: list[str] = field(default_factory=list)
    total: int = field(init=False)      # the budget before any split took its share

    def __post_init__(self):
        self.total = self.budget

    def place(self, images: int, image_size: int, name: str) -> str:
        """"memory" while the budget lasts, else "disk" (a file under `disk_dir`), or "none"
        (decoded every epoch) when there is no room and nowhere to spill."""
        need = images * image_size * image_size * BYTES_PER_PIXEL
        if need <= self.budget:
            self.budget -= need
            return "memory"
        if self.disk_dir is None:
            return "none"
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        self.on_disk.append(name)
        return "disk"

    def apply(self, ds: tf.data.Dataset, where: str, name: str) -> tf.data.Dataset:
        if where == "memory":
            return ds.cache()
        return ds.cache(str(self.disk_dir / name)) if where == "disk" else ds

    def shuffle_buffer(self, images: int, image_size: int) -> int:
        """Images a spilled split may shuffle after its cache: a share of the whole budget, and
        at least a batch's worth, however small the budget."""
        per_image = image_size * image_size * BYTES_PER_PIXEL
        return min(images, max(self.total // SHUFFLE_SHARE // per_image, 32))


# JPEG scaling factors libjpeg can decode at directly (1/2, 1/4, 1/8 of each side).
JPEG_RATIOS = (1, 2, 4, 8)


def _decode(raw, size: int):
    """RGB uint8 pixels of one encoded image. A JPEG at least four times `size` is decoded
    straight at 1/2, 1/4 or 1/8 scale, the smallest that keeps its shorter side at twice `size`
    or more, so the antialiased resize after it still does the final filtering (pixels differ from
    a full decode by under 1 level on average). Decoding 600 px photos for a 64 px model, the
    first epoch's main cost, takes half the time; smaller JPEGs and other formats decode in full."""
    def jpeg():
        shape = tf.io.extract_jpeg_shape(raw)
        shorter = tf.minimum(shape[0], shape[1])
        index = tf.add_n([tf.cast(shorter // r >= 2 * size, tf.int32) for r in JPEG_RATIOS[1:]])
        return tf.switch_case(index, [lambda r=r: tf.io.decode_jpeg(raw, channels=3, ratio=r) for r in JPEG_RATIOS])

    return tf.cond(tf.io.is_jpeg(raw), jpeg, lambda: tf.io.decode_image(raw, channels=3, expand_animations=False))


def resize(image, size: int):
    """RGB pixels at size x size as uint8: antialiased, rounded. The one resize training and
    prediction share, so a model sees a photo the same way in both."""
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _load(size: int):
    def load(path, label):
        image = resize(_decode(tf.io.read_file(path), size), size)
        return tf.ensure_shape(image, (size, size, 3)), label
    return load


def _as_float(images, labels):
    return tf.cast(images, tf.float32), labels


def image_dataset(frame: pd.DataFrame, classes: tuple[str, ...], *, image_size: int, batch_size: int,
                  training: bool = False, seed: int = 0, augmentation: str = "none",
                  augmentation_options: dict | None = None, cache: CachePlan | None = None,
                  name: str = "images") -> tf.data.Dataset:
    """Batches of (float32 RGB pixels in [0, 255], class index) for the rows of `frame`."""
    plan = cache or CachePlan()
    where = plan.place(len(frame), image_size, name)
    ds = tf.data.Dataset.from_tensor_slices((frame["file"].to_numpy(dtype=str), labels_of(frame, classes, "int32")))
    if training and where != "memory":
        # A shuffle buffer of decoded images as long as the split holds the whole split in memory,
        # the very memory the budget refused (measured: 10,000 images at 224 px peaked at 2.3 GB
        # with a 512 MB budget). Shuffle the file names before decoding instead: every epoch when
        # nothing is cached, once when a file cache keeps its first pass's order (a small buffer
        # after it then varies the batches from epoch to epoch).
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=where == "none")
    ds = ds.map(_load(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = plan.apply(ds, where, name)
    if training and where != "none":
        # In memory, the buffer's images are the cache's own tensors, not copies.
        buffer = len(frame) if where == "memory" else plan.shuffle_buffer(len(frame), image_size)
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
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
    """The layers of one policy (the registry entry's), or None when it has none (so the pipeline
    skips the map entirely)."""
    layers = AUGMENTATIONS[name].layers(options, seed)
    return keras.Sequential(layers, name=f"augment_{name}") if layers else None
