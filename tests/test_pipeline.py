"""The tf.data pipeline and online augmentation: training batches are augmented by the chosen
policy, validation and test batches never are, and every named policy builds."""

from __future__ import annotations

import numpy as np
import pytest

from workbench import pipeline, spec as S
from workbench.dataset import prepare


def first_batch(frame, classes, **kwargs):
    images, labels = next(iter(pipeline.image_dataset(frame, classes, image_size=32, batch_size=8, **kwargs)))
    return images.numpy(), labels.numpy()


def test_training_batches_are_augmented_and_evaluation_batches_never(tiny_spec):
    data = prepare(S.load("tiny"))
    val = data.part("val")
    plain, labels = first_batch(val, data.classes)
    assert plain.shape == (8, 32, 32, 3) and plain.max() > 1.0  # raw pixels: the model rescales
    assert list(labels) == list(pipeline.labels_of(val, data.classes)[:8])
    shaken, _ = first_batch(val, data.classes, augmentation="s4", training=False)
    np.testing.assert_array_equal(plain, shaken)
    trained, _ = first_batch(val.sort_values("file"), data.classes, augmentation="s4", training=True, seed=1)
    reference, _ = first_batch(val.sort_values("file"), data.classes, training=True, seed=1)
    assert not np.allclose(trained, reference)


@pytest.mark.parametrize("name", S.AUGMENTATIONS)
def test_every_policy_builds(name):
    policy = pipeline.build_policy(name, seed=0, options={"rotation": 15, "flip": True, "brightness": 0.2})
    if name == "none":
        assert policy is None
    else:
        images = np.full((2, 32, 32, 3), 128.0, dtype="float32")
        images[:, :, :16] = 20.0
        out = np.asarray(policy(images, training=True))
        assert out.shape == images.shape


def test_custom_policy_takes_its_layers_from_the_spec():
    policy = pipeline.build_policy("custom", seed=0, options={"rotation": 10, "zoom": 0.1, "flip": True})
    kinds = [type(layer).__name__ for layer in policy.layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert pipeline.build_policy("custom", seed=0, options={}) is None
