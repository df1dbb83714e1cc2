"""Where one workbench reads and writes: a `Workspace` names the data root, the raw-data root,
the experiment specs, the tracking store, the study storage, the reports and the exports. It is
built once, at the edge of a process (the CLI from its flags, a notebook from
`workbench.Workspace(".")`), in this order: what the caller says, then the environment
(`WORKBENCH_DATA`, `MLFLOW_TRACKING_URI`, ...), then the defaults under its root. It is then
passed by hand to whatever reads or writes, so a line that touches a folder can say which one,
and two workspaces can live in one process without seeing each other. Nothing here writes the
environment. The two file chores every stage shares (a lock, a folder built once) live here too,
beside the places they guard."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

# The environment variables a workspace reads, field by field.
ENVIRONMENT = {"data": "WORKBENCH_DATA", "raw": "WORKBENCH_RAW", "experiments": "WORKBENCH_EXPERIMENTS",
               "reports": "WORKBENCH_REPORTS", "exports": "WORKBENCH_EXPORTS", "mlruns": "WORKBENCH_MLRUNS",
               "tracking_uri": "MLFLOW_TRACKING_URI", "storage": "WORKBENCH_STORAGE"}


@dataclass(frozen=True)
class Workspace:
    """The places one workbench uses. Give `root` and any field to fix it; the rest come from
    `env` (default: this process's environment), then from defaults under `root`."""

    root: Path = Path(".")
    data: Path | None = None
    raw: Path | None = None            # datasets as downloaded: read, never written
    experiments: Path | None = None
    reports: Path | None = None
    exports: Path | None = None
    mlruns: Path | None = None
    tracking_uri: str | None = None    # MLflow: sqlite:///FILE, postgresql://..., http(s)://...
    storage: str | None = None         # Optuna's study storage
    env: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        env = os.environ if self.env is None else self.env
        root = Path(self.root).expanduser()
        resolved: dict = {"root": root, "env": {}}  # what the environment said is now in the fields

        def pick(name: str, default):
            given = getattr(self, name)
            if given not in (None, ""):
                return given
            return env.get(ENVIRONMENT[name]) or default

        resolved["data"] = Path(pick("data", root / "data"))
        resolved["raw"] = Path(pick("raw", resolved["data"] / "raw"))
        for name in ("experiments", "reports", "exports", "mlruns"):
            resolved[name] = Path(pick(name, root / name))
        resolved["tracking_uri"] = str(pick("tracking_uri", f"sqlite:///{resolved['mlruns'] / 'mlflow.db'}"))
        resolved["storage"] = str(pick("storage", f"sqlite:///{resolved['mlruns'] / 'optuna.db'}"))
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    # --- derived places -------------------------------------------------------------------------
    @property
    def manifests(self) -> Path:
        """Where ingest writes manifests (one CSV + sidecar JSON + report per dataset)."""
        return self.data / "manifests"

    @property
    def decoded(self) -> Path:
        """Normalised copies of images TensorFlow cannot decode as they are (webp, CMYK, EXIF-rotated...)."""
        return self.data / "interim" / "decoded"

    @property
    def locks(self) -> Path:
        return self.data / ".locks"

    @property
    def worker_logs(self) -> Path:
        """Where `sweep --workers N` writes each worker's output."""
        return self.mlruns / "workers"

    def scratch(self, purpose: str) -> Path:
        """A fresh folder name under data/interim/ for one run's temporary files (not created)."""
        return self.data / "interim" / purpose / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def with_(self, **changes) -> "Workspace":
        """This workspace with some places changed (an immutable copy)."""
        return replace(self, **changes)

    def smoke(self, spec_name: str) -> "Workspace":
        """The workspace of a `--smoke` run: generated trees under data/smoke/<spec>/, kept apart
        from the user's data; a user's raw folder is read, never written, and generated faces must
        never pass for their photos later."""
        root = (self.data / "smoke" / spec_name).resolve()
        return replace(self, data=root, raw=root / "raw")

    def child_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process that must see this workspace (a sweep worker, MLflow's
        model server): the base environment plus every place, absolute. Store URLs travel here,
        never in argv, because a password in argv is visible to every user of the machine."""
        env = dict(os.environ if base is None else base)
        for name, variable in ENVIRONMENT.items():
            value = getattr(self, name)
            env[variable] = str(value.resolve()) if isinstance(value, Path) else value
        env["MLFLOW_TRACKING_URI"] = absolute_sqlite(self.tracking_uri)
        env["WORKBENCH_STORAGE"] = absolute_sqlite(self.storage)
        return env


def absolute_sqlite(url: str) -> str:
    """A relative SQLite URL made absolute, so another process in another folder finds the same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


# --- files shared between processes --------------------------------------------------------------
@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on `path` (created if missing): processes of one machine that would
    create the same thing (a database's tables, a dataset) take turns, the later ones finding
    it made."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(target: Path, done: str, build: Callable[[Path], None], locks: Path) -> Path:
    """Make folder `target` with `build(staging)` unless `target/done` already exists. The build
    happens in a staging folder renamed into place when complete, so an interrupted build never
    leaves a half-written folder that looks finished. Processes take turns through a lock under
    `locks` (a workspace's data folder, never beside the target, which may be a raw-data root)."""
    if (target / done).exists():
        return target
    key = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    with locked(locks / f"{target.name}-{key}.lock"):
        if (target / done).exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            if target.exists():  # a leftover without its completion mark
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
