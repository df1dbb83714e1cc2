"""The experiment registry: YAML specs in `experiments/` declare what to train and what to search.

A spec names a dataset, a split, a search space over the registry axes (backbone, balance,
augmentation) and the hyperparameters, an objective, a trial budget and a seed. Every value in
`params` is either fixed (`epochs: 3`), a list of choices (`backbone: [simple_cnn, vgg16]`) or a
range (`learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}`). Specs state only what differs
from the defaults below. Loading validates everything with pydantic and turns any problem into a
one-line `SpecError` naming the file and the field path; this module never imports TensorFlow,
so listing and validating specs is instant.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from workbench import paths, vocabulary
from workbench.errors import SpecError

# --- the registry: one table per axis ----------------------------------------------------------------
# These tables are the registry's vocabulary and its facts. `backbones.py` builds from BACKBONES,
# `pipeline.py` from AUGMENTATIONS and `dataset.py` balances by BALANCES: adding an entry here
# is all it takes to offer it in specs, nothing elsewhere repeats the names.


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
BALANCES: dict[str, str] = {
    "none": "train on the split as it is",
    "undersample": "cut every class to the smallest (or balance_target)",
    "oversample": "grow small classes with OpenCV copies of their own training images (S1's recipe)",
    "class_weight": "weight the loss by inverse class frequency",
}
# Online augmentation policies (Keras preprocessing layers on training batches only). s2 and s4
# are the reference studies' own ImageDataGenerator settings; rotation and shear are in degrees,
# zoom and shift fractions of the image, as there.
AUGMENTATIONS: dict[str, dict | None] = {
    "none": {},
    "flip": {"flip": True},
    "s2": {"rotation": 10, "zoom": 0.2, "shift": 0.1, "shear": 0.2, "flip": True},   # S2 (Xception)
    "s4": {"rotation": 40, "zoom": 0.2, "shift": 0.2, "shear": 0.2, "flip": True},   # S4 (baseline CNN)
    "custom": None,  # the spec's `augmentation_options`
}
OPTIMIZERS = ("adam", "adamax", "rmsprop", "sgd")
SCHEDULES = ("constant", "plateau", "step", "cosine")
SWITCHES = ("auto", "on", "off")  # auto: on where a GPU is present
OBJECTIVE_METRICS = ("val_f1_macro", "val_accuracy", "val_loss")
MIN_IMAGE_SIZE = {name: info.min_size for name, info in BACKBONES.items()}


# --- search-space dimensions -------------------------------------------------------------------
class Fixed(BaseModel):
    value: Any


class Choice(BaseModel):
    values: list[Any]


class Range(BaseModel):
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False


Dim = Union[Fixed, Choice, Range]


def _dimension(element: Any, *, rangeable: bool, integer: bool = False):
    """Build the annotated type of one `params` key: a fixed value, a list or a range of `element`."""
    check = TypeAdapter(element)

    def parse(raw: Any) -> Dim:
        if isinstance(raw, (Fixed, Choice, Range)):
            return raw
        if isinstance(raw, dict):
            if not rangeable:
                raise ValueError("takes a value or a list of choices, not a range")
            unknown = set(raw) - {"low", "high", "log", "step"}
            if unknown or not {"low", "high"} <= set(raw):
                raise ValueError("a range needs exactly 'low' and 'high' (and optionally 'log', 'step')")
            low, high = check.validate_python(raw["low"]), check.validate_python(raw["high"])
            log = bool(raw.get("log", False))
            if low >= high:
                raise ValueError(f"range low ({low}) must be below high ({high})")
            if log and low <= 0:
                raise ValueError("a log range needs low > 0")
            step = raw.get("step")
            return Range(low=low, high=high, log=log, step=step, integer=integer)
        if isinstance(raw, list):
            if not raw:
                raise ValueError("an empty list of choices")
            values = [check.validate_python(v) for v in raw]
            if len(set(map(json.dumps, values))) != len(values):
                raise ValueError("a list of choices with duplicates")
            return Choice(values=values) if len(values) > 1 else Fixed(value=values[0])
        return Fixed(value=check.validate_python(raw))

    def dump(dim: Dim) -> Any:
        if isinstance(dim, Fixed):
            return dim.value
        if isinstance(dim, Choice):
            return list(dim.values)
        out = {"low": dim.low, "high": dim.high, "log": dim.log}
        if dim.step is not None:
            out["step"] = dim.step
        return out

    return Annotated[Any, BeforeValidator(parse), PlainSerializer(dump)]


PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0, strict=False)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
ImageSize = Annotated[int, Field(ge=16, le=1024)]
# YAML reads a bare `on` / `off` as a boolean; accept both spellings.
Switch = Annotated[Literal[SWITCHES], BeforeValidator(lambda v: ("on" if v else "off") if isinstance(v, bool) else v)]
Alpha = Literal[0.35, 0.5, 0.75, 1.0, 1.3, 1.4]  # the widths Keras' MobileNetV2 accepts


class ScheduleOptions(BaseModel):
    """Fixed knobs of the learning-rate schedules; defaults are S1's settings."""

    model_config = ConfigDict(extra="forbid")
    # plateau (S1 VGG16): ReduceLROnPlateau(monitor val_accuracy, patience 3, factor 0.5, min_lr 1e-5)
    monitor: str = "val_accuracy"
    patience: int = Field(3, ge=1)
    factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-5, ge=0)
    # step (S1 MobileNetV2): multiply by step_factor at each boundary epoch (1e-3 -> 1e-4 -> 1e-5)
    boundaries: list[int] = [2, 15]
    step_factor: float = Field(0.1, gt=0, lt=1)


