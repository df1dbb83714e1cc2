"""`workbench compare` and `workbench report`: choosing runs, the comparison table (columns,
sorting, --only-diff, --group-by), the paired statistics against the best run, every output
format parsed back, and the HTML report.

Most tests read a store built by hand with MlflowClient (metrics, params, tags and artifacts
logged directly), so the expected McNemar counts and p-values are known in advance and no model
is trained; one test compares the real runs of a 2-trial sweep, through the command line too.
"""

from __future__ import annotations

import html
import json
import re
import time
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import workbench_cli, workbench_in_process
from mlflow.entities import Metric, Param, RunTag

from workbench import vocabulary
from workbench.analysis import compare, report
from workbench.errors import WorkbenchError
from workbench.measure import stats
from workbench.track import store as tracking

CLASSES = ["fake", "real", "with_mask"]
N_IMAGES = 60


def predictions_csv(correct: list[bool], prefix: str = "img") -> str:
    """A test_predictions.csv: image i has true class i % 3; a wrong prediction is the next class."""
    rows = []
    for i, ok in enumerate(correct):
        true = CLASSES[i % 3]
        predicted = true if ok else CLASSES[(i + 1) % 3]
        p = {c: (0.8 if c == predicted else 0.1) for c in CLASSES}
        rows.append({"sha256": f"{prefix}{i:04d}", "path": f"test/{true}/{i}.png", "true": true,
                     "predicted": predicted, **{f"p_{c}": p[c] for c in CLASSES}})
    return pd.DataFrame(rows).to_csv(index=False)


def wrong_on(*ranges: range) -> list[bool]:
    wrong = {i for r in ranges for i in r}
    return [i not in wrong for i in range(N_IMAGES)]


# Against A (the best): B disagrees on 7 images (b = 6, c = 1: exact test, p = 0.125); C on 40
# (b = 30, c = 10: chi-square 9.025, p = 0.00266); D was scored on other images.
CORRECT = {
    "A": wrong_on(range(30, 40)),
    "B": wrong_on(range(0, 6), range(31, 40)),
    "C": wrong_on(range(0, 30)),
    "D": wrong_on(range(0, 10)),
}
RUNS = {  # name: (backbone, balance, learning_rate, f1_macro, accuracy, latency, state)
    "A": ("vgg16", "none", 0.001, 0.90, 0.91, 5.0, "finished"),
    "B": ("vgg16", "oversample", 0.01, 0.80, 0.82, 2.0, "finished"),
    "C": ("mobilenet_v2", "none", 0.001, 0.70, 0.75, 1.0, "finished"),
    "D": ("mobilenet_v2", "oversample", 0.01, 0.60, 0.66, 3.0, "finished"),
    "E": ("vgg16", "none", 0.003, None, None, None, "pruned"),
}


