"""Every picture workbench draws, and the one HTML page writer that shows them.

A run's figures are built twice, matplotlib for a PNG and plotly for interactive HTML: learning
curves, the confusion matrix, the most confident mistakes, the reliability diagram and the likely
label errors (`figure_pairs()` gathers them under artifact names). The report's figures compare runs (curves overlaid, confusion matrices side by
side, the objective by registry axis, parallel coordinates, accuracy against latency, the
cross-dataset matrix), a sweep's are Optuna's own study plots, and the run page and the report
share the same curve and confusion builders. Builders take plain values (histories, confusion
dicts, frames) and draw nothing on screen; `page()` renders sections into one self-contained
page with a Jinja2 template, plotly.js inlined once so it opens without internet. The caller
closes the matplotlib figures; nothing here closes figures globally.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe
import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from PIL import Image  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from workbench.measure.evaluate import Evaluation, most_confident_mistakes  # noqa: E402

TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("f1_macro", "macro-F1"))
NO_MISTAKES = "no mistakes: every prediction is correct"


# --- learning curves ------------------------------------------------------------------------

def _series(history: dict, key: str) -> list[float] | None:
    values = history.get(key)
    # Scalars such as phase_boundary ride along in the history but are not per-epoch series.
    return [float(v) for v in values] if isinstance(values, (list, tuple, np.ndarray)) and len(values) else None


def _panels(history: dict) -> list[tuple[str, str]]:
    """Loss and accuracy always; macro-F1 only when some run actually recorded it."""
    return [(metric, title) for metric, title in PANELS
            if metric != "f1_macro" or _series(history, "f1_macro") or _series(history, "val_f1_macro")]


def _boundary_x(history: dict, boundary: int | None = None) -> float | None:
    """Where to draw the fine-tuning line: halfway before the first fine-tuning epoch.

    The boundary is the 1-based epoch number at which fine-tuning started (`TrainResult.phase_boundary`),
    given directly or as `history["phase_boundary"]` (a number, or a one-element list since
    histories are logged as lists); the argument wins."""
    value = boundary if boundary is not None else history.get("phase_boundary")
    if isinstance(value, (list, tuple, np.ndarray)):
        value = value[0] if len(value) else None
    return None if value is None else float(value) - 0.5


def learning_curves_matplotlib(history: dict[str, list[float]], boundary: int | None = None):
    panels = _panels(history)
    boundary = _boundary_x(history, boundary)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        for key, label, color in ((metric, "train", TRAIN_COLOR), (f"val_{metric}", "validation", VAL_COLOR)):
            values = _series(history, key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label, color=color)
        if boundary is not None:
            ax.axvline(boundary, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def learning_curves_plotly(history: dict[str, list[float]], boundary: int | None = None) -> go.Figure:
    """One run's curves: the shared builder below with train and validation in their own colours."""
    return overlaid_curves({"": history}, boundary=_boundary_x(history, boundary))


def _points(values) -> list[tuple[float, float]]:
    """A series as (epoch, value) pairs: lists of values count epochs from 1, MLflow's metric
    history already carries its steps."""
    if not isinstance(values, (list, tuple, np.ndarray)) or not len(values):
        return []
    first = values[0]
    if isinstance(first, (list, tuple)) and len(first) == 2:
        return [(float(s), float(v)) for s, v in values]
    return [(i + 1.0, float(v)) for i, v in enumerate(values)]


def overlaid_curves(histories: dict[str, dict], boundary: float | None = None) -> go.Figure | None:
    """Learning curves of one or more runs, a panel per metric (loss, accuracy, macro-F1 where
    recorded): train solid, validation dashed. One run gets the train / validation colours;
    several runs get a colour each, and one legend entry per run toggles all its lines."""
    panels = [(metric, title) for metric, title in PANELS
              if any(_points(h.get(key)) for h in histories.values() for key in (metric, f"val_{metric}"))]
    if not panels:
        return None
    single = len(histories) == 1
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    for i, (label, history) in enumerate(histories.items()):
        run_color = PALETTE[i % len(PALETTE)]
        shown = False
        for col, (metric, _) in enumerate(panels, start=1):
            for key, series in ((metric, "train"), (f"val_{metric}", "validation")):
                points = _points(history.get(key))
                if not points:
                    continue
                x, y = zip(*points)
                name = series if single else label
                legend = (col == 1) if single else not shown
                fig.add_trace(go.Scatter(
                    x=list(x), y=list(y), mode="lines+markers", name=name,
                    legendgroup=series if single else label, showlegend=legend,
                    line=dict(color=(TRAIN_COLOR if series == "train" else VAL_COLOR) if single else run_color,
                              dash="solid" if series == "train" or single else "dash"),
                    hovertemplate=f"{label + ' ' if label else ''}{key} epoch %{{x}}: %{{y:.4f}}<extra></extra>"),
                    row=1, col=col)
                shown = True
        if boundary is not None:
            for col in range(1, len(panels) + 1):
                fig.add_vline(x=boundary, line_dash="dash", line_color="grey", row=1, col=col,
                              annotation_text="fine-tuning" if col == 1 else None)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_layout(title="Learning curves", height=420, hovermode="x unified" if single else "closest",
                      margin=dict(t=70))
    return fig


