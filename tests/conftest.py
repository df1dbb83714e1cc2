"""Shared fixtures: every test runs in its own working directory with its own MLflow store and
Optuna storage, on a tiny synthetic dataset (32 px, a few hundred images) generated once per
session, so the suite is honest (real training, real tracking) and still quick on 2 CPU cores."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "dataset": {"source": "synthetic", "task": "mask3_fake", "count": 180, "size": 32},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 2, "batch_size": 16,
               "dense_units": 16, "learning_rate": 0.003},
    "trials": 2,
    "seed": 7,
}

# A task the tests show is learnable in seconds: mask / no mask at 32 px, 800 images, 6 epochs of
# SGD annealed to zero, the best validation epoch's weights kept. Six runs of one trial scored
# 0.875 to 0.919 test accuracy (160 images; without restore_best one run fell to 0.79); a broken
# pipeline (labels shuffled, classes swapped, preprocessing doubled) stays near chance (0.5,
# standard error 0.04) or below, so tests that assert LEARNED_FLOOR tell a model that learned
# from one that did not.
LEARN = {
    "name": "learn",
    "dataset": {"source": "synthetic", "task": "mask2", "count": 800, "size": 32},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    # Flipped training copies make an augmented test image tell (its predictions would move).
    "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 6, "batch_size": 16, "dense_units": 16,
               "optimizer": "sgd", "learning_rate": [0.01, 0.005], "schedule": "cosine", "augmentation": "flip",
               "restore_best": True},
    "trials": 2,
    "seed": 7,
}
LEARNED_FLOOR = 0.8         # accuracy; chance is 0.5
LEARNED_CLASS_FLOOR = 0.7   # recall of each class


def fresh_faces(folder: Path, per_class: int = 30, size: int = 32, seed: int = 1234) -> dict[str, list[Path]]:
    """Faces no dataset of the tests holds (another seed), drawn and saved as training's are
    (JPEG, young and old), per mask2 class: a model that learned the task names each right."""
    from workbench.data import synth

    synth.generate(folder, "mask2", seed=seed, size=size, count=2 * per_class)
    return {label: sorted((folder / label).glob("*.jpg")) for label in synth.TASKS["mask2"]}


@pytest.fixture(autouse=True)
def fresh_keras_state():
    """Each test starts from a clean Keras/TensorFlow state, whatever the previous test built:
    one worker process runs many test files, and model-building state would otherwise pile up."""
    yield
    import gc
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=False)
    gc.collect()
    # What survives a test (TensorFlow, MLflow, the session fixtures) is frozen out of later
    # collections: a full collection over that heap took 0.5-1.5 s, after every one of 300 tests.
    gc.freeze()


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """One data folder for the session: the synthetic set is generated once, then reused."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def workdir(tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").mkdir()
    monkeypatch.setenv("WORKBENCH_DATA", str(shared_data))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORKBENCH_STORAGE", raising=False)
    return tmp_path


def write_spec(folder: Path, raw: dict, name: str | None = None) -> Path:
    path = folder / "experiments" / f"{name or raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def tiny_spec(workdir) -> Path:
    return write_spec(workdir, TINY)


@pytest.fixture
def repo_experiments(workdir) -> Path:
    shutil.copytree(REPO / "experiments", workdir / "experiments", dirs_exist_ok=True)
    return workdir / "experiments"


