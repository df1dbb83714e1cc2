"""Commands of the run and sweep stages: `run` (one configuration), `sweep` (the Optuna search,
here or in worker processes) and `leaderboard` (the latest sweep's trials). The sweep command
only parses and prints: `sweep.run_sweep` does the work and tells it what it found and each trial
that finishes, which it shows as a live bar on a terminal or one line per trial in a log."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from workbench import spec as specs
from workbench.cli.common import (SetOption, StorageOption, TrackingOption, app, console, err_console,
                                  quiet_environment, short)


@app.command("run")
def run_command(spec: str, set_: SetOption = None, tracking_uri: TrackingOption = None) -> None:
    """Train and evaluate one configuration of SPEC as a single MLflow run."""
    quiet_environment()
    loaded = specs.load(spec, set_)
    config = specs.single_config(loaded)
    open_dims = [k for k, d in loaded.params.dims().items() if specs.is_searched(d)]
    if open_dims:
        err_console.print(f"note: {', '.join(open_dims)} not fixed: using the first choice or the middle "
                          "of the range (fix them with --set)")
    from workbench import record
    from workbench.dataset import prepare
    from workbench.run import tracked_run

    client = record.connect(tracking_uri)
    experiment_id = record.ensure_experiment(client, loaded.name, tracking_uri)
    outcome = tracked_run(loaded, config, prepare(loaded), experiment_id=experiment_id)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in outcome.metrics.items()
                        if k == "test_accuracy" or k.startswith("test_f1_") and not k.endswith("weighted"))
    console.print(f"run {outcome.run_id} in experiment {loaded.name}: {loaded.objective.metric} "
                  f"{outcome.objective:.3f} (validation); test: {metrics}")


class SweepProgress:
    """Trials as they finish: on a terminal, a live bar with trial i/N, state counts, the best
    value so far, elapsed time and ETA; in non-interactive output one plain line per trial with
    the same figures. Only trials that finish in this session are shown."""

    def __init__(self, total: int, metric: str, maximize: bool):
        self.total, self.metric, self.maximize = total, metric, maximize
        self.started = time.monotonic()
        self.live = console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = self.bar.add_task("trials", total=total)
        self.new = 0

    def __enter__(self) -> SweepProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()

    def opened(self, sweep) -> None:
        from workbench.sweep import count

        if sweep.found.any:
            console.print(sweep.found.line(sweep.study.study_name, self.total), highlight=False)
        self.bar.update(self.task, completed=count(sweep.study))

    def trial(self, study, trial) -> None:
        from optuna.trial import TrialState

        from workbench.sweep import ERROR_ATTR, KILLED_ATTR, counted

        trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in
                  (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
        counts = " ".join(f"{k} {v}" for k, v in states.items() if v)
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = "-" if not values else short(max(values) if self.maximize else min(values))
        self.new += trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        elapsed = time.monotonic() - self.started
        left = max(self.total - done, 0)
        eta = "-" if not self.new else f"{elapsed / self.new * left:.0f}s"
        value = "-" if not trial.values else short(trial.values[0])
        reason = trial.user_attrs.get(ERROR_ATTR) or trial.user_attrs.get(KILLED_ATTR, "")
        params = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        line = (f"[{done}/{self.total}] trial {trial.number} {trial.state.name.lower()} {self.metric}={value} "
                f"(best {best}; {counts}; {elapsed:.0f}s elapsed, eta {eta})  {params}")
        console.print(line + (f"  error: {reason}" if reason else ""), highlight=False, markup=False, soft_wrap=True)
        self.bar.update(self.task, completed=done, description=f"{counts or 'starting'} | best {best}")


@app.command("sweep")
def sweep_command(
    spec: str,
    trials: Annotated[Optional[int], typer.Option(help="The study's total number of trials [default: the spec's].", min=1)] = None,
    set_: SetOption = None,
    storage: StorageOption = None,
    tracking_uri: TrackingOption = None,
    study: Annotated[Optional[str], typer.Option(help="Optuna study name [default: the spec's name].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine (one GPU each where there are GPUs).", min=1)] = 1,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Run as one of --workers' processes.")] = False,
    top: Annotated[int, typer.Option(help="Rows in the closing leaderboard.")] = 8,
) -> None:
    """Search SPEC's space with Optuna; every trial is an MLflow run nested under the sweep's run.
    Rerunning the same command resumes: --trials is the study's total, not a number to add."""
    quiet_environment()
    loaded = specs.load(spec, set_)
    from workbench import record
    from workbench.sweep import run_sweep

    total = trials or loaded.trials
    with SweepProgress(total, loaded.objective.metric, loaded.objective.direction == "maximize") as progress:
        result = run_sweep(loaded, storage=storage, tracking_uri=tracking_uri, trials=total, study_name=study,
                           workers=workers, on_open=None if worker else progress.opened, on_trial=progress.trial)
    if worker:
        return
    if result.ran == 0 and result.found.complete + result.found.pruned >= total:
        console.print(f"study {result.study.study_name} already has {total} finished trials; nothing to run "
                      "(raise --trials to run more)")
    client = record.connect(tracking_uri)
    from workbench.compare import leaderboard, select_runs

    selection = select_runs(client, tracking_uri=tracking_uri, sweep=result.parent_run_id)
    print_leaderboard(leaderboard(selection.runs, top=top), title=f"{loaded.name}: sweep run {result.parent_run_id}",
                      objective=loaded.objective.metric)
    console.print(f"browse it: make ui  (MLflow at http://127.0.0.1:5000, experiment '{loaded.name}')")


@app.command("leaderboard")
def leaderboard_command(
    spec: Annotated[str, typer.Argument(help="Spec (experiment) name: shows its latest sweep.")],
    tracking_uri: TrackingOption = None,
    metric: Annotated[Optional[str], typer.Option(help="Rank by this column [default: objective, on validation].")] = None,
    top: int = 10,
) -> None:
    """Rank the trials of SPEC's latest sweep by the validation objective, test figures beside."""
    from workbench import record
    from workbench.compare import leaderboard, objective_of, select_runs

    client = record.connect(tracking_uri)
    selection = select_runs(client, tracking_uri=tracking_uri, experiment=spec, sweep="latest")
    print_leaderboard(leaderboard(selection.runs, top=top, sort=metric),
                      title=f"{spec}: sweep run {selection.sweep_run_id}", objective=objective_of(selection.runs))


def print_leaderboard(board, title: str, objective: str | None = None) -> None:
    if board.empty:
        console.print("no trials recorded yet")
        return
    table = Table(title=title, title_justify="left",
                  caption=f"ranked by the validation objective ({objective or 'objective'}); test figures beside",
                  caption_justify="left")
    shown = [c for c in board.columns if c != "run_id"]
    for column in shown:
        heading = f"objective ({objective}, val)" if column == "objective" and objective else column
        table.add_column(heading, justify="right" if board[column].dtype.kind in "fi" else "left")
    for _, row in board.iterrows():
        table.add_row(*[short(row[c]) for c in shown])
    console.print(table)
