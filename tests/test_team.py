"""The team set-up, for real: a throwaway PostgreSQL server and an `mlflow server` on 127.0.0.1,
and a two-worker sweep against them (the one test of `--workers`: no trial duplicated, lost or
failed). `.ci/run` installs PostgreSQL where it is missing; the test
starts its own cluster in a temporary folder (as the `postgres` user, since initdb refuses root)
so it never touches a system database. Without PostgreSQL the test skips, saying why; with
`WORKBENCH_REQUIRE_POSTGRES=1` (as `.ci/run` sets it) it fails instead.

While the sweep runs, the test reads every process under the command from /proc: no worker's
command line (what `ps` shows anyone on the machine) may hold the store's password."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from workbench.track.sweep import RUN_ATTR, SKIPPED_ATTR, counted

BIN = Path(sys.executable).parent


def required() -> bool:
    return os.environ.get("WORKBENCH_REQUIRE_POSTGRES", "").strip() not in ("", "0", "false", "no")


def unavailable(reason: str):
    if required():
        pytest.fail(f"WORKBENCH_REQUIRE_POSTGRES is set but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set WORKBENCH_REQUIRE_POSTGRES=1 to make this a failure)")


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


def postgres_step(*cmd: str, timeout: int, log: Path | None = None) -> None:
    """One step of setting up the test cluster; a failure says why (installed but unusable is never a skip)."""
    done = subprocess.run(as_postgres(*cmd), capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        server_log = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        pytest.fail(f"{' '.join(cmd)} failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}"
                    f"{server_log}", pytrace=False)


@pytest.fixture
def postgres(tmp_path):
    missing = [name for name in ("initdb", "pg_ctl", "createdb") if not pg_bin(name)]
    if missing:
        unavailable(f"PostgreSQL server binaries not found ({', '.join(missing)}; .ci/run installs them)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root, and there is no `postgres` user to run the server as")
    # Outside pytest's private (0700) temp tree, so the postgres user can reach it.
    folder = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    try:
        postgres_step(pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", timeout=120)
        postgres_step(pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                      f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start", timeout=120, log=folder / "log")
        for db in ("optuna", "mlflow"):
            postgres_step(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db, timeout=60)
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


def parent_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[1])


def descendants(pid: int) -> dict[int, bytes]:
    """Every process below `pid` (children, theirs, ...) with its command line, from /proc."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": the name may hold spaces and parentheses, so split after it.
        parents[int(stat.split("/")[2])] = int(text[text.rindex(")") + 2:].split()[1])
    found: dict[int, bytes] = {}
    level = {pid}
    while level:
        level = {child for child, parent in parents.items() if parent in level and child not in found}
        for child in level:
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                found[child] = b""
    return found


def test_two_workers_against_postgresql_and_an_mlflow_server(tiny_spec, workdir, postgres, mlflow_server):
    # A password in the storage URL (the test cluster trusts every local login, so any works):
    # it must never be written down or shown. The command gets it from its environment, so its
    # own command line holds none and any process under it shows the password only if workbench
    # put it on that process's command line.
    secret = "s3cret-pw-4711"
    storage = f"{postgres}/optuna".replace("postgres@", f"postgres:{secret}@")
    with open(workdir / "sweep.out", "w") as out, open(workdir / "sweep.err", "w") as err:
        command = subprocess.Popen(
            [str(BIN / "workbench"), "sweep", "tiny", "--trials", "2", "--workers", "2", "--tracking-uri",
             mlflow_server, "--set", "epochs=1", "--set", "learning_rate={low: 1.0e-3, high: 1.0e-2, log: true}"],
            cwd=workdir, stdout=out, stderr=err, env={**os.environ, "WORKBENCH_STORAGE": storage})
    workers: dict[int, bytes] = {}
    exposed: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 600
        while command.poll() is None and time.monotonic() < deadline:
            for pid, cmdline in descendants(command.pid).items():
                # The coordinator's own children: a worker forking a helper (git, say) shows the
                # worker's command line for an instant before the helper's exec.
                if b"--worker" in cmdline.split(b"\0") and parent_of(pid) == command.pid:
                    workers[pid] = cmdline
                if secret.encode() in cmdline:
                    exposed[pid] = cmdline
            time.sleep(0.1)
    finally:
        if command.poll() is None:
            command.kill()
        command.wait(timeout=60)
    stdout, stderr = (workdir / "sweep.out").read_text(), (workdir / "sweep.err").read_text()
    assert command.returncode == 0, stdout + stderr
    assert not exposed, f"the store password is on these command lines: {exposed}"
    # Not vacuous: the workers were there to be read, each `workbench.cli sweep ... --worker`.
    assert len(workers) == 2, f"worker processes seen under the sweep: {workers}"
    assert all(b"workbench.cli" in cmdline for cmdline in workers.values()), workers
    study = optuna.load_study(study_name="tiny", storage=storage)
    # Every trial of the budget ran and completed: with two workers on one study, none may fail
    # (a race between the workers would show here as a failed trial). Trials a worker asked for
    # after the other had taken the last one of the budget are bookkeeping: they never ran.
    trials = [t for t in study.get_trials() if counted(t)]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, \
        [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert not [t for t in study.get_trials() if not counted(t) and RUN_ATTR in t.user_attrs]
    client = MlflowClient(mlflow_server)
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    # One child run per trial, each FINISHED: no run of a failed or replaced trial.
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs[RUN_ATTR] for t in trials), \
        stdout + stderr
    assert [r.info.status for r in children] == ["FINISHED"] * 2
    # Two configurations, none trained twice or dropped as a redraw (on a continuous range, either
    # would mean the workers drew in lockstep). Removing the worker's seed offset does not show
    # here: the second worker opens the study after a trial exists, which offsets its seed anyway;
    # test_sweep_survive's two workers opening an empty study at once show it.
    assert len({t.params["learning_rate"] for t in trials}) == 2
    assert not [t.number for t in study.get_trials() if SKIPPED_ATTR in t.user_attrs]
    assert client.get_run(parent).info.status == "FINISHED"
    # Artifacts went through the server: a trial's evidence is listed over HTTP.
    files = {f.path for f in client.list_artifacts(children[0].info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in files
    # Nothing secret is logged: the parent names its storage with the password masked, no run's
    # params or tags hold it, nor the output or the workers' logs.
    sweep_run = client.get_run(parent)
    assert sweep_run.data.params["storage"] == storage.replace(secret, "***")
    for run in [sweep_run, *children]:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    assert secret not in stdout + stderr
    logs = list((workdir / "mlruns" / "workers").glob("*"))
    assert {log.name for log in logs} >= {"tiny-worker1.log"}
    for log in logs:
        assert secret not in log.read_text(errors="replace"), log
