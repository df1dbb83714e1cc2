"""`workbench report`: one self-contained, interactive HTML page about a set of runs (usually a
sweep): the comparison table, the objective by each registry axis, parameters against the
objective, overlaid learning curves, confusion matrices side by side, and accuracy against
latency with its Pareto front.

The page has to open on machines without internet, so plotly.js is inlined, and only once for the
whole page (about 4.6 MB) rather than once per figure. Figure builders are pure (frames and dicts
in, plotly figures out, None when there is nothing to draw); `collect_*` and `make_report` are
the MLflow edge that reads metric histories and confusion matrices and logs the page to the
sweep's run.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench import compare, stats

SECTIONS = ("Leaderboard", "Objective by axis", "Parameters vs objective", "Learning curves",
            "Confusion matrices", "Accuracy vs latency")
# (train, validation) pairs drawn as one panel each; train solid, validation dashed.
CURVES = (("loss", "val_loss"), ("accuracy", "val_accuracy"), (None, "val_f1_macro"))
CURVE_KEYS = tuple(k for pair in CURVES for k in pair if k)
CONFUSION = "evaluation/confusion_matrix.json"
ARTIFACT = "report/report.html"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def _label(table: pd.DataFrame, run_id: str) -> str:
    """A run as people name it: its run name and the start of its id."""
    row = table[table["run_id"] == run_id]
    name = row["run_name"].iloc[0] if len(row) and isinstance(row["run_name"].iloc[0], str) else ""
    return f"{name} ({run_id[:8]})" if name else run_id[:8]


def objective_column(table: pd.DataFrame) -> str | None:
    for column in ("objective", "test_f1_macro", "test_accuracy"):
        if column in table and table[column].notna().any():
            return column
    return None


# --- figures (pure) -------------------------------------------------------------------------------

def objective_by_axis(table: pd.DataFrame) -> go.Figure | None:
    """A box per value of each registry axis (backbone, balance, augmentation), every run a dot."""
    objective = objective_column(table)
    axes = [a for a in compare.REGISTRY_AXES if a in table and table[a].notna().any()]
    if objective is None or not axes:
        return None
    scored = table[table[objective].notna()]
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=axes)
    for col, axis in enumerate(axes, start=1):
        fig.add_trace(go.Box(x=scored[axis].astype(str), y=scored[objective], name=axis, boxpoints="all",
                             jitter=0.4, pointpos=0, text=scored["run_name"].astype(str), showlegend=False,
                             hovertemplate="%{text}<br>%{x}: %{y:.4f}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(title_text=objective, row=1, col=1)
    fig.update_layout(height=420, margin=dict(t=60))
    return fig


def parallel_coordinates(table: pd.DataFrame) -> go.Figure | None:
    """One line per run across every parameter that varies, ending at the objective (colour)."""
    objective = objective_column(table)
    if objective is None:
        return None
    scored = table[table[objective].notna()].reset_index(drop=True)
    candidates = [c for c in (*compare.REGISTRY_AXES, *compare.HYPERPARAMETERS) if c in scored]
    candidates += [c for c in scored.columns if c not in candidates and c not in compare.IDENTITY
                   and not compare._is_measure(c) and c not in compare.STATS_COLUMNS]
    varying = [c for c in candidates if scored[c].astype(str).nunique() > 1]
    # Nothing varies (a single configuration): still show the axes, so the figure is not empty.
    columns = varying or [c for c in compare.REGISTRY_AXES if c in scored]
    if scored.empty:
        return None
    dimensions = []
    for column in columns:
        values = scored[column]
        if pd.api.types.is_numeric_dtype(values):
            dimensions.append(dict(label=column, values=values.astype(float)))
        else:
            names = sorted(values.astype(str).unique())
            codes = values.astype(str).map({n: i for i, n in enumerate(names)})
            dimensions.append(dict(label=column, values=codes, tickvals=list(range(len(names))), ticktext=names))
    dimensions.append(dict(label=objective, values=scored[objective].astype(float)))
    fig = go.Figure(go.Parcoords(line=dict(color=scored[objective].astype(float), colorscale="Viridis",
                                           showscale=True), dimensions=dimensions))
    fig.update_layout(height=460, margin=dict(l=80, r=80, t=60))
    return fig


def learning_curves(histories: dict[str, dict[str, list[tuple[int, float]]]], labels: dict[str, str]) -> go.Figure | None:
    """Chosen runs' curves overlaid, one colour per run: train solid, validation dashed."""
    panels = [pair for pair in CURVES if any(histories[r].get(k) for r in histories for k in pair if k)]
    if not panels:
        return None
    titles = [(train or val).replace("val_", "validation ") for train, val in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
    for i, (run_id, history) in enumerate(histories.items()):
        color = PALETTE[i % len(PALETTE)]
        legend = True  # one legend entry per run; it toggles all of that run's lines
        for col, pair in enumerate(panels, start=1):
            for key in pair:
                points = history.get(key) if key else None
                if not points:
                    continue
                steps, values = zip(*points)
                fig.add_trace(go.Scatter(
                    x=list(steps), y=list(values), mode="lines+markers", name=labels.get(run_id, run_id[:8]),
                    legendgroup=run_id, showlegend=legend,
                    line=dict(color=color, dash="dash" if key.startswith("val_") else "solid"),
                    hovertemplate=f"{labels.get(run_id, run_id[:8])}<br>{key} epoch %{{x}}: %{{y:.4f}}<extra></extra>"),
                    row=1, col=col)
                legend = False
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=420, margin=dict(t=60))
    return fig