def learning_curves(history: dict[str, list[float]], phase_boundary: int | None = None):
    """Train vs validation loss and accuracy (and macro-F1 when recorded) per epoch, with a dashed
    line before the first fine-tuning epoch when there was a second phase."""
    return (learning_curves_matplotlib(history, phase_boundary),
            learning_curves_plotly(history, phase_boundary))


# --- confusion matrix -----------------------------------------------------------------------

def confusion_matplotlib(evaluation: Evaluation, title: str = "Confusion matrix (test)"):
    counts, share = evaluation.confusion, evaluation.confusion_normalized
    names, n = evaluation.classes, len(evaluation.classes)
    side = 1.1 * n + 2.5
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    panels = ((axes[0], counts / max(counts.max(), 1), counts, "{:d}", "counts"),
              (axes[1], share, share, "{:.0%}", "share of true class (row-normalised)"))
    for ax, shade, values, fmt, subtitle in panels:
        ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                value = int(values[i, j]) if fmt == "{:d}" else float(values[i, j])
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=9,
                        color="white" if shade[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), names, rotation=30, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(subtitle)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_plotly(evaluation: Evaluation, title: str = "Confusion matrix (test)") -> go.Figure:
    """One run's confusion matrix through the shared builder below."""
    fig = confusion_heatmaps({"": evaluation.confusion_json()})
    fig.update_layout(title=title)
    return fig


def confusion_heatmaps(confusions: dict[str, dict | None]) -> go.Figure | None:
    """Confusion matrices side by side, one panel per run (`confusion_matrix.json` dicts):
    colour is the share of the true class (rows normalised, so rare classes read as clearly as
    common ones), text the counts and shares."""
    shown = {label: c for label, c in confusions.items() if c and c.get("matrix")}
    if not shown:
        return None
    fig = make_subplots(rows=1, cols=len(shown), subplot_titles=list(shown) if len(shown) > 1 else None,
                        horizontal_spacing=0.08)
    for col, confusion in enumerate(shown.values(), start=1):
        counts = np.asarray(confusion["matrix"], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        names = [str(c) for c in (confusion.get("classes") or range(len(counts)))]
        text = [[f"{int(n)}<br>{s:.0%}" for n, s in zip(row_n, row_s)] for row_n, row_s in zip(counts, share)]
        fig.add_trace(go.Heatmap(z=share, x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                                 showscale=col == len(shown), text=text, texttemplate="%{text}",
                                 customdata=counts.astype(int),
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} images, "
                                               "%{z:.0%} of true<extra></extra>"), row=1, col=col)
        # Heatmaps grow upwards by default; a confusion matrix reads with the first class on top.
        fig.update_yaxes(autorange="reversed", row=1, col=col)
        fig.update_xaxes(title_text="predicted", row=1, col=col)
    fig.update_yaxes(title_text="true", row=1, col=1)
    side = 70 * max(len(c["matrix"]) for c in shown.values()) + 200
    fig.update_layout(height=max(side, 360), margin=dict(t=70))
    return fig


def confusion(evaluation: Evaluation, title: str = "Confusion matrix (test)"):
    """Raw counts and row-normalised shares side by side."""
    return confusion_matplotlib(evaluation, title), confusion_plotly(evaluation, title)


# --- most confident mistakes ----------------------------------------------------------------

