"""Commands of the run and sweep stages: `run` (one configuration), `sweep` (the Optuna search,
here or in worker processes) and `leaderboard` (the latest sweep's trials). The sweep command
only parses and prints: `sweep.run_sweep` does the work and tells it what it found and each trial
that finishes, which it shows as a live bar on a terminal or one line per trial in a log."""

from __future__ import annotations

import time
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
    load_spec,
    quiet_environment,
    short,
)


@app.command("run")
def run_command(spec: str, set_: SetOption = None, tracking_uri: TrackingOption = None, data: DataOption = None,
                smoke: SmokeOption = False, repeats: RepeatsOption = None) -> None:
    """Train and evaluate one configuration of SPEC as a single MLflow run (N nested seed runs
    with --repeats N)."""
    quiet_environment()
    loaded = load_spec(spec, set_, smoke=smoke, data=data, repeats=repeats)
    config = specs.first_config(loaded)
    open_dims = [k for k, d in loaded.params.dims().items()
                 if specs.is_searched(d) and k not in (loaded.enqueue[0] if loaded.enqueue else {})]
    if loaded.enqueue:
        err_console.print(f"note: training the spec's first enqueued configuration ({loaded.enqueue[0]})")
    if open_dims:
        err_console.print(f"note: {', '.join(open_dims)} not fixed: using the first choice or the middle "
                          "of the range (fix them with --set)")
    from workbench.data.dataset import prepare
    from workbench.track import store
    from workbench.track.run import tracked_repeats, tracked_run

    client = store.connect(tracking_uri)
    experiment_id = store.ensure_experiment(client, loaded.name, tracking_uri)
    prepared = prepare(loaded)
    console.print(prepared.describe(), highlight=False)
    train_one = tracked_run if loaded.repeats == 1 else tracked_repeats
    outcome = train_one(loaded, config, prepared, experiment_id=experiment_id)
    spread = outcome.metrics

    def shown(key: str) -> str:
        std = spread.get(f"{key}_std")
        return f"{key} {spread[key]:.3f}" + ("" if std is None else f" ± {std:.3f}")

    metrics = ", ".join(shown(k) for k in outcome.metrics
                        if k == "test_accuracy" or k.startswith("test_f1_") and not k.endswith(("weighted", "_std")))
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
        from workbench.track.sweep import count

        if sweep.found.any:
            console.print(sweep.found.line(sweep.study.study_name, self.total), highlight=False)
        self.bar.update(self.task, completed=count(sweep.study))

    def trial(self, study, trial) -> None:
        from optuna.trial import TrialState

        from workbench.track.sweep import ERROR_ATTR, KILLED_ATTR, counted

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
    loaded = load_spec(spec, set_, smoke=smoke, data=data, repeats=repeats)
    from workbench.track import store
    from workbench.track.sweep import run_sweep

    if not worker:
        check_data(loaded)
    total = trials or loaded.trials
    with SweepProgress(total, loaded.objective.metric, loaded.objective.direction == "maximize") as progress:
        result = run_sweep(loaded, storage=storage, tracking_uri=tracking_uri, trials=total, study_name=study,
                           workers=workers, on_open=None if worker else progress.opened, on_trial=progress.trial,
                           close_run=not worker)
    if worker:
        return
    if result.ran == 0 and result.found.complete + result.found.pruned >= total:
        console.print(f"study {result.study.study_name} already has {total} finished trials; nothing to run "
                      "(raise --trials to run more)")
    client = store.connect(tracking_uri)
    from workbench.analysis.compare import leaderboard, select_runs

    selection = select_runs(client, tracking_uri=tracking_uri, sweep=result.parent_run_id)
    print_leaderboard(leaderboard(selection.runs, top=top), title=f"{loaded.name}: sweep run {result.parent_run_id}",
                      objective=loaded.objective.metric)
    if loaded.ship:
        ship(loaded, client, result.parent_run_id)
    console.print(f"browse it: make ui, then {ui_url(result.experiment_id)}", highlight=False)


def ui_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """The experiment's page in the MLflow UI, opened on runs and charts: MLflow 3's UI starts in
    its GenAI view unless the address asks for the model-training one."""
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


def check_data(spec) -> None:
    """The data a sweep will train on, in one line, and proof that no test image has a copy in
    training (`data check` in short); a leak stops the sweep before anything trains."""
    from workbench.data import leakage
    from workbench.data.dataset import prepare
    from workbench.errors import DataError

    data = prepare(spec)
    console.print(data.describe(), highlight=False)
    report = leakage.check(data.frame, getattr(spec.dataset, "near_duplicate_distance", 4))
    if report.leaks:
        raise DataError(f"{spec.name}: {report.exact_across + report.near_across} duplicate group(s) span two splits "
                        f"(e.g. {', '.join(report.examples[0]['paths'][:2])}); run `workbench data check {spec.name}`")
    console.print(f"leak check: no image has a copy in another split ({report.cross_source} picture(s) shared "
                  "between datasets kept on one side)" if report.cross_source else
                  "leak check: no image has a copy in another split", highlight=False)


def ship(spec, client, sweep_run_id: str) -> None:
    """The spec's `ship` step: the sweep's best run (validation objective) becomes the champion,
    then is exported when the spec asks (S4: TFLite, checked against Keras on the test split)."""
    from workbench.errors import WorkbenchError
    from workbench.ship import export, predict, promote

    done = promote.promote(client, spec.ship.name, sweep=sweep_run_id)
    console.print(f"shipped: run {done.run_id} ({done.metric} {done.score:.4f}) is models:/{spec.ship.name}@champion "
                  f"(version {done.version})", highlight=False)
    if spec.ship.export == "tflite":
        loaded = predict.load_model(f"models:/{spec.ship.name}@champion")
        result = export.export(client, loaded, quantize=spec.ship.quantize)
        console.print(f"exported {result.tflite_path} ({result.size_mb:.2f} MB, quantize {spec.ship.quantize}); "
                      f"agreement with Keras {result.agreement:.2%} of {result.images} images", highlight=False)
        if not result.passed:
            raise WorkbenchError(f"TFLite agreement {result.agreement:.2%} is under {export.MIN_AGREEMENT:.1%}: "
                                 "the export was not logged; try quantize: none")


@app.command("leaderboard")
def leaderboard_command(
    spec: Annotated[str, typer.Argument(help="Spec (experiment) name: shows its latest sweep.")],
    tracking_uri: TrackingOption = None,
    metric: Annotated[Optional[str], typer.Option(help="Rank by this column \\[default: objective, on validation].")] = None,
    top: int = 10,
) -> None:
    """Rank the trials of SPEC's latest sweep by the validation objective, test figures beside."""
    from workbench.analysis.compare import leaderboard, objective_of, select_runs
    from workbench.track import store

    client = store.connect(tracking_uri)
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