def confusion_matrices(confusions: dict[str, dict], labels: dict[str, str]) -> go.Figure | None:
    """Row-normalised confusion matrices side by side (colour: share of the true class; text: counts)."""
    shown = {run_id: c for run_id, c in confusions.items() if c and c.get("matrix")}
    if not shown:
        return None
    fig = make_subplots(rows=1, cols=len(shown), subplot_titles=[labels.get(r, r[:8]) for r in shown],
                        horizontal_spacing=0.08)
    for col, confusion in enumerate(shown.values(), start=1):
        counts = np.asarray(confusion["matrix"], dtype=float)
        share = confusion.get("matrix_normalized")
        if share is None:
            totals = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        names = list(confusion.get("classes") or range(len(counts)))
        fig.add_trace(go.Heatmap(z=share, x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                                 showscale=col == len(shown), text=counts.astype(int), texttemplate="%{text}",
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{text} images, %{z:.0%} of true"
                                               "<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
        fig.update_xaxes(title_text="predicted", row=1, col=col)
    fig.update_yaxes(title_text="true", row=1, col=1)
    fig.update_layout(height=420, margin=dict(t=60))
    return fig


def accuracy_vs_latency(table: pd.DataFrame, accuracy: str = "test_accuracy",
                        latency: str = "latency_ms_batch1") -> go.Figure | None:
    """Every run by test accuracy and batch-1 latency; the Pareto front (no run both more accurate
    and faster) highlighted and joined."""
    if accuracy not in table or latency not in table:
        return None
    points = table[table[accuracy].notna() & table[latency].notna()].reset_index(drop=True)
    if points.empty:
        return None
    front = stats.pareto_front(points[accuracy].to_numpy(float), points[latency].to_numpy(float))
    text = points["run_name"].astype(str) + (" · " + points["backbone"].astype(str) if "backbone" in points else "")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=points.loc[~front, latency], y=points.loc[~front, accuracy], mode="markers",
                             name="dominated", text=text[~front], marker=dict(color="#9aa5b1", size=9),
                             hovertemplate="%{text}<br>%{x:.3g} ms, accuracy %{y:.4f}<extra></extra>"))
    best = points[front].sort_values(latency)
    fig.add_trace(go.Scatter(x=best[latency], y=best[accuracy], mode="lines+markers", name="Pareto front",
                             text=text[front].loc[best.index], line=dict(color="#d62728", shape="hv"),
                             marker=dict(size=12, symbol="star"),
                             hovertemplate="%{text}<br>%{x:.3g} ms, accuracy %{y:.4f}<extra></extra>"))
    fig.update_xaxes(title_text=f"{latency} (lower is better)")
    fig.update_yaxes(title_text=f"{accuracy} (higher is better)")
    fig.update_layout(height=440, margin=dict(t=40))
    return fig


