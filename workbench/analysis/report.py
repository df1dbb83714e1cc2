"""`workbench report`: one self-contained, interactive HTML page about a set of runs (usually a
sweep): the comparison table with the winner marked and a sentence saying what the statistics
concluded, the objective by each registry axis the runs differ on, parameters against the
objective, (when trials were chosen on a held-out source) each trial's validation score in
distribution against its score on the held-out source, overlaid learning curves, confusion
matrices side by side, reliability diagrams before and after each run's temperature, and
accuracy against latency with its Pareto front (when the latencies differ by more than timing
noise).

The figures are `workbench.measure.figures`' builders (the same curves and confusion matrices a run's
own page shows) and the page is its one page writer, so it opens offline with plotly.js inlined
once. This module only decides what goes on the page and reads it from MLflow: the metric
histories, the confusion matrices, and where the page is written and logged.
"""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from workbench import vocabulary
from workbench.analysis import compare
from workbench.errors import WorkbenchError
from workbench.measure import figures, stats
from workbench.measure.figures import Section
from workbench.vocabulary import Artifacts


@dataclass(frozen=True)
class Report:
    path: Path                      # the self-contained HTML page
    figures: dict[str, Any]         # its plotly figures by section title (they render inline in Jupyter)
    sweep_run_id: str | None = None  # the sweep whose run it is attached to, if any


SECTIONS = ("Leaderboard", "Objective by axis", "Parameters vs objective", "Learning curves",
            "Confusion matrices", "Calibration", "Accuracy vs latency")
MATRIX_SECTION = "Across datasets: trained on x tested on"
TRANSFER_SECTION = "In distribution vs held-out source"
CURVE_KEYS = tuple(key for key in vocabulary.PER_EPOCH if key != "lr")


def label(table: pd.DataFrame, run_id: str) -> str:
    """A run as people name it: its run name and the start of its id."""
    row = table[table["run_id"] == run_id]
    name = row["run_name"].iloc[0] if len(row) and isinstance(row["run_name"].iloc[0], str) else ""
    return f"{name} ({run_id[:8]})" if name else run_id[:8]


def objective_column(table: pd.DataFrame) -> str | None:
    """The column the report ranks by: compare's default, or None when no run has a score."""
    column = compare.default_sort(table)
    return None if column == "run_name" else column


def parameter_columns(table: pd.DataFrame) -> list[str]:
    """The parameters that vary between runs (all registry axes when nothing does)."""
    candidates = [c for c in (*compare.REGISTRY_AXES, *compare.HYPERPARAMETERS) if c in table]
    candidates += [c for c in table.columns if c not in candidates and c not in compare.IDENTITY
                   and not compare.is_measure(c) and not c.endswith("_std") and c not in compare.STATS_COLUMNS]
    varying = [c for c in candidates if table[c].astype(str).nunique() > 1]
    return varying or [c for c in compare.REGISTRY_AXES if c in table]


def build_report(board: pd.DataFrame, everything: pd.DataFrame, histories: dict, confusions: dict,
                 title: str, subtitle: str, matrix: pd.DataFrame | None = None, reliability: dict | None = None) -> str:
    """The page from values: `board` is the leaderboard as shown (sorted, maybe with statistics),
    `everything` the full comparison table of the selected runs (for the figures)."""
    return figures.page(title, report_sections(board, everything, histories, confusions, matrix, reliability),
                        subtitle)


# Latencies of identical models measured on one machine differed by up to 16 % (1.55 vs 1.80 ms):
# runs closer than this are not faster or slower than each other, and no trade-off is drawn.
TIMING_NOISE = 1.3


def varied_axes(scored: pd.DataFrame) -> list[str]:
    """The registry axes the runs differ on: a box plot of an axis the spec fixed says nothing."""
    return [a for a in compare.REGISTRY_AXES if a in scored and scored[a].astype(str).nunique() > 1]


def latency_spread(latency: pd.DataFrame) -> float:
    values = latency[vocabulary.LATENCY].to_numpy(float) if len(latency) else []
    return float(max(values) / min(values)) if len(values) and min(values) > 0 else 1.0


