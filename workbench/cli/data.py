"""Commands of the first stages: the experiment registry (`specs list|show|validate`), the data
(`data synth|ingest|check|audit`), `init` (a spec for folders of your photos) and pretrained
weights (`weights fetch`). Each parses its options,
calls one function of the stage's module and prints what came back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from workbench import spec as specs
from workbench.cli.common import (
    DataOption,
    SetOption,
    SmokeOption,
    app,
    console,
    data_app,
    load_spec,
    quiet_environment,
    specs_app,
    weights_app,
    workspace,
)
from workbench.errors import WorkbenchError

# --- specs ---------------------------------------------------------------------------------------

@specs_app.command("list")
def specs_list() -> None:
    """List the specs under experiments/."""
    table = Table("name", "searched", "trials", "description", box=None)
    for path in specs.list_specs(workspace().experiments):
        try:
            spec = specs.load(path)
        except WorkbenchError as err:
            table.add_row(path.stem, "[red]invalid[/red]", "", str(err))
            continue
        searched = [k for k, d in spec.params.dims().items() if specs.is_searched(d)]
        each = spec.trainings_per_trial()  # repeats, and a training per source left out
        budget = f"{spec.trials} × {each} trainings" if each > 1 else str(spec.trials)
        table.add_row(spec.name, ", ".join(searched) or "-", budget, spec.description.strip().split("\n")[0])
    console.print(table)


@specs_app.command("show")
def specs_show(spec: str, set_: SetOption = None) -> None:
    """Print a spec resolved, with every default filled in."""
    print(workspace().spec(spec, set_ or []).to_yaml(), end="")


@specs_app.command("validate")
def specs_validate(spec: str, set_: SetOption = None) -> None:
    """Check a spec; exit code 2 and one line naming the field when it is invalid."""
    ws = workspace()
    loaded = ws.spec(spec, set_ or [])
    console.print(f"{specs.resolve_path(spec, ws.experiments)}: ok ({loaded.name}, hash {loaded.content_hash()})")


# --- data ----------------------------------------------------------------------------------------

@data_app.command("synth")
def data_synth(
    out: Annotated[Optional[Path], typer.Option(help="Output folder \\[default: data/synthetic/<task>-<size>px-n<count>-seed<seed>].")] = None,
    seed: int = 0,
    task: str = "mask3_fake",
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    count: int = 1500,
) -> None:
    """Generate the embedded synthetic faces as a raw folder of class folders (deterministic:
    same options, same bytes); `data ingest folders` or a synthetic spec reads it like photos."""
    from pydantic import ValidationError

    from workbench.data import synth
    from workbench.data.dataset import synthetic_root

    try:
        options = specs.SyntheticData(task=task, size=size, count=count)
    except ValidationError as err:  # pydantic's message names the option
        raise WorkbenchError(f"data synth: {specs.describe_validation_error(err)}") from None
    target = out or synthetic_root(options, seed, workspace())
    synth.generate(target, task=task, seed=seed, size=size, count=count)
    counts = json.loads((target / "dataset.json").read_text())["class_counts"]
    console.print(f"wrote {sum(counts.values())} images to {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@data_app.command("ingest")
def data_ingest(
    source: Annotated[str, typer.Argument(help="Adapter: facemask12k, yonsei_realfake, maskdataset_v1 or folders.")],
    path: Annotated[Path, typer.Argument(help="The dataset's folder on disk (read, never written).")],
    name: Annotated[str, typer.Option(help="Name the manifest is saved and referred to by in specs.")],
    near_duplicate_distance: Annotated[int, typer.Option(help="Perceptual-hash bits under which two images are one picture.")] = 4,
) -> None:
    """Index a dataset folder into data/manifests/NAME.csv; unusable files are listed, not fatal."""
    from workbench.data import ingest

    ws = workspace()
    result = ingest.ingest(source, path, name, ws.manifests, ws.decoded, near_duplicate_distance)
    splits = sorted({s for per in result.counts.values() for s in per})
    table = Table("class", *[s or "unsplit" for s in splits], box=None)
    for label, per in sorted(result.counts.items()):
        table.add_row(label, *[str(per.get(s, 0)) for s in splits])
    console.print(table)
    console.print(f"{name}: {result.kept} images kept, {result.skipped} left out "
                  f"(each with its reason in {result.report_path}); manifest {result.manifest_path}")


@data_app.command("check")
def data_check(
    target: Annotated[str, typer.Argument(help="An ingested dataset NAME, or a SPEC (checks its merged, split data).")],
    set_: SetOption = None,
    data: DataOption = None,
    smoke: SmokeOption = False,
) -> None:
    """Report duplicates within and across splits and datasets, class counts and image sizes;
    exit code 1 when a leak is found."""
    from workbench.data import leakage

    ws = workspace(data=data)
    manifest = ws.manifests / f"{target}.csv"
    held_out = []
    if manifest.is_file() and not (set_ or smoke or data):
        from workbench.data import ingest

        frame, sidecar = ingest.read_manifest(target, ws.manifests)
        frame = frame.assign(split=frame["original_split"])
        what = f"dataset {target} (its own splits)"
        distance = int(sidecar.get("near_duplicate_distance", 4))
    else:
        from workbench.data.dataset import prepare

        loaded, data_ws = load_spec(ws, target, set_, smoke=smoke)
        prepared = prepare(loaded, data_ws)
        frame, what = prepared.frame, f"spec {loaded.name} ({prepared.describe()}, digest {prepared.digest})"
        distance = getattr(loaded.dataset, "near_duplicate_distance", 4)
        if loaded.held_out_sources():
            from workbench.data.dataset import folds

            held_out = folds(loaded, prepared)  # a class the rule cannot measure: one line, exit 2
    console.print(f"[bold]{what}[/bold]")
    console.print(frame.groupby(["label", "split"]).size().unstack(fill_value=0).to_string())
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
    if held_out:
        from workbench.cli.sweep import print_folds

        console.print(f"objective.{loaded.objective.rule}: what each trial trains, validates and tests on",
                      highlight=False)
        print_folds(held_out)


@data_app.command("audit")
def data_audit(
    spec: Annotated[str, typer.Argument(help="The SPEC whose whole dataset to audit (its configuration is trained).")],
    folds: Annotated[int, typer.Option(help="K: trainings, each scoring the images the others trained on.")] = 5,
    set_: SetOption = None,
    data: DataOption = None,
    smoke: SmokeOption = False,
) -> None:
    """Rank every image of a spec's data by how likely its label is wrong: K-fold out-of-sample
    predictions (folds never split a duplicate group), confident learning, a CSV and an HTML grid
    under reports/, and an MLflow run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    ws = workspace(data=data)
    loaded, _ = load_spec(ws, spec, set_, smoke=smoke)
    config = specs.first_config(loaded)
    epochs = config.epochs + config.fine_tune_epochs
    with Progress(TextColumn("audit {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"{loaded.name}: {folds} folds x {epochs} epochs", total=folds * epochs)
        done = ws.audit(spec, set_ or [], folds=folds, smoke=smoke, on_epoch=lambda: bar.advance(task))
    rate = done.issues / max(done.images, 1)
    console.print(f"{loaded.name}: {done.images} images scored out of sample by {done.folds}-fold training "
                  f"(accuracy {done.accuracy:.3f}); {done.issues} likely label errors ({100 * rate:.1f} %)",
                  highlight=False)
    for row in done.ranking.head(5).itertuples():
        console.print(f"  {row.path}: given {row.given}, likely {row.suggested} ({row.score:.2f})", highlight=False)
    console.print(f"ranking: {done.csv}; thumbnails: {done.page}; run {done.run_id} in experiment {loaded.name}",
                  highlight=False)


@app.command("init")
def init_command(
    name: Annotated[str, typer.Argument(help="The spec (and experiment) to create: experiments/NAME.yaml.")],
    folders: Annotated[list[Path], typer.Argument(help="Folders of photos: class folders of images (or train/val/test "
                                                      "of class folders); several are merged.")],
    force: Annotated[bool, typer.Option("--force", help="Write over an existing experiments/NAME.yaml.")] = False,
) -> None:
    """Your own photos in three commands: ingest the folders and write a commented spec whose
    search suits them, then print the commands that sweep, compare and promote it."""
    quiet_environment()
    done = workspace().init(name, folders, force=force)
    counts = done.data.frame["label"].value_counts()
    console.print(f"{done.data.describe()}", highlight=False)
    console.print(f"wrote {done.path}: classes {', '.join(f'{c} {counts[c]}' for c in done.data.classes)}"
                  f"{' (imbalanced: balance is searched)' if done.imbalanced else ''}; {done.image_size} px; "
                  f"simple_cnn vs mobilenet_v2 (weights {done.weights}); {done.trials} trials", highlight=False)
    console.print("next:", highlight=False)
    for command in done.next_commands:
        console.print(f"  {command}", highlight=False)


# --- weights -------------------------------------------------------------------------------------

@weights_app.command("fetch")
def weights_fetch(
    backbone: Annotated[str, typer.Argument(help="A backbone with ImageNet weights.")],
    alpha: Annotated[float, typer.Option(help="MobileNetV2 width (each width is its own file).")] = 1.0,
    image_size: Annotated[int, typer.Option(help="MobileNetV2 picks its file by input size (96-224).")] = 224,
) -> None:
    """Download a backbone's ImageNet weights into Keras' cache ($KERAS_HOME/models), on a
    connected machine; copy that folder to offline machines."""
    pretrained = [name for name, info in specs.BACKBONES.items() if info.application]
    if backbone not in pretrained:
        raise WorkbenchError(f"{backbone}: no ImageNet weights (choose from {', '.join(pretrained)})")
    from workbench.model import backbones

    backbones.build_base(specs.TrialConfig(backbone=backbone, image_size=image_size, weights="imagenet", alpha=alpha))
    console.print(f"{backbone}: ImageNet weights cached in {backbones.keras_cache()}")
