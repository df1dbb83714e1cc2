"""The tf.data pipeline and online augmentation: training batches are augmented by the chosen
policy, validation and test batches never are, and every named policy builds."""

from __future__ import annotations

import numpy as np
import pytest

from workbench import spec as S
from workbench.data.dataset import prepare
from workbench.model import pipeline
from workbench.workspace import Workspace


def first_batch(frame, classes, **kwargs):
    images, labels = next(iter(pipeline.image_dataset(frame, classes, image_size=32, batch_size=8, **kwargs)))
    return images.numpy(), labels.numpy()


def test_training_batches_are_augmented_and_evaluation_batches_never(tiny_spec):
    data = prepare(S.load("tiny"), Workspace())
    val = data.part("val")
    plain, labels = first_batch(val, data.classes)
    assert plain.shape == (8, 32, 32, 3) and plain.max() > 1.0  # raw pixels: the model rescales
    assert list(labels) == list(pipeline.labels_of(val, data.classes)[:8])
    shaken, _ = first_batch(val, data.classes, augmentation="s4", training=False)
    np.testing.assert_array_equal(plain, shaken)
    trained, _ = first_batch(val.sort_values("file"), data.classes, augmentation="s4", training=True, seed=1)
    reference, _ = first_batch(val.sort_values("file"), data.classes, training=True, seed=1)
    assert not np.allclose(trained, reference)


def lopsided(count: int = 16) -> np.ndarray:
    """Images unlike their mirror and their rotations: dark left half, a bright bar, a gradient."""
    images = np.tile(np.linspace(40.0, 200.0, 32, dtype="float32")[None, :, None], (32, 1, 3))[None].repeat(count, 0)
    images[:, :, :10] = 20.0
    images[:, 4:9, 12:28] = 250.0
    return images


@pytest.mark.parametrize("name", S.AUGMENTATIONS)
def test_every_policy_changes_training_images_and_only_them(name):
    options = {"rotation": 15, "flip": True, "brightness": 0.2}
    policy = pipeline.build_policy(name, seed=0, options=options)
    if name == "none":
        assert policy is None
        return
    images = lopsided()
    out = np.asarray(policy(images, training=True))
    assert out.shape == images.shape
    changed = [not np.allclose(o, i, atol=1.0) for o, i in zip(out, images)]
    assert sum(changed) >= len(images) // 4, f"{name} left {len(images) - sum(changed)} of {len(images)} as they were"
    # Outside training (validation, test, serving) every policy is the identity.
    np.testing.assert_array_equal(np.asarray(policy(images, training=False)), images)
    if name == "flip":
        # A flip moves pixels and nothing else: each image is itself or its mirror, and both occur.
        mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
        kept = [np.array_equal(o, i) for o, i in zip(out, images)]
        assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)
    else:
        # Geometric policies move the bright bar; none leaves every image where it was.
        assert not all(np.array_equal(o[4:9, 12:28], i[4:9, 12:28]) for o, i in zip(out, images))


def test_custom_policy_takes_its_layers_from_the_spec():
    policy = pipeline.build_policy("custom", seed=0, options={"rotation": 10, "zoom": 0.1, "flip": True})
    kinds = [type(layer).__name__ for layer in policy.layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert pipeline.build_policy("custom", seed=0, options={}) is None


def _jpegs(folder, count: int, px: int):
    """`count` smooth-noise JPEGs of px by px in two class folders, and their frame."""
    import cv2
    import pandas as pd

    rows = []
    for i in range(count):
        rng = np.random.default_rng(i)
        field = cv2.resize(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), (px, px), interpolation=cv2.INTER_CUBIC)
        label = "ab"[i % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        path = folder / label / f"{i:03d}.jpg"
        cv2.imwrite(str(path), field, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rows.append({"file": str(path), "label": label})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2**20), ("2g", 2 * 2**30), ("1.5K", 1536), ("4096", 4096)])
