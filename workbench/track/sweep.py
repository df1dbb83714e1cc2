"""A sweep: an Optuna study over a spec's search space, tracked as one MLflow parent run with a
nested child run per trial. `run_sweep` is the one way a sweep runs, in this process or in K
worker processes: it prepares the spec's data and checks it for leaks, then opens (or resumes)
the study and runs what is missing; `Workspace.sweep` (the CLI's, a notebook's) adds the
leaderboard and the spec's `ship:` step. Everything it reads or writes is the workspace's it is
given; worker processes receive that workspace in their environment.

We own the Optuna-to-MLflow link (optuna-integration's MLflowCallback is deprecated): the study
remembers its parent run id in its user attributes, each trial records its run id the moment the
run starts, and every trial is the same `tracked_run` a single `workbench run` uses. A sweep
wastes and loses nothing:

- `--trials N` is the study's total: rerunning the same command after an interruption runs only
  what is missing, under the same parent run, and several workers (processes or machines sharing
  one storage URL) stop together at N;
- a resumed (or second) worker continues the search instead of replaying it: its sampler's seed
  comes from the study's state, and a configuration identical to one already run is drawn again
  rather than trained twice (grid sweeps excepted, where each point runs once);
- weak trials are pruned on the validation objective every epoch;
- a trial that raises is recorded as failed with its reason, and the sweep goes on;
- a worker that dies (kill -9, lost machine) is noticed: on its own machine as soon as the
  `--workers` coordinator sees it exit or a sweep next opens the study (its process is gone),
  elsewhere when its heartbeats stop; its trial is marked failed in Optuna, its MLflow run
  KILLED, and its configuration is retried once, first.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from workbench import errors, vocabulary
from workbench.data.dataset import folds, prepare, prepare_checked
from workbench.errors import SpecError, TrackingError, WorkbenchError, first_line
from workbench.spec import Range, Spec, grid_values, is_searched, sample_config
from workbench.track import store, ui
from workbench.track.progress import (  # noqa: F401 (Progress and the attributes are re-exported)
    BUDGET_ATTR,
    ERROR_ATTR,
    KILLED_ATTR,
    SKIPPED_ATTR,
    Clock,
    Progress,
    SweepListener,
    counted,
    tally,
)
from workbench.track.run import tracked_run
from workbench.vocabulary import Artifacts
from workbench.workspace import Workspace, locked

# Study and trial attributes: how a study finds its MLflow side and its trials' fates.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
SPEC_HASH_ATTR = "spec_hash"
RUN_ATTR = "mlflow_run_id"
WORKER_ATTR = "worker"          # "host:pid" of the process running the trial
RETRY_ATTR = "retry_of"         # an enqueued retry of a killed trial's configuration
ENQUEUED_ATTR = "enqueued"      # a configuration chosen on purpose (spec enqueue, grid, retry)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# Failed trials do not count towards the budget; a sweep whose every trial fails must still end.
MAX_FAILURES_IN_A_ROW = 3
# Draws of a configuration already run before the space is taken to have nothing new to offer.
MAX_REDRAWS = 10
LOST_WORKER = "worker lost: no heartbeat (killed or machine gone)"
# Seconds between refreshes of the sweep run's Optuna plots while trials run (always at the end).
PLOTS_EVERY = 60

# Optuna logs every caught trial failure with its traceback; the progress lines already say why.
optuna.logging.set_verbosity(optuna.logging.ERROR)
# Heartbeats are "experimental" in Optuna 5 but are exactly the documented way to catch dead workers.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)


def heartbeat() -> tuple[int, int]:
    """Seconds between a running trial's heartbeats, and of silence after which it counts as dead."""
    interval = int(os.environ.get("WORKBENCH_HEARTBEAT", "20"))
    return interval, int(os.environ.get("WORKBENCH_HEARTBEAT_GRACE", str(3 * interval)))


class TrialFailure(Exception):
    """A trial broke (NaN loss, out of memory, an unreadable image): Optuna records it as failed
    and the sweep goes on. Spec, data and weights problems are WorkbenchErrors instead, and stop
    the sweep, since every later trial would fail the same way."""


