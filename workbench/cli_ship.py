"""The ship stage's commands: `promote` and `rollback` (the registry's `champion`), `predict` (a
model on image files) and `export` (TensorFlow Lite, checked against Keras).

`workbench.cli` calls `register(app)` once its own commands exist; the commands live inside
`register` so this module can import the CLI's console and options without a circular import,
and they import MLflow and TensorFlow only when they run. Like every command, they report user
errors as one `WorkbenchError` line and a non-zero exit.
"""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

SHIP_COMMANDS = ("promote", "rollback", "predict", "export")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class ExportFormat(str, Enum):
    tflite = "tflite"


class Quantize(str, Enum):
    none = "none"
    dynamic = "dynamic"
    float16 = "float16"


def register(app: typer.Typer) -> None:
    """Add the ship commands to `app` (once: a second call changes nothing)."""
    if {c.name for c in app.registered_commands} & set(SHIP_COMMANDS):
        return
    from rich.table import Table

    from workbench import paths
    from workbench.cli import TrackingOption, console

    ModelOption = Annotated[Optional[str], typer.Option(
        "--model", help="models:/NAME@champion, models:/NAME/VERSION, runs:/RUN_ID/model or a bare NAME "
                        "(its champion) [default: the champion of the only registered model].")]

    def connect(tracking_uri, loads_models: bool = False):
        import os

        from workbench import tracking

        if loads_models:  # imports TensorFlow with its start-up chatter muted; registry work needs none
            tracking.quiet_environment()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return tracking.connect(tracking_uri or paths.default_tracking_uri())

    def resolve(client, model):
        from workbench import predict

        return predict.model_uri(model, None if model else predict.registered_champions(client))

    @app.command("promote")
    def promote_command(
        name: Annotated[str, typer.Option(help="Registered model name; apps load models:/NAME@champion.")],
        experiment: Annotated[Optional[str], typer.Option(help="Choose among this experiment's (spec's) runs.")] = None,
        sweep: Annotated[Optional[str], typer.Option(help="Choose among this sweep run's trials ('latest' with "
                                                         "--experiment: its latest sweep).")] = None,
        run: Annotated[Optional[str], typer.Option("--run", help="Promote this run instead of the best one.")] = None,
        metric: Annotated[str, typer.Option(help="Ranks runs; higher is better unless it ends in loss or ece or "
                                                 "starts with latency.")] = "test_f1_macro",
        min_score: Annotated[Optional[float], typer.Option(help="Refuse a run whose metric is worse than this.")] = None,
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Register the best finished run's model under NAME and make it the champion (the old one becomes previous)."""
        from workbench import promote

        client = connect(tracking_uri)
        done = promote.promote(client, name, metric=metric, experiment=experiment, sweep=sweep, run_id=run,
                               min_score=min_score)
        score = f"{metric} {done.score:.4f}" if done.score is not None else metric
        if done.unchanged:
            console.print(f"{name}: version {done.version} (run {done.run_id}, {score}) already is the champion; "
                          "nothing changed", highlight=False)
            return
        how = "registered as new version" if done.created else "already registered as version"
        before = f"previous: version {done.previous}" if done.previous else "no previous champion"
        console.print(f"{name}: run {done.run_id} ({score}) {how} {done.version}, now champion; {before}. "
                      f"Load it as models:/{name}@champion", highlight=False)

    @app.command("rollback")
    def rollback_command(
        name: Annotated[str, typer.Option(help="Registered model name.")],
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Make the previous champion the champion again (the two aliases swap)."""
        from workbench import promote

        done = promote.rollback(connect(tracking_uri), name)
        console.print(f"{name}: version {done.version} (run {done.run_id}) is champion again; previous: "
                      f"version {done.previous}", highlight=False)

    @app.command("predict")
    def predict_command(
        images: Annotated[list[Path], typer.Argument(help="Image files (any size; anything OpenCV reads).")],
        model: ModelOption = None,
        detect_faces: Annotated[bool, typer.Option("--detect-faces", help="Classify each face found (OpenCV Haar "
                                                                            "cascade) instead of the whole image.")] = False,
        margin: Annotated[float, typer.Option(help="With --detect-faces: share of the face box added on each side.",
                                              min=0.0, max=2.0)] = 0.3,
        format_: Annotated[OutputFormat, typer.Option("--format", help="table for people, json for programs.")
                           ] = OutputFormat.table,
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Classify images with a registered (or any logged) model: class and probabilities per image or face."""
        from workbench import predict

        pictures = predict.read_images(images)
        detector = predict.face_detector() if detect_faces else None
        client = connect(tracking_uri, loads_models=True)
        loaded = predict.load_model(resolve(client, model))
        results = predict.predict_images(loaded, pictures, [str(p) for p in images], detector=detector, margin=margin)
        if format_ is OutputFormat.json:
            print(json.dumps({"model": loaded.uri, "classes": list(loaded.classes),
                              "results": [r.as_dict() for r in results]}, indent=2))
            return
        table = Table("image", *(["face box (x, y, w, h)"] if detect_faces else []), "class", "confidence",
                      *loaded.classes, title=f"{loaded.uri}", title_justify="left")
        for result in results:
            if not result.predictions:
                table.add_row(result.image, *([result.note or "-"] if detect_faces else []), "-", "-",
                              *["-"] * len(loaded.classes))
            for p in result.predictions:
                box = [", ".join(map(str, p.box))] if detect_faces else []
                table.add_row(result.image, *box, p.label, f"{p.confidence:.3f}",
                              *[f"{p.probabilities[c]:.3f}" for c in loaded.classes])
        console.print(table)

    @app.command("export")
    def export_command(
        model: ModelOption = None,
        format_: Annotated[ExportFormat, typer.Option("--format", help="Target format.")] = ExportFormat.tflite,
        quantize: Annotated[Quantize, typer.Option(help="none: float32; dynamic: int8 weights; float16: half "
                                                        "weights.")] = Quantize.none,
        out: Annotated[Optional[Path], typer.Option(help="Output folder [default: exports/<model name or run id>/].")] = None,
        images: Annotated[Optional[Path], typer.Option(help="Check agreement on this folder's images [default: the "
                                                            "source run's test split].")] = None,
        min_agreement: Annotated[float, typer.Option(help="Least share of identical predicted classes.",
                                                     min=0.0, max=1.0)] = 0.995,
        max_images: Annotated[int, typer.Option(help="Most images the agreement check uses.", min=1)] = 500,
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Write model.tflite and labels.txt, check they decide like the Keras model, and log both on its run."""
        from workbench import export, predict
        from workbench.errors import WorkbenchError

        client = connect(tracking_uri, loads_models=True)
        loaded = predict.load_model(resolve(client, model))
        result = export.export(loaded, quantize=quantize.value, out_dir=out, images_dir=images,
                               min_agreement=min_agreement, max_images=max_images)
        console.print(f"wrote {result.tflite_path} ({result.size_mb:.2f} MB, quantize {quantize.value}) and "
                      f"{result.labels_path}", highlight=False)
        console.print(f"agreement with Keras: {result.agreement:.2%} of {result.images} images "
                      f"({result.images_source})", highlight=False)
        if not result.passed:
            raise WorkbenchError(f"TFLite agreement {result.agreement:.2%} is under --min-agreement "
                                 f"{min_agreement:.1%}: not logged as artifacts; try --quantize none")
        if result.run_id:
            console.print(f"logged tflite_agreement, tflite_size_mb and tflite/ artifacts on run {result.run_id}",
                          highlight=False)


if __name__ == "__main__":
    # `python -m workbench.cli_ship ...`: the whole CLI with the ship commands, whether or not
    # workbench.cli registers them itself yet.
    from workbench import cli

    register(cli.app)
    cli.main()
