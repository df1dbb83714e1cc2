"""Benchmarks of whole sweeps, all through `sweep.run_sweep` (the one sweep path) or the
`workbench sweep` command itself: what median pruning saves against no pruning on the same sweep,
whether a long-lived sweep process keeps its memory flat over 30 trials (the two pruning sweeps'
trials, run one after the other in one process), and the quickstart as a new user meets it
(`make sweep`: data generation included), whose champion then serves the Keras-versus-TFLite
latency comparison.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common import REPO, python, rss_mb, run_child, timed

from workbench.workspace import Workspace

# One small sweep, run twice (median pruner, then none). A random sampler draws the same
# configurations in both, so any difference in the best trial is pruning's doing, not the
# sampler reacting to pruned trials (TPE would).
PRUNING = {"name": "bench-pruning", "seed": 3, "trials": 15, "sampler": "random",
           "dataset": {"source": "synthetic", "task": "mask3_fake", "count": 600, "size": 32},
           "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 8, "batch_size": 32,
                      "balance": ["none", "oversample"], "dense_units": [16, 64], "restore_best": True,
                      "learning_rate": {"low": 1.0e-5, "high": 2.0e-3, "log": True}},
           # Validation loss: on 90 validation images macro-F1 moves by a tenth from one epoch to
           # the next, and the sweep's best would be whichever trial had the luckiest epoch.
           "objective": {"metric": "val_loss"}}  # the pruner's own settings: workbench's defaults

def _stores(folder: Path) -> dict:
    return {"storage": f"sqlite:///{folder / 'optuna.db'}", "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}


def sweeps(quick: bool) -> dict:
    """The same sweep with the median pruner and with none: epochs trained and best objective;
    and this process's resident memory after each of the 30 trials the two sweeps run."""
    import threading

    import optuna

    from workbench import spec as S
    from workbench import vocabulary
    from workbench.data.dataset import prepare
    from workbench.track.progress import SweepListener
    from workbench.track.sweep import run_sweep

    # QUICK: half the images (the same 30 trials and epochs, so both figures keep their meaning).
    setup = {**PRUNING, "dataset": {**PRUNING["dataset"], "count": 300}} if quick else PRUNING
    prepare(S.validate(setup), Workspace())  # generated once, before either side's clock starts
    sides, after, threads = {}, [], []

    class Memory(SweepListener):
        def trial(self, progress) -> None:
            after.append(rss_mb())
            threads.append(threading.active_count())

    with tempfile.TemporaryDirectory() as tmp:
        for pruner in ("median", "none"):
            spec = S.validate({**setup, "pruner": pruner})
            folder = Path(tmp) / pruner
            folder.mkdir()
            seconds, result = timed(lambda: run_sweep(Workspace(**_stores(folder)), spec, listener=Memory()))
            trials = [t for t in result.study.get_trials(deepcopy=False)
                      if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
            sides[pruner] = {
                "seconds": round(seconds, 1), "trials": len(trials),
                "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
                # One reported value per trained epoch (the pruner hears of every epoch).
                "epochs_trained": sum(len(t.intermediate_values) for t in trials),
                "best_objective": round(result.study.best_value, 4),
                "configurations": [dict(t.params) for t in trials],
                "curves": {t.number: [round(v, 3) for _, v in sorted(t.intermediate_values.items())] for t in trials},
            }
    same = sides["median"]["configurations"] == sides["none"]["configurations"]
    lower = vocabulary.lower_is_better(setup["objective"]["metric"])
    for side in sides.values():
        side.pop("configurations")
    return {
        "setup": {**{k: setup[k] for k in ("trials", "sampler", "seed", "objective", "dataset")},
                  "params": setup["params"], "pruning": S.validate(setup).pruning.model_dump()},
        "same_configurations": same, "sides": sides,
        "pruning_epoch_ratio": round(sides["median"]["epochs_trained"] / sides["none"]["epochs_trained"], 3),
        # Positive: the best trial of the pruned sweep is that much worse than without pruning.
        "pruning_best_delta": round((sides["median"]["best_objective"] - sides["none"]["best_objective"])
                                    * (1 if lower else -1), 4),
        "objective": setup["objective"]["metric"],
        "pruning_time_ratio": round(sides["median"]["seconds"] / sides["none"]["seconds"], 3),
        "memory": {"trials": len(after), "complete_trials": sum(s["trials"] - s["pruned"] for s in sides.values()),
                   "rss_mb_after_each": [round(v, 1) for v in after], "threads_after_each": threads,
                   "rss_mb_after_trial_3": round(after[2], 1), "rss_mb_after_last": round(after[-1], 1),
                   "memory_growth": round(after[-1] / after[2] - 1, 4)},
    }


def quickstart(quick: bool) -> dict:
    """`make sweep` after installation: `workbench sweep quickstart` in a fresh data and runs
    folder, timed from the command's start to its leaderboard; then the champion's latency."""
    import optuna
    from speed import inference

    from workbench import vocabulary
    from workbench.ship import predict, promote
    from workbench.track import store as tracking

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "WORKBENCH_DATA": str(folder / "data"), "WORKBENCH_MLRUNS": str(folder / "mlruns")}
        for key in ("MLFLOW_TRACKING_URI", "WORKBENCH_STORAGE", "WORKBENCH_CACHE_BUDGET"):
            env.pop(key, None)
        command = [str(Path(python()).with_name("workbench")), "sweep", "quickstart"]
        log = folder / "sweep.log"
        code, seconds, peak = run_child(command, env=env, log=log, cwd=REPO)
        output = log.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"`workbench sweep quickstart` exited {code}:\n{output[-3000:]}")
        uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        states = {s: sum(t.state.name.lower() == s for t in done) for s in ("complete", "pruned", "fail")}
        client = tracking.connect(uri)
        champion = promote.select(client, experiment="quickstart", sweep="latest")
        trials = []
        for run in client.search_runs([champion.experiment_id], f"tags.`{vocabulary.ROLE}` = 'trial'"):
            m, p = run.data.metrics, run.data.params
            trials.append({"trial": int(run.data.tags.get(vocabulary.TRIAL, -1)), "state": run.data.tags.get(vocabulary.STATE),
                           **{k: p.get(k) for k in ("backbone", "balance", "augmentation", "learning_rate")},
                           **{k: round(m[k], 4) for k in ("objective", "best_epoch", "train_seconds",
                                                          "test_accuracy", "test_f1_macro") if k in m},
                           **{k: round(v, 4) for k, v in m.items() if k.startswith("test_f1_")
                              and k not in ("test_f1_macro", "test_f1_weighted")}})
        loaded = predict.load_model(f"runs:/{champion.run_id}/model", uri)
        latency = inference(loaded.model, loaded.image_size, quick)
    return {
        "quickstart_seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1),
        "trials": len(done), "states": states,
        "trials_per_minute": round(len(done) / (seconds / 60), 2),
        "champion": {"run_name": champion.run_name, "objective": round(champion.metrics.get("objective", 0), 4),
                     **{k: champion.params.get(k) for k in ("backbone", "balance", "augmentation")}},
        "per_trial": sorted(trials, key=lambda t: t["trial"]),
        # The command's own progress lines: seconds elapsed as each trial finished.
        "progress": [line for line in output.splitlines() if line.startswith("[")],
        "inference": latency,
    }