def _as_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """Images arrive as uint8 or float on the 0..255 scale; grey ones get three channels."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (n, h, w, 3) RGB, got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return images


def _mistakes(images, y_true, probabilities, classes, k, picked=None):
    """The images and titles of the mistakes to show. `picked` (rows of y_true / probabilities,
    as `train()` already chose them) comes with `images` holding just those images, in order;
    without it, the k surest mistakes are picked here from images of every row."""
    images = _as_uint8_rgb(images)
    probabilities = np.asarray(probabilities, dtype=float)
    if picked is None:
        if not len(images) == len(y_true) == len(probabilities):
            raise ValueError(f"{len(images)} images, {len(y_true)} labels and {len(probabilities)} "
                             "probability rows must line up")
        picked = most_confident_mistakes(y_true, probabilities, k)
        images = images[picked]
    elif len(images) != len(picked):
        raise ValueError(f"{len(images)} images for {len(picked)} picked mistakes")
    titles = []
    for i in picked:
        pred = int(probabilities[i].argmax())
        titles.append(f"true {classes[int(y_true[i])]} / pred {classes[pred]} ({probabilities[i, pred]:.2f})")
    return images, titles


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def _mosaic(shown: np.ndarray, count: int) -> tuple[np.ndarray, list[tuple[float, float]], tuple[int, int]]:
    """The images laid out in a near-square grid on white, with room above each for its title:
    the mosaic, each title's anchor (x, y: the tile's top centre) and the grid's (rows, columns)."""
    rows, cols = _grid(count)
    h, w = shown.shape[1:3]
    pad_top, pad = max(h // 4, 6), 4   # room for a title above each tile, a gap between tiles
    cell_h, cell_w = h + pad_top + pad, w + pad
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, dtype=np.uint8)
    anchors = []
    for i, image in enumerate(shown[:count]):
        r, c = divmod(i, cols)
        mosaic[r * cell_h + pad_top:r * cell_h + pad_top + h, c * cell_w:c * cell_w + w] = image
        anchors.append((c * cell_w + w / 2, r * cell_h + pad_top - 1))
    return mosaic, anchors, (rows, cols)


def grid_matplotlib(shown: np.ndarray, titles: list[str], heading: str, empty: str,
                    tile: tuple[float, float] = (2.6, 2.8)):
    """Images in a near-square grid, each under its title; one panel saying `empty` when there
    are none. Drawn as one mosaic image with the titles as text: a run draws two such grids, and
    one axes per image took 0.9 s of every trial (16 images), the mosaic a tenth of that."""
    fig, ax = plt.subplots(figsize=(5, 2) if not titles else None)
    ax.axis("off")
    if not titles:
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
        return fig
    mosaic, anchors, (rows, cols) = _mosaic(shown, len(titles))
    fig.set_size_inches(tile[0] * cols, tile[1] * rows)
    ax.imshow(mosaic, interpolation="nearest")
    for (x, y), title in zip(anchors, titles):
        ax.text(x, y, title, ha="center", va="bottom", fontsize=8)
    ax.set_title(f"{heading} ({len(titles)})")
    fig.tight_layout()
    return fig


