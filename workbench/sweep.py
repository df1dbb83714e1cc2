"""A sweep: an Optuna study over a spec's search space, tracked as one MLflow parent run with a
nested child run per trial.

We own the Optuna-to-MLflow link (optuna-integration's MLflowCallback is deprecated): the study
remembers its parent run id in its user attributes, each trial records its run id the moment the
run starts, and every trial is the same `tracked_run` a single `workbench run` uses. A sweep
wastes and loses nothing:

- `--trials N` is the study's total: rerunning the same command after an interruption runs only
  what is missing, under the same parent run, and several workers (processes or machines sharing
  one storage URL) stop together at N;
- weak trials are pruned on the validation objective every epoch;
- a trial that raises is recorded as failed with its reason, and the sweep goes on;
- a worker that dies (kill -9, lost machine) stops sending heartbeats; the next worker to start a
  trial marks its trial failed in Optuna and its MLflow run KILLED.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from workbench import tracking
from workbench.dataset import prepare
from workbench.errors import SpecError, TrackingError, WorkbenchError
from workbench.run import tracked_run
from workbench.spec import Spec, grid_values, is_searched, sample_config

PARENT_RUN_ATTR = "mlflow_parent_run_id"
SPEC_HASH_ATTR = "spec_hash"
RUN_ATTR = "mlflow_run_id"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
LATENCY = "latency_ms_batch1"
# Failed trials do not count towards the budget; a sweep whose every trial fails must still end.
MAX_FAILURES_IN_A_ROW = 3



def heartbeat() -> tuple[int, int]:
    """Seconds between a running trial's heartbeats, and of silence after which it counts as dead."""
    interval = int(os.environ.get("WORKBENCH_HEARTBEAT", "20"))
    return interval, int(os.environ.get("WORKBENCH_HEARTBEAT_GRACE", str(3 * interval)))


optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats are "experimental" in Optuna 5 but are exactly the documented way to catch dead workers.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    study: optuna.Study
    parent_run_id: str
    experiment_id: str
    ran: int


class TrialFailure(Exception):
    """A trial broke (NaN loss, out of memory, an unreadable image): Optuna records it as failed
    and the sweep goes on. Spec, data and weights problems are WorkbenchErrors instead, and stop
    the sweep, since every later trial would fail the same way."""


class BudgetReached(Exception):
    """Another worker took the last trial of the budget between our count and our ask."""


