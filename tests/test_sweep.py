"""The sweep: an Optuna study whose trials are MLflow runs nested under one sweep run, resumable
up to the study's total, and driven from the command line as `make sweep` drives it."""

from __future__ import annotations

import re

import pytest
from conftest import workbench_cli, workbench_in_process
from mlflow.tracking import MlflowClient

from workbench import spec as S
from workbench import vocabulary
from workbench.errors import SpecError
from workbench.track.sweep import run_sweep
from workbench.workspace import Workspace


@pytest.fixture
def stores(workdir):
    mlruns = workdir / "mlruns"
    return f"sqlite:///{mlruns / 'optuna.db'}", f"sqlite:///{mlruns / 'mlflow.db'}"


def children(client, result):
    return client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")


def test_two_trial_sweep_is_one_parent_with_two_children_and_resumes_to_the_total(tiny_spec, stores):
    storage, uri = stores
    spec = S.load("tiny", ["epochs=1", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}"])
    result = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    client = MlflowClient(uri)

    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags[vocabulary.ROLE] == "sweep" and parent.info.status == "FINISHED"
    experiment = client.get_experiment(result.experiment_id)
    assert experiment.name == "tiny"
    # A model-training experiment: the MLflow UI opens it on runs and charts, not its GenAI view.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = children(client, result)
    assert len(runs) == 2
    assert sorted(r.data.tags[vocabulary.TRIAL] for r in runs) == ["0", "1"]
    assert all(r.data.tags[vocabulary.ROLE] == "trial" and r.info.status == "FINISHED" for r in runs)
    # Each trial's run holds the learning rate Optuna sampled for it.
    for trial in result.study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"])
    assert parent.data.metrics["trials_complete"] == 2

    again = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=2)
    assert again.ran == 0 and again.parent_run_id == result.parent_run_id
    more = run_sweep(Workspace(tracking_uri=uri, storage=storage), spec, trials=3)
    assert more.ran == 1 and len(children(client, more)) == 3


def test_a_changed_spec_does_not_silently_join_an_old_study(tiny_spec, stores):
    storage, uri = stores
    run_sweep(Workspace(tracking_uri=uri, storage=storage), S.load("tiny", ["epochs=1"]), trials=1)
    with pytest.raises(SpecError, match="different version of spec tiny"):
        run_sweep(Workspace(tracking_uri=uri, storage=storage), S.load("tiny", ["epochs=1", "dropout=0.5"]), trials=1)


def test_cli_sweep_prints_progress_and_a_leaderboard(tiny_spec, workdir):
    result = workbench_cli("sweep", "tiny", "--trials", "2", "--set", "epochs=1",
                           "--set", "balance=[none, oversample]", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "[1/2] trial 0 complete" in result.stdout and re.search(r"\[2/2\] trial \d+ complete", result.stdout)
    # Two values to choose from: the second trial runs the other one, never the first one again.
    assert "balance=oversample" in result.stdout and "balance=none" in result.stdout
    assert "tiny: sweep run" in result.stdout and "f1_macro" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert (workdir / "mlruns" / "mlflow.db").is_file() and (workdir / "mlruns" / "optuna.db").is_file()
    board = workbench_in_process("leaderboard", "tiny", cwd=workdir, env={"COLUMNS": "400"})
    assert board.returncode == 0 and "f1_fake" in board.stdout
    # Best validation objective first, as MLflow holds the figures; checked on two more columns
    # and both directions, so a leaderboard sorted the wrong way (or not at all) fails.
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    trials = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`workbench.role` = 'trial'")
    assert len(trials) == 2
    for metric, lower in (("objective", False), ("test_log_loss", True), ("test_accuracy", False)):
        shown = board if metric == "objective" else workbench_in_process("leaderboard", "tiny", "--metric", metric,
                                                                  cwd=workdir, env={"COLUMNS": "400"})
        value = {r.info.run_name: r.data.metrics[metric] for r in trials}
        order = [name for line in shown.stdout.splitlines() for name in value if f" {name} " in line]
        assert sorted(order) == sorted(value), shown.stdout
        ranked = [value[name] for name in order]
        assert ranked == sorted(ranked, reverse=not lower), (metric, ranked)


def test_the_dashboard_is_installed_and_serves_the_study_storage_on_loopback(workdir):
    """`make dashboard` needs nothing from the network: optuna-dashboard comes with the install."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import optuna

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    optuna.create_study(study_name="seen", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    server = subprocess.Popen([str(exe), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["seen"]
    finally:
        server.terminate()
        server.wait(timeout=30)
