"""Shared fixtures: every test runs in its own working directory with its own MLflow store and
Optuna storage, on a tiny synthetic dataset (32 px, a few hundred images) generated once per
session, so the suite is honest (real training, real tracking) and still quick on 2 CPU cores."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(autouse=True)
def fresh_keras_state():
    """Each test starts from a clean Keras/TensorFlow state, whatever the previous test built:
    one worker process runs many test files, and model-building state would otherwise pile up."""
    yield
    import sys

    if "keras" in sys.modules:
        import gc

        import keras

        keras.backend.clear_session()
        gc.collect()


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
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("workbench")
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
