"""What a run records, stated once: the tags that say what a run is, the params and metrics it
logs and which way each metric is better, where its artefacts sit, and how a tracking store is
reached and searched ("the latest sweep"). Train, sweep, compare, promote, report and export all
read these names from here, so they cannot drift apart: `better(metric)` is the one rule that
ranks runs, whichever command does the ranking.

MLflow is imported inside the functions that talk to a store, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal
from urllib.parse import urlparse, urlunparse

from workbench import paths
from workbench.errors import TrackingError, WorkbenchError, first_line

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's INFO lines (database migrations, artifact uploads) are noise in a command's output.
logging.getLogger("mlflow").setLevel(logging.WARNING)

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
LEFT_OUT = "workbench.left_out"      # images of the data not used, and why
STUDY = "optuna.study_name"

ROLES = ("sweep", "trial", "run", "repeat", "evaluation", "matrix")
TRAINING_ROLES = ("trial", "run")    # runs whose model and test figures stand for a configuration
STATES = ("finished", "pruned", "failed")

# Experiments are marked as model training, so the MLflow UI opens them on runs and charts
# rather than on its GenAI (traces) view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# --- params a run logs besides its configuration ----------------------------------------------------
DATASET = "dataset"                  # the dataset's name
DATASET_DIGEST_PARAM = "dataset_digest"
CLASSES = "classes"                  # comma-separated, in the model's output order
OBJECTIVE_PARAM = "objective"        # the metric name the `objective` metric stands for
SPLIT_SIZES = ("images_train", "images_val", "images_test")
# Params that describe the data or the search, not the model: never shown as hyperparameters.
NOT_HYPERPARAMETERS = frozenset({CLASSES, DATASET_DIGEST_PARAM, OBJECTIVE_PARAM, *SPLIT_SIZES, "spec",
                                 "direction", "trials", "repeats"})

# --- metrics -----------------------------------------------------------------------------------------
OBJECTIVE = "objective"              # the value the sweep optimised (validation, never test)
DEFAULT_SELECTION = OBJECTIVE        # what promote and compare rank by unless told otherwise
PER_EPOCH = ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1_macro", "lr")
LATENCY = "latency_ms_batch1"
QUALITY = (OBJECTIVE, "test_accuracy", "test_f1_macro")      # then test_f1_<class>, then QUALITY_AFTER
QUALITY_AFTER = ("test_f1_weighted", "test_roc_auc_ovr", "test_log_loss", "test_ece", "best_epoch", "overfit_gap")
COST = ("total_params", "trainable_params", "model_size_mb", "train_seconds", LATENCY,
        "latency_ms_per_image_batch32")
INTEGER_METRICS = ("total_params", "trainable_params", "frozen_params", "best_epoch", "epochs_run",
                   "train_images", "excluded_seen")
# Shown on a registered version beside the test metrics.
CARD_COST = ("overfit_gap", "total_params", "model_size_mb", LATENCY)

# Words (between underscores) that make smaller better; every other metric is a score.
_LOWER_WORDS = frozenset({"loss", "ece", "latency", "size", "params", "seconds", "gap"})
_LOWER_NAMES = frozenset({"p_vs_best", "p_holm"})
# Per-class scores end in a class name, which may hold any word ("hair_loss", "small_size"): they
# are scores whatever the class is called.
_SCORE_PREFIX = re.compile(r"^(?:[a-z]+_)?(?:precision|recall|f1)_")


def lower_is_better(metric: str, objective: str | None = None) -> bool:
    """Whether smaller values of `metric` are better. `objective` is the metric the run's
    `objective` stands for (its `objective` param); a group's `<m>_mean` follows `<m>`."""
    name = metric.removesuffix("_mean")
    if name == OBJECTIVE:
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
    SWEEP_TRIALS = "sweep/trials.csv"
    SWEEP_PARETO = "sweep/pareto_front.csv"
    SWEEP_PLOTS = "sweep/study.html"
    SWEEP_REPORT = "report/report.html"
    MATRIX = "matrix/matrix.csv"
    TFLITE = "tflite"


# --- the tracking store ------------------------------------------------------------------------------
def tracking_uri(uri: str | None = None) -> str:
    return uri or paths.default_tracking_uri()


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<secret>[^@\s]+)@")


