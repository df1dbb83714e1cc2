"""Faults and safe defaults: an artefact store that turns read-only during a trial (for real: its
folders lose their write permission, the sweep running as an unprivileged user when the suite runs
as root, see `tests/unprivileged.py`) fails that trial with its reason while the sweep goes on and
earlier runs stay intact; two sweeps of different specs at once share one store without disturbing
each other; a corrupted MLflow or Optuna database is one line naming it, never silently replaced;
servers bind loopback unless told, with a warning; models load in Keras' safe mode and only from
the configured store; nothing secret from the environment reaches a run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import optuna
import pytest
import unprivileged
from conftest import TINY, workbench_in_process, write_spec
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from workbench import errors
from workbench import spec as S
from workbench.errors import WorkbenchError
from workbench.ship import predict
from workbench.track import store
from workbench.track.sweep import run_sweep
from workbench.workspace import Workspace


@pytest.fixture
def stores(workdir):
    mlruns = workdir / "mlruns"
    return f"sqlite:///{mlruns / 'optuna.db'}", f"sqlite:///{mlruns / 'mlflow.db'}"


def trials_so_far(db: Path) -> dict[int, tuple[str, str | None]]:
    """Trial number -> (state, MLflow run id), read from a sweep's Optuna SQLite file while the
    sweep writes it (read-only: this process never changes the store it watches)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
            rows = connection.execute(
                "SELECT t.number, t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
                "ON a.trial_id = t.trial_id AND a.key = 'mlflow_run_id'").fetchall()
    except sqlite3.Error:   # not created yet, or busy
        return {}
    return {number: (state, json.loads(run) if run else None) for number, state, run in rows}


def read_only(folder: Path) -> None:
    """Take write permission from `folder` and every folder in it, as a store mounted read-only
    (or a full disk) would refuse writes: nothing can be created in them any more."""
    for top, dirs, _ in os.walk(folder):
        for path in [top, *(os.path.join(top, d) for d in dirs)]:
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o222)


def test_a_store_that_turns_read_only_fails_the_trial_and_the_sweep_goes_on():
    """A real sweep (the console script; as an unprivileged user when the suite runs as root, since
    root writes into read-only folders) whose second trial's artefact folder turns read-only once
    the trial has started writing there: that trial fails, the third runs and completes."""
    with unprivileged.workspace("workbench-readonly-") as root:
        (root / "experiments").mkdir()
        write_spec(root, TINY)
        mlruns = root / "mlruns"
        storage, uri = f"sqlite:///{mlruns / 'optuna.db'}", f"sqlite:///{mlruns / 'mlflow.db'}"
        env = {"WORKBENCH_DATA": str(root / "data"), "WORKBENCH_STORAGE": storage, "MLFLOW_TRACKING_URI": uri}
        with open(root / "sweep.log", "w") as log:
            sweep = unprivileged.popen("sweep", "tiny", "--trials", "2", "--set", "epochs=1",
                                       "--set", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}",
                                       cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        locked = None
        try:
            deadline = time.monotonic() + 600
            while sweep.poll() is None and time.monotonic() < deadline:
                run_id = trials_so_far(mlruns / "optuna.db").get(1, (None, None))[1]
                folders = list((mlruns / "artifacts").glob(f"*/{run_id}")) if run_id and not locked else []
                # Once the second trial has written its first artefacts (the data split, before it
                # trains), its folder turns read-only; the model and evaluation come seconds later.
                if folders and (folders[0] / "artifacts" / "data").is_dir():
                    locked = folders[0]
                    read_only(locked)
                time.sleep(0.1)
        finally:
            if sweep.poll() is None:
                sweep.kill()
            sweep.wait(timeout=60)
        output = (root / "sweep.log").read_text()
        assert locked is not None, "the second trial's artefact folder never appeared:\n" + output
        assert sweep.returncode == 0, output
        study = optuna.load_study(study_name="tiny", storage=storage)
        states = [t.state for t in study.trials]
        assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], output
        error = study.trials[1].user_attrs["error"]
        assert error.startswith("PermissionError") and "Permission denied" in error and str(locked) in error, error
        client = MlflowClient(uri)
        first = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
        assert first.info.status == "FINISHED" and "test_f1_macro" in first.data.metrics
        assert {f.path for f in client.list_artifacts(first.info.run_id, "evaluation")} >= {"evaluation/figures.html"}
        failed = client.get_run(study.trials[1].user_attrs["mlflow_run_id"])
        assert failed.info.status == "FAILED" and "Permission denied" in failed.data.tags["workbench.error"]
        third = client.get_run(study.trials[2].user_attrs["mlflow_run_id"])
        assert third.info.status == "FINISHED" and "test_f1_macro" in third.data.metrics