def grid_plotly(shown: np.ndarray, titles: list[str], heading: str, empty: str) -> go.Figure:
    """The same grid, interactive: one mosaic image (zoom and pan), each title over its tile.
    One image rather than a facet per tile: plotly express took 0.28 s a trial to lay 16 out."""
    if not titles:
        fig = go.Figure()
        fig.add_annotation(text=empty, x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=16))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(title=heading, height=240, width=600)
        return fig
    mosaic, anchors, (rows, cols) = _mosaic(shown, len(titles))
    # The mosaic as one embedded PNG, not a JSON array of pixels: a far smaller HTML.
    png = io.BytesIO()
    Image.fromarray(mosaic).save(png, format="PNG", compress_level=1)
    fig = go.Figure(go.Image(source="data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")))
    fig.update_yaxes(autorange="reversed")
    for (x, y), title in zip(anchors, titles):
        fig.add_annotation(x=x, y=y, text=title, showarrow=False, yanchor="bottom", font=dict(size=10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=f"{heading} ({len(titles)})", height=230 * rows + 80,
                      width=230 * cols + 40, margin=dict(l=10, r=10, t=80, b=10))
    return fig


def mistakes_matplotlib(images, y_true, probabilities, classes, k: int = 16, picked=None):
    shown, titles = _mistakes(images, y_true, probabilities, classes, k, picked)
    return grid_matplotlib(shown, titles, "Most confident mistakes", NO_MISTAKES)


def mistakes_plotly(images, y_true, probabilities, classes, k: int = 16, picked=None) -> go.Figure:
    shown, titles = _mistakes(images, y_true, probabilities, classes, k, picked)
    return grid_plotly(shown, titles, "Most confident mistakes", NO_MISTAKES)


def label_issues_grid(images: np.ndarray, issues) -> tuple:
    """The likely label errors shown, each titled with both labels, "given X / likely Y (0.03)",
    the score being the model's probability for the given label. A PNG only (None for the
    interactive page): a picture of suspects needs no zooming, and a run draws it every time."""
    titles = [f"given {r.given}\nlikely {r.suggested} ({r.score:.2f})" for r in issues.itertuples()][:len(images)]
    shown = _as_uint8_rgb(images) if len(images) else images
    return grid_matplotlib(shown, titles, "Likely label errors", "no likely label errors found", tile=(1.7, 2.0)), None


# --- calibration ---------------------------------------------------------------------------

def reliability_diagram(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, temperature: float) -> tuple:
    """Accuracy against confidence per bin, before and after the temperature, with the diagonal
    a perfectly calibrated model would follow; marker area shows how many images a bin holds."""
    from workbench.measure.calibration import reliability
    from workbench.measure.evaluate import expected_calibration_error

    curves = {f"before (ECE {expected_calibration_error(y_true, raw):.3f})": reliability(y_true, raw),
              f"after T={temperature:.2f} (ECE {expected_calibration_error(y_true, calibrated):.3f})":
                  reliability(y_true, calibrated)}
    title = "Reliability diagram (test)"
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", label="perfectly calibrated")
    plotly_fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                                      line=dict(color="#999999", dash="dash")))
    for color, (name, bins) in zip(PALETTE, curves.items()):
        x = [b["confidence"] for b in bins]
        y = [b["accuracy"] for b in bins]
        sizes = [b["images"] for b in bins]
        ax.plot(x, y, marker="o", color=color, label=name)
        ax.scatter(x, y, s=[10 + 2 * n for n in sizes], color=color, alpha=0.3)
        plotly_fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line=dict(color=color),
                                        text=[f"{n} images" for n in sizes],
                                        hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{text}"))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence (top-1 probability)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    plotly_fig.update_layout(title=title, xaxis_title="confidence (top-1 probability)", yaxis_title="accuracy",
                             xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=480, width=560)
    return fig, plotly_fig


def mistakes_grid(images: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray,
                  classes: tuple[str, ...], k: int = 16, picked: list[int] | None = None):
    """The k wrong predictions the model was surest about, each titled "true X / pred Y (0.97)".

    Both halves draw one mosaic of the mistakes, each titled over its tile; with no mistakes both
    are a single panel saying so."""
    return (mistakes_matplotlib(images, y_true, probabilities, classes, k, picked),
            mistakes_plotly(images, y_true, probabilities, classes, k, picked))


def reliability_overlay(runs: dict[str, tuple]) -> go.Figure | None:
    """The report's calibration section: per run (name -> (labels, raw, calibrated test
    probabilities)) accuracy against confidence after its temperature (solid) and before (dotted)."""
    from workbench.measure.calibration import reliability
    from workbench.measure.evaluate import expected_calibration_error

    if not runs:
        return None
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                               line=dict(color="#999999", dash="dash")))
    for color, (name, (y, raw, calibrated)) in zip(PALETTE, runs.items()):
        for probabilities, when, dash in ((calibrated, "after", "solid"), (raw, "before", "dot")):
            bins = reliability(y, probabilities)
            ece = expected_calibration_error(y, probabilities)
            fig.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                                     mode="lines+markers", name=f"{name} {when} (ECE {ece:.3f})",
                                     line=dict(color=color, dash=dash)))
    fig.update_layout(xaxis_title="confidence (top-1 probability)", yaxis_title="accuracy", xaxis_range=[0, 1],
                      yaxis_range=[0, 1.02], height=480)
    return fig


# --- what the caller logs -------------------------------------------------------------------