class BudgetReached(Exception):
    """Another worker took the last trial of the budget between our count and our ask."""


class Redraw(Exception):
    """The sampler proposed a configuration already run; the trial is dropped and another drawn."""


# --- what a trial's record says about it --------------------------------------------------------

def was_killed(trial: FrozenTrial) -> bool:
    """Failed because its process was interrupted or lost, not because of its configuration."""
    if trial.state != TrialState.FAIL:
        return False
    attrs = trial.user_attrs
    if KILLED_ATTR in attrs:
        return True
    # Optuna's heartbeat check fails a stale trial without a word: no reason of ours recorded.
    return not ({ERROR_ATTR, SKIPPED_ATTR, BUDGET_ATTR} & set(attrs))


@dataclass(frozen=True)
class Found:
    """What a sweep found in its study when it opened: the resume line's figures."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    killed: int = 0
    running: int = 0      # other workers' trials, still alive
    retries: int = 0      # killed configurations enqueued to run first

    @property
    def any(self) -> bool:
        return bool(self.complete or self.pruned or self.failed or self.killed or self.running)

    def line(self, study: str, total: int) -> str:
        parts = [f"{n} {what}" for n, what in ((self.complete, "complete"), (self.pruned, "pruned"),
                                               (self.failed, "failed"),
                                               (self.killed, "killed by a lost worker or an interrupt"),
                                               (self.running, "running in other workers")) if n]
        to_run = max(total - self.complete - self.pruned - self.running, 0)
        retry = f" ({self.retries} killed configuration{'s' if self.retries > 1 else ''} retried first)" \
            if self.retries else ""
        return f"resuming {study}: {', '.join(parts)}; {to_run} to run{retry}"


def found_in(study: optuna.Study, retries: int = 0) -> Found:
    counts = tally(study)
    killed = sum(was_killed(t) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if counted(t))
    return Found(complete=counts["complete"], pruned=counts["pruned"], failed=counts["fail"] - killed,
                 killed=killed, running=counts["running"], retries=retries)


# --- the study ----------------------------------------------------------------------------------

def make_sampler(spec: Spec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded from the spec's seed plus `offset`: 0 for a fresh study in a
    single process (so a fresh sweep is reproducible), the study's state and the worker's index
    otherwise, so a resumed or second worker continues the search rather than replaying it."""
    seed = spec.seed + offset
    if spec.sampler in ("random", "grid"):  # the grid itself is enqueued: see grid_points
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid_points(spec: Spec) -> list[dict]:
    """Every combination of the searched values, in the spec's order. Enqueued rather than left to
    Optuna's GridSampler, which ignores enqueued trials and would run the baseline twice."""
    space = {name: grid_values(dim) for name, dim in spec.params.dims().items() if is_searched(dim)}
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def space_size(spec: Spec) -> float:
    """How many distinct configurations the space holds (infinite with a continuous range)."""
    size = 1.0
    for dim in spec.params.dims().values():
        if isinstance(dim, Range) and not (dim.integer or dim.step):
            return math.inf
        size *= len(grid_values(dim))
    return size


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    if spec.pruner == "none" or spec.objective.latency:  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=spec.pruning.startup_trials,
                                       n_warmup_steps=spec.pruning.warmup_epochs)


