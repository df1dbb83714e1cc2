"""What every command shares: the Typer app and its sub-apps, the consoles, one definition of
each option that several commands take, and the two start-up chores (quiet TensorFlow, the
command's `Workspace` from its flags). Command modules import this one and nothing else of the
CLI, so the imports point one way: `workbench.cli` -> command modules -> here -> the API."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Reproducible transfer-learning sweeps on face images, tracked in MLflow.")
specs_app = typer.Typer(no_args_is_help=True, help="List, show and validate experiment specs.")
data_app = typer.Typer(no_args_is_help=True, help="Generate, ingest and check datasets.")
weights_app = typer.Typer(no_args_is_help=True, help="Pre-fetch pretrained weights for offline machines.")
VERSIONED = ("workbench", "tensorflow", "keras", "mlflow", "optuna")


def versions() -> dict[str, str]:
    """The installed versions that decide what a run does, read from package metadata (instant:
    nothing is imported), the same figures every run records as tags."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {name: of(name) for name in VERSIONED}


def _version(value: bool) -> None:
    if value:
        print(" ".join(f"{name} {v}" for name, v in versions().items()))
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the versions of workbench, TensorFlow, Keras, MLflow and Optuna, and exit.")] = False) -> None:
    """Reproducible transfer-learning sweeps on face images, tracked in MLflow."""


app.add_typer(specs_app, name="specs")
app.add_typer(data_app, name="data")
app.add_typer(weights_app, name="weights")

# Piped output (CI logs, files) gets a wide fixed width so tables are not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

# --- options several commands take -----------------------------------------------------------------
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Fix a key for this run / every trial, e.g. --set epochs=1 --set image_size=32.")]
TrackingOption = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI \\[default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].")]
StorageOption = Annotated[Optional[str], typer.Option(
    "--storage", help="Optuna storage URL \\[default: $WORKBENCH_STORAGE or sqlite:///mlruns/optuna.db].")]
DataOption = Annotated[Optional[Path], typer.Option(
    "--data", help="Folder holding the reference datasets as downloaded \\[default: $WORKBENCH_RAW or data/raw].")]
SmokeOption = Annotated[bool, typer.Option(
    "--smoke", help="Minutes on a CPU: tiny images, 1 epoch, 2 trials, on a generated tree in the spec's own layout.")]
RepeatsOption = Annotated[Optional[int], typer.Option(
    "--repeats", min=1, help="Train each configuration N times with different seeds \\[default: the spec's repeats].")]
ExperimentOption = Annotated[Optional[str], typer.Option(
    "--experiment", help="Experiment (spec) name: all its trial and single runs.")]
SweepOption = Annotated[Optional[str], typer.Option(
    "--sweep", help="A sweep's run id (its trials only), or 'latest' with --experiment.")]
TagOption = Annotated[Optional[list[str]], typer.Option(
    "--tag", help="Only runs tagged KEY=VALUE, e.g. --tag workbench.state=finished (repeatable: all must hold).")]
FilterOption = Annotated[Optional[str], typer.Option(
    "--filter", help="An MLflow search expression, e.g. \"metrics.test_accuracy > 0.8 and params.backbone = 'vgg16'\".")]
SortOption = Annotated[Optional[str], typer.Option(
    "--sort", help="Column to rank by \\[default: objective, the validation score the sweep optimised]; "
                   "scores sort descending, loss/latency/size/cost ascending.")]
OrderOption = Annotated[Optional[str], typer.Option("--order", help="Override the sort direction: asc or desc.")]
StatsOption = Annotated[Optional[bool], typer.Option(
    "--stats/--no-stats", help="Bootstrap intervals, macro-F1 difference and McNemar p-value vs the best "
                               "(Holm-corrected) for the top 5 \\[default: on for at most 20 rows].")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/RUN_ID/model or a bare NAME "
                    "(its champion) \\[default: the champion of the only registered model].")]


def quiet_environment() -> None:
    """Keep progress bars and TensorFlow's start-up chatter out of the user's terminal and CI logs.

    TensorFlow's C++ layer prints CUDA probing and oneDNN notices straight to file descriptor 2
    before its logging is configured, where TF_CPP_MIN_LOG_LEVEL cannot reach them; so the first
    import happens here with that descriptor pointed at /dev/null. Python errors still surface:
    an exception raised by the import propagates after the descriptor is restored."""
    # MLflow's progress bars and telemetry are off by default from `workbench/__init__.py`.
    if "tensorflow" in sys.modules or os.environ.get("WORKBENCH_TF_VERBOSE"):
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def workspace(*, tracking_uri: str | None = None, storage: str | None = None, data: Path | None = None):
    """The command's workspace, built once at the process edge: its flags, then the environment,
    then the defaults under the working directory. Everything the command does gets it by hand."""
    from workbench.api import Workspace

    return Workspace(Path("."), raw=data.expanduser().resolve() if data is not None else None,
                     tracking_uri=tracking_uri, storage=storage)


def load_spec(ws, spec: str, overrides: list[str] | None = None, *, smoke: bool = False, repeats: int | None = None):
    """A spec as a command sees it, and the workspace it runs in: `--set` applied; with
    `--smoke`, the toy-scale version of the study on generated trees in its datasets' real
    layouts, kept apart under data/smoke/<spec>/ and in its own `<name>-smoke` experiment."""
    return ws.for_spec(ws.spec(spec, overrides or [], smoke=smoke, repeats=repeats), smoke)


def short(value) -> str:
    """A number as a terminal line shows it: 3 significant decimals, '-' for missing."""
    if isinstance(value, float):
        if value != value:  # NaN: the metric does not exist for this run (pruned or failed)
            return "-"
        return f"{value:.4g}" if abs(value) < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def model_uri(client, model: str | None, allow_external: bool = False) -> str:
    """What the user typed as --model, as a full URI (refused when outside the store, unless allowed)."""
    from workbench.ship import predict

    return predict.model_uri(model, None if model else predict.registered_champions(client), allow_external)