def test_cache_budget_is_read_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("WORKBENCH_CACHE_BUDGET", text)
    assert pipeline.memory_budget() == expected


def test_a_malformed_cache_budget_is_one_line_naming_the_variable(monkeypatch):
    from workbench.errors import WorkbenchError

    monkeypatch.setenv("WORKBENCH_CACHE_BUDGET", "lots")
    with pytest.raises(WorkbenchError, match="WORKBENCH_CACHE_BUDGET='lots'") as err:
        pipeline.memory_budget()
    assert err.value.exit_code == 2


def test_splits_are_cached_in_memory_while_the_budget_lasts_then_spill_to_disk(tmp_path):
    per_image = 32 * 32 * 3
    plan = pipeline.CachePlan(budget=100 * per_image, disk_dir=tmp_path / "spill")
    assert plan.place(60, 32, "train") == "memory"
    assert plan.place(60, 32, "val") == "disk"      # 40 images' worth left: it spills
    assert plan.place(30, 32, "test") == "memory"   # what is left still serves a smaller split
    assert plan.on_disk == ["val"] and (tmp_path / "spill").is_dir()
    assert pipeline.CachePlan(budget=0).place(1, 32, "x") == "none"  # nowhere to spill: decode each epoch


def test_a_spilled_split_yields_every_image_once_per_epoch_in_a_new_order(tmp_path):
    frame = _jpegs(tmp_path / "img", 40, 48)
    classes = ("a", "b")

    def epochs(plan, n=2):
        ds = pipeline.image_dataset(frame, classes, image_size=16, batch_size=8, training=True, seed=3, cache=plan,
                                    name="train")
        return [np.concatenate([images.numpy() for images, _ in ds]) for _ in range(n)]

    in_memory = epochs(pipeline.CachePlan(budget=2**30))[0]
    # A budget of 10 images: the split spills, and its shuffle buffer is the batch-sized minimum.
    plan = pipeline.CachePlan(budget=10 * 16 * 16 * 3, disk_dir=tmp_path / "spill")
    first, second = epochs(plan)
    assert plan.on_disk == ["train"] and any((tmp_path / "spill").iterdir())
    key = lambda images: sorted(image.tobytes() for image in images)  # noqa: E731
    assert key(first) == key(second) == key(in_memory)  # the same 40 images, each once
    assert not np.array_equal(first, second)            # in another order


def test_large_jpegs_decode_scaled_down_with_the_same_pixels_as_a_full_decode(tmp_path):
    import tensorflow as tf

    frame = _jpegs(tmp_path, 2, 600)
    raw = tf.io.read_file(frame["file"][0])
    assert tuple(pipeline._decode(raw, 64).shape) == (150, 150, 3)   # 1/4 scale: still twice 64 px
    assert tuple(pipeline._decode(raw, 200).shape) == (600, 600, 3)  # too small a ratio: full decode
    loaded = pipeline.load_images([frame["file"][0]], 64).astype(float)
    full = tf.image.resize(tf.io.decode_jpeg(raw, channels=3), (64, 64), antialias=True).numpy()
    assert np.abs(loaded - np.clip(np.round(full), 0, 255)).mean() < 1.0


def test_shear_is_in_degrees_as_the_studies_wrote_it():
    # ImageDataGenerator's shear_range=0.2 (S2, S4) is a fifth of a degree; Keras' RandomShear
    # takes the shear itself, and 0.2 there would slant the face by 11 degrees.
    import math

    from workbench.model.pipeline import build_policy

    [shear] = [layer for layer in build_policy("s2", 0).layers if type(layer).__name__ == "RandomShear"]
    assert shear.x_factor == pytest.approx((-math.tan(math.radians(0.2)), math.tan(math.radians(0.2))))
    [custom] = [layer for layer in build_policy("custom", 0, {"shear": 45}).layers
                if type(layer).__name__ == "RandomShear"]
    assert custom.x_factor == pytest.approx((-1.0, 1.0))