class AugmentationOptions(BaseModel):
    """The layers of `augmentation: custom`: rotation and shear in degrees, zoom, shift,
    brightness and contrast as fractions, flip on/off (ImageDataGenerator's units)."""

    model_config = ConfigDict(extra="forbid")
    rotation: float = Field(0, ge=0, le=180)
    zoom: float = Field(0, ge=0, lt=1)
    shift: float = Field(0, ge=0, lt=1)
    shear: float = Field(0, ge=0, le=45)   # degrees, as ImageDataGenerator's shear_range
    flip: bool = False
    brightness: float = Field(0, ge=0, lt=1)
    contrast: float = Field(0, ge=0, lt=1)


class Param(NamedTuple):
    """One key of `params`: the type of its values, its default, and whether a range may span it."""

    type: Any
    default: Any
    rangeable: bool = False
    integer: bool = False


NonNegativeInt = Annotated[int, Field(ge=0)]
# Every key of `params`, in the order specs, logs and tables show them. The defaults are a small,
# sane single configuration. Both the search space (`Params`) and one concrete point of it
# (`TrialConfig`) are derived from this table, so a key and its default are stated once.
PARAMETERS: dict[str, Param] = {
    "backbone": Param(Literal[tuple(BACKBONES)], "simple_cnn"),
    "balance": Param(Literal[tuple(BALANCES)], "none"),
    # Images per class after under/oversampling; 0: the largest (oversample) or smallest
    # (undersample) class. S1 balances to 5000 a class, cutting `real` and growing `fake`.
    "balance_target": Param(NonNegativeInt, 0, rangeable=True, integer=True),
    "augmentation": Param(Literal[tuple(AUGMENTATIONS)], "none"),
    "learning_rate": Param(PositiveFloat, 1e-3, rangeable=True),
    "batch_size": Param(PositiveInt, 32, rangeable=True, integer=True),
    "epochs": Param(PositiveInt, 5, rangeable=True, integer=True),
    "dropout": Param(Fraction, 0.2, rangeable=True),
    "dense_units": Param(PositiveInt, 128, rangeable=True, integer=True),
    "optimizer": Param(Literal[OPTIMIZERS], "adam"),
    "image_size": Param(ImageSize, 64, rangeable=True, integer=True),
    "weights": Param(str, "none"),           # none | imagenet | a path to a weights file
    "alpha": Param(Alpha, 1.0),              # MobileNetV2's width
    # The head: pooled backbone features -> `dense_layers` x (Dense(dense_units) [+ BN] + Dropout).
    # `auto` pools as the backbone's registry entry says (Flatten for simple_cnn, else GAP).
    "pooling": Param(Literal["auto", "gap", "flatten"], "auto"),
    "dense_layers": Param(Annotated[int, Field(ge=0, le=8)], 1, rangeable=True, integer=True),
    "batch_norm": Param(bool, False),
    # Transfer learning: cut the base at a named layer, freeze it for the first phase, then
    # optionally fine-tune its top layers at a lower learning rate as a second phase.
    "cut_at": Param(str, ""),
    "freeze_base": Param(bool, False),
    "fine_tune_epochs": Param(NonNegativeInt, 0, rangeable=True, integer=True),
    "fine_tune_layers": Param(NonNegativeInt, 0, rangeable=True, integer=True),   # 0: the whole base
    "fine_tune_from": Param(str, ""),                                             # or from this layer up
    "fine_tune_learning_rate": Param(Annotated[float, Field(ge=0)], 0.0, rangeable=True),  # 0: lr / 10
    "schedule": Param(Literal[SCHEDULES], "constant"),
    "early_stopping": Param(NonNegativeInt, 0, rangeable=True, integer=True),  # patience; 0: off
    "restore_best": Param(bool, False),
    "mixed_precision": Param(Switch, "auto"),
    "xla": Param(Switch, "auto"),
    # Run Keras step by step, without tracing a graph. Tracing DenseNet169's training step takes
    # over a minute on a CPU: worth it over thousands of steps, not over a smoke run's ten.
    "eager": Param(bool, False),
}
# Structured option blocks of `params`: fixed for the whole search, never sampled.
FIXED_BLOCKS = {"schedule_options": ScheduleOptions, "augmentation_options": AugmentationOptions}


