"""The team set-up, for real: a throwaway PostgreSQL server and an `mlflow server` on 127.0.0.1,
and a two-worker sweep against them. `.ci/run` installs PostgreSQL where it is missing; the test
starts its own cluster in a temporary folder (as the `postgres` user, since initdb refuses root)
so it never touches a system database."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import workbench_cli

BIN = Path(sys.executable).parent


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture
def postgres(tmp_path):
    if not pg_bin("initdb") or not pg_bin("pg_ctl"):
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs them)")
    # Outside pytest's private (0700) temp tree, so the postgres user can reach it.
    folder = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(as_postgres(pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
                   check=True, capture_output=True, timeout=120)
    subprocess.run(as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"),
                   check=True, capture_output=True, timeout=120)
    try:
        for db in ("optuna", "mlflow"):
            subprocess.run(as_postgres(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db),
                           check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_postgres(pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"{postgres}/mlflow",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not come up: " + (tmp_path / "mlflow.log").read_text()[-2000:])
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_two_workers_against_postgresql_and_an_mlflow_server(tiny_spec, workdir, postgres, mlflow_server):
    # A password in the storage URL (the test cluster trusts every local login, so any works):
    # it must never be written down or shown.
    secret = "s3cret-pw-4711"
    storage = f"{postgres}/optuna".replace("postgres@", f"postgres:{secret}@")
    result = workbench_cli("sweep", "tiny", "--trials", "3", "--workers", "2", "--storage", storage,
                           "--tracking-uri", mlflow_server, "--set", "epochs=1",
                           "--set", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and len({t.number for t in complete}) == 3
    client = MlflowClient(mlflow_server)
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    # Every child run is one trial's run: a complete trial's run FINISHED; a trial that failed on
    # the way (the sweep records why and runs another in its place) left a FAILED or KILLED run.
    # The budget is met either way; a failure's reason is shown, so CI says what went wrong.
    trials = {t.user_attrs["mlflow_run_id"]: t for t in study.get_trials() if "mlflow_run_id" in t.user_attrs}
    assert {t.user_attrs["mlflow_run_id"] for t in complete} <= set(trials)
    assert sorted(r.info.run_id for r in children) == sorted(trials), result.stdout + result.stderr
    for run in children:
        trial = trials[run.info.run_id]
        if trial.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
        else:
            why = trial.user_attrs.get("error") or trial.user_attrs.get("killed")
            assert trial.state == TrialState.FAIL and why and run.info.status in ("FAILED", "KILLED"), \
                (trial.number, trial.state, trial.user_attrs, run.info.status)
            warnings.warn(f"trial {trial.number} failed in the team sweep and was replaced: {why}")
    finished = next(r for r in children if trials[r.info.run_id].state == TrialState.COMPLETE)
    # Artifacts went through the server: a trial's model loads back over HTTP.
    files = {f.path for f in client.list_artifacts(finished.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in files
    # Nothing secret is logged: the parent names its storage with the password masked, no run's
    # params or tags (a failed run's error tag included) hold it, nor the output or the workers' logs.
    sweep_run = client.get_run(parent)
    assert sweep_run.data.params["storage"] == storage.replace(secret, "***")
    for run in [sweep_run, *children]:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    assert secret not in result.stdout + result.stderr
    for log in (workdir / "mlruns" / "workers").glob("*"):
        assert secret not in log.read_text(errors="replace"), log
