"""workbench from Python, one object per workspace: `import workbench as wb; ws = wb.Workspace(".")`,
then `ws.sweep("quickstart")`, `ws.compare(experiment="quickstart")`, `ws.report(...)`,
`ws.evaluate(...)`, `ws.matrix(...)`, `ws.promote(...)`. Each method is the whole pipeline of the
command of the same name (the CLI calls exactly these), returns values rather than printing
(tables as pandas DataFrames, figures as plotly figures, which render inline in Jupyter), and
takes a spec by name, by path, or as a dict. The stages below never see this class's methods,
only the places of the `workspace.Workspace` it extends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from workbench import workspace

if TYPE_CHECKING:
    import pandas as pd

    from workbench.analysis.audit import AuditOutcome
    from workbench.analysis.crossdata import EvaluationOutcome, Matrix
    from workbench.analysis.report import Report
    from workbench.data.dataset import Dataset
    from workbench.data.starter import Started
    from workbench.ship.export import ExportResult
    from workbench.ship.promote import Promotion
    from workbench.spec import Spec
    from workbench.track.run import RunOutcome
    from workbench.track.sweep import SweepListener, SweepResult

@dataclass(frozen=True)
class Shipped:
    """What a spec's `ship:` step did after its sweep."""

    promotion: Promotion
    export: ExportResult | None = None


@dataclass(frozen=True)
class SweepOutcome:
    spec: Spec
    result: SweepResult
    leaderboard: pd.DataFrame      # the sweep's trials, best validation objective first
    shipped: Shipped | None = None


@dataclass(frozen=True)
class Comparison:
    table: pd.DataFrame     # one row per run (or group), with the statistics columns
    title: str              # what was compared and how it is sorted
    experiment: str


