"""The tracking store: how a client on it is made (a local SQLite file created and checked on
first use, a server or database named as such when it cannot answer), how experiments are
created as model-training experiments, and how runs are found by what a user types
(`--experiment`, `--sweep ID|latest`). MLflow is imported inside the functions that talk to a
store, so importing this module is free."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from workbench import paths
from workbench.errors import TrackingError, WorkbenchError, first_line, masked, scrub
from workbench.vocabulary import EXPERIMENT_KIND, ROLE

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's INFO lines (database migrations, artifact uploads) are noise in a command's output.
logging.getLogger("mlflow").setLevel(logging.WARNING)

# --- the tracking store ------------------------------------------------------------------------------
def tracking_uri(uri: str | None = None) -> str:
    return uri or paths.default_tracking_uri()



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
