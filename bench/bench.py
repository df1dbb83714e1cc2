"""workbench's benchmark suite (`make bench`, `make bench QUICK=1`): speed and memory measured side
by side against what users would otherwise do, as ratios, because absolute times on a shared
2-core machine are noise. Every figure is a median over rounds after a warm-up, and every
comparison alternates its sides. Each section runs in a fresh process, so no section inherits
another's memory or TensorFlow state:

- pipeline:   workbench's tf.data pipeline vs ImageDataGenerator.flow_from_directory vs tensors in memory;
- tracking:   a run with full MLflow tracking vs the same run untracked, plus its closing cost;
- sweeps:     the same sweep with the median pruner vs none (epochs trained, best objective), both
              in one process: its resident memory after trial 3 vs after trial 30;
- cache:      peak memory of one epoch over 10,000 224 px images with and without a memory budget;
- ingest:     ingest of 4,000 camera-size (2048x1536) JPEGs on one core vs every core;
- quickstart: `make sweep`'s wall time (data generation included), then the champion's latency in
              Keras vs TFLite at batch 1 and 32.

Results go to bench/results/latest.json, a timestamped copy and latest.md (the table, printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS, bench_data, load_average, machine, python, run_child  # noqa: E402

SECTIONS = ("pipeline", "tracking", "sweeps", "cache", "ingest", "quickstart")


def section_function(name: str):
    import scale
    import speed
    import sweeps

    return {"pipeline": speed.pipeline, "tracking": speed.tracking, "sweeps": sweeps.sweeps,
            "cache": scale.cache, "ingest": scale.ingest, "quickstart": sweeps.quickstart}[name]


# The figures the issue asks for: (key, where in the results, what it means, target, check).
HEADLINES = [
    ("pipeline_vs_upper_bound", ("pipeline", "pipeline_vs_upper_bound"),
     "input pipeline: images/s vs the model on in-memory tensors", ">= 0.9", lambda v: v >= 0.9),
    ("pipeline_vs_imagedatagenerator", ("pipeline", "pipeline_vs_imagedatagenerator"),
     "input pipeline: images/s vs ImageDataGenerator.flow_from_directory", ">= 2", lambda v: v >= 2),
    ("imagedatagenerator_ceiling", ("pipeline", "imagedatagenerator_ceiling"),
     "the most any pipeline could reach: in-memory tensors vs ImageDataGenerator, same model", None, None),
    ("tracking_overhead", ("tracking", "tracking_overhead"),
     "extra training time with full MLflow tracking, tracked vs untracked run (fraction, median of paired rounds)",
     "<= 0.02", lambda v: v <= 0.02),
    ("tracking_overhead_interval95", ("tracking", "tracking_overhead_interval95"),
     "the same: 95 % bootstrap interval of that median (the machine's noise)", None, None),
    ("tracking_overhead_in_loop", ("tracking", "tracking_overhead_in_loop"),
     "the same, timed inside the tracked runs: metric logging during training / training time",
     "<= 0.02", lambda v: v <= 0.02),
    ("tracking_closing_seconds", ("tracking", "closing_seconds"),
     "a tracked run's closing cost: evaluation, cost probes, figures, model (s)", None, None),
    ("pruning_epoch_ratio", ("sweeps", "pruning_epoch_ratio"),
     "epochs trained, median pruner vs none (same sweep)", "<= 0.6", lambda v: v <= 0.6),
    ("pruning_best_delta", ("sweeps", "pruning_best_delta"),
     "best objective lost to pruning", "<= 0.01", lambda v: v <= 0.01),
    ("memory_growth", ("sweeps", "memory", "memory_growth"),
     "resident memory, after trial 30 vs after trial 3 (fraction)", "<= 0.10", lambda v: v <= 0.10),
    ("cache_bytes_per_image", ("cache", "cache_bytes_per_image"),
     "decoded-image cache per 224 px image (bytes)", None, None),
    ("peak_rss_mb", ("cache", "peak_rss_mb"),
     "peak RSS, one epoch over 10,000 224 px images, 512 MB budget (MB)", "bounded", None),
    ("peak_rss_mb_in_memory", ("cache", "peak_rss_mb_in_memory"),
     "the same epoch with the whole split cached in memory (MB)", None, None),
    ("ingest_speedup", ("ingest", "ingest_speedup"),
     "ingest of 4,000 camera-size JPEGs (2048x1536), one core / every core", ">= 1.6 on 2 cores",
     lambda v: v >= 1.6),
    ("ingest_images_per_second", ("ingest", "images_per_second"),
     "the same ingest on every core: images/s", None, None),
    ("quickstart_seconds", ("quickstart", "quickstart_seconds"),
     "`make sweep` wall time after installation, data generation included (s)", "<= 240", lambda v: v <= 240),
    ("quickstart_trials_per_minute", ("quickstart", "trials_per_minute"),
     "quickstart trials finished per minute", None, None),
    ("tflite_speedup_batch1", ("quickstart", "inference", "tflite_speedup_batch1"),
     "champion latency per image, Keras / TFLite, batch 1", None, None),
    ("tflite_speedup_batch32", ("quickstart", "inference", "tflite_speedup_batch32"),
     "champion latency per image, Keras / TFLite, batch 32", None, None),
]


def _dig(results: dict, path: tuple[str, ...]):
    value = results.get("sections", {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def headline(results: dict) -> None:
    """Copy the headline figures to the top level and judge them against their targets."""
    checks = {}
    for key, path, _, target, check in HEADLINES:
        value = _dig(results, path)
        results[key] = value
        if value is None:
            checks[key] = None
        elif key == "peak_rss_mb":
            cache = results["sections"]["cache"]
            # Bounded: the epoch's peak stays within the process's own baseline plus the budget.
            checks[key] = value <= cache["baseline_rss_mb"] + cache["budget_mb"]
        elif check is not None:
            checks[key] = bool(check(value))
    results["targets_met"] = checks


def _format(key: str, value) -> str:
    if value is None:
        return "error"
    if key == "tracking_overhead_interval95":
        return f"{value[0] * 100:+.1f} to {value[1] * 100:+.1f} %"
    if key in ("tracking_overhead", "memory_growth"):
        return f"{value * 100:+.1f} %"
    if key == "tracking_overhead_in_loop":
        return f"{value * 100:.2f} %"
    if key in ("cache_bytes_per_image",):
        return f"{value:,.0f}"
    if key.endswith("_mb") or key.endswith("_mb_in_memory"):
        return f"{value:,.0f}"
    if key.endswith("seconds"):
        return f"{value:.1f}"
    return f"{value:.3g}"


def table_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for key, _, meaning, target, _ in HEADLINES:
        met = results["targets_met"].get(key)
        verdict = "" if target is None else ("met" if met else "MISSED" if met is not None else "-")
        if key == "peak_rss_mb" and results["sections"].get("cache"):
            cache = results["sections"]["cache"]
            target = f"<= {cache['baseline_rss_mb'] + cache['budget_mb']:,.0f} (baseline + budget)"
        rows.append((key, _format(key, results.get(key)), target or "", verdict, meaning))
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    loads = [s.get("load_average_before", []) for s in results["section_runs"].values()]
    busiest = max((l[0] for l in loads if l), default=None)
    lines = [f"# workbench benchmarks ({'QUICK' if results['quick'] else 'full'} run, {results['when']})", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GiB, no GPU used; Python {m['python']}, "
             f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, MLflow {m['mlflow']}, Optuna {m['optuna']}. "
             f"1-minute load average before the sections: {', '.join(f'{l[0]:.1f}' for l in loads if l)}"
             + (f" (busiest {busiest:.1f} on {m['cpus']} CPUs)." if busiest is not None else "."), "",
             "| figure | value | target | | what it compares |", "| --- | ---: | --- | --- | --- |"]
    for key, value, target, verdict, meaning in table_rows(results):
        lines.append(f"| `{key}` | {value} | {target} | {verdict} | {meaning} |")
    lines += ["", "Rerun: `make bench` (or `make bench QUICK=1`); raw figures in `bench/results/latest.json`.", ""]
    return "\n".join(lines)


def print_table(results: dict) -> None:
    rows = [("figure", "value", "target", "", "what it compares"), *table_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def readme_block(readme: str) -> str | None:
    """The benchmark table as README.md holds it between the markers, or None without markers."""
    match = re.search(re.escape(README_START) + r"\n(.*?)" + re.escape(README_END), readme, re.S)
    return match.group(1) if match else None


def write_readme(path: Path, results: dict) -> None:
    """Put `results`' summary (the committed latest.json's, normally) between the README's markers."""
    text = path.read_text(encoding="utf-8")
    if readme_block(text) is None:
        raise SystemExit(f"{path}: no {README_START} ... {README_END} markers")
    body = markdown(results).split("\n", 2)[2]  # without the title line and the blank after it
    path.write_text(re.sub(re.escape(README_START) + r"\n.*?" + re.escape(README_END),
                           lambda _: f"{README_START}\n{body}{README_END}", text, flags=re.S), encoding="utf-8")