class Workspace(workspace.Workspace):
    """A workspace with the commands as methods. `Workspace(".")` reads and writes where `make
    sweep` does (data/, experiments/, mlruns/, reports/, exports/ under the folder, unless the
    environment says otherwise); any place can be given, e.g. `Workspace(tmp, env={})` for one
    that ignores the environment."""

    # --- specs and data ----------------------------------------------------------------------
    def spec(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = (), *, smoke: bool = False,
             repeats: int | None = None) -> Spec:
        """A spec (name under experiments/, path, dict or Spec) with `--set`-style overrides."""
        from workbench import spec as specs

        loaded = specs.load(spec, [*overrides, *([f"repeats={repeats}"] if repeats else [])], folder=self.experiments)
        return specs.smoke(loaded) if smoke else loaded

    def for_spec(self, spec: Spec, smoke: bool = False) -> tuple[Spec, Workspace]:
        """The spec and the workspace its data lives in: a `--smoke` spec's generated trees (in its
        datasets' own layouts) sit under data/smoke/<spec>/, apart from the user's data."""
        if not smoke:
            return spec, self
        from workbench.data.dataset import write_smoke_trees

        ws = self.smoke(spec.name)
        write_smoke_trees(spec, ws)
        return spec, ws

    def prepare(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = ()) -> Dataset:
        """The spec's data, ingested where needed, merged and split."""
        from workbench.data.dataset import prepare

        return prepare(self.spec(spec, overrides), self)

    def client(self):
        """An MLflow client bound to this workspace's tracking store."""
        from workbench.track import store

        return store.connect(self.tracking_uri)

    # --- training --------------------------------------------------------------------------------
    def run(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = (), *, smoke: bool = False,
            repeats: int | None = None, on_data: Callable[[Dataset], Any] | None = None) -> RunOutcome:
        """Train and record the spec's first configuration once (N seeds with `repeats`);
        `on_data` sees the prepared data before training starts."""
        from workbench import spec as specs
        from workbench.data.dataset import prepare
        from workbench.track import store
        from workbench.track.run import tracked_run

        loaded, ws = self.for_spec(self.spec(spec, overrides, smoke=smoke, repeats=repeats), smoke)
        client = store.connect(ws.tracking_uri)
        experiment_id = store.ensure_experiment(client, loaded.name)
        data = prepare(loaded, ws)
        if on_data:
            on_data(data)
        return tracked_run(ws, client, loaded, specs.first_config(loaded), data, experiment_id=experiment_id)

    def sweep(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = (), *, trials: int | None = None,
              study: str | None = None, workers: int = 1, smoke: bool = False, repeats: int | None = None,
              listener: SweepListener | None = None, top: int = 8, worker: bool = False) -> SweepOutcome | None:
        """The whole sweep: data prepared and checked for leaks, the Optuna study run (or resumed)
        with every trial an MLflow run under the sweep's run, its leaderboard, and the spec's
        `ship:` step (champion alias, TFLite export). `listener` hears of each step as it happens.
        `worker`: this process is one of another sweep's `workers` (returns None)."""
        from workbench.analysis.compare import leaderboard, select_runs
        from workbench.track.sweep import SweepListener, run_sweep

        listener = listener or SweepListener()
        loaded, ws = self.for_spec(self.spec(spec, overrides, smoke=smoke, repeats=repeats), smoke and not worker)
        result = run_sweep(ws, loaded, trials=trials, study_name=study, workers=workers, worker=worker,
                           listener=listener)
        if worker:
            return None
        board = leaderboard(select_runs(ws.client(), sweep=result.parent_run_id).runs, top=top)
        listener.finished(loaded, result, board)  # shown before shipping, which may take a while or fail
        shipped = ws._ship(loaded, result.parent_run_id) if loaded.ship else None
        return SweepOutcome(loaded, result, board, shipped)

    def _ship(self, spec: Spec, sweep_run_id: str) -> Shipped:
        """The spec's `ship` step: the sweep's best run (validation objective) becomes the champion,
        then is exported when the spec asks (S4: TFLite, checked against Keras on the test split)."""
        from workbench.errors import WorkbenchError
        from workbench.ship import export, predict, promote

        client = self.client()
        done = promote.promote(client, spec.ship.name, sweep=sweep_run_id)
        if spec.ship.export != "tflite":
            return Shipped(done)
        loaded = predict.load_model(f"models:/{spec.ship.name}@champion", self.tracking_uri)
        out = export.default_out_dir(loaded.uri, self.exports)
        if export.target(client, loaded.uri, spec.ship.quantize, out).exists():
            return Shipped(done)   # this version was exported with this quantization before: the same file
        result = export.export(self, client, loaded, quantize=spec.ship.quantize)
        if not result.passed:
            raise WorkbenchError(f"TFLite agreement {result.agreement:.2%} is under {export.MIN_AGREEMENT:.1%}: "
                                 "the export was not logged; try quantize: none")
        return Shipped(done, result)

    # --- reading runs back -----------------------------------------------------------------------
    def compare(self, *, experiment: str | None = None, sweep: str | None = None, tags: Sequence[str] = (),
                filter: str | None = None, sort: str | None = None, order: str | None = None, top: int | None = None,
                only_diff: bool = False, group_by: Sequence[str] = (), stats: bool | None = None) -> Comparison:
        """Runs side by side (an experiment's, or one sweep's trials; `sweep="latest"` with an
        experiment): axes, hyperparameters, the validation objective, test metrics and cost, best
        first, with bootstrap intervals and paired tests against the best (`stats`)."""
        from workbench.analysis import compare

        client = self.client()
        selection = compare.select_runs(client, experiment=experiment, sweep=sweep, tags=tags, filter_string=filter)
        result = compare.compare(selection.runs, sort=sort, order=order, top=top, only_diff=only_diff,
                                 group_by=list(group_by), stats=stats,
                                 predictions_for=lambda ids: compare.load_predictions(client, ids),
                                 repeats_for=lambda runs: compare.load_repeats(client, runs))
        noun = "group" if result.grouped else "run"
        rows = len(result.table)
        title = f"{selection.description}: {rows} {noun}{'' if rows == 1 else 's'}, by {result.sort}"
        return Comparison(result.table, title, selection.experiment)

    def report(self, *, experiment: str | None = None, sweep: str | None = None, tags: Sequence[str] = (),
               filter: str | None = None, sort: str | None = None, order: str | None = None,
               runs: Sequence[str] = (), stats: bool | None = None, out: str | Path | None = None,
               log: bool = True) -> Report:
        """One self-contained HTML page on the selected runs (default reports/<experiment>-report.html,
        also attached to the sweep's run) and its plotly figures."""
        from workbench.analysis import compare, report

        client = self.client()
        selection = compare.select_runs(client, experiment=experiment, sweep=sweep, tags=tags, filter_string=filter)
        result = compare.compare(selection.runs, sort=sort, order=order, only_diff=True, stats=stats,
                                 predictions_for=lambda ids: compare.load_predictions(client, ids),
                                 repeats_for=lambda runs_: compare.load_repeats(client, runs_))
        out = out or self.reports / f"{selection.experiment}-report.html"
        return report.make_report(client, selection, result.table, runs=list(runs), out=out, log=log)

    def evaluate(self, model: str, data: str, *, split: str = "all", classes: str | dict | None = None,
                 include_seen: bool = False) -> EvaluationOutcome:
        """Score a model (models:/NAME@alias, runs:/ID/model) on an ingested dataset or a spec's data,
        leaving out every image it trained or validated on, as an MLflow evaluation run."""
        from workbench.analysis import crossdata

        mapping = crossdata.parse_mapping(classes) if isinstance(classes, str) or classes is None else classes
        return crossdata.evaluate_model(self, self.client(), model, data, split=split, mapping=mapping,
                                        include_seen=include_seen)

    def matrix(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = (), *, smoke: bool = False,
               on_cell: Callable[[dict], Any] | None = None) -> Matrix:
        """Train the spec's configuration on each dataset it merges and test every model on every
        dataset (minus what it saw): the train x test table with bootstrap intervals."""
        from workbench.analysis import crossdata

        loaded, ws = self.for_spec(self.spec(spec, overrides, smoke=smoke), smoke)
        return crossdata.matrix(ws, loaded, on_cell=on_cell)

    def audit(self, spec: str | Path | dict | Spec, overrides: Sequence[str] = (), *, folds: int = 5,
              smoke: bool = False, on_epoch: Callable[[], Any] | None = None) -> AuditOutcome:
        """Likely label errors across the spec's whole dataset: K-fold out-of-sample
        probabilities (folds never split a duplicate group), ranked by confident learning."""
        from workbench.analysis import audit

        loaded, ws = self.for_spec(self.spec(spec, overrides, smoke=smoke), smoke)
        return audit.audit(ws, loaded, folds=folds, on_epoch=on_epoch)

    def init(self, name: str, folders: Sequence[str | Path], *, force: bool = False) -> Started:
        """`experiments/NAME.yaml` for folders of photos: ingested, split, and a commented spec whose
        search follows them (balance when imbalanced, size from the photos, cached ImageNet weights)."""
        from workbench.data import starter
        from workbench.model.backbones import keras_cache

        def cached(size: int) -> bool:
            return any(keras_cache().glob(f"mobilenet_v2_weights*_1.0_{size}_no_top*"))

        return starter.start(self, name, [Path(f) for f in folders], weights_cached=cached, force=force)

    # --- shipping --------------------------------------------------------------------------------
    def promote(self, name: str, *, experiment: str | None = None, sweep: str | None = None,
                run: str | None = None, metric: str = "objective", min_score: float | None = None,
                require_better: bool = False, force: bool = False) -> Promotion:
        """Register the best run's model (by the validation objective), or `run`'s, as
        models:/NAME@champion once the gate finds it no worse than the champion on shared test
        images (significantly better with `require_better`; `force` overrides, recorded); the old
        champion becomes @previous."""
        from workbench.ship import promote

        return promote.promote(self.client(), name, metric=metric, experiment=experiment, sweep=sweep, run_id=run,
                               min_score=min_score, require_better=require_better, force=force)