def make_storage(url: str, on_stale: Callable | None = None):
    """RDB storages (SQLite, PostgreSQL, MySQL) get heartbeats, so a dead worker's trial is
    noticed; SQLite also gets a long busy timeout, so a few local workers can share one file."""
    if url.startswith(("sqlite", "postgresql", "mysql")):
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        interval, grace = heartbeat()

        def storage():
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval,
                                              grace_period=grace, heartbeat_stale_trial_callback=on_stale)

        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            store._check_sqlite(db)
            with locked(db.with_name(f".{db.name}.lock")):  # table creation, one process at a time
                return storage()
        return storage()
    if url.startswith("journal:///"):
        path = Path(url.removeprefix("journal:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    raise TrackingError(f"--storage {errors.masked(url)}: use sqlite:///FILE, postgresql://..., mysql://... "
                        "or journal:///FILE")


def worker_index() -> int:
    return int(os.environ.get("WORKBENCH_WORKER_INDEX", "0"))


def open_study(spec: Spec, storage: str, study_name: str | None = None,
               tracking_uri: str | None = None) -> optuna.Study:
    name = study_name or spec.name
    directions = [spec.objective.direction] + (["minimize"] if spec.objective.latency else [])

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        lost(study, trial, tracking_uri)

    try:
        study = optuna.create_study(
            study_name=name, storage=make_storage(storage, on_stale if tracking_uri else None),
            load_if_exists=True, directions=directions, sampler=make_sampler(spec), pruner=make_pruner(spec))
    except ValueError as err:  # e.g. an existing study with other directions
        raise SpecError(f"study {name} in {errors.masked(storage)}: {errors.scrub(str(err))}") from None
    except WorkbenchError:
        raise
    except Exception as err:  # storage unreachable or not a database Optuna can use
        raise TrackingError(f"--storage {errors.masked(storage)}: cannot open Optuna storage "
                            f"({type(err).__name__}: {errors.scrub(first_line(err))[:200]})") from None
    recorded = study.user_attrs.get(SPEC_HASH_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_HASH_ATTR, spec.content_hash())
        points = [*spec.enqueue, *(grid_points(spec) if spec.sampler == "grid" else [])]
        for point in points:  # once, when the study is created
            study.enqueue_trial(point, skip_if_exists=True, user_attrs={ENQUEUED_ATTR: True})
    elif recorded != spec.content_hash():
        raise SpecError(f"study {name} in {errors.masked(storage)} was run with a different version of spec "
                        f"{spec.name} (hash {recorded}, now {spec.content_hash()}): pass --study NEW_NAME to start "
                        "a new study, or restore the spec to resume the old one")
    started = len(study.get_trials(deepcopy=False))
    if started or worker_index():
        study.sampler = make_sampler(spec, offset=1 + started + 1000 * worker_index())
    return study


def lost(study: optuna.Study, trial: FrozenTrial, tracking_uri: str | None) -> None:
    """A trial whose worker died: its MLflow run ends KILLED with the reason, and its
    configuration is enqueued to run again, once."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id and tracking_uri:
        client = MlflowClient(tracking_uri)
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, vocabulary.STATE, "failed")
                client.set_tag(run_id, vocabulary.ERROR, trial.user_attrs.get(KILLED_ATTR, LOST_WORKER))
                client.set_terminated(run_id, status="KILLED")
        except mlflow.exceptions.MlflowException as err:
            log.warning("could not end lost run %s: %s", run_id, err)
    retry(study, trial)


def retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Enqueue a killed trial's configuration, unless it is a retry itself or was retried."""
    if RETRY_ATTR in trial.user_attrs or not trial.params:
        return False
    if any(t.user_attrs.get(RETRY_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number, ENQUEUED_ATTR: True})
    return True


def _alive_here(worker: str) -> bool | None:
    """Whether the process `host:pid` is alive; None when it ran on another machine."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(study: optuna.Study, tracking_uri: str) -> int:
    """Fail the running trials whose worker is gone (dead on this machine, or silent past the
    heartbeat grace elsewhere), end their runs and enqueue their retries; then enqueue a retry
    for every killed trial not yet retried (an interrupted sweep's last trial, say). Returns how
    many retries wait to run."""
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR, "")
        if worker and _alive_here(worker) is False:
            try:
                storage.set_trial_user_attr(trial._trial_id, KILLED_ATTR, f"{LOST_WORKER} (pid gone)")
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            lost(study, storage.get_trial(trial._trial_id), tracking_uri)
    optuna.storages.fail_stale_trials(study)  # runs `lost` through the storage's callback
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if was_killed(trial):
            retry(study, trial)
    return sum(RETRY_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def ensure_parent_run(study: optuna.Study, client: MlflowClient, experiment_id: str, spec: Spec, storage: str) -> str:
    """The sweep's MLflow run: created with the study, reopened when the sweep resumes."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            save_view(client, experiment_id, run_id, spec)
            return run_id
        except mlflow.exceptions.MlflowException:
            log.warning("parent run %s is gone; starting a new one", run_id)
    run = client.create_run(experiment_id, run_name=f"{study.study_name}-sweep", tags={
        vocabulary.ROLE: "sweep", vocabulary.SPEC: spec.name, vocabulary.SPEC_HASH: spec.content_hash(),
        vocabulary.STUDY: study.study_name})
    client.log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, str(v)) for k, v in {
            "spec": spec.name, vocabulary.OBJECTIVE_PARAM: spec.objective.metric, "direction": spec.objective.direction,
            "latency_objective": spec.objective.latency, "sampler": spec.sampler, "pruner": spec.pruner,
            "seed": spec.seed, "repeats": spec.repeats,
            # Where the study lives, for whoever resumes it; never with its password.
            "storage": errors.masked(storage)}.items()])
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), Artifacts.SPEC)
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    save_view(client, experiment_id, run.info.run_id, spec)
    return run.info.run_id


