"""Models: the backbone registry built into classifiers, and the runtime they train on.

Every network a spec can name is an entry of `spec.registry.BACKBONES` and is built here with one
signature, like `keras.applications`: `build_base(config)` returns a headless feature extractor,
and `build_model` puts the backbone's own input preprocessing in front and a classification head
behind, so the saved model takes raw RGB pixels in [0, 255] and nothing outside it needs to know
which backbone it is. Adding a backbone is one registry entry; the custom CNN is just another
entry of the same shape. `weights` is `none`, `imagenet` (from Keras' cache under `$KERAS_HOME`,
downloaded when online) or a path to a local weights file.

The runtime is decided once per run: on a GPU, mixed precision and XLA are on by default
(`auto`); on a CPU both stay off, since float16 math is emulated there and XLA compilation costs
more than it saves on small models. A spec can force either with `on` / `off`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.errors import WeightsError
from workbench.spec import BACKBONES, TrialConfig
from workbench.spec.registry import OPTIMIZERS

SCRATCH_BN_MOMENTUM = 0.9


# --- the runtime ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    device: str           # "GPU: NVIDIA H100 80GB HBM3" or "CPU: <model name>"
    gpus: int
    mixed_precision: bool
    xla: bool


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_runtime(mixed_precision: str = "auto", xla: str = "auto") -> Runtime:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU: {details.get('device_name', gpus[0].name)}"
    else:
        device = f"CPU: {_cpu_name()}"

    def switch(value: str) -> bool:
        return value == "on" or (value == "auto" and bool(gpus))

    runtime = Runtime(device=device, gpus=len(gpus), mixed_precision=switch(mixed_precision), xla=switch(xla))
    # The global dtype policy must be set before the model is built (Keras reads it at layer creation).
    keras.mixed_precision.set_global_policy("mixed_float16" if runtime.mixed_precision else "float32")
    return runtime


# --- the registry -----------------------------------------------------------------------------------

def _simple_cnn(input_shape, weights) -> keras.Model:
    """The S3/S4 baseline: conv blocks with batch norm, each halving the resolution (four blocks
    of 16 to 128 filters: small enough to train at hundreds of images a second on two cores)."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (16, 32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=SCRATCH_BN_MOMENTUM)(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    model = keras.Model(inputs, x, name="simple_cnn")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    elif weights == "imagenet":
        raise WeightsError("backbone simple_cnn has no ImageNet weights: use weights: none or a file")
    return model