def figure_pairs(evaluation: Evaluation, history: dict[str, list[float]] | None, images: np.ndarray | None = None,
                 k: int = 16, phase_boundary: int | None = None, picked: list[int] | None = None,
                 calibrated: np.ndarray | None = None, temperature: float | None = None,
                 issues=None, issue_images: np.ndarray | None = None) -> dict[str, tuple]:
    """The standard figures of a run by artifact name: {"learning_curves": (mpl, plotly), ...}.

    Learning curves need a history (an evaluation of a trained model has none). The mistakes
    grid is included when `images` is given: the test images in the evaluation's order, or just
    the `picked` mistakes' images (what `train()` returns)."""
    pairs = {"learning_curves": learning_curves(history, phase_boundary)} if history else {}
    pairs["confusion_matrix"] = confusion(evaluation)
    if images is not None and evaluation.y_true is not None and evaluation.probabilities is not None:
        pairs["most_confident_mistakes"] = mistakes_grid(images, evaluation.y_true, evaluation.probabilities,
                                                         evaluation.classes, k, picked)
    if calibrated is not None and temperature is not None:
        pairs["reliability_diagram"] = reliability_diagram(evaluation.y_true, evaluation.probabilities,
                                                           calibrated, temperature)
    if issues is not None and issue_images is not None:
        pairs["label_issues"] = label_issues_grid(issue_images, issues[issues["issue"]])
    return pairs


# --- comparing runs (the report) ---------------------------------------------------------------