def save_view(client: MlflowClient, experiment_id: str, parent_run_id: str, spec: Spec) -> None:
    """The MLflow UI view the printed link opens: this sweep's trials, its searched axes as columns.
    A convenience: a store that refuses the tag (an old server, a length limit) costs the view,
    never the sweep."""
    searched = [name for name, dim in spec.params.dims().items() if is_searched(dim)]
    try:
        ui.save_sweep_view(client, experiment_id, parent_run_id, spec.objective.metric, searched,
                           transfer=spec.objective.rule != "in_distribution")
    except mlflow.exceptions.MlflowException as err:
        log.warning("the MLflow UI view of sweep run %s was not saved: %s", parent_run_id, first_line(err))


def count(study: optuna.Study, states=DONE) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


# --- running trials -----------------------------------------------------------------------------

@dataclass
class Sweep:
    """An open sweep: the study, its parent run, where both live, and what it found there."""

    ws: Workspace
    spec: Spec
    study: optuna.Study
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    found: Found = field(default_factory=Found)


@dataclass(frozen=True)
class SweepResult:
    study: optuna.Study
    parent_run_id: str
    experiment_id: str
    ran: int              # trials this call finished (in every worker it started)
    found: Found          # what was in the study before
    total: int            # the study's budget of trials


OnTrial = Callable[[optuna.Study, FrozenTrial], None]


def open_sweep(ws: Workspace, spec: Spec, *, study_name: str | None = None) -> Sweep:
    client = store.connect(ws.tracking_uri)
    experiment_id = store.ensure_experiment(client, spec.name)
    study = open_study(spec, ws.storage, study_name, ws.tracking_uri)
    retries = reap(study, ws.tracking_uri)
    parent = ensure_parent_run(study, client, experiment_id, spec, ws.storage)
    return Sweep(ws, spec, study, client, experiment_id, parent, found_in(study, retries))


