"""Commands of the cross-dataset stage: `evaluate` (a model on another dataset, leaving out what it
saw) and `matrix` (S1's question: train on each merged dataset, test on every one)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from workbench.cli.common import (DataOption, ModelOption, SetOption, SmokeOption, TrackingOption, app, connect,
                                  console, load_spec, quiet_environment)


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
    from workbench import crossdata
    from workbench.cli.ship import _model_uri

    client = connect(tracking_uri, loads_models=True)
    uri = _model_uri(client, model)
    done = crossdata.evaluate_model(client, uri, data, split=split, mapping=crossdata.parse_mapping(classes),
                                    include_seen=include_seen)
    m = done.metrics
    console.print(f"{uri} on {done.data} ({split}): {done.images} images; left out {done.excluded_seen} the model "
                  f"saw{' (--include-seen: none left out)' if include_seen else ''}"
                  f"{f', {done.excluded_unknown} of unknown classes' if done.excluded_unknown else ''}", highlight=False)
    console.print(f"accuracy {m['test_accuracy']:.3f} [{m['test_accuracy_low']:.3f}, {m['test_accuracy_high']:.3f}], "
                  f"macro-F1 {m['test_f1_macro']:.3f} [{m['test_f1_macro_low']:.3f}, {m['test_f1_macro_high']:.3f}] "
                  f"(95 % bootstrap); evaluation run {done.run_id}", highlight=False)


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
    loaded = load_spec(spec, set_, smoke=smoke, data=data)
    from workbench import crossdata

    def cell(row: dict) -> None:
        f1 = row.get("test_f1_macro")
        shown = "-" if f1 is None else f"macro-F1 {f1:.3f}"
        console.print(f"trained on {row['trained_on']}, tested on {row['tested_on']}: {row['images']} images, {shown} "
                      f"(left out {row['excluded_seen']} seen, {row['excluded_unknown']} of unknown classes)",
                      highlight=False)

    result = crossdata.matrix(loaded, tracking_uri=tracking_uri, on_cell=cell)
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
                  "`workbench report --experiment " + loaded.name + "` shows its heatmap", highlight=False)


def _cell(row: dict | None, value: str) -> str:
    if not row or row.get(value) is None or row.get(value) != row.get(value):
        return "-"
    return f"{row[value]:.3f} [{row[f'{value}_low']:.2f}, {row[f'{value}_high']:.2f}]"
