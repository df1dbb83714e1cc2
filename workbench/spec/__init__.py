"""The experiment registry: YAML specs in `experiments/` declare what to train and what to search.

A spec names a dataset, a split, a search space over the registry axes (backbone, balance,
augmentation, optimizer, schedule) and the hyperparameters, an objective, a trial budget and a
seed. Every value in `params` is either fixed (`epochs: 3`), a list of choices (`backbone:
[simple_cnn, vgg16]`) or a range (`learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}`).
Specs state only what differs from the defaults. Loading validates everything with pydantic and
turns any problem into a one-line `SpecError` naming the file and the field path; this package
never imports TensorFlow, so listing and validating specs is instant.

Four rooms: `registry` (the axes' tables, each entry with its behaviour), `space` (the keys of
`params`, their dimensions and one configuration of them), `schema` (the rest of a spec) and
`loading` (YAML, `--set`, `--smoke`). This module re-exports what the other stages use.
"""

from workbench.spec.loading import (
    SMOKE_BALANCE_TARGET,
    SMOKE_IMAGE_SIZE,
    SMOKE_PARAMS,
    SMOKE_TRIALS,
    apply_override,
    list_specs,
    load,
    resolve_path,
    smoke,
    validate,
)
from workbench.spec.registry import (
    ADAPTERS,
    AUGMENTATIONS,
    BACKBONES,
    BALANCES,
    MIN_IMAGE_SIZE,
    OBJECTIVE_METRICS,
    OPTIMIZERS,
    SCHEDULES,
    SWITCHES,
    register,
)
from workbench.spec.schema import (
    ManifestData,
    ManifestSource,
    Objective,
    Ship,
    Spec,
    Split,
    SyntheticData,
    describe_validation_error,
)
from workbench.spec.space import (
    PARAMETERS,
    Choice,
    Dim,
    Fixed,
    Params,
    Range,
    TrialConfig,
    default_choice,
    first_config,
    grid_values,
    is_searched,
    sample_config,
    single_config,
    suggest,
)

__all__ = ['SMOKE_BALANCE_TARGET', 'SMOKE_IMAGE_SIZE', 'SMOKE_PARAMS', 'SMOKE_TRIALS', 'ADAPTERS', 'AUGMENTATIONS', 'BACKBONES', 'BALANCES', 'Choice', 'Dim', 'Fixed', 'MIN_IMAGE_SIZE', 'ManifestData', 'ManifestSource', 'OBJECTIVE_METRICS', 'OPTIMIZERS', 'Objective', 'PARAMETERS', 'Params', 'Range', 'SCHEDULES', 'SWITCHES', 'Ship', 'Spec', 'Split', 'SyntheticData', 'TrialConfig', 'apply_override', 'default_choice', 'describe_validation_error', 'first_config', 'grid_values', 'is_searched', 'list_specs', 'load', 'register', 'resolve_path', 'sample_config', 'single_config', 'smoke', 'suggest', 'validate']
