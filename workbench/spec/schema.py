"""The schema of a spec: the pydantic models of everything besides the search space (the
dataset and its sources, the split, the objective, pruning, shipping) and the `Spec` that holds
them, with the checks that span fields. Validation errors become one line naming the field path
(`describe_validation_error`), with a "did you mean" for a misspelt key."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from workbench import vocabulary
from workbench.spec.registry import (
    ADAPTERS,
    BACKBONES,
    MIN_IMAGE_SIZE,
    OBJECTIVE_METRICS,
)
from workbench.spec.space import (
    PARAMETERS,
    ImageSize,
    Params,
    Range,
    _admits,
    _lowest,
    _values,
)

# --- the rest of a spec --------------------------------------------------------------------------

class SyntheticData(BaseModel):
    """The embedded default: faces drawn by workbench.data.synth, generated once under data/synthetic/."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["synthetic"] = "synthetic"
    task: Literal["mask2", "mask3_fake", "mask_age4"] = "mask3_fake"
    count: int = Field(1500, ge=20, le=200_000)
    size: ImageSize = 64




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
    reports). Its direction follows from the metric (`vocabulary.better`); stating it is optional.

    Which validation images it is measured on is the selection rule. By default, the validation
    split of the data the model trains on (in distribution). On a spec that merges several
    sources, `holdout_source: NAME` trains on the other sources and measures (and prunes) on
    NAME's validation images, so the sweep chooses the configuration that transfers best to a
    source it never trained on; `leave_one_source_out` does so once per source and averages,
    at as many trainings per trial as there are sources."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal[OBJECTIVE_METRICS] = "val_f1_macro"
    direction: Literal["maximize", "minimize"] | None = None
    # Multi-objective: also minimise inference latency (ms per image at batch 1); the sweep then
    # records a Pareto front instead of one best trial, and trials are not pruned.
    latency: bool = False
    holdout_source: str | None = None
    leave_one_source_out: bool = False

    @model_validator(mode="after")
    def _direction_follows_the_metric(self) -> Objective:
        implied = vocabulary.direction(self.metric)
        if self.direction is not None and self.direction != implied:
            raise ValueError(f"direction: {self.metric} is better when it goes {implied.removesuffix('imize')}, "
                             f"not {self.direction.removesuffix('imize')} (leave direction out)")
        self.direction = implied
        if self.holdout_source is not None and self.leave_one_source_out:
            raise ValueError("holdout_source and leave_one_source_out exclude each other: hold one source out, "
                             "or each in turn")
        return self

    @property
    def rule(self) -> str:
        """The selection rule, in `vocabulary.RULES`' words."""
        if self.holdout_source is not None:
            return "holdout_source"
        return "leave_one_source_out" if self.leave_one_source_out else "in_distribution"


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
    def _transfer_needs_sources(self) -> Spec:
        rule = self.objective.rule
        if rule == "in_distribution":
            return self
        key = f"objective.{rule}"
        names = [m.name for m in getattr(self.dataset, "manifests", [])]
        if len(names) < 2:
            raise ValueError(f"{key}: needs a spec that merges several sources (dataset.manifests lists "
                             f"{len(names)}{': ' + names[0] if names else ''}), to train on some and validate on another")
        if rule == "holdout_source" and self.objective.holdout_source not in names:
            raise ValueError(f"{key}: {self.objective.holdout_source!r} is not one of the merged sources "
                             f"({', '.join(names)})")
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

    def held_out_sources(self) -> list[str]:
        """The sources the objective's rule holds out of training, one fold each: none in
        distribution, `holdout_source`, or every merged source in turn."""
        rule = self.objective.rule
        if rule == "in_distribution":
            return []
        return [self.objective.holdout_source] if rule == "holdout_source" else [m.name for m in self.dataset.manifests]

    def trainings_per_trial(self) -> int:
        """What one configuration costs: its repeats, times its sources under leave-one-source-out."""
        return self.repeats * max(len(self.held_out_sources()), 1)

    def content_hash(self) -> str:
        """Identifies what a run trained on and searched over; the trial budget is not part of it."""
        payload = self.model_dump(mode="json", exclude={"trials", "description", "ship"})
        # Keys added after studies were recorded count only when set, so those studies still resume.
        for key, unset in (("holdout_source", None), ("leave_one_source_out", False)):
            if payload["objective"].get(key) == unset:
                payload["objective"].pop(key)
        for source in payload["dataset"].get("manifests", []):  # where the folder is, not what it holds
            source.pop("path", None)
            source.pop("get", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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
