"""The `workbench` command line: the front door to every stage (specs, data, run, sweep, leaderboard).

Commands are thin: parse options, call one function of the stage's module, print the result.
TensorFlow and MLflow are imported only inside the commands that need them, so `workbench specs
list` answers instantly. Every `WorkbenchError` becomes one line on stderr and its exit code
(2 for a bad spec), never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from workbench import paths
from workbench import spec as specs_module
from workbench.errors import WorkbenchError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Reproducible transfer-learning sweeps on face images, tracked in MLflow.")
specs_app = typer.Typer(no_args_is_help=True, help="List, show and validate experiment specs.")
data_app = typer.Typer(no_args_is_help=True, help="Generate, ingest and check datasets.")
weights_app = typer.Typer(no_args_is_help=True, help="Pre-fetch pretrained weights for offline machines.")
app.add_typer(specs_app, name="specs")
app.add_typer(data_app, name="data")
app.add_typer(weights_app, name="weights")

# Piped output (CI logs, files) gets a wide fixed width so tables are not squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Fix a key for this run / every trial, e.g. --set epochs=1 --set image_size=32.")]
TrackingOption = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db].")]


# --- specs ---------------------------------------------------------------------------------------

@specs_app.command("list")
def specs_list() -> None:
    """List the specs under experiments/."""
    table = Table("name", "searched", "trials", "description", box=None)
    for path in specs_module.list_specs():
        try:
            spec = specs_module.load(path)
        except WorkbenchError as err:
            table.add_row(path.stem, "[red]invalid[/red]", "", str(err))
            continue
        searched = [k for k, d in spec.params.dims().items() if specs_module.is_searched(d)]
        table.add_row(spec.name, ", ".join(searched) or "-", str(spec.trials), spec.description.strip().split("\n")[0])
    console.print(table)


@specs_app.command("show")
def specs_show(spec: str, set_: SetOption = None) -> None:
    """Print a spec resolved, with every default filled in."""
    print(specs_module.load(spec, set_).to_yaml(), end="")


@specs_app.command("validate")
def specs_validate(spec: str, set_: SetOption = None) -> None:
    """Check a spec; exit code 2 and one line naming the field when it is invalid."""
    loaded = specs_module.load(spec, set_)
    console.print(f"{specs_module.resolve_path(spec)}: ok ({loaded.name}, hash {loaded.content_hash()})")


# --- data ----------------------------------------------------------------------------------------

@data_app.command("synth")
def data_synth(
    out: Annotated[Optional[Path], typer.Option(help="Output folder [default: data/synthetic/<task>-<size>px-n<count>-seed<seed>].")] = None,
    seed: int = 0,
    task: str = "mask3_fake",
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    count: int = 1500,
) -> None:
    """Generate the embedded synthetic face dataset (deterministic: same options, same bytes)."""
    from workbench import synth
    from workbench.dataset import synthetic_root

    from pydantic import ValidationError

    try:
        options = specs_module.SyntheticData(task=task, size=size, count=count)
    except ValidationError as err:  # pydantic's message names the option
        raise WorkbenchError(f"data synth: {specs_module.describe_validation_error(err)}") from None
    target = out or synthetic_root(options, seed)
    manifest = synth.generate(target, task=task, seed=seed, size=size, count=count)
    import pandas as pd

    counts = pd.read_csv(manifest)["label"].value_counts().sort_index()
    console.print(f"wrote {counts.sum()} images to {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("ingest")
def data_ingest(
    source: Annotated[str, typer.Argument(help="Adapter: facemask12k, yonsei_realfake, maskdataset_v1 or folders.")],
    path: Annotated[Path, typer.Argument(help="The dataset's folder on disk (read, never written).")],
    name: Annotated[str, typer.Option(help="Name the manifest is saved and referred to by in specs.")],
    near_duplicate_distance: Annotated[int, typer.Option(help="Perceptual-hash bits under which two images are one picture.")] = 4,
) -> None:
    """Index a dataset folder into data/manifests/NAME.csv; unusable files are listed, not fatal."""
    from workbench import ingest

    result = ingest.ingest(source, path, name, paths.manifests_dir(), paths.decoded_dir(), near_duplicate_distance)
    splits = sorted({s for per in result.counts.values() for s in per})
    table = Table("class", *[s or "unsplit" for s in splits], box=None)
    for label, per in sorted(result.counts.items()):
        table.add_row(label, *[str(per.get(s, 0)) for s in splits])
    console.print(table)
    console.print(f"{name}: {result.kept} images kept, {result.skipped} skipped "
                  f"(reasons in {result.report_path}); manifest {result.manifest_path}")


@data_app.command("check")
def data_check(
    target: Annotated[str, typer.Argument(help="An ingested dataset NAME, or a SPEC (checks its merged, split data).")],
    set_: SetOption = None,
) -> None:
    """Report duplicates within and across splits and datasets, class counts and image sizes;
    exit code 1 when a leak is found."""
    from workbench import leakage

    manifest = paths.manifests_dir() / f"{target}.csv"
    if manifest.is_file() and not set_:
        from workbench import ingest

        frame, _ = ingest.read_manifest(target, paths.manifests_dir())
        frame = frame.assign(split=frame["original_split"])
        what = f"dataset {target} (its own splits)"
        distance = 4
    else:
        from workbench.dataset import prepare

        loaded = specs_module.load(target, set_)
        data = prepare(loaded)
        frame, what = data.frame, f"spec {loaded.name} ({data.name}, digest {data.digest})"
        distance = getattr(loaded.dataset, "near_duplicate_distance", 4)
    console.print(f"[bold]{what}[/bold]")
    counts = frame.groupby(["label", "split"]).size().unstack(fill_value=0)
    console.print(counts.to_string())
    if {"width", "height"} <= set(frame.columns):
        console.print(leakage.size_stats(frame).to_string())
    report = leakage.check(frame, distance)
    console.print(f"exact duplicates within a split: {report.exact_within}; across splits: {report.exact_across}; "
                  f"near duplicates across splits: {report.near_across}; shared between datasets: {report.cross_source}")
    for example in report.examples[:10]:
        console.print(f"  {'/'.join(example['splits'])}  {', '.join(example['paths'][:4])}", highlight=False)
    if report.leaks:
        raise WorkbenchError(f"{target}: {report.exact_across + report.near_across} duplicate group(s) span two "
                             "splits: test images have copies in training")
    console.print("no leak: no image has a duplicate in another split")


# --- weights -------------------------------------------------------------------------------------

@weights_app.command("fetch")
def weights_fetch(
    backbone: Annotated[str, typer.Argument(help="A backbone with ImageNet weights.")],
    alpha: Annotated[float, typer.Option(help="MobileNetV2 width (each width is its own file).")] = 1.0,
    image_size: Annotated[int, typer.Option(help="MobileNetV2 picks its file by input size (96-224).")] = 224,
) -> None:
    """Download a backbone's ImageNet weights into Keras' cache ($KERAS_HOME/models), on a
    connected machine; copy that folder to offline machines."""
    from workbench import backbones

    if backbone not in specs_module.BACKBONES or backbone == "simple_cnn":
        raise WorkbenchError(f"{backbone}: no ImageNet weights (choose from "
                             f"{', '.join(b for b in specs_module.BACKBONES if b != 'simple_cnn')})")
    values = dict(backbone=backbone, balance="none", augmentation="none", learning_rate=1e-3, batch_size=1,
                  epochs=1, dropout=0.0, dense_units=1, optimizer="adam", image_size=image_size,
                  weights="imagenet", alpha=alpha)
    backbones.build_base(specs_module.TrialConfig(**values))
    console.print(f"{backbone}: ImageNet weights cached in {backbones.keras_cache()}")


# --- run and sweep -------------------------------------------------------------------------------

@app.command("run")
def run_command(spec: str, set_: SetOption = None, tracking_uri: TrackingOption = None) -> None:
    """Train and evaluate one configuration of SPEC as a single MLflow run."""
    from workbench import tracking

    tracking.quiet_environment()
    loaded = specs_module.load(spec, set_)
    config = specs_module.single_config(loaded)
    open_dims = [k for k, d in loaded.params.dims().items() if specs_module.is_searched(d)]
    if open_dims:
        err_console.print(f"note: {', '.join(open_dims)} not fixed: using the first choice or the middle "
                          "of the range (fix them with --set)")
    from workbench.dataset import prepare
    from workbench.run import tracked_run

    uri = tracking_uri or paths.default_tracking_uri()
    client = tracking.connect(uri)
    experiment_id = tracking.ensure_experiment(client, loaded.name, uri)
    data = prepare(loaded)
    outcome = tracked_run(loaded, config, data, experiment_id=experiment_id)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in outcome.metrics.items()
                        if k == "test_accuracy" or k.startswith("test_f1_") and not k.endswith("weighted"))
    console.print(f"run {outcome.run_id} in experiment {loaded.name}: {loaded.objective.metric} "
                  f"{outcome.objective:.3f}; {metrics}")


@app.command("sweep")
def sweep_command(
    spec: str,
    trials: Annotated[Optional[int], typer.Option(help="The study's total number of trials [default: the spec's].", min=1)] = None,
    set_: SetOption = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL [default: $WORKBENCH_STORAGE or sqlite:///mlruns/optuna.db].")] = None,
    tracking_uri: TrackingOption = None,
    study: Annotated[Optional[str], typer.Option(help="Optuna study name [default: the spec's name].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine (one GPU each where there are GPUs).", min=1)] = 1,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Run as one of --workers' processes.")] = False,
    top: Annotated[int, typer.Option(help="Rows in the closing leaderboard.")] = 8,
) -> None:
    """Search SPEC's space with Optuna; every trial is an MLflow run nested under the sweep's run.
    Rerunning the same command resumes: --trials is the study's total, not a number to add."""
    from workbench import tracking

    tracking.quiet_environment()
    loaded = specs_module.load(spec, set_)
    from workbench import sweep as sweeps
    from workbench.progress import SweepProgress

    total = trials or loaded.trials
    uri = tracking_uri or paths.default_tracking_uri()
    storage_url = storage or paths.default_storage_url()
    opened = sweeps.open_sweep(loaded, storage=storage_url, tracking_uri=uri, study_name=study)
    already = sweeps.count(opened.study)
    status = "FAILED"
    try:
        with SweepProgress(console, total, loaded.objective.metric) as progress:
            if workers > 1:
                from workbench import workers as pool

                argv = ["sweep", spec, "--trials", str(total), "--storage", storage_url, "--tracking-uri", uri,
                        "--study", opened.study.study_name, *[a for item in set_ or [] for a in ("--set", item)]]
                started = pool.launch(argv, workers, opened.study.study_name)
                pool.wait(started, on_tick=lambda: progress.update(opened.study))
            else:
                sweeps.work(opened, total, on_trial=lambda study_, _: progress.update(study_))
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        sweeps.close(opened, status)
    if worker:
        return
    if already >= total:
        console.print(f"study {opened.study.study_name} already has {already} finished trials; nothing to run "
                      "(raise --trials to run more)")
    from workbench.compare import leaderboard, sweep_runs

    board = leaderboard(sweep_runs(opened.experiment_id, opened.parent_run_id), top=top)
    print_leaderboard(board, title=f"{loaded.name}: sweep run {opened.parent_run_id}")
    console.print(f"browse it: make ui  (MLflow at http://127.0.0.1:5000, experiment '{loaded.name}')")