def scrub(text: str) -> str:
    """Any text with the passwords of URLs in it replaced by *** (error messages quote URLs)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def masked(url: str) -> str:
    """A storage or tracking URL as it may be shown or logged: any password replaced by ***."""
    try:
        parsed = urlparse(url)
    except ValueError:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))


def connect(uri: str | None = None) -> MlflowClient:
    """A client on the store at `uri` (default: $MLFLOW_TRACKING_URI or the local SQLite file),
    also made the process's current store. A local SQLite database's folder is created on first
    use; the old file store, which MLflow 3 refuses, is named as such."""
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    # Importing mlflow configures its loggers at INFO: quiet them again.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = tracking_uri(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite(db)
        # MLflow creates and migrates a new database's tables on first use; two processes doing
        # that at once collide ("index already exists"), so the first use is taken in turn.
        with locked(db.with_name(f".{db.name}.lock")):
            client = MlflowClient(uri)
            _ask(lambda: client.search_experiments(max_results=1), uri)
        mlflow.set_tracking_uri(uri)
        return client
    elif parsed.scheme in ("", "file"):
        raise TrackingError(f"--tracking-uri {masked(uri)}: MLflow 3 no longer accepts a file store; "
                            "use sqlite:///path/to/mlflow.db or an http(s):// server")
    elif parsed.scheme not in ("http", "https", "postgresql", "mysql", "mssql", "databricks") \
            and not parsed.scheme.startswith(("postgresql+", "mysql+")):
        raise TrackingError(f"--tracking-uri {masked(uri)}: unknown scheme {parsed.scheme!r}; use sqlite:///FILE, "
                            "postgresql://..., or http(s)://HOST:PORT")
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on `path` (created if missing): processes of one machine that would
    create the same thing (a database's tables, a dataset) take turns, the later ones finding
    it made."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_sqlite(db: Path) -> None:
    """A file that is not an SQLite database, or a damaged one, must never be silently replaced
    by a fresh store nor fail halfway through a sweep: it is one line, before anything runs."""
    import sqlite3

    if not (db.is_file() and db.stat().st_size):
        return
    advice = "move it aside to start a new store, or restore it from a backup"
    with db.open("rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise TrackingError(f"{db}: not an SQLite database (corrupted?); {advice}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as connection:
            verdict = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as err:
        verdict = str(err)
    if verdict != "ok":
        raise TrackingError(f"{db}: a damaged SQLite database ({verdict}); {advice}")


def artifact_root(uri: str) -> str | None:
    """Local SQLite stores keep artefacts beside the database; servers decide for themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "artifacts").resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, uri: str | None = None) -> str:
    """The experiment's id, created (as a model-training experiment) on first use."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(uri)
    found = _ask(lambda: client.get_experiment_by_name(name), uri)
    if found is None:
        root = artifact_root(uri)
        try:
            experiment_id = client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
        except MlflowException:
            found = client.get_experiment_by_name(name)  # another worker created it meanwhile
            if found is None:
                raise
            experiment_id = found.experiment_id
    else:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        experiment_id = found.experiment_id
    if found is None or found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return experiment_id


def _ask(question, uri: str):
    """The first question put to a store: a store that cannot answer (unreachable, corrupted,
    another program's database) is one line naming it, never a traceback or a fresh store."""
    from mlflow.exceptions import MlflowException

    try:
        return question()
    except MlflowException as err:
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(f"--tracking-uri {masked(uri)}: the tracking store cannot be used "
                            f"({scrub(first_line(err))[:200]})") from None
    except Exception as err:  # SQLAlchemy and HTTP errors surface as their own types
        raise TrackingError(f"--tracking-uri {masked(uri)}: the tracking store cannot be used "
                            f"({type(err).__name__}: {scrub(first_line(err))[:200]})") from None


def find_experiment(client: MlflowClient, name: str, uri: str | None = None, option: str = "--experiment"):
    """An existing experiment, or a one-line error listing the ones there are."""
    found = _ask(lambda: client.get_experiment_by_name(name), tracking_uri(uri))
    if found is None or found.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise WorkbenchError(f"{option} {name}: no such experiment in {masked(tracking_uri(uri))} "
                             f"(known: {', '.join(known) or 'none; run a sweep first'})")
    return found


def latest_sweep(client: MlflowClient, experiment: str, uri: str | None = None) -> str:
    """The run id of the experiment's most recently started sweep."""
    found = find_experiment(client, experiment, uri)
    runs = client.search_runs([found.experiment_id], f"tags.`{ROLE}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise WorkbenchError(f"experiment {experiment} has no sweep runs (run `workbench sweep {experiment}` first)")
    return runs[0].info.run_id


def sweep_of(client: MlflowClient, run_id: str, uri: str | None = None):
    """The sweep run `run_id`, checked to be one."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise WorkbenchError(f"--sweep {run_id}: no such run in {masked(tracking_uri(uri))}") from None
    role = run.data.tags.get(ROLE)
    if role != "sweep":
        raise WorkbenchError(f"--sweep {run_id}: run is {'a ' + role if role else 'not a workbench'} run, not a "
                             "sweep (pass the sweep's parent run id)")
    return run
