"""A sweep: an Optuna study over a spec's search space, tracked as one MLflow parent run with a
nested child run per trial.

We own the Optuna-to-MLflow link (optuna-integration's MLflowCallback is deprecated): the study
remembers its parent run id in its user attributes, each trial's run id is stored on the trial,
and every trial is the same `tracked_run` a single `workbench run` uses. `--trials N` is the
study's total: rerunning the same command after an interruption runs only what is missing, under
the same parent run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import mlflow
import optuna
from optuna.trial import TrialState

from workbench import tracking
from workbench.dataset import prepare
from workbench.errors import SpecError, TrackingError, WorkbenchError
from workbench.run import tracked_run
from workbench.spec import Spec, sample_config

PARENT_RUN_ATTR = "mlflow_parent_run_id"
SPEC_HASH_ATTR = "spec_hash"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)


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


def pruning_reporter(trial: optuna.Trial, metric: str):
    """Reports the objective to Optuna after every epoch and stops the trial when the pruner says so."""
    import keras

    def on_epoch_end(epoch, logs):
        trial.report(float(logs[metric]), step=epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def open_study(spec: Spec, storage: str, study_name: str | None = None) -> optuna.Study:
    name = study_name or spec.name
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True,
            direction=spec.objective.direction,
            sampler=optuna.samplers.TPESampler(seed=spec.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        )
    except ValueError as err:  # e.g. an existing study with another direction
        raise SpecError(f"study {name} in {storage}: {err}") from None
    except Exception as err:  # storage unreachable or not a database Optuna can use
        raise TrackingError(f"--storage {storage}: cannot open Optuna storage ({type(err).__name__}: {err})") from None
    recorded = study.user_attrs.get(SPEC_HASH_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_HASH_ATTR, spec.content_hash())
    elif recorded != spec.content_hash():
        raise SpecError(f"study {name} in {storage} was run with a different version of spec {spec.name} "
                        f"(hash {recorded}, now {spec.content_hash()}): pass --study NEW_NAME to start a "
                        "new study, or restore the spec to resume the old one")
    return study


def _parent_run(study: optuna.Study, client, experiment_id: str, spec: Spec) -> str:
    """The sweep's MLflow run: created with the study, reopened when the sweep resumes."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except mlflow.exceptions.MlflowException:
            logging.getLogger(__name__).warning("parent run %s is gone; starting a new one", run_id)
    run = client.create_run(experiment_id, run_name=f"{study.study_name}-sweep", tags={
        tracking.ROLE: "sweep", tracking.SPEC: spec.name, tracking.SPEC_HASH: spec.content_hash(),
        "optuna.study_name": study.study_name})
    client.log_batch(run.info.run_id, params=[
        mlflow.entities.Param(k, str(v)) for k, v in {
            "spec": spec.name, "objective": spec.objective.metric, "direction": spec.objective.direction,
            "seed": spec.seed, "trials": spec.trials}.items()])
    client.log_dict(run.info.run_id, spec.model_dump(mode="json"), "spec.json")
    study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
    return run.info.run_id


def run_sweep(spec: Spec, *, storage: str, tracking_uri: str, trials: int | None = None,
              study_name: str | None = None,
              on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> SweepResult:
    client = tracking.connect(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.name, tracking_uri)
    study = open_study(spec, storage, study_name)
    parent_run_id = _parent_run(study, client, experiment_id, spec)
    data = prepare(spec)

    def objective(trial: optuna.Trial) -> float:
        config = sample_config(spec, trial)
        try:
            outcome = tracked_run(spec, config, data, experiment_id=experiment_id, parent_run_id=parent_run_id,
                                  trial_number=trial.number,
                                  callbacks=[pruning_reporter(trial, spec.objective.metric)])
        except (WorkbenchError, optuna.TrialPruned):
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
            raise TrialFailure(f"trial {trial.number}: {type(err).__name__}: {err}") from err
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        trial.set_user_attr("test_metrics", outcome.metrics)
        return outcome.objective

    total = trials or spec.trials
    done = len(study.get_trials(deepcopy=False, states=DONE))
    remaining = max(total - done, 0)
    callbacks = [on_trial] if on_trial else []
    status = "FAILED"
    try:
        if remaining:
            study.optimize(objective, n_trials=remaining, callbacks=callbacks, gc_after_trial=True,
                           catch=(TrialFailure,))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _summarise(client, parent_run_id, study)
        client.set_terminated(parent_run_id, status=status)
    return SweepResult(study, parent_run_id, experiment_id, remaining)


def _summarise(client, parent_run_id: str, study: optuna.Study) -> None:
    """Best trial so far and state counts on the parent run, refreshed at the end of every session."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    metrics = {f"trials_{k}": v for k, v in counts.items() if v}
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        metrics["best_objective"] = best.value
        metrics["best_trial"] = best.number
        client.set_tag(parent_run_id, "workbench.best_run_id", best.user_attrs.get("mlflow_run_id", ""))
    client.log_batch(parent_run_id, metrics=[
        mlflow.entities.Metric(k, float(v), mlflow.utils.time.get_current_time_millis(), 0) for k, v in metrics.items()])
    client.log_dict(parent_run_id, [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
         "run_id": t.user_attrs.get("mlflow_run_id")} for t in trials], "trials.json")