def test_two_sweeps_of_different_specs_at_once_share_one_store(workdir, stores):
    storage, uri = stores
    write_spec(workdir, {**TINY, "name": "left"})
    write_spec(workdir, {**TINY, "name": "right", "seed": 8})
    exe = Path(sys.executable).with_name("workbench")
    # One trial each: the two processes meet in the store from the start (creating experiments,
    # studies, parent runs, dataset inputs), which is where SQLite's locking is put to the test.
    sweeps = [subprocess.Popen([str(exe), "sweep", name, "--trials", "1", "--set", "epochs=1"], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("left", "right")]
    outputs = [p.communicate(timeout=600) for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0], outputs
    client = MlflowClient(uri)
    for name in ("left", "right"):
        experiment = client.get_experiment_by_name(name).experiment_id
        trials = client.search_runs([experiment], "tags.`workbench.role` = 'trial'")
        assert len(trials) == 1 and all(r.info.status == "FINISHED" for r in trials)
        assert {r.data.tags["workbench.spec"] for r in trials} == {name}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, shared_data):
    """A store holding one finished 1-trial sweep of the tiny spec, made once for the module."""
    root = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("WORKBENCH_DATA", str(shared_data))
        (root / "experiments").mkdir()
        write_spec(root, TINY)
        mlruns = root / "mlruns"
        run_sweep(Workspace(tracking_uri=f"sqlite:///{mlruns / 'mlflow.db'}", storage=f"sqlite:///{mlruns / 'optuna.db'}"),
                  S.load("tiny", ["epochs=1"]), trials=1)
    return root / "mlruns"


@pytest.mark.parametrize("which", ["mlflow.db", "optuna.db"])
@pytest.mark.parametrize("damage", ["not sqlite", "truncated sqlite"])
def test_a_corrupted_database_is_one_line_and_never_replaced(tiny_spec, workdir, recorded, which, damage):
    shutil.copytree(recorded, workdir / "mlruns", ignore=shutil.ignore_patterns("artifacts"))
    target = workdir / "mlruns" / which
    data = target.read_bytes()
    broken = b"this is no database\n" * 64 if damage == "not sqlite" else data[:4096] + b"\x00" * 128
    target.write_bytes(broken)
    result = workbench_in_process("sweep", "tiny", "--trials", "2", "--set", "epochs=1", cwd=workdir)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.stdout
    # The line names the damaged file as the command was told it (the default store under mlruns/,
    # which conftest's in-process runner names absolutely), so the user knows which of the two
    # databases to move aside or restore.
    assert line.startswith(f"error: {workdir.resolve() / 'mlruns' / which}: "), line
    assert target.read_bytes() == broken  # never silently started afresh


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_on(port: int) -> set[str]:
    """Local addresses that have `port` in LISTEN state, from /proc/net/tcp(6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":
                found.add(address)
    return found


@pytest.mark.parametrize("host, exposed", [(None, False), ("0.0.0.0", True)])
def test_servers_bind_loopback_unless_told_and_warn_when_exposed(workdir, host, exposed):
    port = free_port()
    args = ["serve", "dashboard", "--port", str(port), "--storage", f"sqlite:///{workdir / 'optuna.db'}"]
    if host:
        args += ["--host", host]
    server = subprocess.Popen([str(Path(sys.executable).with_name("workbench")), *args], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not listening_on(port) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.3)
        addresses = listening_on(port)
        assert addresses, "the dashboard never listened"
        loopback = {"0100007F", "00000000000000000000000001000000"}
        assert (addresses <= loopback) is not exposed, addresses
    finally:
        os.killpg(server.pid, 15)
        _, err = server.communicate(timeout=30)
    assert ("warning: optuna-dashboard will listen on 0.0.0.0" in err) is exposed


def test_models_load_in_safe_mode_and_only_from_the_configured_store(workdir, stores):
    _, uri = stores
    store.connect(uri)
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2)(inputs)))
    with store.fluent(uri), mlflow.start_run(experiment_id=store.ensure_experiment(store.connect(uri), "unsafe")) as run:
        mlflow.keras.log_model(keras.Model(inputs, outputs), name="model", metadata={"classes": ["a", "b"]})
    with pytest.raises(WorkbenchError, match="refused: the model carries code") as err:
        predict.load_model(f"runs:/{run.info.run_id}/model", uri)
    assert err.value.exit_code == 2
    for outside in ("/tmp/some/model", "file:///tmp/model", "s3://bucket/model", "https://example.org/m"):
        with pytest.raises(WorkbenchError, match="not a model of the configured tracking store"):
            predict.model_uri(outside)
    assert predict.model_uri("/tmp/some/model", allow_external=True) == "/tmp/some/model"
    image = workdir / "face.png"
    keras.utils.save_img(str(image), np.zeros((32, 32, 3)))
    result = workbench_in_process("predict", str(image), "--model", "/tmp/some/model", cwd=workdir)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--allow-external-model" in result.stderr


def test_nothing_secret_from_the_environment_reaches_a_run(tiny_spec, workdir, stores):
    secret = "tok-93f1c2-never-log-me"
    result = workbench_in_process("run", "tiny", "--set", "epochs=1", cwd=workdir,
                                  env={"AWS_SECRET_ACCESS_KEY": secret, "WORKBENCH_API_TOKEN": secret})
    assert result.returncode == 0, result.stderr
    client = MlflowClient(stores[1])
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert secret not in repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=stores[1]))
    for file in artifacts.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    assert errors.masked("postgresql://me:pw@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert errors.scrub("could not connect to postgresql+psycopg2://me:pw@db/x") == \
        "could not connect to postgresql+psycopg2://me:***@db/x"
