"""Commands that read runs back and weigh them: `compare` (runs side by side, in six formats),
`report` (one offline HTML page), `evaluate` (a model on another dataset, leaving out what it
saw) and `matrix` (S1's question: train on each merged dataset, test on every one). They resolve
what to look at, call one function of the stage's module, and print or write what comes back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from workbench.cli.common import (
    DataOption,
    ExperimentOption,
    FilterOption,
    ModelOption,
    OrderOption,
    SetOption,
    SmokeOption,
    SortOption,
    StatsOption,
    SweepOption,
    TagOption,
    TrackingOption,
    app,
    console,
    err_console,
    model_uri,
    quiet_environment,
    workspace,
)
from workbench.errors import WorkbenchError


@app.command("compare")
def compare_command(
    experiment: ExperimentOption = None,
    sweep: SweepOption = None,
    tag: TagOption = None,
    filter_: FilterOption = None,
    sort: SortOption = None,
    order: OrderOption = None,
    top: Annotated[Optional[int], typer.Option(help="Show only the best N rows.", min=1)] = None,
    only_diff: Annotated[bool, typer.Option("--only-diff", help="Hide columns that are equal in every row.")] = False,
    group_by: Annotated[Optional[str], typer.Option(
        "--group-by", help="Pool runs per value of these columns, e.g. backbone,balance: count, mean ± std.")] = None,
    stats: StatsOption = None,
    format_: Annotated[str, typer.Option("--format", help="table, csv, markdown, html, latex or json.")] = "table",
    out: Annotated[Optional[Path], typer.Option(help="Write to this file instead of the terminal.")] = None,
    all_formats: Annotated[Optional[Path], typer.Option(
        "--all-formats", help="Also write every format to DIR/<experiment>-compare.{txt,csv,md,html,tex,json}.")] = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Compare runs side by side: axes, hyperparameters, the validation objective, test metrics
    and cost, best first, and whether the best is significantly better than the runs behind it."""
    from workbench.analysis import compare

    if format_ not in compare.FORMATS:
        raise WorkbenchError(f"--format {format_}: choose from {', '.join(compare.FORMATS)}")
    groups = [g for g in (group_by or "").split(",") if g.strip()]
    if groups and stats:
        err_console.print("note: --stats is skipped with --group-by (the tests compare runs, not groups)")
    result = workspace(tracking_uri=tracking_uri).compare(
        experiment=experiment, sweep=sweep, tags=tag or (), filter=filter_, sort=sort, order=order, top=top,
        only_diff=only_diff, group_by=groups, stats=stats)
    table, title = result.table, result.title
    if all_formats:
        written = compare.write_all(table, all_formats, stem=f"{result.experiment}-compare", title=title)
        err_console.print(f"wrote {len(written)} files: {', '.join(str(p) for p in written)}", highlight=False,
                          soft_wrap=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(compare.render(table, format_, title), encoding="utf-8")
        err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)
    elif format_ == "table":
        print_table(table, title)
    else:
        sys.stdout.write(compare.render(table, format_, title))


@app.command("report")
def report_command(
    experiment: ExperimentOption = None,
    sweep: SweepOption = None,
    tag: TagOption = None,
    filter_: FilterOption = None,
    sort: SortOption = None,
    order: OrderOption = None,
    runs: Annotated[Optional[list[str]], typer.Option(
        "--runs", help="Run ids whose learning curves are overlaid, comma-separated or repeated \\[default: the top 5].")] = None,
    stats: StatsOption = None,
    out: Annotated[Optional[Path], typer.Option(help="The HTML file \\[default: reports/<experiment>-report.html].")] = None,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Also attach it to the sweep's run as report/report.html.")] = True,
    tracking_uri: TrackingOption = None,
) -> None:
    """Write one self-contained interactive HTML report on the selected runs (opens offline)."""
    chosen = [r.strip() for item in runs or [] for r in item.split(",") if r.strip()]
    done = workspace(tracking_uri=tracking_uri).report(experiment=experiment, sweep=sweep, tags=tag or (),
                                                      filter=filter_, sort=sort, order=order, runs=chosen,
                                                      stats=stats, out=out, log=log)
    logged = (f"; attached to sweep run {done.sweep_run_id} as report/report.html"
              if log and done.sweep_run_id else "")
    console.print(f"wrote {done.path} ({done.path.stat().st_size / 2**20:.1f} MB){logged}", highlight=False)