class _ParamsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    def dims(self) -> dict[str, Dim]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def fixed_blocks(self) -> dict[str, dict]:
        return {name: getattr(self, name).model_dump() for name in FIXED_BLOCKS}


# The search space: every key fixed, a list of choices or a range.
Params = create_model(
    "Params", __base__=_ParamsBase, __doc__="The search space of a spec's `params` block.",
    **{name: (_dimension(p.type, rangeable=p.rangeable, integer=p.integer), p.default)
       for name, p in PARAMETERS.items()},
    **{name: (block, block()) for name, block in FIXED_BLOCKS.items()},
)


def _values(dim: Dim) -> list[Any]:
    if isinstance(dim, Fixed):
        return [dim.value]
    if isinstance(dim, Choice):
        return list(dim.values)
    raise TypeError("a range has no finite list of values")


def _lowest(dim: Dim) -> float:
    return dim.low if isinstance(dim, Range) else min(_values(dim))


# --- the rest of a spec --------------------------------------------------------------------------

class SyntheticData(BaseModel):
    """The embedded default: faces drawn by workbench.data.synth, generated once under data/synthetic/."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["synthetic"] = "synthetic"
    task: Literal["mask2", "mask3_fake", "mask_age4"] = "mask3_fake"
    count: int = Field(1500, ge=20, le=200_000)
    size: ImageSize = 64


ADAPTERS = ("facemask12k", "yonsei_realfake", "maskdataset_v1", "folders")  # ingest.ADAPTERS' names


def _class_name(value: str) -> str:
    # Class names become folder and metric names: nothing that is not a plain name.
    if not value.strip() or set(value) <= {"."} or any(c in value for c in "/\\\x00"):
        raise ValueError(f"{value!r} is not a class name (empty, dots only, or holding / or \\)")
    return value


ClassName = Annotated[str, AfterValidator(_class_name)]


class ManifestSource(BaseModel):
    """One dataset and how its labels map. With `adapter` and `path` the spec knows where the
    raw folder is, and running the spec ingests it (again, whenever the folder changes); without
    them it names a manifest made by `workbench data ingest ... --name NAME`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # On-disk label -> class in this experiment; a label mapped to null is left out, a label not
    # listed keeps its own name. S1: {WithMask: with_mask, WithoutMask: real}.
    classes: dict[str, ClassName | None] = {}
    adapter: Literal[ADAPTERS] | None = None
    # The raw folder as downloaded: absolute, or relative to the raw-data root ($WORKBENCH_RAW,
    # `--data DIR`, default data/raw).
    path: str | None = None
    get: str = ""     # how to obtain the data, shown when the folder is missing

    @model_validator(mode="after")
    def _adapter_and_path_go_together(self) -> ManifestSource:
        if (self.adapter is None) != (self.path is None):
            raise ValueError("adapter and path go together: name both (the folder and its layout) or neither")
        return self


