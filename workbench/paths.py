"""Where workbench reads and writes by default, in one place. Everything is relative to the
working directory (the repository root when driven by `make`) and each location can be
overridden by an environment variable, so a team can point many workers at shared storage
(PostgreSQL for Optuna, an MLflow server for tracking) without touching code."""

from __future__ import annotations

import os
from pathlib import Path


def experiments_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_EXPERIMENTS", "experiments"))


def data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_DATA", "data"))


def manifests_dir() -> Path:
    """Where `workbench data ingest` writes manifests (one CSV + sidecar JSON + report per dataset)."""
    return data_dir() / "manifests"


def decoded_dir() -> Path:
    """Normalised copies of images TensorFlow cannot decode as they are (webp, CMYK, EXIF-rotated...)."""
    return data_dir() / "interim" / "decoded"


def raw_dir() -> Path:
    """Where the reference studies' specs expect downloaded datasets, one folder each (read, never
    written); `--data DIR` or $WORKBENCH_RAW points elsewhere."""
    return Path(os.environ.get("WORKBENCH_RAW") or data_dir() / "raw")


def reports_dir() -> Path:
    """`workbench report` pages and `make compare` tables."""
    return Path(os.environ.get("WORKBENCH_REPORTS", "reports"))


def exports_dir() -> Path:
    """TFLite files written by `workbench export`."""
    return Path(os.environ.get("WORKBENCH_EXPORTS", "exports"))


def mlruns_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_MLRUNS", "mlruns"))


def default_tracking_uri() -> str:
    """MLflow 3 refuses the old file store, so the local default is SQLite beside the artifacts."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def default_storage_url() -> str:
    """Optuna's study storage sits next to the MLflow database unless a team shares one."""
    return os.environ.get("WORKBENCH_STORAGE") or f"sqlite:///{mlruns_dir() / 'optuna.db'}"