def pruning_reporter(trial: optuna.Trial, metric: str):
    """Reports the objective to Optuna after every epoch and stops the trial when the pruner says so."""
    import keras

    def on_epoch_end(epoch, logs):
        trial.report(float(logs[metric]), step=epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


# --- the study ----------------------------------------------------------------------------------

def make_sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    # Parallel workers must not draw the same "random" configurations in lockstep: each worker
    # offsets the spec's seed by its index (0 for a single process, so it stays reproducible).
    seed = spec.seed + int(os.environ.get("WORKBENCH_WORKER_INDEX", "0"))
    if spec.sampler in ("random", "grid"):  # the grid itself is enqueued: see grid_points
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid_points(spec: Spec) -> list[dict]:
    """Every combination of the searched values, in the spec's order. Enqueued rather than left to
    Optuna's GridSampler, which ignores enqueued trials and would run the baseline twice."""
    space = {name: grid_values(dim) for name, dim in spec.params.dims().items() if is_searched(dim)}
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


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
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        interval, grace = heartbeat()
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval,
                                          grace_period=grace, heartbeat_stale_trial_callback=on_stale)
    if url.startswith("journal:///"):
        path = Path(url.removeprefix("journal:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    raise TrackingError(f"--storage {url}: use sqlite:///FILE, postgresql://..., mysql://... or journal:///FILE")


def open_study(spec: Spec, storage: str, study_name: str | None = None, tracking_uri: str | None = None) -> optuna.Study:
    name = study_name or spec.name
    directions = [spec.objective.direction] + (["minimize"] if spec.objective.latency else [])

    def end_stale_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        end_lost_run(tracking_uri, trial)

    try:
        study = optuna.create_study(
            study_name=name, storage=make_storage(storage, end_stale_run if tracking_uri else None),
            load_if_exists=True, directions=directions, sampler=make_sampler(spec), pruner=make_pruner(spec))
    except ValueError as err:  # e.g. an existing study with other directions
        raise SpecError(f"study {name} in {storage}: {err}") from None
    except WorkbenchError:
        raise
    except Exception as err:  # storage unreachable or not a database Optuna can use
        raise TrackingError(f"--storage {storage}: cannot open Optuna storage ({type(err).__name__}: {err})") from None
    recorded = study.user_attrs.get(SPEC_HASH_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_HASH_ATTR, spec.content_hash())
        points = [*spec.enqueue, *(grid_points(spec) if spec.sampler == "grid" else [])]
        for point in points:  # once, when the study is created
            study.enqueue_trial(point, skip_if_exists=True)
    elif recorded != spec.content_hash():
        raise SpecError(f"study {name} in {storage} was run with a different version of spec {spec.name} "
                        f"(hash {recorded}, now {spec.content_hash()}): pass --study NEW_NAME to start a "
                        "new study, or restore the spec to resume the old one")
    return study


def end_lost_run(tracking_uri: str, trial: optuna.trial.FrozenTrial) -> None:
    """The MLflow side of a heartbeat-stale trial: its run ends KILLED, with the reason."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if not run_id:
        return
    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, tracking.STATE, "failed")
    client.set_tag(run_id, "workbench.error", "worker lost: no heartbeat (killed or machine gone)")
    client.set_terminated(run_id, status="KILLED")


def ensure_parent_run(study: optuna.Study, client: MlflowClient, experiment_id: str, spec: Spec) -> str:
    """The sweep's MLflow run: created with the study, reopened when the sweep resumes."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except mlflow.exceptions.MlflowException:
            log.warning("parent run %s is gone; starting a new one", run_id)
    run = client.create_run(experiment_id, run_name=f"{study.study_name}-sweep", tags={
        tracking.ROLE: "sweep", tracking.SPEC: spec.name, tracking.SPEC_HASH: spec.content_hash(),
        "optuna.study_name": study.study_name})
    client.log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, str(v)) for k, v in {
            "spec": spec.name, "objective": spec.objective.metric, "direction": spec.objective.direction,
            "latency_objective": spec.objective.latency, "sampler": spec.sampler, "pruner": spec.pruner,
            "seed": spec.seed}.items()])
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "spec.json")
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return run.info.run_id


def count(study: optuna.Study, states=DONE) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


# --- running trials -----------------------------------------------------------------------------

@dataclass
class Sweep:
    """An open sweep: the study, its parent run and where both live."""

    spec: Spec
    study: optuna.Study
    client: MlflowClient
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def open_sweep(spec: Spec, *, storage: str, tracking_uri: str, study_name: str | None = None) -> Sweep:
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.name, tracking_uri)
    study = open_study(spec, storage, study_name, tracking_uri)
    return Sweep(spec, study, client, tracking_uri, experiment_id, ensure_parent_run(study, client, experiment_id, spec))