class ManifestData(BaseModel):
    """Real data from the user's disk: one or several ingested manifests, merged."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["manifests"]
    manifests: list[ManifestSource] = Field(min_length=1)
    # Perceptual-hash distance (of 64 bits) under which two images count as the same picture.
    near_duplicate_distance: int = Field(4, ge=0, le=32)


def _dataset_source(raw: Any) -> str | None:
    source = raw.get("source", "synthetic") if isinstance(raw, dict) else getattr(raw, "source", None)
    return source if source in ("synthetic", "manifests") else None


DatasetSpec = Annotated[
    Union[Annotated[SyntheticData, Tag("synthetic")], Annotated[ManifestData, Tag("manifests")]],
    Discriminator(_dataset_source, custom_error_type="dataset_source",
                  custom_error_message="source must be 'synthetic' or 'manifests'"),
]


class Split(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    # Keep the dataset's own Train/Validation/Test folders (S3); rows without one are split by
    # the ratios. Off (the default) pools everything and re-splits by group (S4's fix).
    keep_original_split: bool = False
    pool_and_resplit: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        if self.keep_original_split and self.pool_and_resplit:
            raise ValueError("keep_original_split and pool_and_resplit exclude each other")
        return self

    def ratios(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Objective(BaseModel):
    """What a sweep optimises: a validation metric, never a test one (the test split only
    reports). Its direction follows from the metric (`vocabulary.better`); stating it is optional."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal[OBJECTIVE_METRICS] = "val_f1_macro"
    direction: Literal["maximize", "minimize"] | None = None
    # Multi-objective: also minimise inference latency (ms per image at batch 1); the sweep then
    # records a Pareto front instead of one best trial, and trials are not pruned.
    latency: bool = False

    @model_validator(mode="after")
    def _direction_follows_the_metric(self) -> Objective:
        implied = vocabulary.direction(self.metric)
        if self.direction is not None and self.direction != implied:
            raise ValueError(f"direction: {self.metric} is better when it goes {implied.removesuffix('imize')}, "
                             f"not {self.direction.removesuffix('imize')} (leave direction out)")
        self.direction = implied
        return self


class Pruning(BaseModel):
    """When the median pruner may start judging: after this many finished trials, from this epoch."""

    model_config = ConfigDict(extra="forbid")
    startup_trials: int = Field(4, ge=0)
    warmup_epochs: int = Field(1, ge=0)


