"""Several worker processes on one machine, one study: `workbench sweep SPEC --workers K`.

The coordinator opens the study and the sweep's parent run first (so workers never race to
create them), then starts K copies of `workbench sweep ... --worker`, each running trials until
the study's total is reached. On a GPU machine worker i sees only GPU i (CUDA_VISIBLE_DEVICES),
so each trial owns a whole device. Workers write their output to `mlruns/workers/`; the
coordinator shows progress from the study itself. Many machines join the same sweep by running
the same command against a shared `--storage` and `--tracking-uri`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from workbench import paths
from workbench.errors import WorkbenchError


def gpu_count() -> int:
    """GPUs visible to this machine, asked of nvidia-smi so the coordinator needs no TensorFlow."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return len([d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def worker_env(index: int, gpus: int, workers: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)].strip()
    else:
        # CPU workers share the cores: each worker's TensorFlow thread pool gets its share, so
        # K workers do not oversubscribe the machine K times over.
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(max((os.cpu_count() or 1) // workers, 1)))
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return env


def launch(argv: list[str], workers: int, study_name: str) -> list[tuple[subprocess.Popen, Path]]:
    logs = paths.mlruns_dir() / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = gpu_count()
    started = []
    for index in range(workers):
        log_path = logs / f"{study_name}-worker{index}.log"
        env = {**worker_env(index, gpus, workers), "WORKBENCH_WORKER_INDEX": str(index)}
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "workbench.cli", *argv, "--worker"],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append((process, log_path))
    return started


def wait(started: list[tuple[subprocess.Popen, Path]], on_tick, interval: float = 2.0) -> None:
    """Wait for every worker, calling `on_tick()` meanwhile; a worker's failure is an error that
    names its log. Ctrl-C is passed on to the workers, which end their runs cleanly."""
    try:
        while any(p.poll() is None for p, _ in started):
            on_tick()
            time.sleep(interval)
    except KeyboardInterrupt:
        for process, _ in started:
            process.send_signal(2)
        for process, _ in started:
            process.wait(timeout=120)
        raise
    on_tick()
    failed = [(p.returncode, log) for p, log in started if p.returncode != 0]
    if failed:
        code, log = failed[0]
        raise WorkbenchError(f"{len(failed)} worker(s) failed (exit {code}); see {log}")
