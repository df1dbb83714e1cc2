"""The vocabulary of a run, stated once: the tags that say what a run is, the params and metrics
it logs and which way each metric is better, and where its artefacts sit. Train, sweep, compare,
promote, report and export all read these names from here, so they cannot drift apart:
`better(metric)` is the one rule that ranks runs, whichever command does the ranking. How a
store is reached and searched is `workbench.track.store`'s job; this module imports nothing."""

from __future__ import annotations

import re
from typing import Iterable, Literal

# --- tags ------------------------------------------------------------------------------------------
ROLE = "workbench.role"              # one of ROLES
TRIAL = "workbench.trial"            # the Optuna trial number of a trial run
STATE = "workbench.state"            # one of STATES
SPEC = "workbench.spec"              # the spec's name
SPEC_HASH = "workbench.spec_hash"    # the spec's content hash (what was trained and searched)
ERROR = "workbench.error"            # why a run failed, one line
SEED = "workbench.seed"
DATASET_DIGEST = "workbench.dataset_digest"
SYNTHETIC = "workbench.synthetic"    # "true" when the data were generated, not photographed
GIT_COMMIT = "workbench.git_commit"
DEVICE = "workbench.device"
BEST_RUN = "workbench.best_run_id"   # on a sweep run: its best trial's run
SELECTED_BY = "workbench.selected_by"  # on a registered version: the metric that chose it
MODEL_RUN = "workbench.model_run_id"   # on an evaluation run: the run that trained the model
MODEL_URI = "workbench.model_uri"
REPEAT = "workbench.repeat"          # on a repeat run: its index within the trial
REPEATS = "workbench.repeats"        # on a trial with repeats: how many
FOLD = "workbench.fold"              # on a fold run: the source it held out
FOLDS = "workbench.folds"            # on a leave-one-source-out trial: the sources held out in turn
LEFT_OUT = "workbench.left_out"      # images of the data not used, and why
STUDY = "optuna.study_name"

ROLES = ("sweep", "trial", "run", "repeat", "fold", "evaluation", "matrix", "audit")
TRAINING_ROLES = ("trial", "run")    # runs whose model and test figures stand for a configuration
STATES = ("finished", "pruned", "failed", "interrupted")

# Experiments are marked as model training, so the MLflow UI opens them on runs and charts
# rather than on its GenAI (traces) view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# --- params a run logs besides its configuration ----------------------------------------------------
DATASET = "dataset"                  # the dataset's name
DATASET_DIGEST_PARAM = "dataset_digest"
CLASSES = "classes"                  # comma-separated, in the model's output order
OBJECTIVE_PARAM = "objective"        # the metric name the `objective` metric stands for
# Which validation images the objective is measured on: one of RULES.
RULE = "objective_rule"
RULES = ("in_distribution", "holdout_source", "leave_one_source_out")
HOLDOUT_SOURCE = "holdout_source"    # the source(s) held out, comma-separated, under the transfer rules
SPLIT_SIZES = ("images_train", "images_val", "images_test")
# Params that describe the data or the search, not the model: never shown as hyperparameters.
IN_DISTRIBUTION_SIZE = "images_val_in_distribution"
NOT_HYPERPARAMETERS = frozenset({CLASSES, DATASET_DIGEST_PARAM, OBJECTIVE_PARAM, RULE, HOLDOUT_SOURCE, *SPLIT_SIZES,
                                 IN_DISTRIBUTION_SIZE, "spec", "direction", "trials", "repeats"})

# --- metrics -----------------------------------------------------------------------------------------
OBJECTIVE = "objective"              # the value the sweep optimised (validation, never test)
# Under a transfer rule the objective is measured on a source the model did not train on; these
# sit beside it: the same metric on the training sources' own validation images, and how much
# worse the held-out source scores (positive: worse away from home).
IN_DISTRIBUTION = "objective_in_distribution"
TRANSFER_GAP = "transfer_gap"
DEFAULT_SELECTION = OBJECTIVE        # what promote and compare rank by unless told otherwise
PER_EPOCH = ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1_macro", "lr")
LATENCY = "latency_ms_batch1"
QUALITY = (OBJECTIVE, IN_DISTRIBUTION, TRANSFER_GAP, "test_accuracy", "test_f1_macro")  # then test_f1_<class>, ...
QUALITY_AFTER = ("test_f1_weighted", "test_roc_auc_ovr", "test_log_loss", "test_ece", "test_ece_calibrated",
                 "best_epoch", "overfit_gap")
COST = ("total_params", "trainable_params", "model_size_mb", "train_seconds", LATENCY,
        "latency_ms_per_image_batch32")
INTEGER_METRICS = ("total_params", "trainable_params", "frozen_params", "best_epoch", "epochs_run",
                   "train_images", "excluded_seen")