@app.command("leaderboard")
def leaderboard_command(
    spec: Annotated[str, typer.Argument(help="Spec (experiment) name: shows its latest sweep.")],
    tracking_uri: TrackingOption = None,
    metric: str = "test_f1_macro",
    top: int = 10,
) -> None:
    """Rank the trials of SPEC's latest sweep by a metric."""
    from workbench import tracking
    from workbench.compare import leaderboard, sweep_runs

    uri = tracking_uri or paths.default_tracking_uri()
    client = tracking.connect(uri)
    experiment = client.get_experiment_by_name(spec)
    if experiment is None:
        raise WorkbenchError(f"{spec}: no such experiment in {uri} (run `workbench sweep {spec}` first)")
    sweeps = client.search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    if not sweeps:
        raise WorkbenchError(f"{spec}: no sweep runs in experiment {spec}")
    board = leaderboard(sweep_runs(experiment.experiment_id, sweeps[0].info.run_id), metric=metric, top=top)
    print_leaderboard(board, title=f"{spec}: sweep run {sweeps[0].info.run_id}")


def print_leaderboard(board, title: str) -> None:
    if board.empty:
        console.print("no trials recorded yet")
        return
    table = Table(title=title, title_justify="left")
    shown = [c for c in board.columns if c != "run_id"]
    for column in shown:
        # "test_" is implied: the leaderboard reports held-out test figures next to the objective.
        table.add_column(column.removeprefix("test_"), justify="right" if board[column].dtype.kind in "fi" else "left")
    for _, row in board.iterrows():
        table.add_row(*[_short(row[c]) for c in shown])
    console.print(table)


def _short(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: the metric does not exist for this run (pruned or failed)
            return "-"
        return f"{value:.4g}" if abs(value) < 0.01 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


# Later stages add their commands to the same app (compare, report; promote, predict, export).
from workbench.cli_compare import register as _register_compare  # noqa: E402
from workbench.cli_ship import register as _register_ship  # noqa: E402

_register_compare(app)
_register_ship(app)


def main() -> None:
    # Progress lines must reach CI logs and `tee` as they happen, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        app()
    except WorkbenchError as err:
        err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: the current run was ended as KILLED; rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
