"""Commands of the run and sweep stages: `run` (one configuration), `sweep` (the Optuna search,
here or in worker processes) and `leaderboard` (the latest sweep's trials). They only parse and
print: `Workspace.run` and `Workspace.sweep` do the work, and a sweep tells its listener (here,
`SweepProgress`) what it checked, what it found and each trial that finishes, which it shows as
a live bar on a terminal or one line per trial in a log."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from workbench import spec as specs
from workbench import vocabulary
from workbench.cli.common import (
    DataOption,
    RepeatsOption,
    SetOption,
    SmokeOption,
    StorageOption,
    TrackingOption,
    app,
    console,
    err_console,
    quiet_environment,
    short,
    workspace,
)
from workbench.track import ui
from workbench.track.progress import SweepListener


@app.command("run")
def run_command(spec: str, set_: SetOption = None, tracking_uri: TrackingOption = None, data: DataOption = None,
                smoke: SmokeOption = False, repeats: RepeatsOption = None) -> None:
    """Train and evaluate one configuration of SPEC as a single MLflow run (N nested seed runs
    with --repeats N)."""
    quiet_environment()
    ws = workspace(tracking_uri=tracking_uri, data=data)
    loaded = ws.spec(spec, set_ or [], smoke=smoke, repeats=repeats)
    open_dims = [k for k, d in loaded.params.dims().items()
                 if specs.is_searched(d) and k not in (loaded.enqueue[0] if loaded.enqueue else {})]
    if loaded.enqueue:
        err_console.print(f"note: training the spec's first enqueued configuration ({loaded.enqueue[0]})")
    if open_dims:
        err_console.print(f"note: {', '.join(open_dims)} not fixed: using the first choice or the middle "
                          "of the range (fix them with --set)")
    def on_data(prepared) -> None:
        from workbench.data.dataset import folds

        console.print(prepared.describe(), highlight=False)
        if loaded.objective.rule != "in_distribution":
            print_folds(folds(loaded, prepared))

    outcome = ws.run(spec, set_ or [], smoke=smoke, repeats=repeats, on_data=on_data)
    spread = outcome.metrics

    def shown(key: str) -> str:
        std = spread.get(f"{key}_std")
        return f"{key} {spread[key]:.3f}" + ("" if std is None else f" ± {std:.3f}")

    metrics = ", ".join(shown(k) for k in outcome.metrics
                        if k == "test_accuracy" or k.startswith("test_f1_") and not k.endswith(("weighted", "_std")))
    rule = loaded.objective.rule
    measured = "validation" if rule == "in_distribution" else \
        f"validation {vocabulary.measured_on(rule, ','.join(loaded.held_out_sources()))}; " \
        f"in distribution {spread[vocabulary.IN_DISTRIBUTION]:.3f}, transfer gap {spread[vocabulary.TRANSFER_GAP]:+.3f}"
    console.print(f"run {outcome.run_id} in experiment {loaded.name}: {loaded.objective.metric} "
                  f"{outcome.objective:.3f} ({measured}); test: {metrics}")


def print_folds(folds) -> None:
    """Under a transfer rule, one indented line per fold: what it trains, validates and tests on."""
    if len(folds) > 1:
        console.print(f"leave one source out: each configuration trains {len(folds)} times, once per source held out "
                      "(that many times the cost of a sweep in distribution)", highlight=False)
    for fold in folds:
        console.print(f"  {fold.describe()}", highlight=False)



class SweepProgress(SweepListener):
    """What a sweep says as it goes: its data and leak check, what it found when resuming, then
    its trials as they finish: on a terminal, a live bar with trial i/N, state counts, the best
    value so far, elapsed time and ETA; in non-interactive output one plain line per trial with
    the same figures (all computed by the sweep: `Progress`). Then the leaderboard."""

    def __init__(self):
        self.metric = "objective"
        self.live = console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self) -> SweepProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()

    def data(self, data, leaks) -> None:
        console.print(data.describe(), highlight=False)
        console.print(f"leak check: no image has a copy in another split ({leaks.cross_source} picture(s) shared "
                      "between datasets kept on one side)" if leaks.cross_source else
                      "leak check: no image has a copy in another split", highlight=False)

    def folds(self, folds) -> None:
        print_folds(folds)

    def opened(self, sweep, total: int) -> None:
        from workbench.track.sweep import count

        self.metric = sweep.spec.objective.metric
        if sweep.found.any:
            console.print(sweep.found.line(sweep.study.study_name, total), highlight=False)
        self.task = self.bar.add_task("trials", total=total, completed=count(sweep.study))

    def trial(self, progress) -> None:
        trial = progress.trial
        counts = " ".join(f"{k} {v}" for k, v in progress.states.items() if v)
        best = "-" if progress.best is None else short(progress.best)
        eta = "-" if progress.eta is None else f"{progress.eta:.0f}s"
        value = "-" if progress.value is None else short(progress.value)
        params = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        line = (f"[{progress.done}/{progress.total}] trial {trial.number} {trial.state.name.lower()} {self.metric}={value} "
                f"(best {best}; {counts}; {progress.elapsed:.0f}s elapsed, eta {eta})  {params}")
        console.print(line + (f"  error: {progress.reason}" if progress.reason else ""), highlight=False,
                      markup=False, soft_wrap=True)
        if self.task is not None:
            self.bar.update(self.task, completed=progress.done, description=f"{counts or 'starting'} | best {best}")

    def finished(self, spec, result, leaderboard) -> None:
        if result.ran == 0 and result.found.complete + result.found.pruned >= result.total:
            console.print(f"study {result.study.study_name} already has {result.total} finished trials; nothing to "
                          "run (raise --trials to run more)")
        print_leaderboard(leaderboard, title=f"{spec.name}: sweep run {result.parent_run_id}",
                          objective=spec.objective.metric)


@app.command("sweep")
def sweep_command(
    spec: str,
    trials: Annotated[Optional[int], typer.Option(help="The study's total number of trials \\[default: the spec's].", min=1)] = None,
    set_: SetOption = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    study: Annotated[Optional[str], typer.Option(help="Optuna study name \\[default: the spec's name].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine (one GPU each where there are GPUs).", min=1)] = 1,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Run as one of --workers' processes.")] = False,
    top: Annotated[int, typer.Option(help="Rows in the closing leaderboard.")] = 8,
    data: DataOption = None,
    smoke: SmokeOption = False,
    repeats: RepeatsOption = None,
) -> None:
    """Search SPEC's space with Optuna; every trial is an MLflow run nested under the sweep's run.
    Rerunning the same command resumes: --trials is the study's total, not a number to add.
    Datasets the spec names by folder are ingested first (when new or changed) and the split is
    checked for leaks; a spec with `ship` registers (and exports) the winner at the end."""
    quiet_environment()
    ws = workspace(tracking_uri=tracking_uri, storage=storage, data=data)
    with SweepProgress() as progress:
        outcome = ws.sweep(spec, set_ or [], trials=trials, study=study, workers=workers, smoke=smoke,
                           repeats=repeats, listener=progress, top=top, worker=worker)
    if outcome is None:
        return
    loaded = outcome.spec
    if outcome.shipped:
        done, exported = outcome.shipped.promotion, outcome.shipped.export
        console.print(f"shipped: run {done.run_id} ({done.metric} {done.score:.4f}) is "
                      f"models:/{loaded.ship.name}@champion (version {done.version})", highlight=False)
        if exported is not None:
            console.print(f"exported {exported.tflite_path} ({exported.size_mb:.2f} MB, quantize "
                          f"{loaded.ship.quantize}); agreement with Keras {exported.agreement:.2%} of "
                          f"{exported.images} images", highlight=False)
    # The sweep's saved view (track/ui.py): its trials as rows, the objective and state as columns.
    console.print(f"browse it: make ui, then "
                  f"{ui.sweep_url(outcome.result.experiment_id, outcome.result.parent_run_id)}", highlight=False)


@app.command("leaderboard")
def leaderboard_command(
    spec: Annotated[str, typer.Argument(help="Spec (experiment) name: shows its latest sweep.")],
    tracking_uri: TrackingOption = None,
    metric: Annotated[Optional[str], typer.Option(help="Rank by this column \\[default: objective, on validation].")] = None,
    top: int = 10,
) -> None:
    """Rank the trials of SPEC's latest sweep by the validation objective, test figures beside."""
    from workbench.analysis.compare import leaderboard, objective_of, select_runs

    client = workspace(tracking_uri=tracking_uri).client()
    selection = select_runs(client, experiment=spec, sweep="latest")
    print_leaderboard(leaderboard(selection.runs, top=top, sort=metric),
                      title=f"{spec}: sweep run {selection.sweep_run_id}", objective=objective_of(selection.runs))


def print_leaderboard(board, title: str, objective: str | None = None) -> None:
    from workbench.analysis.compare import display_frame

    if board.empty:
        console.print("no trials recorded yet")
        return
    table = Table(title=title, title_justify="left",
                  caption=f"ranked by the validation objective ({objective or 'objective'}); test figures beside",
                  caption_justify="left")
    # A configuration trained several times (repeats, folds) shows each figure as mean ± spread.
    shown = display_frame(board.drop(columns="run_id"), short)
    # Under a transfer rule the objective is the held-out source's; in words, so a narrow terminal
    # wraps the headings rather than cutting them.
    headings = {vocabulary.IN_DISTRIBUTION: "in distribution (val)", vocabulary.TRANSFER_GAP: "transfer gap"}
    for column in shown.columns:
        heading = f"objective ({objective}, val)" if column == "objective" and objective else \
            headings.get(column, column)
        table.add_column(heading, justify="right" if board[column].dtype.kind in "fi" else "left")
    for row in shown.itertuples(index=False):
        table.add_row(*row)
    console.print(table)
