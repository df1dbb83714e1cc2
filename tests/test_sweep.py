"""The sweep: an Optuna study whose trials are MLflow runs nested under one sweep run, resumable
up to the study's total, and driven from the command line as `make sweep` drives it."""

from __future__ import annotations

import re

import optuna
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


def test_a_changed_spec_does_not_silently_join_an_old_study(tiny_spec, stores):
    storage, uri = stores
    run_sweep(Workspace(tracking_uri=uri, storage=storage), S.load("tiny", ["epochs=1"]), trials=1)
    with pytest.raises(SpecError, match="different version of spec tiny"):
        run_sweep(Workspace(tracking_uri=uri, storage=storage), S.load("tiny", ["epochs=1", "dropout=0.5"]), trials=1)


def test_cli_sweep_is_one_parent_with_its_trials_prints_progress_and_a_leaderboard_and_resumes(tiny_spec, workdir):
    args = ["sweep", "tiny", "--trials", "2", "--set", "epochs=1", "--set", "balance=[none, oversample, class_weight]"]
    result = workbench_cli(*args, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "[1/2] trial 0 complete" in result.stdout and re.search(r"\[2/2\] trial \d+ complete", result.stdout)
    # Three values to choose from and nothing else: the second trial runs another one, never the first again.
    assert len(set(re.findall(r"balance=(\w+)", result.stdout))) == 2, result.stdout
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

    # One parent run (the sweep) with a child run per trial, in a model-training experiment (the
    # MLflow UI opens it on runs and charts, not its GenAI view); each child holds its trial's values.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags[vocabulary.ROLE] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] == 2
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id and r.info.status == "FINISHED" for r in trials)
    ran = [t for t in study.trials if "mlflow_run_id" in t.user_attrs]   # not the redraws of a configuration run before
    assert sorted(t.user_attrs["mlflow_run_id"] for t in ran) == sorted(r.info.run_id for r in trials)
    for trial in ran:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags[vocabulary.TRIAL] == str(trial.number) and run.data.params["balance"] == trial.params["balance"]
    # The same command again runs nothing; a larger total runs only the difference, under the same parent.
    again = workbench_in_process(*args, cwd=workdir)
    assert again.returncode == 0 and "nothing to run" in " ".join(again.stdout.split()), again.stdout + again.stderr
    more = workbench_in_process(*[a if a != "2" else "3" for a in args], cwd=workdir)
    assert more.returncode == 0, more.stdout + more.stderr
    runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(runs) == 3 and client.get_run(parent_id).info.status == "FINISHED"


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
