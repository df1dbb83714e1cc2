"""Choosing for transfer: a sweep whose objective is measured on a source its trials never trained
on. Two synthetic sources differ in a nuisance a model can lean on: in `lit` every with-mask photo
is lit from the left and every without-mask photo from the right (two photo sessions), in `plain`
the light falls anywhere. Trained on `lit`, a model without flips learns the light, which tells
the classes apart there and nowhere else; flips swap the sides and leave it only the masks. So
selection in distribution and selection on the held-out source choose different configurations,
and the second scores better on the held-out source's test images, by more than the seed-to-seed spread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import REPO, workbench_in_process, write_spec
from mlflow.tracking import MlflowClient

from workbench import vocabulary
from workbench.cli.common import short
from workbench.data import synth
from workbench.data.dataset import IN_DISTRIBUTION_VAL
from workbench.track import ui

LIT = {"with_mask": 180, "without_mask": 0}   # degrees: lit from the left / from the right
SOURCES = [{"name": "lit", "adapter": "folders", "path": "lit"},
           {"name": "plain", "adapter": "folders", "path": "plain"}]
TRANSFER = {
    "name": "transfer",
    "dataset": {"source": "manifests", "manifests": SOURCES},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "objective": {"metric": "val_f1_macro", "holdout_source": "plain"},
    # LEARN's recipe (tests/conftest.py), ten epochs: the with-flips model needs them on 240 images.
    "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 10, "batch_size": 16, "dense_units": 16,
               "optimizer": "sgd", "learning_rate": 0.01, "schedule": "cosine", "restore_best": True,
               "augmentation": ["none", "flip"]},
    "sampler": "grid", "pruner": "none", "repeats": 3, "trials": 2, "seed": 7,
}
OUTPUT = REPO / "tests" / "output" / "transfer.json"
COPY = "copy-of-a-lit-image.jpg"


def original(raw: Path) -> Path:
    return sorted((raw / "lit" / "with_mask").glob("*.jpg"))[0]


@pytest.fixture
def sources(workdir, shared_data) -> Path:
    """The two sources as raw folders (drawn once per session), and `plain` holding one exact
    copy of a `lit` image, which must land in one split with its original."""
    raw = shared_data / "raw"
    for name, seed, lit_from in (("lit", 11, LIT), ("plain", 12, None)):
        if not (raw / name / "dataset.json").is_file():
            staging = raw / f".{name}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            synth.generate(staging, "mask2", seed=seed, size=32, count=400, lit_from=lit_from)
            if name == "plain":
                shutil.copy(original(raw), staging / "with_mask" / COPY)
            staging.rename(raw / name)
    return raw


def recorded(workdir: Path, raw: dict, command: str = "sweep"):
    """`workbench COMMAND` of the spec `raw`, what it printed, and the runs it recorded."""
    write_spec(workdir, raw)
    done = workbench_in_process(command, raw["name"], cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == raw["name"]]
    runs = client.search_runs([experiment.experiment_id])
    return done, client, runs


def children(runs, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_selection_on_the_held_out_source_chooses_the_model_that_transfers(sources, workdir):
    done, client, runs = recorded(workdir, TRANSFER)
    trials = {r.data.params["augmentation"]: r for r in runs if r.data.tags.get("workbench.role") == "trial"}
    assert set(trials) == {"none", "flip"}
    # The leaderboard shows both validation scores and the gap; every trial holds its three seeds.
    for trial in trials.values():
        [row] = [line for line in done.stdout.splitlines() if f" {trial.data.tags['mlflow.runName']} " in line]
        for metric in (vocabulary.IN_DISTRIBUTION, vocabulary.TRANSFER_GAP):
            assert f" {short(trial.data.metrics[metric])} ±" in row, (metric, row)
        seeds = children(runs, trial)
        assert sorted(r.data.params["seed"] for r in seeds) == ["7", "8", "9"]
        assert {r.data.tags["workbench.fold"] for r in seeds} == {"plain"}
        objectives = [r.data.metrics["objective"] for r in seeds]
        assert trial.data.metrics["objective"] == pytest.approx(np.mean(objectives))
        assert trial.data.metrics["objective_std"] == pytest.approx(np.std(objectives, ddof=1))
        for seed in seeds:
            m = seed.data.metrics
            assert m[vocabulary.TRANSFER_GAP] == pytest.approx(m[vocabulary.IN_DISTRIBUTION] - m["objective"])

    # The link the sweep prints opens its trials with the in-distribution score and the gap as columns.
    [sweep_run] = [r for r in runs if r.data.tags.get("workbench.role") == "sweep"]
    view = json.loads(client.get_experiment(sweep_run.info.experiment_id).tags[ui.SHARED_VIEW + sweep_run.info.run_id])
    assert view["selectedColumns"][:3] == [ui.column("metrics", m) for m in ("objective", vocabulary.IN_DISTRIBUTION,
                                                                             vocabulary.TRANSFER_GAP)]
    # The sweep optimised each configuration's mean over its seeds.
    study = optuna.load_study(study_name="transfer", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(t.data.metrics["objective"]
                                                                         for t in trials.values()))
    # The pruner is shown the held-out source's score, epoch by epoch (the first seed's).
    for optuna_trial in study.trials:
        [trial] = [t for t in trials.values() if t.data.tags["workbench.trial"] == str(optuna_trial.number)]
        first = next(r for r in children(runs, trial) if r.data.params["seed"] == "7")
        watched = {m.step: m.value for m in client.get_metric_history(first.info.run_id, "val_f1_macro")}
        assert optuna_trial.intermediate_values == pytest.approx(watched)

    def score(augmentation: str, metric: str) -> float:
        return trials[augmentation].data.metrics[metric]

    home, away = (max(trials, key=lambda a: score(a, metric)) for metric in (vocabulary.IN_DISTRIBUTION, "objective"))
    figures = {a: {m: round(score(a, m), 3) for m in (vocabulary.IN_DISTRIBUTION, "objective", "test_f1_macro",
                                                       "test_f1_macro_std")} for a in trials}
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps(figures, indent=2) + "\n")
    # In distribution the light is the easier cue, and the model that learned it looks best...
    assert home == "none", figures
    # ...while on the held-out source, where the light says nothing, the flipped one is better,
    assert away == "flip", figures
    # and so it is on the held-out source's test images, which chose nothing, by a margin wider
    # than three times the larger of the two seed-to-seed spreads.
    gain = score("flip", "test_f1_macro") - score("none", "test_f1_macro")
    spread = max(score(a, "test_f1_macro_std") for a in trials)
    assert gain > 3 * spread, figures

    # Resuming finds the study under the same spec (its rule included) and nothing left to run.
    again = workbench_in_process("sweep", "transfer", cwd=workdir)
    assert again.returncode == 0 and "resuming transfer: 2 complete; 0 to run" in again.stdout, again.stdout

    # Promote chooses by that objective, unchanged: the flipped configuration, its best seed.
    promoted = workbench_in_process("promote", "--name", "transfer", "--experiment", "transfer", cwd=workdir)
    assert promoted.returncode == 0, promoted.stderr
    version = client.get_model_version_by_alias("transfer", "champion")
    best_seed = max(children(runs, trials["flip"]), key=lambda r: r.data.metrics["objective"])
    assert version.run_id == best_seed.info.run_id
    card = Path(client.download_artifacts(trials["flip"].info.run_id, vocabulary.Artifacts.MODEL_CARD,
                                          str(workdir))).read_text()
    assert "on the validation images of plain, a source held out of training" in card
    assert "chosen for how it does on plain, a source it never trained on" in card
    # compare lists the two configurations with their spreads, and tests them over their seeds.
    shown = workbench_in_process("compare", "--experiment", "transfer", "--format", "markdown", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("| trial-") == 2 and " ± " in shown.stdout
    assert "paired t-test over 3 seeds" in shown.stdout
    # The report draws each trial at (in distribution, held-out source).
    report = workbench_in_process("report", "--experiment", "transfer", "--sweep", "latest", cwd=workdir)
    assert report.returncode == 0, report.stderr
    page = (workdir / "reports" / "transfer-report.html").read_text()
    assert "In distribution vs held-out source" in page
    for trial in trials.values():
        assert f"{trial.data.tags['mlflow.runName']} \\u00b7 augmentation {trial.data.params['augmentation']}" in page


def test_leave_one_source_out_trains_once_per_source_and_averages(sources, workdir):
    raw = {**TRANSFER, "name": "loso", "objective": {"metric": "val_f1_macro", "leave_one_source_out": True},
           "params": {**TRANSFER["params"], "epochs": 2, "augmentation": "flip"}, "repeats": 1}
    done, client, runs = recorded(workdir, raw, "run")
    assert "(lit held out)" in done.stdout and "(plain held out)" in done.stdout
    assert "each configuration trains 2 times, once per source held out" in done.stdout
    listed = workbench_in_process("specs", "list", cwd=workdir)
    assert [line.split()[:5] for line in listed.stdout.splitlines() if line.strip().startswith("loso ")] == \
        [["loso", "-", "2", "×", "2"]]   # nothing searched, 2 trials of 2 trainings each
    [trial] = [r for r in runs if r.data.tags.get("workbench.role") == "run"]
    m = trial.data.metrics
    assert (f"val_f1_macro {m['objective']:.3f} (validation averaged over lit, plain, each held out of training in turn"
            in " ".join(done.stdout.split())), done.stdout
    assert f"in distribution {m[vocabulary.IN_DISTRIBUTION]:.3f}, transfer gap {m[vocabulary.TRANSFER_GAP]:+.3f}" in \
        " ".join(done.stdout.split())
    folds = {r.data.tags["workbench.fold"]: r for r in children(runs, trial)}
    assert set(folds) == {"lit", "plain"} and {r.data.tags["workbench.role"] for r in folds.values()} == {"fold"}
    objectives = [r.data.metrics["objective"] for r in folds.values()]
    assert trial.data.metrics["objective"] == pytest.approx(np.mean(objectives))
    assert trial.data.metrics["objective_std"] == pytest.approx(np.std(objectives, ddof=1))
    assert trial.data.tags[vocabulary.MODEL_RUN] in {r.info.run_id for r in folds.values()}
    manifests = []
    for held_out, fold in folds.items():
        frame = pd.read_csv(client.download_artifacts(fold.info.run_id, vocabulary.Artifacts.MANIFEST,
                                                      str(workdir / held_out)))
        manifests.append(frame)
        part = dict(tuple(frame.groupby("split")))
        assert set(part) == {"train", "val", "test", IN_DISTRIBUTION_VAL}
        others = {"lit", "plain"} - {held_out}
        assert set(part["train"]["source"]) == set(part[IN_DISTRIBUTION_VAL]["source"]) == others
        assert set(part["val"]["source"]) == set(part["test"]["source"]) == {held_out}
        # Nothing the fold validates or tests on shares a duplicate group with what it trains on,
        # the planted copy included: it sits in one split with its original.
        assert not set(part["train"]["group_id"]) & set(pd.concat([part["val"], part["test"]])["group_id"])
        assert fold.data.params[vocabulary.HOLDOUT_SOURCE] == held_out
    both = pd.concat(manifests)
    pair = both[both["path"].isin([f"with_mask/{original(sources).name}", f"with_mask/{COPY}"])]
    assert set(pair["source"]) == {"lit", "plain"} and pair["group_id"].nunique() == 1
    # compare shows the configuration, not its folds.
    shown = workbench_in_process("compare", "--experiment", "loso", "--format", "csv", cwd=workdir)
    assert shown.returncode == 0 and shown.stdout.count("\n") == 2, shown.stdout


@pytest.mark.parametrize("objective, dataset, words", [
    ({"holdout_source": "elsewhere"}, None, "objective.holdout_source: 'elsewhere' is not one of the merged sources"),
    ({"holdout_source": "plain"}, {"source": "manifests", "manifests": SOURCES[1:]},
     "objective.holdout_source: needs a spec that merges several sources"),
    ({"leave_one_source_out": True}, {"source": "synthetic", "task": "mask2", "count": 40, "size": 32},
     "objective.leave_one_source_out: needs a spec that merges several sources"),
    ({"holdout_source": "plain", "leave_one_source_out": True}, None, "exclude each other"),
    # Data the rule cannot use: the held-out source has no image of one class.
    ({"holdout_source": "plain"}, {"source": "manifests", "manifests": [
        SOURCES[0], {**SOURCES[1], "classes": {"without_mask": None}}]},
     "objective.holdout_source: holding plain out leaves no validation image of class without_mask"),
])
def test_a_rule_the_spec_or_its_data_cannot_follow_is_one_line(sources, workdir, objective, dataset, words):
    raw = {**TRANSFER, "objective": {"metric": "val_f1_macro", **objective}, "dataset": dataset or TRANSFER["dataset"]}
    write_spec(workdir, raw)
    done = workbench_in_process("sweep", "transfer", cwd=workdir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
