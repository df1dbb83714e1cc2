"""The pictures a run leaves behind, each built twice: matplotlib for a PNG, plotly for interactive HTML.

Every public builder returns `(matplotlib_figure, plotly_figure)` from plain values (a history
dict, an `Evaluation`, image arrays) and draws nothing on screen; `figure_pairs()` gathers the
standard set under artifact names and `write_html_page()` is the one function that touches disk,
writing a self-contained HTML with plotly.js inlined so it opens on machines without internet.
The caller logs the figures and closes the matplotlib ones; nothing here closes figures globally.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless machines and CI: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.express as px  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from workbench.evaluate import Evaluation, most_confident_mistakes  # noqa: E402

TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
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
    panels = _panels(history)
    boundary = _boundary_x(history, boundary)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    for col, (metric, _) in enumerate(panels, start=1):
        for key, label, color in ((metric, "train", TRAIN_COLOR), (f"val_{metric}", "validation", VAL_COLOR)):
            values = _series(history, key)
            if values:
                # One legend entry per series, shared by all panels (legendgroup toggles them together).
                fig.add_trace(go.Scatter(x=list(range(1, len(values) + 1)), y=values, mode="lines+markers",
                                         name=label, legendgroup=label, showlegend=col == 1,
                                         line=dict(color=color)), row=1, col=col)
        if boundary is not None:
            fig.add_vline(x=boundary, line_dash="dash", line_color="grey", row=1, col=col,
                          annotation_text="fine-tuning" if col == 1 else None)
        fig.update_xaxes(title_text="epoch", dtick=1, row=1, col=col)
    fig.update_layout(title="Learning curves", height=420, width=420 * len(panels), hovermode="x unified")
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
    counts, share = evaluation.confusion, evaluation.confusion_normalized
    names = list(evaluation.classes)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.15,
                        subplot_titles=("counts", "share of true class (row-normalised)"))
    fig.add_trace(go.Heatmap(z=counts, x=names, y=names, colorscale="Blues", showscale=False,
                             text=counts, texttemplate="%{text}",
                             hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Heatmap(z=share, x=names, y=names, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                             text=[[f"{v:.0%}" for v in row] for row in share],
                             texttemplate="%{text}",
                             hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.1%} of true<extra></extra>"),
                  row=1, col=2)
    # Heatmaps grow upwards by default; a confusion matrix reads with the first class on top.
    fig.update_yaxes(autorange="reversed", title_text="true")
    fig.update_xaxes(title_text="predicted")
    side = 80 * len(names) + 220
    fig.update_layout(title=title, height=side, width=2 * side)
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


def _mistakes(images, y_true, probabilities, classes, k):
    images = _as_uint8_rgb(images)
    probabilities = np.asarray(probabilities, dtype=float)
    if not len(images) == len(y_true) == len(probabilities):
        raise ValueError(f"{len(images)} images, {len(y_true)} labels and {len(probabilities)} "
                         "probability rows must line up")
    picked = most_confident_mistakes(y_true, probabilities, k)
    titles = []
    for i in picked:
        pred = int(probabilities[i].argmax())
        titles.append(f"true {classes[int(y_true[i])]} / pred {classes[pred]} ({probabilities[i, pred]:.2f})")
    return images[picked], titles


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def mistakes_matplotlib(images, y_true, probabilities, classes, k: int = 16):
    shown, titles = _mistakes(images, y_true, probabilities, classes, k)
    if not titles:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, NO_MISTAKES, ha="center", va="center", fontsize=12)
        ax.axis("off")
        return fig
    rows, cols = _grid(len(titles))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax, image, title in zip(axes.flat, shown, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax in axes.flat[len(titles):]:
        fig.delaxes(ax)  # so the figure has exactly one axes per mistake shown
    fig.suptitle(f"Most confident mistakes ({len(titles)})")
    fig.tight_layout()
    return fig


def mistakes_plotly(images, y_true, probabilities, classes, k: int = 16) -> go.Figure:
    shown, titles = _mistakes(images, y_true, probabilities, classes, k)
    if not titles:
        fig = go.Figure()
        fig.add_annotation(text=NO_MISTAKES, x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=16))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(title="Most confident mistakes", height=240, width=600)
        return fig
    rows, cols = _grid(len(titles))
    # binary_string embeds each image as a PNG instead of a JSON array of pixels: a far smaller HTML.
    fig = px.imshow(shown, facet_col=0, facet_col_wrap=cols, binary_string=True,
                    facet_col_spacing=0.02, facet_row_spacing=0.08)
    fig.for_each_annotation(lambda a: a.update(text=titles[int(re.sub(r"\D", "", a.text))], font_size=10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=f"Most confident mistakes ({len(titles)})", height=230 * rows + 80,
                      width=230 * cols + 40, margin=dict(l=10, r=10, t=80, b=10))
    return fig


def mistakes_grid(images: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray,
                  classes: tuple[str, ...], k: int = 16):
    """The k wrong predictions the model was surest about, each titled "true X / pred Y (0.97)".

    The plotly half is a faceted `px.imshow`, one image trace per mistake; with no mistakes both
    halves are a single panel saying so."""
    return (mistakes_matplotlib(images, y_true, probabilities, classes, k),
            mistakes_plotly(images, y_true, probabilities, classes, k))


# --- what the caller logs -------------------------------------------------------------------

def figure_pairs(evaluation: Evaluation, history: dict[str, list[float]], images: np.ndarray | None = None,
                 k: int = 16, phase_boundary: int | None = None) -> dict[str, tuple]:
    """The standard figures of a run by artifact name: {"learning_curves": (mpl, plotly), ...}.

    The mistakes grid needs the test images in the order the evaluation saw them, so it is
    included only when `images` is given (and the evaluation kept its labels and probabilities)."""
    pairs = {"learning_curves": learning_curves(history, phase_boundary),
             "confusion_matrix": confusion(evaluation)}
    if images is not None and evaluation.y_true is not None and evaluation.probabilities is not None:
        pairs["most_confident_mistakes"] = mistakes_grid(images, evaluation.y_true, evaluation.probabilities,
                                                         evaluation.classes, k)
    return pairs


def write_html_page(figures: dict[str, go.Figure], path: str | Path, title: str) -> Path:
    """Several plotly figures on one self-contained page, plotly.js inlined once (not per figure),
    so a run's interactive figures cost one ~5 MB file instead of one per figure."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures.values())]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                    f"<body style='font-family:sans-serif'><h2>{title}</h2>{''.join(parts)}</body></html>")
    return path
