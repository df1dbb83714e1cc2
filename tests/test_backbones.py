"""The backbone registry: every backbone builds and trains a step at its minimum size with
`weights: none`, transfer learning freezes and unfreezes exactly what the spec says, a local
weights file loads, and an offline `imagenet` request fails before training with a way out."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from workbench import spec as S
from workbench.errors import WeightsError
from workbench.model import backbones


def config(**overrides) -> S.TrialConfig:
    values = dict(backbone="simple_cnn", balance="none", augmentation="none", learning_rate=1e-3, batch_size=2,
                  epochs=1, dropout=0.1, dense_units=8, optimizer="adam", image_size=32, weights="none", alpha=0.35,
                  seed=0)
    return S.TrialConfig(**{**values, **overrides})


@pytest.mark.parametrize("name", S.BACKBONES)
def test_every_backbone_builds_and_trains_one_step_at_its_minimum_size(name):
    keras.utils.set_random_seed(0)
    size = S.MIN_IMAGE_SIZE[name]
    model = backbones.build_model(config(backbone=name, image_size=size), num_classes=3)
    # Eager: one step needs no traced graph (tracing DenseNet169's takes 15 s on 2 cores). Adam's
    # bounded steps: SGD on a batch of two blows a from-scratch DenseNet's weights up to 1e4.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", run_eagerly=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(images, np.array([0, 2]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probabilities = model.predict_on_batch(images)
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    keras.backend.clear_session()


def test_the_default_head_keeps_where_in_the_image_a_feature_is():
    """A mask sits below the nose, a transplanted patch over the eyes: the scratch CNN's default
    head must tell the same mark in two places apart. Global average pooling cannot (the conv
    base is shift-equivariant, so a mark moved by the base's total stride pools to the same
    vector); Flatten, the default for simple_cnn, can."""
    keras.utils.set_random_seed(0)
    image = np.zeros((2, 64, 64, 3), dtype="float32")
    image[0, 20:28, 20:28] = 255.0   # the mark, top left ...
    image[1, 36:44, 36:44] = 255.0   # ... and moved by 16 px (four 2x poolings) down and right

    def features(pooling):
        model = backbones.build_model(config(image_size=64, pooling=pooling), 2)
        return keras.Model(model.input, model.get_layer("pool").output).predict(image, verbose=0)

    assert S.single_config(S.validate({"name": "x"})).pooling == "flatten"
    default = features("auto")
    assert default.shape[1] > 128  # a flattened map, not one value per channel
    assert not np.allclose(default[0], default[1], atol=1e-3)
    pooled = features("gap")
    assert np.abs(pooled[0] - pooled[1]).max() < 0.05 * np.abs(pooled).max()
    # Pretrained bases keep global average pooling by default.
    assert S.single_config(S.validate({"name": "x", "params": {"backbone": "vgg16"}})).pooling == "gap"


def test_heads_follow_the_spec():
    s1 = backbones.build_model(config(pooling="flatten", dense_layers=2, dense_units=16, dropout=0.5), 3)
    names = [layer.name for layer in s1.layers]
    assert isinstance(s1.get_layer("pool"), keras.layers.Flatten)
    assert names[-6:] == ["head_dense_1", "head_dropout_1", "head_dense_2", "head_dropout_2", "logits", "probabilities"]
    bn = backbones.build_model(config(pooling="gap", batch_norm=True, dropout=0.2), 2)
    assert isinstance(bn.get_layer("pool"), keras.layers.GlobalAveragePooling2D)
    assert isinstance(bn.get_layer("head_bn_1"), keras.layers.BatchNormalization)


def test_cut_at_ends_the_base_at_a_named_layer_and_names_a_wrong_one():
    model = backbones.build_model(config(backbone="mobilenet_v2", image_size=32, cut_at="block_6_expand_relu"), 2)
    base = backbones.base_of(model)
    assert base.layers[-1].name == "block_6_expand_relu"
    with pytest.raises(WeightsError, match="cut_at: no layer 'block_99'"):
        backbones.build_model(config(backbone="mobilenet_v2", cut_at="block_99"), 2)


def test_freeze_then_fine_tune_changes_only_the_intended_layers():
    cfg = config(backbone="mobilenet_v2", image_size=32, freeze_base=True, fine_tune_epochs=1, fine_tune_layers=10)
    model = backbones.build_model(cfg, 2)
    base = backbones.base_of(model)
    assert not base.trainable and all(w.trainable is False for w in base.weights)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.array([0, 1, 0, 1])

    def step():
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in base.layers}
        model.train_on_batch(images, labels)
        return {name for name, weights in before.items()
                if any(not np.array_equal(a, b) for a, b in zip(weights, base.get_layer(name).get_weights()))}

    assert step() == set()  # phase one: the frozen base does not move
    backbones.unfreeze_for_fine_tuning(model, cfg)
    changed = step()
    top = {layer.name for layer in base.layers[-10:]}
    assert changed and changed <= top  # phase two: only the top 10 layers move
    cfg_from = config(backbone="mobilenet_v2", image_size=32, freeze_base=True, fine_tune_epochs=1,
                      fine_tune_from="block_16_expand")
    model = backbones.build_model(cfg_from, 2)
    backbones.unfreeze_for_fine_tuning(model, cfg_from)
    base = backbones.base_of(model)
    start = [layer.name for layer in base.layers].index("block_16_expand")
    assert all(not layer.trainable for layer in base.layers[:start])
    assert all(layer.trainable for layer in base.layers[start:])


def test_a_local_weights_file_loads(tmp_path):
    keras.utils.set_random_seed(3)
    source = backbones.build_base(config(backbone="mobilenet_v2", image_size=32))
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = backbones.build_base(config(backbone="mobilenet_v2", image_size=32, weights=str(path)))
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="no such file"):
        backbones.build_base(config(weights=str(tmp_path / "missing.h5")))


def test_offline_imagenet_fails_early_with_how_to_prefetch(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # No network here, by design of this world; make sure of it for this test anyway.
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsError) as caught:
        backbones.build_base(config(backbone="mobilenet_v2", image_size=96, weights="imagenet"))
    message = str(caught.value)
    assert "\n" not in message
    assert "workbench weights fetch mobilenet_v2" in message and str(tmp_path / "keras") in message


# Each backbone's preprocessing, as keras.applications writes it for its ImageNet weights.
KERAS_PREPROCESS = {"vgg16": "vgg16", "mobilenet_v2": "mobilenet_v2", "xception": "xception",
                    "densenet169": "densenet", "efficientnet_b0": "efficientnet"}


@pytest.mark.parametrize("name", [n for n in S.BACKBONES if n != "simple_cnn"])
def test_each_backbones_preprocessing_is_keras_own(name):
    module = getattr(keras.applications, KERAS_PREPROCESS[name])
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = images
    for layer in backbones.preprocessing_layers(S.BACKBONES[name].preprocessing):
        ours = np.asarray(layer(ours))
    np.testing.assert_allclose(ours, module.preprocess_input(images.copy()), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name, expected", [("simple_cnn", lambda x: x / 255.0),
                                            ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input)])
def test_a_built_model_preprocesses_raw_pixels_exactly_once_before_its_base(name, expected):
    """What reaches the base is the raw pixels preprocessed once: twice, or not at all, and a
    model trained here would meet photos in another range than the weights (or predict) expect."""
    size = S.MIN_IMAGE_SIZE[name]
    model = backbones.build_model(config(backbone=name, image_size=size), num_classes=2)
    base = backbones.base_of(model)
    images = np.random.default_rng(2).uniform(0, 255, (2, size, size, 3)).astype("float32")
    [node] = [n for n in base._inbound_nodes if n.operation is base]
    feeds = keras.Model(model.input, node.input_tensors[0])   # the graph up to the base's input, as built
    np.testing.assert_allclose(feeds.predict(images, verbose=0), expected(images.copy()), rtol=1e-5, atol=1e-4)