def workbench_cli(*args: str, cwd: Path, env: dict | None = None):
    """Run the installed console script the way a user does, capturing its output."""
    import sys

    exe = Path(sys.executable).with_name("workbench")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def workbench_in_process(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script's own entry point run in this process: the same parsing, errors and
    exit codes in milliseconds instead of seconds of imports. For commands that fail fast; a few
    tests still run each path through the real script (`workbench_cli`). The environment (which
    this harness sets for the command, as a shell would) and working directory are restored afterwards."""
    import contextlib
    import io

    from workbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    # The default stores, named absolutely: MLflow keeps one engine per store URL for the life of
    # the process, so the relative default would reach whichever folder first used it.
    here = Path(cwd).resolve()
    defaults = {"MLFLOW_TRACKING_URI": f"sqlite:///{here / 'mlruns' / 'mlflow.db'}",
                "WORKBENCH_STORAGE": f"sqlite:///{here / 'mlruns' / 'optuna.db'}"}
    wanted = {**os.environ, **(env or {})}
    code = 0
    try:
        os.environ.update({k: v for k, v in defaults.items() if not wanted.get(k)})
        os.environ.update({k: v for k, v in (env or {}).items() if v or k not in defaults})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["workbench", *args], code, out.getvalue(), err.getvalue())


@dataclass(frozen=True)
class Learned:
    """A store holding one recorded sweep of LEARN (two trials, each of which learned the task),
    the best one's model registered as `faces@champion`, and the data they trained on."""

    root: Path          # the working directory the commands ran in (experiments/, data/, mlruns/)
    uri: str            # the MLflow tracking URI
    storage: str        # the Optuna storage URL
    run_id: str         # the champion's run: the trial with the best validation objective
    trials: tuple[str, ...]  # both trials' runs, best validation objective first
    sweep_id: str       # the sweep's parent run
    classes: tuple[str, ...]

    def env(self) -> dict:
        return {"WORKBENCH_DATA": str(self.root / "data"), "MLFLOW_TRACKING_URI": self.uri,
                "WORKBENCH_STORAGE": self.storage}


def _learned_at(root: Path) -> Learned:
    from mlflow.tracking import MlflowClient

    uri, storage = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", f"sqlite:///{root / 'mlruns' / 'optuna.db'}"
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == LEARN["name"]]
    runs = client.search_runs([experiment.experiment_id])
    trials = sorted((r for r in runs if r.data.tags.get("workbench.role") == "trial"),
                    key=lambda r: -r.data.metrics["objective"])
    [sweep] = [r for r in runs if r.data.tags.get("workbench.role") == "sweep"]
    champion = client.get_model_version_by_alias("faces", "champion").run_id
    return Learned(root, uri, storage, champion, tuple(r.info.run_id for r in trials), sweep.info.run_id,
                   tuple(trials[0].data.params["classes"].split(",")))


@pytest.fixture(scope="session")
def learned(tmp_path_factory) -> Learned:
    """LEARN swept and promoted through the console script, once for the whole run: pytest-xdist
    workers share one base folder, and the first to arrive builds while the others wait on a
    lock. Tests may read it; a test that writes runs or registry entries works on `learned_copy`."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "learned"
    with open(shared / "learned.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            (root / "experiments").mkdir(parents=True)
            write_spec(root, LEARN)
            env = {"WORKBENCH_DATA": str(root / "data"),
                   "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
                   "WORKBENCH_STORAGE": f"sqlite:///{root / 'mlruns' / 'optuna.db'}"}
            for args in (("sweep", "learn"), ("promote", "--name", "faces", "--experiment", "learn")):
                done = workbench_cli(*args, cwd=root, env=env)
                assert done.returncode == 0, (args, done.stdout, done.stderr)
                (root / f"{args[0]}.out").write_text(done.stdout)   # what the user saw, for tests to read
            (root / "done").write_text("ok")
    return _learned_at(root)


def copy_learned(learned: Learned, folder: Path) -> Learned:
    """A private copy of the learned store under `folder`, safe to write: the databases, artefacts
    and data are copied and every path the store recorded is moved to the copy."""
    import sqlite3

    root = folder / "learned"
    shutil.copytree(learned.root, root, ignore=shutil.ignore_patterns("*.lock"))
    old, new = str(learned.root), str(root)
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [c[1] for c in db.execute(f"PRAGMA table_info('{table}')") if "CHAR" in c[2].upper()
                           or "TEXT" in c[2].upper()]:
                db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE "{column}" LIKE ?',
                           (old, new, f"%{old}%"))
    for sidecar in (root / "data" / "manifests").glob("*.json"):
        sidecar.write_text(sidecar.read_text().replace(old, new))
    return _learned_at(root)


@pytest.fixture
def learned_copy(learned, tmp_path) -> Learned:
    """The learned store, copied for one test that writes runs or registry entries."""
    return copy_learned(learned, tmp_path)


# Files in the order xdist hands them out (`--dist loadfile --no-loadscope-reorder`: whole files,
# in collection order, two to each worker to start with). Worker one builds the learned store
# (test_learning) and goes on with files that read it, while worker two starts on the longest
# files that do not, so neither waits on the other; then the longest first, so no worker is left
# with a long file at the end while the other idles. The rest follow as collected.
FIRST = ("test_learning.py", "test_sweep_survive.py", "test_transfer.py", "test_ship.py", "test_studies.py", "test_commands.py",
         "test_faults.py", "test_team.py", "test_crossdata.py", "test_trust.py", "test_hostile_data.py", "test_compare.py",
         "test_sweep.py", "test_notebook.py", "test_backbones.py", "test_browser.py", "test_workspace.py", "test_init.py",
         "test_run.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: tests keep their order