def pruning_reporter(trial: optuna.Trial, metric: str):
    """Reports the objective to Optuna after every epoch and stops the trial when the pruner says so."""
    import keras

    def on_epoch_end(epoch, logs):
        trial.report(float(logs[metric]), step=epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _already_run(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """A finished or running trial with exactly this trial's parameters, if any."""
    for other in study.get_trials(deepcopy=False, states=LIVE):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


class Worker:
    """Runs trials of one open sweep in this process until the study holds `total` finished ones.
    Any number of workers (processes, machines) may work on one study at once."""

    def __init__(self, sweep: Sweep, total: int, on_trial: OnTrial | None = None):
        self.sweep, self.total, self.on_trial = sweep, total, on_trial
        self.data = prepare(sweep.spec, sweep.ws)
        self.finite = space_size(sweep.spec)
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self.mine: list[int] = []   # this process's trials, in order (other workers' interleave)
        self.budget_reached, self.redraws = False, 0
        self.plotted = time.monotonic()

    def objective(self, trial: optuna.Trial):
        errors.raise_if_interrupted()   # an interrupt swallowed during the last trial ends the sweep here
        sweep, spec, study = self.sweep, self.sweep.spec, self.sweep.study
        self.mine.append(trial.number)
        # Several workers may have asked at once: only the first `total` live trials run.
        ahead = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < trial.number]
        if len(ahead) >= self.total:
            self.budget_reached = True
            trial.set_user_attr(BUDGET_ATTR, "reached by other workers; never ran")
            raise BudgetReached(f"trial {trial.number}: the study already has {self.total} trials")
        trial.set_user_attr(WORKER_ATTR, self.me)
        config = sample_config(spec, trial)
        twin = None if trial.user_attrs.get(ENQUEUED_ATTR) or spec.sampler == "grid" else _already_run(study, trial)
        if twin is not None and self.redraws < MAX_REDRAWS and count(study, DONE) < self.finite:
            trial.set_user_attr(SKIPPED_ATTR, f"same configuration as trial {twin.number}; drawn again")
            raise Redraw(trial.number)
        callbacks = [] if spec.objective.latency else [pruning_reporter(trial, spec.objective.metric)]
        with _recorded_on(trial):
            outcome = tracked_run(sweep.ws, sweep.client, spec, config, self.data, experiment_id=sweep.experiment_id,
                                  parent_run_id=sweep.parent_run_id, trial_number=trial.number, callbacks=callbacks,
                                  on_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id))
        trial.set_user_attr("test_metrics", {k: v for k, v in outcome.metrics.items() if k.startswith("test_")})
        if spec.objective.latency:
            return outcome.objective, outcome.metrics[vocabulary.LATENCY]
        return outcome.objective

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not counted(trial):
            return
        # The counts and the trials table are refreshed after every trial; Optuna's plots (a
        # 4.7 MB page each time) at most every PLOTS_EVERY seconds, and always when the sweep closes.
        due = time.monotonic() - self.plotted >= PLOTS_EVERY
        try:
            summarise(self.sweep.client, self.sweep.parent_run_id, study, self.sweep.spec, plots=due)
        except mlflow.exceptions.MlflowException as err:
            # Two workers refreshing the sweep's run at once can collide in the store; the trial
            # itself is recorded, and the next refresh (or the close) writes the summary.
            log.warning("sweep run summary not refreshed after trial %d: %s", trial.number, first_line(err))
        self.plotted = time.monotonic() if due else self.plotted
        if self.on_trial:
            self.on_trial(study, trial)

    def run(self) -> int:
        """Returns how many trials this process finished."""
        study, spec = self.sweep.study, self.sweep.spec
        ran, failed_in_a_row = 0, 0
        while count(study, LIVE) < self.total and not _grid_exhausted(study, spec) and not self.budget_reached:
            # No gc_after_trial: every trial's tracked_run already clears Keras state and collects
            # garbage; a third full collection per trial cost 0.5 s for nothing.
            study.optimize(self.objective, n_trials=1, callbacks=[self.after_trial], gc_after_trial=False,
                           catch=(TrialFailure, BudgetReached, Redraw))
            # This process's own trial, not the study's newest: another worker's may be newer.
            last = next(t for t in reversed(study.get_trials(deepcopy=False)) if t.number == self.mine[-1])
            if SKIPPED_ATTR in last.user_attrs:
                self.redraws += 1
                continue
            self.redraws = 0
            finished = int(last.state in DONE)
            ran += finished
            failed_in_a_row = 0 if finished or self.budget_reached else failed_in_a_row + 1
            if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
                reason = last.user_attrs.get(ERROR_ATTR, "see the trial runs' error.txt")
                raise WorkbenchError(f"{failed_in_a_row} trials in a row failed, so the sweep stops (failed trials "
                                     f"do not count towards --trials); last error: {reason}")
        return ran


@contextmanager
def _recorded_on(trial: optuna.Trial):
    """Why a trial did not finish, kept on the trial: its own failure (so a resume never takes it
    for a lost worker's), an interrupt, or an unexpected error that fails this trial alone."""
    try:
        yield
    except optuna.TrialPruned:
        raise
    except WorkbenchError as err:
        trial.set_user_attr(ERROR_ATTR, errors.scrub(str(err))[:500])
        raise
    except KeyboardInterrupt as err:
        trial.set_user_attr(KILLED_ATTR, f"interrupted ({errors.signal_name(err)})")
        raise
    except Exception as err:
        reason = errors.scrub(f"{type(err).__name__}: {err}")
        trial.set_user_attr(ERROR_ATTR, reason[:500])
        raise TrialFailure(f"trial {trial.number}: {reason}") from err