def work(sweep: Sweep, total: int,
         on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> int:
    """Run trials in this process until the study holds `total` finished ones; returns how many
    this process finished. Any number of workers may call this on one study at once."""
    spec, study = sweep.spec, sweep.study
    data = prepare(spec)
    budget_reached = False

    def objective(trial: optuna.Trial):
        nonlocal budget_reached
        # Several workers may have asked at once: only the first `total` live trials run.
        ahead = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < trial.number]
        if len(ahead) >= total:
            budget_reached = True
            trial.set_user_attr("budget", "reached by other workers; never ran")
            raise BudgetReached(f"trial {trial.number}: the study already has {total} trials")
        config = sample_config(spec, trial)
        callbacks = [] if spec.objective.latency else [pruning_reporter(trial, spec.objective.metric)]
        try:
            outcome = tracked_run(spec, config, data, experiment_id=sweep.experiment_id,
                                  parent_run_id=sweep.parent_run_id, trial_number=trial.number,
                                  callbacks=callbacks, on_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id))
        except (WorkbenchError, optuna.TrialPruned):
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
            raise TrialFailure(f"trial {trial.number}: {type(err).__name__}: {err}") from err
        trial.set_user_attr("test_metrics", outcome.metrics)
        if spec.objective.latency:
            return outcome.objective, outcome.metrics[LATENCY]
        return outcome.objective

    def after_trial(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        summarise(sweep.client, sweep.parent_run_id, study_, spec)
        if on_trial and "budget" not in trial.user_attrs:
            on_trial(study_, trial)

    ran, failed_in_a_row = 0, 0
    while count(study, LIVE) < total and not _grid_exhausted(study, spec) and not budget_reached:
        before = count(study, DONE)
        study.optimize(objective, n_trials=1, callbacks=[after_trial], gc_after_trial=True,
                       catch=(TrialFailure, BudgetReached))
        finished = count(study, DONE) - before
        ran += finished
        failed_in_a_row = 0 if finished or budget_reached else failed_in_a_row + 1
        if failed_in_a_row >= MAX_FAILURES_IN_A_ROW:
            last = study.trials[-1].user_attrs.get("error", "see the trial runs' error.txt")
            raise WorkbenchError(f"{failed_in_a_row} trials in a row failed, so the sweep stops (failed trials do "
                                 f"not count towards --trials); last error: {last}")
    return ran


def close(sweep: Sweep, status: str = "FINISHED") -> None:
    """Refresh the sweep run's summary and end it, unless other workers still run trials."""
    summarise(sweep.client, sweep.parent_run_id, sweep.study, sweep.spec)
    if status != "FINISHED" or count(sweep.study, (TrialState.RUNNING,)) == 0:
        sweep.client.set_terminated(sweep.parent_run_id, status=status)


def run_sweep(spec: Spec, *, storage: str, tracking_uri: str, trials: int | None = None,
              study_name: str | None = None,
              on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> SweepResult:
    """One worker, in this process: open (or resume) the sweep, run what is missing, close it."""
    sweep = open_sweep(spec, storage=storage, tracking_uri=tracking_uri, study_name=study_name)
    status, ran = "FAILED", 0
    try:
        ran = work(sweep, trials or spec.trials, on_trial)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close(sweep, status)
    return SweepResult(sweep.study, sweep.parent_run_id, sweep.experiment_id, ran)


def _grid_exhausted(study: optuna.Study, spec: Spec) -> bool:
    return spec.sampler == "grid" and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


# --- what the parent run shows ------------------------------------------------------------------

def summarise(client: MlflowClient, parent_run_id: str, study: optuna.Study, spec: Spec) -> None:
    """Refresh the sweep run: state counts, the best trial (or Pareto front), a trials table
    (CSV) and Optuna's plots (history, importances, parallel coordinates, slices) as one page."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    metrics = {f"trials_{k}": v for k, v in counts.items() if v}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    front = []
    if completed and not spec.objective.latency:
        best = study.best_trial
        metrics.update(best_objective=best.value, best_trial=best.number)
        client.set_tag(parent_run_id, "workbench.best_run_id", best.user_attrs.get(RUN_ATTR, ""))
    elif completed:
        front = [t.number for t in study.best_trials]
        metrics["pareto_size"] = len(front)
    client.log_batch(parent_run_id, metrics=[
        mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()])
    table = trials_table(study, front)
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / "trials.csv", index=False)
        if front:
            table[table["pareto"]].to_csv(Path(tmp) / "pareto_front.csv", index=False)
        plots = study_plots(study, spec)
        if plots:
            from workbench.figures import write_html_page

            write_html_page(plots, Path(tmp) / "study.html", title=f"{study.study_name}: Optuna study")
        client.log_artifacts(parent_run_id, tmp, artifact_path="sweep")


def trials_table(study: optuna.Study, pareto: list[int] = ()):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or []
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": values[0] if values else None,
                     **({"latency_ms": values[1]} if len(values) > 1 else {}),
                     "pareto": t.number in pareto, **{f"param_{k}": v for k, v in t.params.items()},
                     "run_id": t.user_attrs.get(RUN_ATTR), "error": t.user_attrs.get("error", ""),
                     "seconds": t.duration.total_seconds() if t.duration else None})
    return pd.DataFrame(rows)


def study_plots(study: optuna.Study, spec: Spec) -> dict:
    """Optuna's plotly figures for whatever the study can show so far (each needs some trials)."""
    from optuna import visualization as vis

    target = (lambda t: t.values[0]) if spec.objective.latency else None
    name = spec.objective.metric
    builders = {"history": lambda: vis.plot_optimization_history(study, target=target, target_name=name),
                "importances": lambda: vis.plot_param_importances(study, target=target, target_name=name),
                "parallel": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=name),
                "slices": lambda: vis.plot_slice(study, target=target, target_name=name)}
    if spec.objective.latency:
        builders["pareto"] = lambda: vis.plot_pareto_front(study, target_names=[name, LATENCY])
    plots = {}
    if count(study, (TrialState.COMPLETE,)) < 2:
        return plots
    for key, build in builders.items():
        try:
            plots[key] = build()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials for that plot yet
            log.debug("no %s plot yet: %s", key, err)
    return plots
