"""The tf.data input pipeline: files -> decoded, resized float images -> cached -> shuffled ->
batched -> (augmented) -> prefetched. Images are decoded once per pipeline and cached in memory
at the model's input size, so later epochs cost only the model's own compute. Labels are class
indices in the order of `Dataset.classes`."""

from __future__ import annotations

import pandas as pd
import tensorflow as tf

from workbench.augment import build_policy


def _load(size: int):
    def load(path, label):
        raw = tf.io.read_file(path)
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        image = tf.image.resize(image, (size, size), antialias=True)
        return tf.ensure_shape(image, (size, size, 3)), label
    return load


def image_dataset(frame: pd.DataFrame, classes: tuple[str, ...], *, image_size: int, batch_size: int,
                  training: bool = False, seed: int = 0, augmentation: str = "none",
                  augmentation_options: dict | None = None) -> tf.data.Dataset:
    index = {name: i for i, name in enumerate(classes)}
    labels = frame["label"].map(index).to_numpy(dtype="int32")
    ds = tf.data.Dataset.from_tensor_slices((frame["file"].to_numpy(dtype=str), labels))
    ds = ds.map(_load(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    if training:
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    # Validation and test batches are never augmented: they must show the model real images.
    policy = build_policy(augmentation, seed, augmentation_options) if training else None
    if policy is not None:
        ds = ds.map(lambda x, y: (policy(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def labels_of(frame: pd.DataFrame, classes: tuple[str, ...]):
    index = {name: i for i, name in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype="int64")