def work(sweep: Sweep, total: int, on_trial: OnTrial | None = None) -> int:
    """Run trials in this process until the study holds `total` finished ones; returns how many
    this process finished."""
    return Worker(sweep, total, on_trial).run()


def close(sweep: Sweep, status: str = "FINISHED") -> None:
    """Refresh the sweep run's summary and end it, unless other workers still run trials."""
    try:
        summarise(sweep.client, sweep.parent_run_id, sweep.study, sweep.spec)
    finally:
        if status != "FINISHED" or count(sweep.study, (TrialState.RUNNING,)) == 0:
            sweep.client.set_terminated(sweep.parent_run_id, status=status)


def run_sweep(ws: Workspace, spec: Spec, *, trials: int | None = None, study_name: str | None = None,
              workers: int = 1, worker: bool = False, listener: SweepListener | None = None) -> SweepResult:
    """The sweep of `spec` in `ws`: its data prepared and checked for leaks (a leak stops it before
    anything trains), the study opened (or resumed), what is missing of `trials` (default: the
    spec's) run here or in `workers` processes, and the sweep's run closed. `listener` hears of
    each step. `worker`: this process is one of another's `workers` (no checks, never closes)."""
    from workbench.model.pipeline import memory_budget

    listener = listener or SweepListener()
    memory_budget()  # a malformed $WORKBENCH_CACHE_BUDGET fails here, not in every trial
    if not worker:
        # Data problems fail here, once, not in every trial or in K workers, which then find it ready.
        data, leaks = prepare_checked(spec, ws)
        listener.data(data, leaks)
        held_out = folds(spec, data)   # a fold the rule cannot measure fails here: one line, exit 2
        if spec.held_out_sources():
            listener.folds(held_out)
    sweep = open_sweep(ws, spec, study_name=study_name)
    total = trials or spec.trials
    if not worker:
        listener.opened(sweep, total)
    clock = Clock(total, spec.objective.direction == "maximize")

    def on_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        listener.trial(clock.progress(study, trial))

    status, before = "FAILED", count(sweep.study, DONE)
    try:
        if workers > 1:
            _run_workers(sweep, total, workers, on_trial)
        else:
            work(sweep, total, on_trial)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # A worker never ends the sweep's run: the coordinator that started it does, once every
        # worker is done (a worker between two trials would otherwise mark it finished).
        if not worker:
            close(sweep, status)
    return SweepResult(sweep.study, sweep.parent_run_id, sweep.experiment_id,
                       count(sweep.study, DONE) - before, sweep.found, total)


def _grid_exhausted(study: optuna.Study, spec: Spec) -> bool:
    return spec.sampler == "grid" and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


# --- several worker processes on one machine --------------------------------------------------------