def orchestrate(quick: bool, only: list[str]) -> int:
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    bench_data().mkdir(parents=True, exist_ok=True)
    results = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick,
               "machine": machine(), "sections": {}, "section_runs": {}}
    failed = []
    for name in only:
        log = logs / f"{name}.log"
        log.write_text("")
        before = load_average()
        print(f"bench {name} ... (log: {log.relative_to(REPO)})", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            env = {**os.environ, "WORKBENCH_DATA": str(bench_data()), "WORKBENCH_MLRUNS": str(Path(tmp) / "mlruns"),
                   "PYTHONUNBUFFERED": "1"}
            for key in ("MLFLOW_TRACKING_URI", "WORKBENCH_STORAGE", "WORKBENCH_CACHE_BUDGET"):
                env.pop(key, None)
            argv = [python(), str(Path(__file__).resolve()), "--section", name, "--result", str(out)]
            code, seconds, peak = run_child(argv + (["--quick"] if quick else []), env=env, log=log)
            if code == 0 and out.is_file():
                results["sections"][name] = json.loads(out.read_text())
            else:
                failed.append(name)
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"  {name} FAILED (exit {code}); last lines of its log:\n    " + "\n    ".join(tail), flush=True)
        results["section_runs"][name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1),
                                         "load_average_before": before, "load_average_after": load_average()}
        print(f"  {name}: {seconds:.0f} s, load average {before[0] if before else '?'} -> "
              f"{load_average()[0] if load_average() else '?'}", flush=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    headline(results)
    stamp = results["when"].replace(":", "").replace("-", "").replace("+0000", "Z")
    text = json.dumps(results, indent=2) + "\n"
    # A run of some sections only is kept beside the others but never becomes `latest`: the
    # README's table must come from one run of the whole suite.
    partial = set(only) != set(SECTIONS)
    written = RESULTS / f"{stamp}{'-partial' if partial else ''}.json"
    written.write_text(text)
    if not partial:
        (RESULTS / "latest.json").write_text(text)
        (RESULTS / "latest.md").write_text(markdown(results))
    print()
    print_table(results)
    print(f"\n{'QUICK' if quick else 'full'} run: {results['total_seconds']:.0f} s; results in "
          f"{written.relative_to(REPO)}" + ("" if partial else " (and latest.json, latest.md)"))
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 10 minutes on 2 cores)")
    parser.add_argument("--only", help=f"comma-separated sections (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--readme", metavar="README.md",
                        help="measure nothing: copy bench/results/latest.json's table into this file's bench block")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--cache-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.readme:
        results = json.loads((RESULTS / "latest.json").read_text())
        headline(results)
        write_readme(Path(args.readme), results)
        return
    if args.cache_side:
        import scale

        Path(args.result).write_text(json.dumps(scale.side()))
        return
    if args.section:
        from common import quiet

        quiet()
        Path(args.result).write_text(json.dumps(section_function(args.section)(args.quick)))
        return
    only = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    sys.exit(orchestrate(args.quick, only))


if __name__ == "__main__":
    main()