def log_run(client, experiment_id, name, *, role, parent=None, trial=None, backbone="vgg16", balance="none",
            learning_rate=0.001, f1=None, accuracy=None, latency=None, state="finished", predictions=None):
    tags = {vocabulary.ROLE: role, vocabulary.STATE: state, "workbench.dataset_digest": "d1"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    if trial is not None:
        tags[vocabulary.TRIAL] = str(trial)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = {"backbone": backbone, "balance": balance, "augmentation": "none", "learning_rate": learning_rate,
              "batch_size": 16, "epochs": 3, "optimizer": "adam", "dropout": 0.2, "classes": ",".join(CLASSES),
              "dataset": "synthetic", "dataset_digest": "d1"}
    now = int(time.time() * 1000)
    metrics = []
    if f1 is not None:
        values = {"test_f1_macro": f1, "test_accuracy": accuracy, "objective": f1, "latency_ms_batch1": latency,
                  "test_f1_fake": f1 - 0.05, "test_f1_real": f1, "test_f1_with_mask": f1 + 0.05,
                  "overfit_gap": 0.05, "total_params": 1000.0 if backbone == "vgg16" else 500.0,
                  "model_size_mb": 4.0, "train_seconds": 12.5, "test_log_loss": 1 - f1, "temperature": 1.5}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
    # Learning curves: three epochs of each series, as the epoch logger writes them.
    for epoch in (1, 2, 3):
        for key, value in {"loss": 1 / epoch, "val_loss": 1.2 / epoch, "accuracy": 0.5 + 0.1 * epoch,
                           "val_accuracy": 0.45 + 0.1 * epoch}.items():
            metrics.append(Metric(key, value, now + epoch, epoch))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                     tags=[RunTag("mlflow.runName", name)])
    if predictions is not None:
        client.log_text(run_id, predictions, vocabulary.Artifacts.PREDICTIONS)
        client.log_dict(run_id, {"classes": CLASSES, "matrix": [[18, 1, 1], [2, 16, 2], [0, 1, 19]],
                                 "matrix_normalized": [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0, 0.05, 0.95]]},
                        vocabulary.Artifacts.CONFUSION)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experiment "cmp": a sweep with trials A-E and, outside it, one single run F."""
    folder = tmp_path_factory.mktemp("compare-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = tracking.connect(uri)
    experiment_id = tracking.ensure_experiment(client, "cmp")
    sweep = client.create_run(experiment_id, run_name="cmp-sweep", tags={vocabulary.ROLE: "sweep"}).info.run_id
    ids = {}
    for trial, (name, (backbone, balance, lr, f1, accuracy, latency, state)) in enumerate(RUNS.items()):
        csv = None
        if name in CORRECT:
            csv = predictions_csv(CORRECT[name], prefix="other" if name == "D" else "img")
        ids[name] = log_run(client, experiment_id, f"trial-{trial:03d}", role="trial", parent=sweep, trial=trial,
                            backbone=backbone, balance=balance, learning_rate=lr, f1=f1, accuracy=accuracy,
                            latency=latency, state=state, predictions=csv)
    ids["F"] = log_run(client, experiment_id, "cmp-single", role="run", f1=0.5, accuracy=0.5, latency=0.5)
    client.set_terminated(sweep)
    return {"uri": uri, "client": client, "sweep": sweep, "ids": ids, "folder": folder}


@pytest.fixture
def client(store):
    # Other test files point MLflow's global URI elsewhere; search_runs reads it.
    return tracking.connect(store["uri"])


def select(store, **kwargs) -> compare.Selection:
    return compare.select_runs(store["client"], **kwargs)


def names(table: pd.DataFrame) -> list[str]:
    return list(table["run_name"])


def run_compare(store, selection=None, **kwargs) -> compare.Comparison:
    selection = selection or select(store, sweep=store["sweep"])
    return compare.compare(selection.runs, predictions_for=lambda ids: compare.load_predictions(store["client"], ids),
                           **kwargs)


# --- choosing runs ---------------------------------------------------------------------------------

def test_selection_by_sweep_experiment_tag_and_filter(store, client):
    by_sweep = select(store, sweep=store["sweep"])
    assert sorted(by_sweep.runs["tags.mlflow.runName"]) == [f"trial-{i:03d}" for i in range(5)]
    assert by_sweep.sweep_run_id == store["sweep"] and by_sweep.experiment == "cmp"
    assert select(store, experiment="cmp", sweep="latest").sweep_run_id == store["sweep"]
    # The experiment alone: trials and single runs, never the sweep's parent run.
    everything = select(store, experiment="cmp")
    assert len(everything.runs) == 6 and everything.sweep_run_id is None
    assert "cmp-sweep" not in set(everything.runs["tags.mlflow.runName"])
    finished = select(store, experiment="cmp", tags=["workbench.state=finished", "workbench.role=trial"])
    assert len(finished.runs) == 4
    fast = select(store, sweep=store["sweep"], filter_string="metrics.latency_ms_batch1 < 2.5")
    assert sorted(fast.runs["run_id"]) == sorted([store["ids"]["B"], store["ids"]["C"]])


@pytest.mark.parametrize("kwargs, message", [
    ({}, "choose the runs: --experiment NAME"),
    ({"experiment": "nope"}, "--experiment nope: no such experiment in sqlite:"),
    ({"sweep": "0" * 32}, "no such run"),
    ({"sweep": "latest"}, "--sweep latest needs --experiment"),
    ({"experiment": "cmp", "tags": ["workbench.state"]}, "--tag workbench.state: expected KEY=VALUE"),
    ({"experiment": "cmp", "tags": ["workbench.state=exploded"]}, "no runs match"),
    ({"experiment": "cmp", "filter_string": "metrics.test_accuracy >>> 1"}, "MLflow rejects"),
])
def test_bad_selections_are_one_line_errors(store, client, kwargs, message):
    with pytest.raises(WorkbenchError, match=message) as err:
        select(store, **kwargs)
    assert "\n" not in str(err.value)


def test_a_trial_is_not_a_sweep(store, client):
    with pytest.raises(WorkbenchError, match="is a trial run, not a sweep"):
        select(store, sweep=store["ids"]["A"])


# --- the table -------------------------------------------------------------------------------------

def test_columns_are_run_axes_hyperparameters_metrics_then_cost(store, client):
    table = compare.comparison_table(select(store, sweep=store["sweep"]).runs)
    columns = list(table.columns)
    assert columns[:6] == ["run_id", "run_name", "state", "backbone", "balance", "augmentation"]
    assert {"learning_rate", "batch_size", "epochs", "optimizer", "dropout"} <= set(columns)
    assert "classes" not in columns and "dataset_digest" not in columns
    # Per-class F1 in the runs' class order, right after macro-F1; cost after quality.
    f1 = columns.index("test_f1_macro")
    assert columns[f1 + 1:f1 + 4] == ["test_f1_fake", "test_f1_real", "test_f1_with_mask"]
    assert columns.index("overfit_gap") < columns.index("total_params") < columns.index("latency_ms_batch1")
    assert table["learning_rate"].dtype.kind == "f" and table["total_params"].dtype == "Int64"
    assert dict(zip(table["run_name"], table["state"]))["trial-004"] == "pruned"


def test_sorting_best_first_with_direction_by_column(store, client):
    assert names(run_compare(store, stats=False).table) == [f"trial-{i:03d}" for i in range(5)]  # f1 desc, NaN last
    by_latency = run_compare(store, sort="latency_ms_batch1", stats=False)
    assert by_latency.sort == "latency_ms_batch1"
    assert names(by_latency.table)[:4] == ["trial-002", "trial-001", "trial-003", "trial-000"]  # ascending
    assert names(run_compare(store, sort="f1_macro", order="asc", stats=False).table)[0] == "trial-003"
    assert names(run_compare(store, sort="test_log_loss", stats=False).table)[0] == "trial-000"
    with pytest.raises(WorkbenchError, match="--sort nope: no such column"):
        run_compare(store, sort="nope")
    assert len(run_compare(store, top=2, stats=False).table) == 2


AGREE = {  # metric: its value in runs a, b, c; the winner is the smallest where smaller is better
    "test_log_loss": (0.3, 0.2, 0.5), "test_ece": (0.02, 0.09, 0.05), "latency_ms_batch1": (4.0, 9.0, 2.0),
    "model_size_mb": (9.0, 3.0, 5.0), "total_params": (900.0, 300.0, 500.0), "train_seconds": (30.0, 10.0, 20.0),
    "test_accuracy": (0.8, 0.9, 0.7), "test_f1_macro": (0.75, 0.7, 0.8), "test_roc_auc_ovr": (0.95, 0.85, 0.9),
    "objective": (0.4, 0.6, 0.5),  # the runs optimised val_loss: smaller is better
}


def test_compare_and_promote_pick_the_same_winner_for_every_metric(tmp_path):
    """One rule (`vocabulary.better`) ranks runs for every command: for losses, calibration, latency,
    size, parameters and seconds the smallest wins, for accuracy, F1 and AUC the largest, and the
    objective goes the way the spec's metric goes."""
    from workbench.ship import promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.connect(uri)
    experiment_id = tracking.ensure_experiment(client, "agree")
    ids = []
    for i, name in enumerate("abc"):
        run = client.create_run(experiment_id, run_name=name, tags={vocabulary.ROLE: "trial", vocabulary.STATE: "finished"})
        run_id = run.info.run_id
        client.log_batch(run_id, metrics=[Metric(k, v[i], 0, 0) for k, v in AGREE.items()],
                         params=[Param(vocabulary.OBJECTIVE_PARAM, "val_loss")])
        client.log_text(run_id, "flavors: {}\n", "model/MLmodel")  # promote needs a logged model
        client.set_terminated(run_id)
        ids.append(run_id)
    runs = compare.select_runs(client, experiment="agree").runs
    for metric, values in AGREE.items():
        lower = vocabulary.lower_is_better(metric, "val_loss")
        expected = ids[values.index(min(values) if lower else max(values))]
        by_compare = compare.compare(runs, sort=metric, stats=False).table["run_id"].iloc[0]
        by_promote = promote.select(client, metric=metric, experiment="agree").run_id
        assert by_compare == by_promote == expected, metric
    assert [vocabulary.lower_is_better(m) for m in ("test_log_loss", "test_ece", "latency_ms_batch1", "model_size_mb",
                                                "total_params", "train_seconds", "test_accuracy", "test_f1_macro",
                                                "test_roc_auc_ovr", "train_images_per_second")] == [True] * 6 + [False] * 4
    # A per-class score is a score whatever its class is called.
    assert not any(vocabulary.lower_is_better(m) for m in ("test_f1_hair_loss", "test_recall_small_size",
                                                       "val_precision_gap", "f1_latency"))
    # The default ranks by the validation objective (here a loss: run a has the lowest), never by a
    # test figure (run c has the best test macro-F1).
    assert promote.select(client, experiment="agree").run_id == ids[0]
    assert compare.compare(runs, stats=False).table["run_id"].iloc[0] == ids[0]


