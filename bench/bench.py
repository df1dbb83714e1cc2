"""Benchmarks for the speed and memory targets (run with `make bench`; results go to
bench/results/<timestamp>.json and bench/results/latest.json). Not tests: numbers depend on the
machine, so they are recorded, not asserted.

- synth: seconds to generate the quickstart's 1,500 synthetic faces;
- throughput: steady-state training and inference images/s per quickstart backbone at 64 px;
- memory: resident memory after each of 30 tiny trials in one process (it must stay flat:
  trials release Keras state and memory between them);
- sweep (with --sweep): wall time of the full quickstart sweep, the `make sweep` target
  (under 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_synth(workdir: Path) -> dict:
    from workbench import synth

    started = time.perf_counter()
    synth.generate(workdir / "synth", task="mask3_fake", seed=0, size=64, count=1500)
    return {"images": 1500, "seconds": round(time.perf_counter() - started, 2)}


def bench_throughput() -> dict:
    import numpy as np
    import tensorflow as tf

    from workbench import backbones, spec as S

    results = {}
    for backbone, extra in (("simple_cnn", {"pooling": "flatten"}), ("mobilenet_v2", {"alpha": 0.35})):
        config = S.single_config(S.validate({"name": "bench", "params": {"backbone": backbone, "image_size": 64, **extra}}))
        model = backbones.build_model(config, 3)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(0).uniform(0, 255, (1024, 64, 64, 3)).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(1024, "int32"))).batch(32).cache()
        model.fit(ds, epochs=1, verbose=0)  # warm-up: tracing and caches
        started = time.perf_counter()
        model.fit(ds, epochs=2, verbose=0)
        train = 2048 / (time.perf_counter() - started)
        started = time.perf_counter()
        model.predict(ds, verbose=0)
        infer = 1024 / (time.perf_counter() - started)
        results[backbone] = {"train_images_per_second": round(train), "predict_images_per_second": round(infer)}
    return results


def bench_memory(workdir: Path, trials: int) -> dict:
    os.environ["WORKBENCH_DATA"] = str(workdir / "data")
    from workbench import spec as S
    from workbench.dataset import prepare
    from workbench import record
    from workbench.run import tracked_run

    raw = {"name": "membench", "dataset": {"source": "synthetic", "task": "mask3_fake", "count": 120, "size": 32},
           "params": {"image_size": 32, "epochs": 1, "batch_size": 16, "dense_units": 8}, "seed": 1}
    spec = S.validate(raw)
    data = prepare(spec)
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    client = record.connect(uri)
    experiment = record.ensure_experiment(client, spec.name, uri)
    after = []
    for _ in range(trials):
        tracked_run(spec, S.single_config(spec), data, experiment_id=experiment)
        after.append(round(rss_mb(), 1))
    settled = after[min(4, len(after) - 1)]  # the first trials warm caches up
    return {"trials": trials, "rss_mb_after_each": after,
            "growth_mb_after_warmup": round(after[-1] - settled, 1),
            "growth_mb_per_trial_after_warmup": round((after[-1] - settled) / max(len(after) - 5, 1), 2)}


def bench_sweep(workdir: Path) -> dict:
    env = {**os.environ, "WORKBENCH_DATA": str(workdir / "sweepdata"), "WORKBENCH_MLRUNS": str(workdir / "sweepruns"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'sweepruns' / 'mlflow.db'}",
           "WORKBENCH_STORAGE": f"sqlite:///{workdir / 'sweepruns' / 'optuna.db'}"}
    started = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).with_name("workbench")), "sweep", "quickstart"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    return {"spec": "quickstart", "seconds": round(time.perf_counter() - started, 1), "exit_code": out.returncode,
            "leaderboard": out.stdout.splitlines()[-16:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="also time the full quickstart sweep (minutes)")
    parser.add_argument("--memory-trials", type=int, default=30)
    args = parser.parse_args()
    from workbench.cli.common import quiet_environment

    quiet_environment()
    import tensorflow as tf

    results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "gpus": len(tf.config.list_physical_devices("GPU"))}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, run in (("synth", lambda: bench_synth(workdir)), ("throughput", bench_throughput),
                          ("memory", lambda: bench_memory(workdir, args.memory_trials)),
                          *([("sweep", lambda: bench_sweep(workdir))] if args.sweep else [])):
            print(f"bench {name} ...", flush=True)
            results[name] = run()
            print(json.dumps(results[name])[:400], flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = results["when"].replace(":", "").replace("-", "")
    for path in (out / f"{stamp}.json", out / "latest.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out / 'latest.json'}")


if __name__ == "__main__":
    main()