def _construct(cfg: TrialConfig, input_shape, weights) -> keras.Model:
    entry = BACKBONES[cfg.backbone]
    if entry.application is None:
        return _simple_cnn(input_shape, weights)
    factory = getattr(keras.applications, entry.application)
    options = {name: getattr(cfg, name) for name in entry.options}
    return factory(include_top=False, weights=weights, input_shape=input_shape, **options)


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255.0
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def preprocessing_layers(mode: str) -> list[keras.layers.Layer]:
    """Each backbone's `preprocess_input` expressed with built-in layers, so saved models load
    anywhere (a Lambda or custom layer would need workbench importable at serving time)."""
    if mode == "unit":
        return [keras.layers.Rescaling(1 / 255.0)]
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0)]
    if mode == "torch":
        return [keras.layers.Normalization(mean=_IMAGENET_MEAN, variance=_IMAGENET_STD**2)]
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as one frozen 1x1 convolution.
        flip = np.zeros((1, 1, 3, 3), dtype="float32")
        for src, dst in ((0, 2), (1, 1), (2, 0)):
            flip[0, 0, src, dst] = 1.0
        conv = keras.layers.Conv2D(3, 1, trainable=False, name="rgb_to_bgr_minus_mean")
        conv.build((None, None, None, 3))
        conv.set_weights([flip, -_CAFFE_MEAN_BGR.astype("float32")])
        return [conv]
    if mode == "raw":
        return []
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def resolve_weights(name: str, weights: str) -> str | None:
    """Turn the spec's `weights` into what Keras takes, failing early with a way out."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights: {weights}: no such file for backbone {name} "
                           "(use none, imagenet, or a path to a .h5/.weights.h5 file)", exit_code=2)
    return str(path)


def build_base(cfg: TrialConfig) -> keras.Model:
    weights = resolve_weights(cfg.backbone, cfg.weights)
    shape = (cfg.image_size, cfg.image_size, 3)
    try:
        base = _construct(cfg, shape, weights)
    except WeightsError:
        raise
    except Exception as err:  # Keras raises bare Exceptions for a failed download
        if weights == "imagenet" and _looks_like_download_failure(err):
            raise WeightsError(
                f"weights: imagenet for {cfg.backbone} is not in {keras_cache()} and cannot be downloaded "
                f"(offline?): run `workbench weights fetch {cfg.backbone}` on a connected machine and "
                f"copy its files into {keras_cache()}, or set weights: none") from None
        raise
    if weights is None:
        # Trained from scratch on a small dataset, a network gets a few hundred steps: Keras'
        # default batch-norm momentum (0.99, 0.999 in MobileNetV2) leaves the moving statistics,
        # and so every validation score, stuck near their initial values for that long.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    if cfg.cut_at:
        # S2 cuts Xception at block13_pool: the base ends at that layer's output.
        base = keras.Model(base.input, _layer(base, cfg.cut_at, "cut_at").output, name=f"{base.name}_cut")
    return base


def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _layer(base: keras.Model, name: str, field: str) -> keras.layers.Layer:
    try:
        return base.get_layer(name)
    except ValueError:
        names = [layer.name for layer in base.layers]
        hint = ", ".join(names[-6:])
        raise WeightsError(f"{field}: no layer {name!r} in the {base.name} base (its last layers: {hint})",
                           exit_code=2) from None


def _looks_like_download_failure(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(word in text for word in ("url", "fetch", "download", "connection", "resolve", "http"))


LOGITS = "logits"


def build_model(cfg: TrialConfig, num_classes: int) -> keras.Model:
    """Raw pixels -> backbone preprocessing -> backbone -> pooling -> dense head -> logits -> softmax."""
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    for layer in preprocessing_layers(BACKBONES[cfg.backbone].preprocessing):
        x = layer(x)
    base = build_base(cfg)
    transfer = cfg.freeze_base or cfg.fine_tune_epochs > 0
    if cfg.freeze_base:
        base.trainable = False
    # In transfer learning the base's batch norm stays in inference mode, even once unfrozen for
    # fine-tuning, so a few small batches cannot wreck its ImageNet statistics (Keras' guidance).
    x = base(x, training=False) if transfer else base(x)
    pooling = BACKBONES[cfg.backbone].pooling if cfg.pooling == "auto" else cfg.pooling
    x = (keras.layers.GlobalAveragePooling2D if pooling == "gap" else keras.layers.Flatten)(name="pool")(x)
    for i in range(cfg.dense_layers):
        x = keras.layers.Dense(cfg.dense_units, activation="relu", name=f"head_dense_{i + 1}")(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"head_bn_{i + 1}")(x)
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, name=f"head_dropout_{i + 1}")(x)
    if cfg.dense_layers == 0 and cfg.dropout:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    # Logits and softmax in float32 even under mixed precision, so probabilities stay well
    # calibrated; the logits are their own layer so calibration can scale them (`with_temperature`).
    logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_classifier")


def logits_of(model: keras.Model) -> keras.Model:
    """The classifier up to its logits (same layers, same weights): what calibration fits on."""
    return keras.Model(model.input, model.get_layer(LOGITS).output, name=f"{model.name}_logits")


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """The classifier whose softmax divides the logits by `temperature` first: what runs log,
    the registry serves and TFLite exports. Built from Keras' own layers (a Rescaling by 1/T), so
    loading it needs no workbench code."""
    scaled = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name="temperature")(
        model.get_layer(LOGITS).output)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="calibrated_probabilities")(scaled)
    return keras.Model(model.input, outputs, name=model.name)


def base_of(model: keras.Model) -> keras.Model:
    """The backbone inside a classifier built by `build_model` (its only nested model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def unfreeze_for_fine_tuning(model: keras.Model, cfg: TrialConfig) -> None:
    """Phase two: make the top of the base trainable (all of it, the top N layers, or from a layer)."""
    base = base_of(model)
    base.trainable = True
    layers = base.layers
    if cfg.fine_tune_from:
        start = layers.index(_layer(base, cfg.fine_tune_from, "fine_tune_from"))
    elif cfg.fine_tune_layers:
        start = max(len(layers) - cfg.fine_tune_layers, 0)
    else:
        start = 0
    for layer in layers[:start]:
        layer.trainable = False


def make_optimizer(cfg: TrialConfig, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    return OPTIMIZERS[cfg.optimizer].make(learning_rate or cfg.learning_rate)
