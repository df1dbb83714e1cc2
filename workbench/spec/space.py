"""The search space of a spec: every key of `params` with its type and default (`PARAMETERS`),
what a value may be (fixed, a list of choices, a range), the `Params` model built from that
table, and the step from a space to one concrete `TrialConfig`: the first choice for a single
run, an Optuna trial's suggestion for a sweep. Names on the registry's axes are checked against
the registry's tables when a spec is validated, not frozen when this module loads, so an entry
registered later is accepted like a built-in one."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    create_model,
)

from workbench.spec.registry import BACKBONES, SWITCHES, TABLES

if TYPE_CHECKING:
    from workbench.spec.schema import Spec


def one_of(axis: str):
    """A name on one registry axis, checked against the table as it is at validation time."""
    table = TABLES[axis]

    def check(value: str) -> str:
        if value not in table:
            names = [f"'{name}'" for name in table]
            raise ValueError(f"Input should be {', '.join(names[:-1])} or {names[-1]}")
        return value
    return Annotated[str, AfterValidator(check)]

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
    "balance": Param(one_of("balance"), "none"),
    # Images per class after under/oversampling; 0: the largest (oversample) or smallest
    # (undersample) class. S1 balances to 5000 a class, cutting `real` and growing `fake`.
    "balance_target": Param(NonNegativeInt, 0, rangeable=True, integer=True),
    "augmentation": Param(one_of("augmentation"), "none"),
    "learning_rate": Param(PositiveFloat, 1e-3, rangeable=True),
    "batch_size": Param(PositiveInt, 32, rangeable=True, integer=True),
    "epochs": Param(PositiveInt, 5, rangeable=True, integer=True),
    "dropout": Param(Fraction, 0.2, rangeable=True),
    "dense_units": Param(PositiveInt, 128, rangeable=True, integer=True),
    "optimizer": Param(one_of("optimizer"), "adam"),
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
    "schedule": Param(one_of("schedule"), "constant"),
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