def print_table(table, title: str, transpose_up_to: int = 12) -> None:
    """The table in the terminal. A sweep's table is wide (axes, hyperparameters, metrics, cost):
    when it would not fit, a few runs are shown transposed (one column per run) rather than
    squeezed into ellipses; many runs get the full width and a hint."""
    from rich.table import Table

    from workbench.analysis import compare

    wide = compare.rich_table(table, title)
    # Measured against an unbounded width: rich clamps a measurement to the console's otherwise.
    natural = console.measure(wide, options=console.options.update_width(100_000)).maximum
    if natural <= console.width:
        console.print(wide)
        return
    if len(table) <= transpose_up_to:
        shown = compare.display_frame(table)
        if "run_name" in shown:
            heading = ["run_id", "run_name"]
            names = [f"{name}\n{run_id}" for name, run_id in zip(shown["run_name"], shown["run_id"])]
        else:  # grouped: a column per group, named by its --group-by values
            heading = list(shown.columns[:list(shown.columns).index("count")]) if "count" in shown else []
            names = [" / ".join(row) for row in shown[heading].itertuples(index=False)] if heading else \
                [str(i + 1) for i in range(len(shown))]
        flipped = Table("column", *names, title=title, title_justify="left")
        for column in shown.columns:
            if column not in heading:
                flipped.add_row(column, *shown[column].tolist())
        console.print(flipped)
        return
    console.print(wide, width=natural, crop=False)
    err_console.print("note: the table is wider than the terminal; --only-diff drops the columns that do not "
                      "vary, --format html or csv --out FILE keep them all")


@app.command("evaluate")
def evaluate_command(
    model: ModelOption = None,
    data: Annotated[str, typer.Option("--data", help="An ingested dataset NAME, or a SPEC (its merged data).")] = ...,
    split: Annotated[str, typer.Option(help="all, or one split: train, val, test (a NAME's own published split).")] = "all",
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Map the data's labels to the model's classes, e.g. 'WithMask: with_mask, WithoutMask: real' "
                          "(null leaves a label out).")] = None,
    include_seen: Annotated[bool, typer.Option(
        "--include-seen", help="Keep images the model trained or validated on (exact or near copies), e.g. to compare "
                               "with a published figure; left out by default.")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Score a model on another dataset, honestly: an MLflow evaluation run with the same evidence a trial logs."""
    quiet_environment()
    from workbench.analysis import crossdata

    ws = workspace(tracking_uri=tracking_uri)
    uri = model_uri(ws.client(), model)
    done = ws.evaluate(uri, data, split=split, classes=crossdata.parse_mapping(classes), include_seen=include_seen)
    m = done.metrics
    console.print(f"{uri} on {done.data} ({split}): {done.images} images; left out {done.excluded_seen} the model "
                  f"saw{' (--include-seen: none left out)' if include_seen else ''}"
                  f"{f', {done.excluded_mapped_out} mapped to null by --classes' if done.excluded_mapped_out else ''}"
                  f"{f', {done.excluded_unknown} of unknown classes' if done.excluded_unknown else ''}", highlight=False)
    absent = f"; absent from the data: {', '.join(done.absent_classes)}" if done.absent_classes else ""
    console.print(f"accuracy {m['test_accuracy']:.3f} [{m['test_accuracy_low']:.3f}, {m['test_accuracy_high']:.3f}], "
                  f"macro-F1 {m['test_f1_macro']:.3f} [{m['test_f1_macro_low']:.3f}, {m['test_f1_macro_high']:.3f}] "
                  f"(95 % bootstrap; averaged over the classes present{absent}); evaluation run {done.run_id}, "
                  f"metrics {done.prefix}_*", highlight=False)


@app.command("matrix")
def matrix_command(
    spec: str,
    set_: SetOption = None,
    tracking_uri: TrackingOption = None,
    data: DataOption = None,
    smoke: SmokeOption = False,
) -> None:
    """Train SPEC's configuration once per dataset it merges and test each model on every dataset
    (minus what it saw): a train x test table of accuracy and macro-F1 with bootstrap intervals."""
    quiet_environment()

    def cell(row: dict) -> None:
        f1 = row.get("test_f1_macro")
        shown = "-" if f1 is None else f"macro-F1 {f1:.3f}"
        console.print(f"trained on {row['trained_on']}, tested on {row['tested_on']}: {row['images']} images, {shown} "
                      f"(left out {row['excluded_seen']} seen, {row['excluded_unknown']} of unknown classes)",
                      highlight=False)

    result = workspace(tracking_uri=tracking_uri, data=data).matrix(spec, set_ or [], smoke=smoke, on_cell=cell)
    for value in ("test_accuracy", "test_f1_macro"):
        table = Table(title=f"{value.removeprefix('test_')} (95 % interval): trained on x tested on",
                      title_justify="left")
        table.add_column("trained on")
        tested = list(dict.fromkeys(result.table["tested_on"]))
        for t in tested:
            table.add_column(t, justify="right")
        for s, rows in result.table.groupby("trained_on", sort=False):
            cells = {r["tested_on"]: r for r in rows.to_dict("records")}
            table.add_row(s, *[_cell(cells.get(t), value) for t in tested])
        console.print(table)
    console.print(f"matrix run {result.parent_run_id} (matrix/matrix.csv, matrix/matrix.html); "
                  "`workbench report --experiment " + result.experiment + "` shows its heatmap", highlight=False)


def _cell(row: dict | None, value: str) -> str:
    if not row or row.get(value) is None or row.get(value) != row.get(value):
        return "-"
    return f"{row[value]:.3f} [{row[f'{value}_low']:.2f}, {row[f'{value}_high']:.2f}]"