# --- the page -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    title: str
    figure: go.Figure | None = None
    html: str = ""          # shown instead of (or, for the leaderboard, as) the section's content
    missing: str = ""       # why there is no figure


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The page: every figure as a fragment, plotly.js inlined into the first one only."""
    inlined = False
    parts = []
    for section in sections:
        body = section.html
        if section.figure is not None:
            height = section.figure.layout.height or 450
            body += section.figure.to_html(full_html=False, include_plotlyjs=not inlined,
                                           default_width="100%", default_height=f"{height}px")
            inlined = True
        elif section.missing:
            body += f"<p class='missing'>{escape(section.missing)}</p>"
        parts.append(f"<section><h2>{escape(section.title)}</h2>{body}</section>")
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>body{{font-family:sans-serif;margin:24px}} .missing{{color:#777}} "
            f".scroll{{overflow-x:auto;max-height:70vh}} {compare.TABLE_STYLE}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{escape(subtitle)} · generated {generated}</p>"
            f"{''.join(parts)}</body></html>\n")


def build_report(board: pd.DataFrame, everything: pd.DataFrame, histories: dict, confusions: dict,
                 title: str, subtitle: str) -> str:
    """The page from values: `board` is the leaderboard as shown (sorted, maybe with statistics),
    `everything` the full comparison table of the selected runs (for the figures)."""
    labels = {run_id: _label(everything, run_id) for run_id in everything["run_id"]}
    labels.update({run_id: run_id[:8] for run_id in (*histories, *confusions) if run_id not in labels})
    sections = [
        Section(SECTIONS[0], html=f"<div class='scroll'>{compare.to_html_table(board)}</div>"),
        Section(SECTIONS[1], objective_by_axis(everything), missing="no objective or no registry axis recorded"),
        Section(SECTIONS[2], parallel_coordinates(everything), missing="no run has an objective yet"),
        Section(SECTIONS[3], learning_curves(histories, labels), missing="no per-epoch metrics for the chosen runs"),
        Section(SECTIONS[4], confusion_matrices(confusions, labels),
                missing=f"no {CONFUSION} for the top runs"),
        Section(SECTIONS[5], accuracy_vs_latency(everything),
                missing="no run has both test_accuracy and latency_ms_batch1"),
    ]
    return render_page(title, subtitle, sections)


# --- MLflow edge ----------------------------------------------------------------------------------

def collect_histories(client, run_ids: Sequence[str], keys: Sequence[str] = CURVE_KEYS) -> dict:
    """{run_id: {metric: [(epoch, value), ...]}} from MLflow's metric history (step = epoch)."""
    histories = {}
    for run_id in run_ids:
        histories[run_id] = {}
        for key in keys:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            if points:
                histories[run_id][key] = points
    return histories


def collect_confusions(client, run_ids: Sequence[str]) -> dict:
    """{run_id: confusion_matrix.json as a dict, or None where the run has none}."""
    from mlflow.exceptions import MlflowException

    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts(run_id, CONFUSION, str(Path(tmp) / run_id))
                found[run_id] = json.loads(Path(path).read_text())
            except (MlflowException, OSError, ValueError):
                found[run_id] = None
    return found


def make_report(client, selection: compare.Selection, board: pd.DataFrame, *, runs: Sequence[str] = (),
                out: str | Path | None = None, log: bool = True, curves_top: int = 5, confusions_top: int = 3) -> Path:
    """Write the page for `selection` (default `reports/<experiment>-report.html`) and, when the
    runs are one sweep's trials and `log` is set, attach it to the sweep's run as report/report.html.
    `runs` picks whose learning curves are overlaid (default: the first `curves_top` of `board`)."""
    from mlflow.exceptions import MlflowException

    from workbench.errors import WorkbenchError

    everything = compare.comparison_table(selection.runs)
    ranked = [r for r in board["run_id"]] if "run_id" in board else list(everything["run_id"])
    chosen = list(dict.fromkeys(runs)) or ranked[:curves_top]
    for run_id in chosen:
        if run_id not in set(everything["run_id"]):
            try:
                client.get_run(run_id)
            except MlflowException:
                raise WorkbenchError(f"--runs {run_id}: no such run") from None
    page = build_report(board, everything, collect_histories(client, chosen),
                        collect_confusions(client, ranked[:confusions_top]),
                        title=f"workbench report: {selection.experiment}", subtitle=selection.description)
    path = Path(out) if out else Path("reports") / f"{selection.experiment}-report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    if log and selection.sweep_run_id:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / Path(ARTIFACT).name
            copy.write_text(page, encoding="utf-8")
            client.log_artifact(selection.sweep_run_id, str(copy), artifact_path=str(Path(ARTIFACT).parent))
    return path