def objective_by_axis(table, objective: str, axes: list[str]) -> go.Figure | None:
    """A box per value of each registry axis (backbone, balance, augmentation), every run a dot."""
    axes = [a for a in axes if a in table and table[a].notna().any()]
    if objective not in table or not axes:
        return None
    scored = table[table[objective].notna()]
    if scored.empty:
        return None
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=axes)
    for col, axis in enumerate(axes, start=1):
        fig.add_trace(go.Box(x=scored[axis].astype(str), y=scored[objective], name=axis, boxpoints="all",
                             jitter=0.4, pointpos=0, text=scored["run_name"].astype(str), showlegend=False,
                             hovertemplate="%{text}<br>%{x}: %{y:.4f}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(title_text=objective, row=1, col=1)
    fig.update_layout(height=420, margin=dict(t=60))
    return fig


def parallel_coordinates(table, objective: str, columns: list[str]) -> go.Figure | None:
    """One line per run across the given parameter columns, ending at the objective (colour)."""
    if objective not in table:
        return None
    scored = table[table[objective].notna()].reset_index(drop=True)
    if scored.empty:
        return None
    dimensions = []
    for column in [c for c in columns if c in scored]:
        values = scored[column]
        if values.dtype.kind in "fiu":
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


def accuracy_vs_latency(table, front, accuracy: str = "test_accuracy",
                        latency: str = "latency_ms_batch1") -> go.Figure | None:
    """Every run by test accuracy and batch-1 latency; `front` (a boolean mask over the rows with
    both values, from `stats.pareto_front`) is highlighted and joined."""
    if accuracy not in table or latency not in table:
        return None
    points = table[table[accuracy].notna() & table[latency].notna()].reset_index(drop=True)
    if points.empty:
        return None
    front = np.asarray(front, dtype=bool)
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


def transfer_scatter(table, objective: str = "objective", home: str = "objective_in_distribution",
                     axes: tuple[str, ...] = ()) -> go.Figure | None:
    """Every trial by its validation score in distribution (x: the sources it trained on) and on
    the held-out source (y: what it was chosen by), with the diagonal where they agree: the
    further below it, the larger the trial's transfer gap. A selection in distribution takes the
    rightmost point, a transfer one the highest."""
    if objective not in table or home not in table:
        return None
    points = table[table[objective].notna() & table[home].notna()].reset_index(drop=True)
    if points.empty:
        return None
    text = points["run_name"].astype(str)
    for axis in axes:
        if axis in points:
            text = text + f" · {axis} " + points[axis].astype(str)
    low = float(min(points[objective].min(), points[home].min()))
    high = float(max(points[objective].max(), points[home].max()))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="same score on both",
                             line=dict(color="#9aa5b1", dash="dash"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=points[home], y=points[objective], mode="markers+text", name="trials", text=text,
                             textposition="top center", marker=dict(color="#1f77b4", size=10),
                             hovertemplate="%{text}<br>in distribution %{x:.4f}<br>held-out source %{y:.4f}"
                                           "<extra></extra>"))
    fig.update_xaxes(title_text=f"{home}: validation on the training sources")
    fig.update_yaxes(title_text=f"{objective}: validation on the held-out source")
    fig.update_layout(height=460, margin=dict(t=40))
    return fig


def study_plots(study, target_name: str, latency: str | None = None) -> dict[str, go.Figure]:
    """Optuna's plotly figures for whatever a study can show so far (each needs a few finished
    trials); with a latency objective the first value is the target and a Pareto plot is added."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    target = (lambda t: t.values[0]) if latency else None
    builders = {"history": lambda: vis.plot_optimization_history(study, target=target, target_name=target_name),
                "importances": lambda: vis.plot_param_importances(study, target=target, target_name=target_name),
                "parallel": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=target_name),
                "slices": lambda: vis.plot_slice(study, target=target, target_name=target_name)}
    if latency:
        builders["pareto"] = lambda: vis.plot_pareto_front(study, target_names=[target_name, latency])
    plots = {}
    for key, build in builders.items():
        try:
            with warnings.catch_warnings():
                # Importance evaluators warn about the target's direction, which the plot already states.
                warnings.simplefilter("ignore", UserWarning)
                plots[key] = build()
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for that plot yet
            continue
    return plots


def matrix_heatmap(table, value: str = "test_f1_macro") -> go.Figure | None:
    """A train-source x test-source grid of one score (cross-dataset evaluation), with the
    bootstrap interval in each cell's hover text."""
    if table is None or table.empty or value not in table:
        return None
    grid = table.pivot(index="trained_on", columns="tested_on", values=value)
    low = table.pivot(index="trained_on", columns="tested_on", values=f"{value}_low") \
        if f"{value}_low" in table else None
    high = table.pivot(index="trained_on", columns="tested_on", values=f"{value}_high") \
        if f"{value}_high" in table else None
    text = [[("-" if np.isnan(v) else f"{v:.3f}") for v in row] for row in grid.to_numpy(dtype=float)]
    hover = None
    if low is not None and high is not None:
        hover = [[f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(rl, rh)]
                 for rl, rh in zip(low.to_numpy(dtype=float), high.to_numpy(dtype=float))]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(dtype=float), x=list(grid.columns), y=list(grid.index),
                               zmin=0, zmax=1, colorscale="Blues", text=text, texttemplate="%{text}",
                               customdata=hover,
                               hovertemplate="trained on %{y}<br>tested on %{x}<br>" + value +
                                             " %{z:.3f}" + (" %{customdata}" if hover else "") + "<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="trained on")
    fig.update_xaxes(title_text="tested on")
    fig.update_layout(title=f"{value} across datasets", height=120 * len(grid) + 220)
    return fig


# --- the one HTML page writer ----------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    title: str
    figure: go.Figure | None = None
    html: str = ""          # trusted markup shown before the figure (a table, say)
    missing: str = ""       # why there is no figure, shown instead


_PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 24px; }
.missing { color: #777; }
.scroll { overflow-x: auto; max-height: 70vh; }
table.compare { border-collapse: collapse; font-size: 13px; }
table.compare th, table.compare td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
table.compare th { background: #f3f3f3; position: sticky; top: 0; }
table.compare tbody tr:hover { background: #f7fbff; }
</style></head><body>
<h1>{{ title }}</h1>
{% if subtitle %}<p>{{ subtitle }}</p>{% endif %}
{% for section in sections %}<section>
{% if section.title %}<h2>{{ section.title }}</h2>{% endif %}
{{ section.body }}
</section>
{% endfor %}</body></html>
""")


def page(title: str, sections: list[Section], subtitle: str = "") -> str:
    """A self-contained HTML page: every figure as a fragment, plotly.js inlined into the first
    one only (about 4.6 MB once, not per figure), so it opens on machines without internet."""
    inlined, bodies = False, []
    for section in sections:
        body = section.html
        if section.figure is not None:
            height = section.figure.layout.height or 450
            body += section.figure.to_html(full_html=False, include_plotlyjs=not inlined,
                                           default_width="100%", default_height=f"{height}px")
            inlined = True
        elif section.missing:
            body += str(markupsafe.Markup("<p class='missing'>{}</p>").format(section.missing))
        bodies.append({"title": section.title, "body": markupsafe.Markup(body)})
    return _PAGE.render(title=title, subtitle=subtitle, sections=bodies)


def write_html_page(figures: dict[str, go.Figure], path: str | Path, title: str, subtitle: str = "") -> Path:
    """Several figures on one page (`page`), written to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, [Section("", fig) for fig in figures.values()], subtitle), encoding="utf-8")
    return path