class Ship(BaseModel):
    """What happens after the sweep: its best run (by the validation objective) is registered as
    `models:/NAME@champion` and, optionally, exported (S4 ships to Android as TFLite)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    export: Literal["tflite"] | None = None
    quantize: Literal["none", "dynamic", "float16"] = "none"


class Spec(BaseModel):
    """One experiment: everything a sweep or a single run needs, and nothing about where it is stored."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    dataset: DatasetSpec = SyntheticData()
    split: Split = Split()
    params: Params = Params()
    # Fixed values that apply only when a given backbone is drawn, so one spec can compare
    # backbones that each want their own input size, head and schedule (S1: VGG16 at 160 px with
    # a flatten head vs MobileNetV2 at 96 px with GAP). They replace what was sampled.
    backbone_params: dict[Literal[tuple(BACKBONES)], dict[str, Any]] = {}
    objective: Objective = Objective()
    trials: int = Field(12, ge=1)
    seed: int = Field(0, ge=0)
    # How the space is searched: TPE (default), random, or grid (every combination of the
    # choices, the way the studies compared by hand). Pruning stops weak trials early.
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruning: Pruning = Pruning()
    # Configurations tried first, e.g. the reference study's own setting, so the search starts
    # from the published baseline. Each maps searched keys to values.
    enqueue: list[dict[str, Any]] = []
    # Each configuration trains this many times with different seeds (same split): a trial's
    # objective is the mean, and comparisons use the spread.
    repeats: int = Field(1, ge=1, le=20)
    ship: Ship | None = None

    @model_validator(mode="after")
    def _backbone_params_are_valid(self) -> Spec:
        for backbone, values in self.backbone_params.items():
            unknown = set(values) - set(Params.model_fields) - {"backbone"}
            if unknown:
                raise ValueError(f"backbone_params.{backbone}: unknown key(s) {', '.join(sorted(unknown))}")
            for key, value in values.items():
                # A backbone's own setting replaces the search dimension for its trials; searching
                # it per backbone would make the space depend on the backbone drawn.
                if key in PARAMETERS and isinstance(value, (list, dict)):
                    raise ValueError(f"backbone_params.{backbone}.{key}: one fixed value, not a list or a range")
            try:
                Params.model_validate({**values, "backbone": backbone})
            except ValidationError as err:
                raise ValueError(f"backbone_params.{backbone}.{describe_validation_error(err)}") from None
        return self

    @model_validator(mode="after")
    def _search_is_consistent(self) -> Spec:
        dims = self.params.dims()
        for i, point in enumerate(self.enqueue):
            unknown = set(point) - set(dims)
            if unknown:
                raise ValueError(f"enqueue[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
            for key, value in point.items():
                if not _admits(dims[key], value):
                    raise ValueError(f"enqueue[{i}].{key}: {value!r} is outside params.{key}")
        if self.sampler == "grid":
            for key, dim in dims.items():
                if isinstance(dim, Range) and not (dim.integer or dim.step):
                    raise ValueError(f"params.{key}: sampler grid needs a list of choices or a stepped range, "
                                     "not a continuous range")
        return self

    @model_validator(mode="after")
    def _backbones_fit_image_size(self) -> Spec:
        for backbone in _values(self.params.backbone):
            override = self.backbone_params.get(backbone, {}).get("image_size")
            smallest = _lowest(self.params.image_size) if override is None else override
            if smallest < MIN_IMAGE_SIZE[backbone]:
                raise ValueError(f"params.image_size: {smallest} is below {backbone}'s minimum of "
                                 f"{MIN_IMAGE_SIZE[backbone]} px")
        return self

    def content_hash(self) -> str:
        """Identifies what a run trained on and searched over; the trial budget is not part of it."""
        payload = self.model_dump(mode="json", exclude={"trials", "description", "ship"})
        for source in payload["dataset"].get("manifests", []):  # where the folder is, not what it holds
            source.pop("path", None)
            source.pop("get", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading -------------------------------------------------------------------------------------

def resolve_path(spec: str | Path) -> Path:
    """A spec argument is a path, or a name under experiments/ (with or without .yaml)."""
    candidate = Path(spec)
    if candidate.is_file():
        return candidate
    for path in (paths.experiments_dir() / f"{spec}.yaml", paths.experiments_dir() / f"{spec}.yml"):
        if path.is_file():
            return path
    known = ", ".join(p.stem for p in list_specs()) or "none"
    raise SpecError(f"{spec}: no such spec file or name under {paths.experiments_dir()}/ (known: {known})")


def list_specs() -> list[Path]:
    folder = paths.experiments_dir()
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []


def load(spec: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override (`key=value` strings as given to --set) and validate one spec."""
    path = resolve_path(spec)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec is a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw, source=str(path))


def validate(raw: dict, source: str = "<spec>") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {describe_validation_error(err)}") from None


def describe_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    # Pydantic puts the failing validator's name into the location path; users know only keys.
    parts = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal["))]
    if parts[:1] == ["dataset"] and parts[1:2] in (["synthetic"], ["manifests"]):
        del parts[1]  # the union's tag, not a key the user wrote
    loc = ".".join(parts)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden" and parts:
        msg = f"unknown key{_did_you_mean(err, first)}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {msg}{shown}{extra}" if loc else f"{msg}{shown}{extra}"



def _did_you_mean(err: ValidationError, first: dict) -> str:
    """" (did you mean 'learning_rate'?)" for a misspelt key, from the keys its mapping takes."""
    known = _keys_at(first["loc"][:-1])
    close = difflib.get_close_matches(str(first["loc"][-1]), known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else (f" (known: {', '.join(known)})" if known else "")


def _keys_at(loc: tuple) -> list[str]:
    model: Any = Spec
    for part in loc:
        part = str(part)
        if part in ("synthetic", "manifests") and model is not Spec:
            model = SyntheticData if part == "synthetic" else ManifestData
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            if part.isdigit() or model is None:
                continue
            return []
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if part == "dataset":
            model = SyntheticData
        if part == "params":
            model = Params
    return list(getattr(model, "model_fields", {})) if model is not None else []


def apply_override(raw: dict, item: str) -> None:
    """Apply one `--set key=value`: bare param names address `params`, dotted keys any field."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(f"--set {item}: expected key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"--set {item}: value is not valid YAML") from None
    if "." in key:
        path = key.split(".")
        if path[0] in Params.model_fields:  # schedule_options.patience means params.schedule_options...
            path = ["params", *path]
    elif key in Params.model_fields:
        path = ["params", key]
    elif key in Spec.model_fields:
        path = [key]
    else:
        raise SpecError(f"--set {key}: unknown key (params: {', '.join(Params.model_fields)}; "
                        f"top level: {', '.join(Spec.model_fields)}; or a dotted path)")
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {key}: {part} is not a mapping")
    node[path[-1]] = value


# --- from a search space to one configuration -----------------------------------------------------

def _admits(dim: Dim, value: Any) -> bool:
    if isinstance(dim, Range):
        return isinstance(value, (int, float)) and dim.low <= value <= dim.high
    return value in _values(dim)


def grid_values(dim: Dim) -> list[Any]:
    """Every value of a finite dimension, for the grid sampler."""
    if not isinstance(dim, Range):
        return _values(dim)
    step = dim.step or 1
    count = int(math.floor((dim.high - dim.low) / step + 1e-9)) + 1
    values = [dim.low + k * step for k in range(count)]
    return [int(round(v)) for v in values] if dim.integer else values


def is_searched(dim: Dim) -> bool:
    return not isinstance(dim, Fixed)


def default_choice(dim: Dim) -> Any:
    """What a single run uses for a dimension the spec leaves open: the first choice, or the
    (geometric, for log ranges) middle of a range."""
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        return dim.values[0]
    mid = math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2
    return int(round(mid)) if dim.integer else mid


def suggest(name: str, dim: Dim, trial) -> Any:
    """Ask an Optuna trial for a value of one dimension (fixed values are not searched)."""
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        return trial.suggest_categorical(name, dim.values)
    if dim.integer:
        step = int(dim.step) if dim.step else 1
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=step, log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)


# One concrete point of a spec's space: what `train()` runs. Every field is a plain value.
TrialConfig = create_model(
    "TrialConfig", __config__=ConfigDict(frozen=True, extra="forbid"),
    __doc__="One configuration of a spec's search space, every value plain.",
    **{name: (p.type, p.default) for name, p in PARAMETERS.items()},
    **{name: (dict, {}) for name in FIXED_BLOCKS},
    seed=(int, 0),
)


def _config(spec: Spec, values: dict[str, Any], seed: int | None = None) -> TrialConfig:
    blocks = spec.params.fixed_blocks()
    for key, value in spec.backbone_params.get(values["backbone"], {}).items():
        if key in blocks:
            blocks[key] = {**blocks[key], **value}
        else:
            values[key] = value
    if values["pooling"] == "auto":
        values["pooling"] = BACKBONES[values["backbone"]].pooling
    return TrialConfig(**values, **blocks, seed=spec.seed if seed is None else seed)


def single_config(spec: Spec) -> TrialConfig:
    return _config(spec, {name: default_choice(dim) for name, dim in spec.params.dims().items()})


def first_config(spec: Spec, seed: int | None = None) -> TrialConfig:
    """The configuration a spec stands for when it is trained once (`workbench run`, the matrix):
    its first enqueued point, the published configuration in the reference studies, over the
    first choice / middle of every other open dimension."""
    values = {name: default_choice(dim) for name, dim in spec.params.dims().items()}
    values.update(spec.enqueue[0] if spec.enqueue else {})
    return _config(spec, values, seed)


def sample_config(spec: Spec, trial) -> TrialConfig:
    return _config(spec, {name: suggest(name, dim, trial) for name, dim in spec.params.dims().items()})


# --- smoke runs ------------------------------------------------------------------------------------

SMOKE_IMAGE_SIZE = 32
# What a smoke run fixes, everywhere (params and every backbone's own values): one short epoch,
# no pretrained download, no second phase, small batches.
SMOKE_PARAMS = {"epochs": 1, "fine_tune_epochs": 0, "weights": "none", "early_stopping": 0, "batch_size": 8,
                "eager": True}
SMOKE_TRIALS = 2
SMOKE_BALANCE_TARGET = 24


def smoke(spec: Spec) -> Spec:
    """The same study at toy scale, to run in minutes on a CPU: tiny images (each backbone's
    minimum where that is larger), one epoch run eagerly (no graph to trace), two trials, no
    ImageNet weights, one repeat, a small generated dataset (synthetic faces, or trees in each
    named dataset's own layout under data/smoke/); the search space, the class mapping, the split
    rules, the enqueued published configuration and the shipping step stay. Its runs go to
    `<name>-smoke`."""
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw["name"] = f"{spec.name}-smoke"
    raw.update(trials=SMOKE_TRIALS, repeats=1)
    if raw["dataset"]["source"] == "synthetic":
        raw["dataset"].update(count=min(spec.dataset.count, 150), size=SMOKE_IMAGE_SIZE)
    for source in raw["dataset"].get("manifests", []):
        if source.get("path"):
            # Generated under the smoke run's own raw root, never inside a folder named absolutely.
            source["path"] = Path(source["path"]).name
    params = raw["params"]
    fixed = {**SMOKE_PARAMS, "image_size": SMOKE_IMAGE_SIZE}
    target = params.get("balance_target", 0)
    if isinstance(target, int) and target > SMOKE_BALANCE_TARGET:
        fixed["balance_target"] = SMOKE_BALANCE_TARGET
    params.update(fixed)
    for backbone in _values(spec.params.backbone):
        own = raw.setdefault("backbone_params", {}).setdefault(backbone, {})
        own.update({k: v for k, v in fixed.items() if k != "image_size"},
                   image_size=max(SMOKE_IMAGE_SIZE, MIN_IMAGE_SIZE[backbone]))
    # The published configuration is still tried first, without the keys smoke has fixed.
    raw["enqueue"] = [{k: v for k, v in point.items() if k not in fixed} for point in spec.enqueue]
    raw["enqueue"] = [point for point in raw["enqueue"] if point]
    if "ship" in raw:
        raw["ship"]["name"] = f"{spec.ship.name}-smoke"
    return validate(raw, source=f"{spec.name} (--smoke)")