# Shown on a registered version beside the test metrics.
CARD_COST = ("overfit_gap", "total_params", "model_size_mb", LATENCY)

# Words (between underscores) that make smaller better; every other metric is a score.
_LOWER_WORDS = frozenset({"loss", "ece", "brier", "latency", "size", "params", "seconds", "gap", "issue", "issues"})
_LOWER_NAMES = frozenset({"p_vs_best", "p_holm"})
# Per-class scores end in a class name, which may hold any word ("hair_loss", "small_size"): they
# are scores whatever the class is called.
_SCORE_PREFIX = re.compile(r"^(?:[a-z]+_)?(?:precision|recall|f1)_")


def lower_is_better(metric: str, objective: str | None = None) -> bool:
    """Whether smaller values of `metric` are better. `objective` is the metric the run's
    `objective` stands for (its `objective` param); a group's `<m>_mean` follows `<m>`."""
    name = metric.removesuffix("_mean")
    if name in (OBJECTIVE, IN_DISTRIBUTION):
        return bool(objective) and lower_is_better(objective)
    if _SCORE_PREFIX.match(name):
        return False
    return name in _LOWER_NAMES or bool(_LOWER_WORDS & set(name.split("_")))


def better(metric: str, objective: str | None = None) -> Literal["max", "min"]:
    """Which way `metric` improves: the one rule every command ranks by."""
    return "min" if lower_is_better(metric, objective) else "max"


def direction(metric: str, objective: str | None = None) -> Literal["maximize", "minimize"]:
    """`better` in Optuna's words."""
    return "minimize" if lower_is_better(metric, objective) else "maximize"


def at_least_as_good(score: float, bar: float, metric: str, objective: str | None = None) -> bool:
    return score <= bar if lower_is_better(metric, objective) else score >= bar


def measured_on(rule: str | None, held_out: str | None) -> str:
    """Where a run's objective was measured, in words ("on the validation split"): what the model
    card and `workbench run` say of it."""
    if rule == "holdout_source":
        return f"on the validation images of {held_out}, a source held out of training"
    if rule == "leave_one_source_out":
        return (f"averaged over {(held_out or '').replace(',', ', ')}, each held out of training in turn and "
                "measured on its validation images")
    return "on the validation split"


def transfer_gap(objective: float, in_distribution: float, metric: str) -> float:
    """How much worse `metric` is away from the training sources than among them."""
    return objective - in_distribution if lower_is_better(metric) else in_distribution - objective


def eval_prefix(data: str) -> str:
    """`eval_<data>`: what an evaluation run's metrics start with instead of `test` (its
    `eval_<data>_accuracy` is a score on dataset <data>), so no view of the UI mixes a score on
    other data with a trial's own test score."""
    return "eval_" + re.sub(r"[^A-Za-z0-9_.-]", "_", data)


def objective_of(params: Iterable[str | None]) -> str | None:
    """The single metric that a set of runs' `objective` params name, or None when they differ."""
    names = {p for p in params if p}
    return next(iter(names)) if len(names) == 1 else None


# --- artefacts ---------------------------------------------------------------------------------------
class Artifacts:
    """Where things sit inside a run's artefact store."""

    MODEL = "model"
    LABELS = "model_labels.json"
    ERROR = "error.txt"
    SPEC = "spec.json"
    MANIFEST = "data/manifest.csv"
    CLASS_COUNTS = "data/class_counts.csv"
    SOURCE_COUNTS = "data/class_counts_by_source.csv"
    EVALUATION = "evaluation"
    FIGURES = "evaluation/figures.html"
    PREDICTIONS = "evaluation/test_predictions.csv"
    CONFUSION = "evaluation/confusion_matrix.json"
    REPORT = "evaluation/classification_report.json"
    REPORT_TEXT = "evaluation/classification_report.txt"
    HISTORY = "evaluation/history.json"
    MISTAKES = "evaluation/most_confident_mistakes.csv"
    RELIABILITY = "evaluation/reliability_diagram.png"
    LABEL_ISSUES = "evaluation/label_issues.csv"
    LABEL_ISSUES_GRID = "evaluation/label_issues.png"
    MODEL_CARD = "model_card.md"
    MODEL_CARD_JSON = "model_card.json"
    AUDIT = "audit/label_issues.csv"
    AUDIT_PAGE = "audit/label_issues.html"
    SWEEP_TRIALS = "sweep/trials.csv"
    SWEEP_PARETO = "sweep/pareto_front.csv"
    SWEEP_PLOTS = "sweep/study.html"
    SWEEP_REPORT = "report/report.html"
    MATRIX = "matrix/matrix.csv"
    TFLITE = "tflite"