def verdict(board: pd.DataFrame) -> str:
    """One sentence: which run leads, and what the statistics say of the runs behind it."""
    if board.empty or "run_id" not in board:
        return "No run to compare."
    lead = f"{board['run_name'].iloc[0] if 'run_name' in board else board['run_id'].iloc[0]} leads (marked ★)"
    if "p_holm" not in board or board["p_holm"].iloc[1:].dropna().empty:
        return f"{lead}; no paired test against it (a single run, or none with test predictions on its test set)."
    tested = board.iloc[1:][board["p_holm"].iloc[1:].notna()]
    worse = int((tested["p_holm"] < 0.05).sum())
    same = len(tested) - worse
    parts = []
    if worse:
        parts.append(f"{worse} run{'s are' if worse > 1 else ' is'} significantly worse")
    if same:
        parts.append(f"{same} {'are' if same > 1 else 'is'} not distinguishable from it on these test images "
                     "(McNemar, Holm-corrected p ≥ 0.05)")
    return f"{lead}; of the {len(tested)} compared with it, " + " and ".join(parts) + "."


def _leaderboard_html(board: pd.DataFrame) -> str:
    marked = board.copy()
    if len(marked) and "run_name" in marked:
        marked["run_name"] = ["★ " + str(marked["run_name"].iloc[0]), *marked["run_name"].iloc[1:]]
    return f"<p>{html.escape(verdict(board))}</p><div class='scroll'>{compare.to_html_table(marked)}</div>"


def report_sections(board: pd.DataFrame, everything: pd.DataFrame, histories: dict, confusions: dict,
                    matrix: pd.DataFrame | None = None, reliability: dict | None = None) -> list[Section]:
    """The report's sections in order, each a plotly figure (or the table, or why it is missing)."""
    names = {run_id: label(everything, run_id) for run_id in everything["run_id"]}
    names.update({run_id: run_id[:8] for run_id in (*histories, *confusions, *(reliability or {}))
                  if run_id not in names})
    objective = objective_column(everything)
    scored = everything[everything[objective].notna()] if objective else everything.iloc[0:0]
    latency = everything[everything.get("test_accuracy", pd.Series(dtype=float)).notna()
                         & everything.get(vocabulary.LATENCY, pd.Series(dtype=float)).notna()] \
        if {"test_accuracy", vocabulary.LATENCY} <= set(everything) else everything.iloc[0:0]
    spread = latency_spread(latency)
    front = stats.pareto_front(latency["test_accuracy"].to_numpy(float), latency[vocabulary.LATENCY].to_numpy(float)) \
        if len(latency) else []
    axes = varied_axes(scored)
    sections = [
        Section(SECTIONS[0], html=_leaderboard_html(board)),
        Section(SECTIONS[1], figures.objective_by_axis(scored, objective, axes) if objective and axes else None,
                missing=f"every run has the same {', '.join(compare.REGISTRY_AXES)}: the spec fixed them, "
                        "so there is nothing to compare by axis" if objective else "no run has an objective yet"),
        Section(SECTIONS[2], figures.parallel_coordinates(scored, objective, parameter_columns(scored))
                if objective else None, missing="no run has an objective yet"),
        Section(SECTIONS[3], figures.overlaid_curves({names[r]: h for r, h in histories.items() if h}),
                missing="no per-epoch metrics for the chosen runs"),
        Section(SECTIONS[4], figures.confusion_heatmaps({names[r]: c for r, c in confusions.items()}),
                missing=f"no {Artifacts.CONFUSION} for the top runs"),
        Section(SECTIONS[5], figures.reliability_overlay({names[r]: v for r, v in (reliability or {}).items()}),
                missing="no calibrated test predictions for the top runs"),
        Section(SECTIONS[6], figures.accuracy_vs_latency(latency, front) if len(latency) and spread >= TIMING_NOISE
                else None,
                missing=f"no run has both test_accuracy and {vocabulary.LATENCY}" if not len(latency) else
                f"the runs' latencies differ by at most {100 * (spread - 1):.0f} %, within timing noise: no "
                "speed trade-off to draw"),
    ]
    if vocabulary.IN_DISTRIBUTION in everything:  # chosen on a held-out source: where each trial stands
        sections.insert(3, Section(TRANSFER_SECTION, figures.transfer_scatter(
            everything, vocabulary.OBJECTIVE, vocabulary.IN_DISTRIBUTION, tuple(parameter_columns(scored))),
            missing="no trial finished with both scores"))
    if matrix is not None and not matrix.empty:  # the experiment's latest `workbench matrix`
        sections.append(Section(MATRIX_SECTION, figures.matrix_heatmap(matrix, "test_f1_macro"),
                                missing="the matrix run scored no images"))
    return sections


# --- MLflow edge ----------------------------------------------------------------------------------

