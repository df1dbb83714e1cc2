"""Shared plumbing of the benchmark suite: where its inputs and results live, how comparisons are
timed (a warm-up, then rounds that alternate the sides, then medians), how resident memory is read
(this process's, or a child's peak through `os.wait4`), and a description of the machine and of
how busy it was. Nothing here measures workbench itself; the sections in `speed.py`, `sweeps.py`
and `scale.py` do, through the product's own functions.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


def bench_data() -> Path:
    """Generated inputs reused from one benchmark run to the next (git-ignored, under data/):
    generating 10,000 images is part of setting the benchmark up, not of what it measures."""
    return Path(os.environ.get("BENCH_DATA") or REPO / "data" / "bench").resolve()


def median(values) -> float:
    return float(statistics.median(values))


def median_interval(values, level: float = 0.95, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap percentile interval for the median of `values` (seeded: the same values give
    the same interval)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(0).integers(0, len(data), (resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def alternate(sides: list[tuple[str, Callable[[], object]]], rounds: int) -> dict[str, list]:
    """Run every side once per round, rotating which goes first, so drift in the machine's load
    (other people's jobs start and stop) falls on all sides alike. Returns each side's results."""
    results: dict[str, list] = {name: [] for name, _ in sides}
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for name, run in order:
            results[name].append(run())
    return results


def proc_status(field: str) -> float:
    """A memory figure of this process from /proc/self/status in MB (VmRSS now, VmHWM its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_mb() -> float:
    return proc_status("VmRSS")


def run_child(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              cwd: Path = REPO) -> tuple[int, float, float]:
    """Run a command to completion; returns (exit code, wall seconds, peak resident MB of that
    process). The peak comes from the kernel's accounting of that one child (`wait4`), so a
    heavy earlier child does not leak into a later one's figure."""
    out = open(log, "a") if log else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    return process.returncode, seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine() -> dict:
    """What the figures were measured on, in enough detail to compare two result files."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        memory_gb = None
    versions = {}
    for name in ("tensorflow", "keras", "mlflow", "optuna"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(memory_gb, 1) if memory_gb else None,
            "platform": platform.platform(), "python": platform.python_version(), **versions}


def quiet() -> None:
    """TensorFlow's start-up chatter off, as the CLI does it."""
    from workbench.cli.common import quiet_environment

    quiet_environment()


def python() -> str:
    return sys.executable
