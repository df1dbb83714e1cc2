"""The tracking store: how a client on it is made (a local SQLite file created and checked on
first use, a server or database named as such when it cannot answer), how experiments are
created as model-training experiments, and how runs are found by what a user types
(`--experiment`, `--sweep ID|latest`). MLflow is imported inside the functions that talk to a
store, so importing this module is free."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import urlparse

from workbench.errors import TrackingError, WorkbenchError, first_line, masked, scrub
from workbench.vocabulary import EXPERIMENT_KIND, ROLE
from workbench.workspace import locked

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's INFO lines (database migrations, artifact uploads) are noise in a command's output.
logging.getLogger("mlflow").setLevel(logging.WARNING)

# --- the tracking store ------------------------------------------------------------------------------



def connect(uri: str) -> MlflowClient:
    """A client bound to the store at `uri` (its model registry too); nothing process-wide is
    changed, so clients on two stores live side by side. A local SQLite database's folder is
    created on first use; the old file store, which MLflow 3 refuses, is named as such."""
    from mlflow.tracking import MlflowClient

    # Importing mlflow configures its loggers at INFO: quiet them again.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        _check_sqlite(db)
        # MLflow creates and migrates a new database's tables on first use; two processes doing
        # that at once collide ("index already exists"), so the first use is taken in turn.
        with locked(db.with_name(f".{db.name}.lock")):
            client = MlflowClient(uri, registry_uri=uri)
            _ask(lambda: client.search_experiments(max_results=1), uri)
        return client
    elif parsed.scheme in ("", "file"):
        raise TrackingError(f"--tracking-uri {masked(uri)}: MLflow 3 no longer accepts a file store; "
                            "use sqlite:///path/to/mlflow.db or an http(s):// server")
    elif parsed.scheme not in ("http", "https", "postgresql", "mysql", "mssql", "databricks") \
            and not parsed.scheme.startswith(("postgresql+", "mysql+")):
        raise TrackingError(f"--tracking-uri {masked(uri)}: unknown scheme {parsed.scheme!r}; use sqlite:///FILE, "
                            "postgresql://..., or http(s)://HOST:PORT")
    return MlflowClient(uri, registry_uri=uri)


@contextlib.contextmanager
def fluent(uri: str):
    """For the body, MLflow's process-wide store is `uri`: the few MLflow functions that exist only
    in that form (logging a model into a run, registering a version) run there; afterwards the
    previous store is back, and so is MLflow's copy of it in the environment, which it rewrites."""
    import os

    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri,
             os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved[0], saved[1]
        for name, value in (("MLFLOW_TRACKING_URI", saved[2]), ("MLFLOW_REGISTRY_URI", saved[3])):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created (as a model-training experiment) on first use."""
    from mlflow.exceptions import MlflowException

    uri = client.tracking_uri
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


def find_experiment(client: MlflowClient, name: str, option: str = "--experiment"):
    """An existing experiment, or a one-line error listing the ones there are."""
    found = _ask(lambda: client.get_experiment_by_name(name), client.tracking_uri)
    if found is None or found.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise WorkbenchError(f"{option} {name}: no such experiment in {masked(client.tracking_uri)} "
                             f"(known: {', '.join(known) or 'none; run a sweep first'})")
    return found


def latest_sweep(client: MlflowClient, experiment: str) -> str:
    """The run id of the experiment's most recently started sweep."""
    found = find_experiment(client, experiment)
    runs = client.search_runs([found.experiment_id], f"tags.`{ROLE}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise WorkbenchError(f"experiment {experiment} has no sweep runs (run `workbench sweep {experiment}` first)")
    return runs[0].info.run_id


def sweep_of(client: MlflowClient, run_id: str):
    """The sweep run `run_id`, checked to be one."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise WorkbenchError(f"--sweep {run_id}: no such run in {masked(client.tracking_uri)}") from None
    role = run.data.tags.get(ROLE)
    if role != "sweep":
        raise WorkbenchError(f"--sweep {run_id}: run is {'a ' + role if role else 'not a workbench'} run, not a "
                             "sweep (pass the sweep's parent run id)")
    return run


# --- which runs a command is about ----------------------------------------------------------------
# Sweep parents, repeats and folds (their trial stands for them), evaluations and matrices are not
# configurations.
NOT_CONFIGURATIONS = ("sweep", "repeat", "fold", "evaluation", "matrix")


@dataclass(frozen=True)
class Scope:
    """The runs a command is about, as the user named them: every run of an experiment, or one
    sweep's trials (`--sweep ID`, or `--sweep latest` with `--experiment`)."""

    experiment: str
    experiment_id: str
    sweep_run_id: str | None

    @property
    def description(self) -> str:
        """"tiny, sweep run 1a2b..." or "experiment tiny": for titles and error messages."""
        return f"{self.experiment}, sweep run {self.sweep_run_id}" if self.sweep_run_id else f"experiment {self.experiment}"


def scope(client: MlflowClient, *, experiment: str | None = None, sweep: str | None = None) -> Scope:
    """The one way every command resolves `--experiment` and `--sweep`: each checked against the
    store, `latest` read as the experiment's newest sweep, and a sweep of another experiment refused."""
    if not experiment and not sweep:
        raise WorkbenchError("choose the runs: --experiment NAME (all its runs) or --sweep RUN_ID (one sweep's trials)")
    if sweep == "latest" and not experiment:
        raise WorkbenchError("--sweep latest needs --experiment NAME to say whose latest sweep")
    experiment_id = find_experiment(client, experiment).experiment_id if experiment else None
    if sweep == "latest":
        sweep = latest_sweep(client, experiment)
    if sweep:
        parent = sweep_of(client, sweep)
        name = client.get_experiment(parent.info.experiment_id).name
        if experiment and name != experiment:
            raise WorkbenchError(f"--sweep {sweep}: that sweep belongs to experiment {name}, not {experiment}")
        experiment, experiment_id = name, parent.info.experiment_id
    return Scope(experiment, experiment_id, sweep)


def configuration_runs(client: MlflowClient, where: Scope, clauses: Sequence[str] = ()) -> list:
    """The runs of a scope that each stand for one trained configuration (trials and single runs),
    newest first, narrowed by MLflow filter `clauses` (all must hold)."""
    query = [f"tags.mlflow.parentRunId = '{where.sweep_run_id}'"] if where.sweep_run_id else []
    runs, token = [], None
    while True:
        page = client.search_runs([where.experiment_id], " AND ".join([*query, *clauses]),
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        runs.extend(r for r in page if r.data.tags.get(ROLE) not in NOT_CONFIGURATIONS)
        token = page.token
        if not token:
            return runs