def collect_histories(client, run_ids: Sequence[str], keys: Sequence[str] = CURVE_KEYS,
                      sources: dict[str, str] | None = None) -> dict:
    """{run_id: {metric: [(epoch, value), ...]}} from MLflow's metric history (step = epoch),
    read from `sources[run_id]` where given (a repeated configuration's are its model's seed run's)."""
    histories = {}
    for run_id in run_ids:
        histories[run_id], source = {}, (sources or {}).get(run_id, run_id)
        for key in keys:
            points = sorted((m.step, m.value) for m in client.get_metric_history(source, key))
            if points:
                histories[run_id][key] = points
    return histories


def collect_confusions(client, run_ids: Sequence[str], sources: dict[str, str] | None = None) -> dict:
    """{run_id: confusion_matrix.json as a dict, or None where the run has none}, read from
    `sources[run_id]` where given."""
    from mlflow.exceptions import MlflowException

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts((sources or {}).get(run_id, run_id), Artifacts.CONFUSION,
                                                 str(Path(tmp) / run_id))
                found[run_id] = json.loads(Path(path).read_text())
            except (MlflowException, OSError, ValueError):
                found[run_id] = None
    return found


def collect_reliability(client, run_ids: Sequence[str], sources: dict[str, str] | None = None) -> dict:
    """{run_id: (labels, raw, calibrated test probabilities)} for runs that logged a temperature:
    the logged probabilities are the calibrated ones, softmax(z / T); softmax(T log p) gives back
    the raw softmax(z)."""
    import numpy as np

    from workbench.measure.calibration import scaled
    from workbench.track.evidence import load_predictions

    found = {}
    for run_id in run_ids:
        source = (sources or {}).get(run_id, run_id)
        temperature = client.get_run(source).data.metrics.get("temperature")
        frame = load_predictions(client, [source])[source]
        if temperature is None or frame is None or frame.empty:
            continue
        classes = [c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
        calibrated = frame[[f"p_{c}" for c in classes]].to_numpy(float)
        y = frame["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        found[run_id] = (y, scaled(temperature * np.log(np.clip(calibrated, 1e-12, 1.0))), calibrated)
    return found


def collect_matrix(client, experiment_id: str) -> pd.DataFrame | None:
    """The table of the experiment's latest finished matrix run, if it has one."""
    from mlflow.exceptions import MlflowException

    runs = client.search_runs([experiment_id], f"tags.`{vocabulary.ROLE}` = 'matrix' AND attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return pd.read_csv(client.download_artifacts(runs[0].info.run_id, Artifacts.MATRIX, tmp))
    except (MlflowException, OSError, pd.errors.ParserError):
        return None


def make_report(client, selection: compare.Selection, board: pd.DataFrame, *, out: str | Path, runs: Sequence[str] = (),
                log: bool = True, curves_top: int = 5, confusions_top: int = 3) -> Report:
    """Write the page for `selection` to `out` (a workspace's `reports/<experiment>-report.html`) and, when the
    runs are one sweep's trials and `log` is set, attach it to the sweep's run as report/report.html.
    `runs` picks whose learning curves are overlaid (default: the first `curves_top` of `board`).
    Returns where the page is and its figures, for a notebook to show inline."""
    from mlflow.exceptions import MlflowException

    everything = compare.comparison_table(selection.runs)
    ranked = list(board["run_id"]) if "run_id" in board else list(everything["run_id"])
    chosen = list(dict.fromkeys(runs)) or ranked[:curves_top]
    for run_id in chosen:
        if run_id not in set(everything["run_id"]):
            try:
                client.get_run(run_id)
            except MlflowException:
                raise WorkbenchError(f"--runs {run_id}: no such run") from None
    # A configuration trained with repeats keeps its curves and confusions on its model's seed run.
    column = f"tags.{vocabulary.MODEL_RUN}"
    held = selection.runs[column] if column in selection.runs else pd.Series(dtype=object)
    sources = {run: model_run for run, model_run in zip(selection.runs["run_id"], held)
               if isinstance(model_run, str) and model_run}
    sections = report_sections(board, everything, collect_histories(client, chosen, sources=sources),
                               collect_confusions(client, ranked[:confusions_top], sources),
                               matrix=collect_matrix(client, selection.experiment_id),
                               reliability=collect_reliability(client, ranked[:confusions_top], sources))
    page = figures.page(f"workbench report: {selection.experiment}", sections, selection.description)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    if log and selection.sweep_run_id:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / Path(Artifacts.SWEEP_REPORT).name
            copy.write_text(page, encoding="utf-8")
            client.log_artifact(selection.sweep_run_id, str(copy), artifact_path=str(Path(Artifacts.SWEEP_REPORT).parent))
    return Report(path, {s.title: s.figure for s in sections if s.figure is not None},
                  selection.sweep_run_id if log else None)