def test_objective_sorts_the_way_the_spec_optimised_it():
    runs = pd.DataFrame({"run_id": ["a", "b"], "metrics.objective": [0.3, 0.2],
                         "params.objective": ["val_loss", "val_loss"]})
    assert list(compare.compare(runs, sort="objective").table["run_id"]) == ["b", "a"]
    runs["params.objective"] = "val_f1_macro"
    assert list(compare.compare(runs, sort="objective").table["run_id"]) == ["a", "b"]


def test_only_diff_hides_columns_equal_in_every_row(store, client):
    full = run_compare(store, stats=False).table
    diff = run_compare(store, stats=False, only_diff=True).table
    for constant in ("augmentation", "batch_size", "epochs", "optimizer", "dropout"):
        assert constant in full and constant not in diff
    for varying in ("run_id", "run_name", "state", "backbone", "balance", "learning_rate", "test_f1_macro",
                    "model_size_mb"):  # the pruned run has no size: that differs too
        assert varying in diff
    finished = select(store, sweep=store["sweep"], tags=["workbench.state=finished"])
    diff = run_compare(store, finished, stats=False, only_diff=True).table
    assert "state" not in diff and "model_size_mb" not in diff and "train_seconds" not in diff


def test_group_by_pools_runs_into_mean_std_and_count(store, client):
    result = run_compare(store, group_by=["backbone"])
    table = result.table.set_index("backbone")
    assert result.grouped and result.sort == "objective_mean"  # the validation objective, by default
    assert list(table.index) == ["vgg16", "mobilenet_v2"]  # best mean first
    # The pruned vgg16 run has no macro-F1, so it is neither pooled nor counted.
    assert table.loc["vgg16", "count"] == 2 and table.loc["mobilenet_v2", "count"] == 2  # pruned: no objective
    assert table.loc["vgg16", "test_f1_macro_mean"] == pytest.approx(0.85)
    assert table.loc["vgg16", "test_f1_macro_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert table.loc["mobilenet_v2", "latency_ms_batch1_mean"] == pytest.approx(2.0)
    shown = compare.display_frame(result.table).set_index("backbone")
    assert shown.loc["vgg16", "test_f1_macro"] == "0.85 ± 0.07071"
    two = run_compare(store, group_by=["backbone", "balance"]).table
    assert len(two) == 4 and set(two["count"]) == {1}
    assert compare.display_frame(two)["test_f1_macro"].iloc[0] == "0.9"  # one run: no std to show
    with pytest.raises(WorkbenchError, match="--group-by colour: no such column"):
        run_compare(store, group_by=["colour"])


# --- is the winner really better? ------------------------------------------------------------------

def test_mcnemar_and_bootstrap_against_the_best_on_the_same_test_set(store, client):
    table = run_compare(store).table.set_index("run_name")
    best, exact, chi2, other, pruned = (table.loc[f"trial-{i:03d}"] for i in range(5))
    assert best["note"].startswith("best") and pd.isna(best["p_vs_best"])
    assert (exact["mcnemar_b"], exact["mcnemar_c"]) == (6, 1)
    assert exact["p_vs_best"] == pytest.approx(0.125) and "exact" in exact["note"]
    assert (chi2["mcnemar_b"], chi2["mcnemar_c"]) == (30, 10)
    assert chi2["p_vs_best"] == pytest.approx(0.002663, abs=1e-6) and "chi-square" in chi2["note"]
    assert other["note"].startswith("different test set (digest") and pd.isna(other["p_vs_best"])
    assert pd.isna(other["mcnemar_b"]) and other["f1_macro_ci"]  # its own interval is still shown
    assert pruned["note"] == "no test predictions logged (pruned)" and pruned["f1_macro_ci"] is None
    # The interval is the bootstrap of the run's own predictions, around its macro-F1.
    frame = pd.read_csv(StringIO(predictions_csv(CORRECT["A"])))
    low, high = json.loads(best["f1_macro_ci"])
    assert (low, high) == pytest.approx(stats.bootstrap_f1_macro(*sorted_pairs(frame), CLASSES), abs=1e-4)
    assert low < stats.f1_macro(frame["true"], frame["predicted"], CLASSES) < high
    # The paired difference in macro-F1 against the best, with its interval: C is clearly worse.
    f1 = {name: stats.f1_macro(*sorted_pairs(pd.read_csv(StringIO(predictions_csv(CORRECT[name])))), CLASSES)
          for name in "ABC"}
    assert exact["f1_diff_vs_best"] == pytest.approx(f1["B"] - f1["A"])
    assert chi2["f1_diff_vs_best"] == pytest.approx(f1["C"] - f1["A"])
    low, high = json.loads(chi2["f1_diff_ci"])
    assert low < chi2["f1_diff_vs_best"] < high < 0
    # Holm: two runs were compared with the best, so the smaller p-value is doubled.
    assert chi2["p_holm"] == pytest.approx(2 * 0.002663, abs=2e-6) and exact["p_holm"] == pytest.approx(0.125)
    assert pd.isna(other["p_holm"]) and pd.isna(best["p_holm"])


def sorted_pairs(frame):
    frame = frame.sort_values("sha256")
    return frame["true"], frame["predicted"]


def test_same_test_set_means_same_images_with_same_labels():
    base = pd.read_csv(StringIO(predictions_csv(CORRECT["A"])))
    shuffled = base.sample(frac=1, random_state=0)
    assert compare.scored_images(shuffled).digest == compare.scored_images(base).digest
    relabelled = base.assign(true=base["true"].where(base.index != 0, "real"))
    assert compare.scored_images(relabelled).digest != compare.scored_images(base).digest
    assert compare.scored_images(base.iloc[:-1]).digest != compare.scored_images(base).digest


def test_stats_default_on_for_small_tables_and_can_be_turned_off(store, client):
    assert "p_vs_best" in run_compare(store).table
    assert "p_vs_best" not in run_compare(store, stats=False).table
    assert "p_vs_best" not in run_compare(store, group_by=["backbone"]).table
    fetched = []
    compare.compare(select(store, sweep=store["sweep"]).runs, stats_top=2,
                    predictions_for=lambda ids: fetched.extend(ids) or {})
    assert len(fetched) == 2  # only the top runs' predictions are downloaded


# --- formats ---------------------------------------------------------------------------------------

class TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None


def test_every_format_parses_back(store, client, tmp_path):
    table = run_compare(store).table
    written = compare.write_all(table, tmp_path / "reports", title="cmp")
    by_suffix = {p.suffix: p for p in written}
    assert sorted(by_suffix) == [".csv", ".html", ".json", ".md", ".tex", ".txt"]
    n = len(table)

    csv = pd.read_csv(by_suffix[".csv"])
    assert list(csv.columns) == list(table.columns) and len(csv) == n
    assert csv["test_f1_macro"].tolist()[:4] == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert csv["p_vs_best"].iloc[1] == pytest.approx(0.125)

    records = json.loads(by_suffix[".json"].read_text())
    assert len(records) == n and set(records[0]) == set(table.columns)
    assert records[2]["mcnemar_b"] == 30 and records[4]["test_f1_macro"] is None

    parser = TableParser()
    parser.feed(by_suffix[".html"].read_text())
    # The page leads with the objective and the statistics; the other formats keep the table's order.
    assert parser.rows[0] == list(compare.objective_first(table).columns) and len(parser.rows) == n + 1
    assert parser.rows[0][:4] == ["run_id", "run_name", "state", "objective"]
    assert parser.rows[0].index("p_holm") < parser.rows[0].index("backbone")
    assert sorted(parser.rows[0]) == sorted(table.columns)
    assert parser.rows[1][parser.rows[0].index("run_name")] == "trial-000"

    lines = by_suffix[".md"].read_text().strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(table.columns) and len(lines) == n + 2
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    assert all(len(line.strip("|").split("|")) == len(header) for line in lines)

    latex = by_suffix[".tex"].read_text()
    assert "\\begin{tabular}" in latex and "\\end{tabular}" in latex
    body = latex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == n and "trial\\_000" not in latex.split("\\midrule")[0]
    assert "run\\_name" in latex  # underscores escaped

    text = by_suffix[".txt"].read_text()
    assert "trial-000" in text and "0.125" in text


def test_markdown_escapes_pipes_and_shows_missing_as_dash():
    table = pd.DataFrame({"run_id": ["x"], "run_name": ["a|b"], "test_f1_macro": [float("nan")]})
    lines = compare.render(table, "markdown").splitlines()
    assert lines[2] == "| x | a\\|b | - |" and lines[1] == "| --- | --- | ---: |"


def test_unknown_format_is_refused():
    with pytest.raises(WorkbenchError, match="--format yaml: choose from"):
        compare.render(pd.DataFrame({"a": [1]}), "yaml")


# --- report ----------------------------------------------------------------------------------------

def test_report_is_one_offline_page_with_every_section_logged_to_the_sweep(store, client, tmp_path):
    selection = select(store, sweep=store["sweep"])
    board = run_compare(store, selection, only_diff=True).table
    path = report.make_report(store["client"], selection, board, out=tmp_path / "cmp-report.html").path
    page = path.read_text()
    for title in report.SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert page.count("plotly.js v") <= 2 and "<script src=" not in page
    assert "class='missing'" not in page  # every section drew its figure
    # The winner is marked and one sentence says what the Holm-corrected tests concluded: of the
    # runs compared with trial-000 (the others used another test set, or logged no predictions),
    # trial-002 is worse beyond chance (p_holm < 0.05) and trial-001 is not (p 0.125).
    expected = ("trial-000 leads (marked ★); of the 2 compared with it, 1 run is significantly worse and 1 is not "
                "distinguishable from it on these test images (McNemar, Holm-corrected p ≥ 0.05).")
    assert report.verdict(board) == expected
    assert html.escape(expected) in page and "★ trial-000" in page
    assert "trial-000" in page and "0.125" in page
    logged = [a.path for a in store["client"].list_artifacts(store["sweep"], "report")]
    assert logged == [vocabulary.Artifacts.SWEEP_REPORT]
    with pytest.raises(WorkbenchError, match="--runs 0+: no such run"):
        report.make_report(store["client"], selection, board, runs=["0" * 32], out=tmp_path / "x.html")


def test_report_figures_say_why_when_there_is_nothing_to_draw():
    table = pd.DataFrame({"run_id": ["r1"], "run_name": ["only"], "state": ["pruned"]})
    page = report.build_report(table, table, {}, {}, title="t", subtitle="s")
    assert page.count("class='missing'") == 6 and "plotly.js v" not in page


# --- the command line, and real runs ---------------------------------------------------------------

def compare_cli(*args: str, cwd: Path):
    return workbench_cli(*args, cwd=cwd)


def test_cli_unknown_experiment_is_one_line_and_non_zero(store, tmp_path):
    result = workbench_in_process("compare", "--experiment", "nope", "--tracking-uri", store["uri"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --experiment nope: no such experiment")


def test_compare_and_report_on_a_real_two_trial_sweep(learned_copy, monkeypatch):
    store = learned_copy
    monkeypatch.chdir(store.root)
    client = tracking.connect(store.uri)
    selection = compare.select_runs(client, experiment="learn", sweep="latest")
    assert selection.sweep_run_id == store.sweep_id
    table = compare.compare(selection.runs, predictions_for=lambda ids: compare.load_predictions(client, ids)).table
    assert list(table["run_id"]) == list(store.trials)   # best validation objective first
    assert len(table) == 2 and table["f1_macro_ci"].notna().all()
    # Both trials saw the same test split: same images, so they are compared.
    assert "McNemar" in table["note"].iloc[1] and 0 <= table["p_vs_best"].iloc[1] <= 1
    assert {"test_f1_with_mask", "test_f1_without_mask", "latency_ms_batch1"} <= set(table.columns)

    done = report.make_report(client, selection, table, out=store.root / "reports" / "learn-report.html")
    page = done.path.read_text()
    # The two trials share every registry axis and one architecture: those sections say why they
    # draw nothing; every other section draws.
    missing = [html.unescape(m) for m in re.findall(r"<p class='missing'>([^<]*)</p>", page)]
    assert missing[0].startswith("every run has the same backbone, balance, augmentation"), missing
    assert all(m.startswith(("every run has the same", "the runs' latencies differ by at most")) for m in missing), missing
    assert page.count("plotly.js v") <= 2 and "leads (marked ★)" in page
    assert (store.root / "reports" / "learn-report.html").is_file()

    out = compare_cli("compare", "--experiment", "learn", "--format", "json", "--tracking-uri", store.uri,
                      cwd=store.root)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    # The figures MLflow holds, in the objective's order.
    logged = {r: client.get_run(r).data.metrics for r in store.trials}
    assert [r["run_id"] for r in records] == list(store.trials)
    for row in records:
        for metric in ("objective", "test_f1_macro", "test_accuracy"):
            assert row[metric] == pytest.approx(logged[row["run_id"]][metric], abs=1e-6), metric


def test_the_reports_verdict_counts_runs_worse_beyond_chance_and_the_rest():
    board = pd.DataFrame({"run_id": ["a", "b", "c", "d", "e"], "run_name": ["best", "x", "y", "z", "w"],
                          "p_holm": [float("nan"), 0.01, 0.02, 0.3, float("nan")]})
    assert report.verdict(board) == ("best leads (marked ★); of the 3 compared with it, 2 runs are significantly "
                                     "worse and 1 is not distinguishable from it on these test images (McNemar, "
                                     "Holm-corrected p ≥ 0.05).")
    alone = board.assign(p_holm=float("nan"))
    assert report.verdict(alone).startswith("best leads (marked ★); no paired test against it")
