"""The registry: one table per axis a spec can name, each entry holding what it does. A backbone
entry states the facts its builder needs; a balance strategy, a learning-rate schedule, an
optimizer and an augmentation policy each carry their callable. Specs accept exactly the names
in these tables, checked when a spec is validated, so an entry added here (or at run time, by
`register`) is offered in specs and runs end to end with nothing else to touch, and a name can
never be accepted without behaviour behind it.

The callables import Keras, OpenCV and pandas when they run, not when this module loads, so
listing and validating specs stays instant. They take plain arguments: the data stage hands a
balance strategy its training rows and a way to make oversampled copies; the model stage hands a
schedule its base rate and phase; nothing here imports another part of workbench."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple


# --- backbones ---------------------------------------------------------------------------------------
class BackboneInfo(NamedTuple):
    min_size: int          # smallest input side Keras accepts (Xception's stem needs 71 px)
    # How its ImageNet weights expect pixels: "tf" scales to [-1, 1], "torch" standardises with
    # ImageNet statistics, "caffe" flips to BGR and subtracts the mean, "raw" leaves [0, 255]
    # (EfficientNet rescales inside), "unit" scales to [0, 1] (our own CNN).
    preprocessing: str
    application: str | None     # the keras.applications builder; None: workbench's own CNN
    options: tuple[str, ...] = ()   # config fields passed on to the builder
    # The head's pooling when the spec says `auto`: pretrained bases end in deep, low-resolution
    # maps that global average pooling summarises well; the small CNN from scratch keeps *where*
    # a feature is (a mask below the nose, a patch over the eyes) only with Flatten, which on real
    # photos generalised clearly better to another dataset (README, "Defaults").
    pooling: str = "gap"


BACKBONES: dict[str, BackboneInfo] = {
    "simple_cnn": BackboneInfo(16, "unit", None, pooling="flatten"),
    "vgg16": BackboneInfo(32, "caffe", "VGG16"),
    "mobilenet_v2": BackboneInfo(32, "tf", "MobileNetV2", options=("alpha",)),
    "xception": BackboneInfo(71, "tf", "Xception"),
    "densenet169": BackboneInfo(32, "torch", "DenseNet169"),
    "efficientnet_b0": BackboneInfo(32, "raw", "EfficientNetB0"),
}


# --- balance strategies --------------------------------------------------------------------------------
class Balance(NamedTuple):
    """`apply(train, classes, target, seed, copies)` -> (training rows, class weights or None).
    `target` is the images per class asked for (0: the strategy's own choice); `copies(rows,
    target, seed)` tops every class of `rows` up to `target` with OpenCV copies of its own images."""

    about: str
    apply: Callable[..., tuple[Any, dict[int, float] | None]]


def _counts(train, classes):
    return train["label"].value_counts().reindex(list(classes), fill_value=0)


def cut(train, target: int, seed: int):
    """Randomly keep at most `target` images of every class (smaller classes stay whole)."""
    import pandas as pd

    parts = [group.sample(n=min(target, len(group)), random_state=seed) for _, group in train.groupby("label")]
    return pd.concat(parts).sort_values("file").reset_index(drop=True)


def _as_is(train, classes, target, seed, copies):
    return train, None


def _class_weight(train, classes, target, seed, copies):
    # Inverse frequency, scaled so a balanced dataset gets weight 1 everywhere.
    counts = _counts(train, classes)
    total, k = counts.sum(), len(classes)
    return train, {i: float(total / (k * counts[c])) for i, c in enumerate(classes)}


def _undersample(train, classes, target, seed, copies):
    return cut(train, target or int(_counts(train, classes).min()), seed), None


def _oversample(train, classes, target, seed, copies):
    # With a target, larger classes are also cut down to it, as S1 did (5,000 a class: `real`
    # undersampled, `fake` grown by augmentation).
    target = target or int(_counts(train, classes).max())
    return copies(cut(train, target, seed), target, seed), None


BALANCES: dict[str, Balance] = {
    "none": Balance("train on the split as it is", _as_is),
    "undersample": Balance("cut every class to the smallest (or balance_target)", _undersample),
    "oversample": Balance("grow small classes with OpenCV copies of their own training images (S1's recipe)",
                          _oversample),
    "class_weight": Balance("weight the loss by inverse class frequency", _class_weight),
}


# --- optimizers ----------------------------------------------------------------------------------------
class Optimizer(NamedTuple):
    about: str
    make: Callable[[float], Any]     # learning rate -> a Keras optimizer


def _keras_optimizer(name: str, **options):
    def make(learning_rate: float):
        import keras

        return getattr(keras.optimizers, name)(learning_rate, **options)
    return make


OPTIMIZERS: dict[str, Optimizer] = {
    "adam": Optimizer("Adam", _keras_optimizer("Adam")),
    "adamax": Optimizer("Adamax (S1)", _keras_optimizer("Adamax")),
    "rmsprop": Optimizer("RMSprop", _keras_optimizer("RMSprop")),
    "sgd": Optimizer("SGD with Nesterov momentum 0.9", _keras_optimizer("SGD", momentum=0.9, nesterov=True)),
}


# --- learning-rate schedules -----------------------------------------------------------------------------
class Schedule(NamedTuple):
    """`callbacks(options, base_lr, epochs, first_epoch)` -> the Keras callbacks of one training
    phase (epochs counted within the phase); `options` is the spec's `schedule_options`."""

    about: str
    callbacks: Callable[[dict, float, int, int], list]


def _constant(options, base_lr, epochs, first_epoch):
    return []


def _plateau(options, base_lr, epochs, first_epoch):
    import keras

    return [keras.callbacks.ReduceLROnPlateau(monitor=options["monitor"], patience=options["patience"],
                                              factor=options["factor"], min_lr=options["min_lr"])]


def _step(options, base_lr, epochs, first_epoch):
    import keras

    def rate(epoch, lr):
        passed = sum(epoch - first_epoch >= b for b in options["boundaries"])
        return base_lr * options["step_factor"] ** passed
    return [keras.callbacks.LearningRateScheduler(rate)]


def _cosine(options, base_lr, epochs, first_epoch):
    import keras

    return [keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: base_lr * 0.5 * (1 + math.cos(math.pi * (epoch - first_epoch) / max(epochs, 1))))]


SCHEDULES: dict[str, Schedule] = {
    "constant": Schedule("the learning rate as given", _constant),
    "plateau": Schedule("ReduceLROnPlateau on schedule_options.monitor (S1's VGG16)", _plateau),
    "step": Schedule("multiply by step_factor at each of the boundaries (S1's MobileNetV2)", _step),
    "cosine": Schedule("cosine decay to zero over the phase", _cosine),
}


# --- online augmentation policies ------------------------------------------------------------------------
class Augmentation(NamedTuple):
    """`layers(custom_options, seed)` -> the Keras preprocessing layers applied to training
    batches (none: the pipeline skips the step); `custom_options` is the spec's
    `augmentation_options`, which only `custom` reads."""

    about: str
    layers: Callable[[dict | None, int], list]


def stack(settings: dict, seed: int) -> list:
    """Keras preprocessing layers for ImageDataGenerator-style settings: rotation and shear in
    degrees, zoom and shift as fractions of the image, brightness and contrast as fractions."""
    if not any(settings.values()):
        return []
    import keras

    layers = []
    if settings.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if settings.get("rotation"):
        # Keras' rotation factor is a fraction of a full turn: 10 degrees is 10/360.
        layers.append(keras.layers.RandomRotation(settings["rotation"] / 360, fill_mode="reflect", seed=seed))
    if settings.get("zoom"):
        layers.append(keras.layers.RandomZoom(settings["zoom"], fill_mode="reflect", seed=seed))
    if settings.get("shift"):
        layers.append(keras.layers.RandomTranslation(settings["shift"], settings["shift"], fill_mode="reflect",
                                                     seed=seed))
    if settings.get("shear"):
        # Degrees, as ImageDataGenerator's shear_range (the studies' 0.2 is a fifth of a degree);
        # Keras' RandomShear takes the shear itself, tan(angle), drawn in both directions.
        shear = math.tan(math.radians(settings["shear"]))
        layers.append(keras.layers.RandomShear(shear, shear, fill_mode="reflect", seed=seed))
    if settings.get("brightness"):
        layers.append(keras.layers.RandomBrightness(settings["brightness"], value_range=(0, 255), seed=seed))
    if settings.get("contrast"):
        layers.append(keras.layers.RandomContrast(settings["contrast"], value_range=(0, 255), seed=seed))
    return layers


def _preset(settings: dict) -> Callable[[dict | None, int], list]:
    return lambda options, seed: stack(settings, seed)


# S2 and S4 are the reference studies' own ImageDataGenerator settings.
PRESETS: dict[str, dict] = {
    "none": {},
    "flip": {"flip": True},
    "s2": {"rotation": 10, "zoom": 0.2, "shift": 0.1, "shear": 0.2, "flip": True},   # S2 (Xception)
    "s4": {"rotation": 40, "zoom": 0.2, "shift": 0.2, "shear": 0.2, "flip": True},   # S4 (baseline CNN)
}
AUGMENTATIONS: dict[str, Augmentation] = {
    **{name: Augmentation(f"preset {settings or 'with no layers'}", _preset(settings))
       for name, settings in PRESETS.items()},
    "custom": Augmentation("the spec's augmentation_options", lambda options, seed: stack(options or {}, seed)),
}


# --- the rest of the vocabulary of a spec -------------------------------------------------------------
SWITCHES = ("auto", "on", "off")  # auto: on where a GPU is present
OBJECTIVE_METRICS = ("val_f1_macro", "val_accuracy", "val_loss")
ADAPTERS = ("facemask12k", "yonsei_realfake", "maskdataset_v1", "folders")  # ingest.ADAPTERS' names

TABLES: dict[str, dict] = {"backbone": BACKBONES, "balance": BALANCES, "optimizer": OPTIMIZERS,
                           "schedule": SCHEDULES, "augmentation": AUGMENTATIONS}


def register(axis: str, name: str, entry: NamedTuple) -> None:
    """Offer a new entry on one axis (`balance`, `optimizer`, `schedule` or `augmentation`), e.g.
    `register("schedule", "linear", Schedule("...", callbacks))`: specs validated afterwards may
    name it, and it runs wherever the built-in ones do."""
    table = TABLES.get(axis)
    if table is None or axis == "backbone":
        raise ValueError(f"register: axis must be one of balance, optimizer, schedule, augmentation, not {axis!r}")
    expected = type(next(iter(table.values())))
    if not isinstance(entry, expected):
        raise TypeError(f"register: a {axis} entry is a {expected.__name__}, got {type(entry).__name__}")
    table[name] = entry


MIN_IMAGE_SIZE = {name: info.min_size for name, info in BACKBONES.items()}
