"""Sweeps that survive: a NaN trial fails with its reason while the sweep completes, pruning
prunes a trial built to be weak (and its run keeps its curves), a sweep stopped by a signal
resumes to exactly its total, a killed worker's trial ends failed with its run KILLED, and
grid, enqueue and the latency objective behave. (Two workers on one study: test_team.py, against
PostgreSQL.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import keras
import optuna
import pytest
from conftest import workbench_cli, workbench_in_process
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from workbench import spec as S
from workbench import vocabulary
from workbench.errors import WorkbenchError
from workbench.track import sweep as sweeps
from workbench.track.sweep import run_sweep
from workbench.workspace import Workspace


@pytest.fixture
def stores(workdir):
    mlruns = workdir / "mlruns"
    return f"sqlite:///{mlruns / 'optuna.db'}", f"sqlite:///{mlruns / 'mlflow.db'}"


def children(uri, result):
    return MlflowClient(uri).search_runs([result.experiment_id],
                                         f"tags.mlflow.parentRunId = '{result.parent_run_id}'")


def diverge_above(monkeypatch, threshold: float) -> None:
    """Make every epoch of a trial with a learning rate above `threshold` report a NaN loss, as a
    diverging network does (batch norm keeps the tiny CNN from diverging for real)."""
    import workbench.model.train as train_module

    original = train_module.EpochRecorder.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        if float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)) > threshold:
            logs["loss"] = float("nan")
        return original(self, epoch, logs)

    monkeypatch.setattr(train_module.EpochRecorder, "on_epoch_end", on_epoch_end)


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_completes(tiny_spec, stores, monkeypatch):
    storage, uri = stores
    diverge_above(monkeypatch, 1.0)
    spec = S.load("tiny", ["epochs=1", "learning_rate={low: 1.0e-3, high: 1.0e+8, log: true}",
                           "enqueue=[{learning_rate: 1.0e+8}, {learning_rate: 0.001}]"])
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=1)
    states = [t.state for t in result.study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]   # a failed trial does not use up the budget
    failed = result.study.trials[0]
    assert "FloatingPointError" in failed.user_attrs["error"]
    run = MlflowClient(uri).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags[vocabulary.STATE] == "failed"
    assert "loss became" in run.data.tags["workbench.error"]
    assert any(a.path == "error.txt" for a in MlflowClient(uri).list_artifacts(run.info.run_id))


def test_pruning_stops_a_weak_trial_and_its_run_keeps_its_curves(tiny_spec, stores):
    storage, uri = stores
    spec = S.load("tiny", ["epochs=3", "learning_rate={low: 1.0e-9, high: 1.0e-2, log: true}",
                           "pruning={startup_trials: 2, warmup_epochs: 0}",
                           "enqueue=[{learning_rate: 0.005}, {learning_rate: 0.005}, {learning_rate: 1.0e-9}]"])
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=3)
    weak = result.study.trials[2]
    assert weak.state == TrialState.PRUNED, [t.intermediate_values for t in result.study.trials]
    client = MlflowClient(uri)
    run = client.get_run(weak.user_attrs["mlflow_run_id"])
    assert run.data.tags[vocabulary.STATE] == "pruned"
    assert 1 <= len(client.get_metric_history(run.info.run_id, "val_f1_macro")) < 3
    assert "test_f1_macro" not in run.data.metrics


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the command ended ({process.returncode}) before {what}"
        try:
            if condition():
                return
        except Exception:  # the study or its run does not exist yet
            pass
        time.sleep(0.1)
    pytest.fail(f"never reached: {what}")


# SIGTERM mid-epoch takes SIGINT's path (only the name and the code differ); between two trials,
# the signal may strike inside a finalizer, where Python drops it: the next trial must not start.
@pytest.mark.parametrize("sig, code, moment", [(signal.SIGINT, 130, "mid-epoch"), (signal.SIGTERM, 143, "after a trial")])
def test_a_signal_ends_the_sweep_and_its_trial_as_killed_and_says_how_to_resume(tiny_spec, stores, workdir, sig,
                                                                                  code, moment):
    """Ctrl-C (SIGINT) or `kill PID` (SIGTERM) to the console script, mid-epoch or as a trial has
    just finished: one line, exit 130 / 143, the trial in progress KILLED and tagged interrupted,
    the sweep's run KILLED, nothing left RUNNING, and the leaderboard says interrupted."""
    storage, uri = stores
    exe = os.path.join(os.path.dirname(sys.executable), "workbench")
    sweep = subprocess.Popen([exe, "sweep", "tiny", "--trials", "3", "--set", "epochs=3"], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def trial_runs():
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tiny").experiment_id
        return client, client.search_runs([experiment], "tags.`workbench.role` = 'trial'")

    def ready() -> bool:
        client, runs = trial_runs()
        if moment == "after a trial":
            return any(r.info.status == "FINISHED" for r in runs)
        running = [r for r in runs if r.info.status == "RUNNING"]
        return bool(running) and len(client.get_metric_history(running[0].info.run_id, "loss")) >= 1

    try:
        wait_for(ready, moment, sweep)
        sweep.send_signal(sig)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == code, (out[-2000:], err[-2000:])
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(f"interrupted by {sig.name}: finished runs and trials are kept") and \
        "rerun the same command to resume" in lines[-1], err[-2000:]
    assert "Traceback" not in out + err
    client, runs = trial_runs()
    experiment = client.get_experiment_by_name("tiny").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    [parent] = client.search_runs([experiment], "tags.`workbench.role` = 'sweep'")
    assert parent.info.status == "KILLED"
    killed = [r for r in runs if r.info.status == "KILLED"]
    if moment == "mid-epoch":
        assert len(killed) == 1
    for run in killed:
        assert run.data.tags[vocabulary.STATE] == "interrupted"
        assert run.data.tags["workbench.error"] == f"interrupted ({sig.name})"
    if killed:
        board = workbench_in_process("leaderboard", "tiny", cwd=workdir)
        assert board.returncode == 0 and "interrupted" in board.stdout, board.stdout
    if moment == "mid-epoch":
        # The same command again resumes under the same sweep run to exactly its total.
        done = [r for r in runs if r.info.status == "FINISHED"]
        again = workbench_in_process("sweep", "tiny", "--trials", "3", "--set", "epochs=3", cwd=workdir)
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"{3 - len(done)} to run" in again.stdout, again.stdout
        client, runs = trial_runs()
        assert len([r for r in runs if r.info.status == "FINISHED"]) == 3
        assert client.search_runs([experiment], "tags.`workbench.role` = 'sweep'")[0].info.run_id == parent.info.run_id
        assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_killed_sweep_resumes_without_repeats_and_retries_the_killed_configuration(tiny_spec, stores, workdir):
    """kill -9 during the second trial, then the same command again: one line says what was found,
    the killed configuration runs first, the budget is met with no configuration trained twice,
    only new trials are printed, and no run is left RUNNING."""
    storage, uri = stores
    # Four trials: however late a busy machine lets this loop look, a trial is still to come when it kills.
    args = ["sweep", "tiny", "--trials", "4", "--set", "epochs=3",
            "--set", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}"]
    exe = os.path.join(os.path.dirname(sys.executable), "workbench")
    worker = subprocess.Popen([exe, *args], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(uri)

    def mid_trial() -> bool:
        """A trial after the first is running and its run has logged an epoch."""
        try:
            study = optuna.load_study(study_name="tiny", storage=storage)
            running = study.get_trials(states=(TrialState.RUNNING,))
            done = study.get_trials(states=(TrialState.COMPLETE,))
        except Exception:  # the study does not exist yet
            return False
        return bool(done and running and "mlflow_run_id" in running[0].user_attrs
                    and client.get_metric_history(running[0].user_attrs["mlflow_run_id"], "loss"))

    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # Seen mid-trial, the worker is frozen and looked at again: on a busy machine the trial
            # could finish, and the next start without its run yet, between a look and the kill.
            if mid_trial():
                worker.send_signal(signal.SIGSTOP)
                if mid_trial():
                    break
                worker.send_signal(signal.SIGCONT)
            time.sleep(0.2)
        else:
            pytest.fail("the worker never reached its second trial")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    # Read what the kill left behind.
    left = optuna.load_study(study_name="tiny", storage=storage)
    (killed,) = left.get_trials(states=(TrialState.RUNNING,))
    done = left.get_trials(states=(TrialState.COMPLETE,))
    lost_run = killed.user_attrs["mlflow_run_id"]
    assert MlflowClient(uri).get_run(lost_run).info.status == "RUNNING"

    again = workbench_cli(*args, cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = again.stdout.splitlines()
    assert lines[1].startswith("leak check: no image")  # after the data line, before anything resumes
    first_line = lines[2]
    assert first_line == (f"resuming tiny: {len(done)} complete, 1 killed by a lost worker or an interrupt; "
                          f"{4 - len(done)} to run (1 killed configuration retried first)"), again.stdout
    assert f"trial {done[0].number} complete" not in again.stdout  # old trials are not shown as new

    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    configurations = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(configurations)) == 4  # nothing trained twice
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].number == killed.number + 1  # retried first, before anything new
    client = MlflowClient(uri)
    run = client.get_run(lost_run)
    assert run.info.status == "KILLED" and run.data.tags[vocabulary.STATE] == "failed"
    assert "worker lost" in run.data.tags["workbench.error"]
    experiment = client.get_experiment_by_name("tiny").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_stale_heartbeat_from_another_machine_ends_the_trial(tiny_spec, stores, monkeypatch):
    """A worker on another machine cannot be asked whether it lives: its silence is the sign."""
    storage, uri = stores
    monkeypatch.setenv("WORKBENCH_HEARTBEAT", "1")
    monkeypatch.setenv("WORKBENCH_HEARTBEAT_GRACE", "2")
    spec = S.load("tiny", ["epochs=1", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}"])
    sweep = sweeps.open_sweep(Workspace(tracking_uri=uri, storage=storage), spec)
    trial = sweep.study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
    trial.set_user_attr(sweeps.WORKER_ATTR, "elsewhere:12345")
    sweep.study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3)
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    assert result.found.killed == 1 and result.found.retries == 1
    assert result.study.trials[trial.number].state == TrialState.FAIL
    retried = [t for t in result.study.trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE


def test_a_second_worker_started_later_continues_the_search(tiny_spec, stores):
    """The same seed in a new process must not replay the sequence the first process drew."""
    storage, uri = stores
    spec = S.load("tiny", ["epochs=1", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}"])
    first = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=1)
    later = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    assert later.ran == 1
    rates = [t.params["learning_rate"] for t in later.study.trials if t.state == TrialState.COMPLETE]
    assert len(rates) == 2 and len(set(rates)) == 2  # the old process would have replayed trial 0's rate
    assert first.study.trials[0].params != later.study.trials[1].params


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_two_workers_opening_an_empty_study_at_once_draw_apart(tiny_spec, stores, monkeypatch):
    """`--workers` starts its processes together: each opens the study before any trial exists,
    so only the worker's index can keep their samplers from drawing in lockstep."""
    from workbench.track.sweep import open_study

    storage, _ = stores
    spec = S.load("tiny", ["learning_rate={low: 1.0e-4, high: 1.0e-1, log: true}", "dropout={low: 0.0, high: 0.5}"])
    studies = []
    for index in (0, 1):
        monkeypatch.setenv("WORKBENCH_WORKER_INDEX", str(index))
        studies.append(open_study(spec, storage))   # both open it empty
    drawn = [study.ask() for study in studies]
    values = [(t.suggest_float("learning_rate", 1e-4, 1e-1, log=True), t.suggest_float("dropout", 0.0, 0.5))
              for t in drawn]
    assert values[0] != values[1], values


def test_grid_tries_every_combination_once_starting_from_the_enqueued_one(tiny_spec, stores):
    storage, uri = stores
    spec = S.load("tiny", ["epochs=1", "sampler=grid", "balance=[none, class_weight]", "augmentation=[none, flip]",
                           "enqueue=[{balance: class_weight, augmentation: flip}]"])
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=10)
    combos = [(t.params["balance"], t.params["augmentation"]) for t in result.study.trials]
    assert combos[0] == ("class_weight", "flip")
    assert sorted(combos) == sorted({("none", "none"), ("none", "flip"), ("class_weight", "none"),
                                     ("class_weight", "flip")})


def test_the_latency_objective_records_a_pareto_front(tiny_spec, stores):
    storage, uri = stores
    spec = S.load("tiny", ["epochs=1", "objective={metric: val_f1_macro, latency: true}",
                           "dense_units=[4, 64]", "enqueue=[{dense_units: 4}, {dense_units: 64}]"])
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    assert all(len(t.values) == 2 for t in result.study.trials)
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    # The front, worked out here from the trials' own (score, latency): none beats it on both.
    values = {t.number: tuple(t.values) for t in result.study.trials}
    front = {n for n, (f1, ms) in values.items()
             if not any(o[0] >= f1 and o[1] <= ms and o != (f1, ms) for o in values.values())}
    assert parent.data.metrics["pareto_size"] == len(front)
    files = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/pareto_front.csv", "sweep/study.html"} <= files
    import pandas as pd

    shown = pd.read_csv(client.download_artifacts(result.parent_run_id, "sweep/pareto_front.csv"))
    assert set(shown["number"]) == front and shown["pareto"].all(), shown


def test_a_sweep_whose_every_trial_fails_stops_with_the_reason(tiny_spec, stores, monkeypatch):
    storage, uri = stores
    diverge_above(monkeypatch, 1.0)
    spec = S.load("tiny", ["epochs=1", "learning_rate={low: 1.0e+7, high: 1.0e+8, log: true}"])
    with pytest.raises(WorkbenchError, match="3 trials in a row failed.*FloatingPointError"):
        run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