def gpu_count() -> int:
    """GPUs visible to this machine, asked of nvidia-smi so the coordinator needs no TensorFlow."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return len([d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def worker_env(index: int, gpus: int, workers: int) -> dict[str, str]:
    """Worker i sees only GPU i (one trial owns a whole device); on CPU each worker's TensorFlow
    thread pools get their share of the cores, so K workers do not oversubscribe the machine."""
    env = {**os.environ, "WORKBENCH_WORKER_INDEX": str(index)}
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)].strip()
    else:
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(max((os.cpu_count() or 1) // workers, 1)))
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


def _run_workers(sweep: Sweep, total: int, workers: int, on_trial: OnTrial | None, interval: float = 2.0) -> None:
    """Start `workers` copies of `workbench sweep --worker` on this study and wait for them,
    reporting every trial that finishes meanwhile. A worker's failure is an error that names its
    log; Ctrl-C is passed on to the workers, which end their runs cleanly."""
    logs = sweep.ws.worker_logs
    logs.mkdir(parents=True, exist_ok=True)
    name = sweep.study.study_name
    # The workers load exactly this spec (overrides applied), so its content hash matches.
    spec_file = logs / f"{name}.spec.yaml"
    spec_file.write_text(sweep.spec.to_yaml(), encoding="utf-8")
    argv = [sys.executable, "-m", "workbench.cli", "sweep", str(spec_file), "--trials", str(total), "--study", name,
            "--worker"]
    # The workspace, store URLs included, travels in the environment, not on the command line,
    # where `ps` would show their passwords.
    gpus = gpu_count()
    seen = {t.number for t in sweep.study.get_trials(deepcopy=False) if t.state.is_finished()}
    started = []
    for index in range(workers):
        log_path = logs / f"{name}-worker{index}.log"
        with open(log_path, "w") as handle:
            # A session of their own: a Ctrl-C at the terminal reaches the coordinator alone, which
            # passes it on once (twice, a worker could be interrupted while ending its run).
            started.append((subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=sweep.ws.child_environment(worker_env(index, gpus, workers))),
                            log_path))

    def report() -> None:
        for trial in sweep.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in seen:
                seen.add(trial.number)
                if on_trial and counted(trial):
                    on_trial(sweep.study, trial)

    try:
        while any(p.poll() is None for p, _ in started):
            report()
            time.sleep(interval)
    except KeyboardInterrupt:
        for process, _ in started:
            process.send_signal(signal.SIGINT)
        for process, _ in started:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()  # its trial is then a lost worker's: failed, and retried on resume
        raise
    report()
    failed = [(p.returncode, log) for p, log in started if p.returncode != 0]
    if failed:
        # A worker that died mid-trial left that trial RUNNING: fail it and end its run now, so
        # the study and the UI say what happened and a resume retries its configuration first.
        reap(sweep.study, sweep.ws.tracking_uri)
        code, log_path = failed[0]
        raise WorkbenchError(f"{len(failed)} worker(s) failed (exit {code}); see {log_path}")


# --- what the parent run shows ------------------------------------------------------------------

def summarise(client: MlflowClient, parent_run_id: str, study: optuna.Study, spec: Spec, plots: bool = True) -> None:
    """Refresh the sweep run: state counts, the best trial (or Pareto front), a trials table
    (CSV) and, with `plots`, Optuna's plots (history, importances, parallel coordinates, slices)
    as one page."""
    from workbench.measure import figures

    trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    counts = tally(study)
    # Zeros too: a count that drops to none (the last running trial ends) must not keep its old value.
    metrics = {f"trials_{k}": v for k, v in counts.items()}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    front = []
    if completed and not spec.objective.latency:
        best = study.best_trial
        metrics.update(best_objective=best.value, best_trial=best.number)
        client.set_tag(parent_run_id, vocabulary.BEST_RUN, best.user_attrs.get(RUN_ATTR, ""))
    elif completed:
        front = [t.number for t in study.best_trials]
        metrics["pareto_size"] = len(front)
    client.log_batch(parent_run_id, metrics=[
        mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()])
    table = trials_table(study, front)
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / Path(Artifacts.SWEEP_TRIALS).name, index=False)
        if front:
            table[table["pareto"]].to_csv(Path(tmp) / Path(Artifacts.SWEEP_PARETO).name, index=False)
        shown = plots and figures.study_plots(study, spec.objective.metric,
                                              vocabulary.LATENCY if spec.objective.latency else None)
        if shown:
            figures.write_html_page(shown, Path(tmp) / Path(Artifacts.SWEEP_PLOTS).name,
                                    title=f"{study.study_name}: Optuna study")
        client.log_artifacts(parent_run_id, tmp, artifact_path=str(Path(Artifacts.SWEEP_TRIALS).parent))


def trials_table(study: optuna.Study, pareto: list[int] = ()):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t):
            continue
        values = t.values or []
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": values[0] if values else None,
                     **({"latency_ms": values[1]} if len(values) > 1 else {}),
                     "pareto": t.number in pareto, **{f"param_{k}": v for k, v in t.params.items()},
                     "run_id": t.user_attrs.get(RUN_ATTR), "retry_of": t.user_attrs.get(RETRY_ATTR),
                     "error": t.user_attrs.get(ERROR_ATTR) or t.user_attrs.get(KILLED_ATTR)
                     or (LOST_WORKER if was_killed(t) else ""),
                     "seconds": t.duration.total_seconds() if t.duration else None})
    return pd.DataFrame(rows)
