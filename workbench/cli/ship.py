"""Commands of the ship stage: `promote` and `rollback` (the registry's `champion` alias),
`predict` (a model on image files), `export` (TensorFlow Lite, checked against Keras), and
`serve ui|model|dashboard`: the servers workbench starts (the model server is ours,
`ship.serving`; the others are MLflow's and optuna-dashboard's), each bound to 127.0.0.1 unless
`--host` says otherwise, with a warning when that exposes it (none of them asks who is calling). MLflow
and TensorFlow are imported only when a command runs; user errors are one line and a non-zero
exit, like every command's."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from workbench import errors
from workbench.cli.common import (
    ModelOption,
    StorageOption,
    TrackingOption,
    app,
    console,
    err_console,
    model_uri,
    quiet_environment,
    workspace,
)
from workbench.errors import WorkbenchError
from workbench.track import ui


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class ExportFormat(str, Enum):
    tflite = "tflite"


class Quantize(str, Enum):
    none = "none"
    dynamic = "dynamic"
    float16 = "float16"


AllowExternalOption = Annotated[bool, typer.Option(
    "--allow-external-model", help="Load a model from outside the configured tracking store (a path, http, s3).")]


@app.command("promote")
def promote_command(
    name: Annotated[str, typer.Option(help="Registered model name; apps load models:/NAME@champion.")],
    experiment: Annotated[Optional[str], typer.Option(help="Choose among this experiment's (spec's) runs.")] = None,
    sweep: Annotated[Optional[str], typer.Option(help="Choose among this sweep run's trials ('latest' with "
                                                     "--experiment: its latest sweep).")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Promote this run instead of the best one.")] = None,
    metric: Annotated[str, typer.Option(help="Ranks runs \\[default: objective, the validation score the sweep "
                                             "optimised]; lower is better for losses, ece, latency, size, "
                                             "params and seconds.")] = "objective",
    min_score: Annotated[Optional[float], typer.Option(help="Refuse a run whose metric is worse than this.")] = None,
    require_better: Annotated[bool, typer.Option(
        "--require-better", help="Refuse unless the candidate is significantly better than the champion.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even when the gate refuses; the override is recorded on the version.")] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Register the best finished run's model under NAME and make it the champion (the old one becomes previous).

    A gate compares the candidate with the current champion on their shared, leak-free test images
    (McNemar and a paired bootstrap of the macro-F1 difference) and refuses one that is significantly worse."""

    done = workspace(tracking_uri=tracking_uri).promote(name, metric=metric, experiment=experiment, sweep=sweep,
                                                       run=run, min_score=min_score, require_better=require_better,
                                                       force=force)
    score = f"{metric} {done.score:.4f}" if done.score is not None else metric
    if done.verdict is not None:
        forced = " (--force: the gate's refusal overridden, recorded on the version)" if done.verdict.forced else ""
        console.print(f"gate: {done.verdict.decision}, {done.verdict.summary()}{forced}", highlight=False)
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
    from workbench.ship import promote

    done = promote.rollback(workspace(tracking_uri=tracking_uri).client(), name)
    console.print(f"{name}: version {done.version} (run {done.run_id}) is champion again; previous: "
                  f"version {done.previous}", highlight=False)


@app.command("predict")
def predict_command(
    # readable=False: an unreadable file is read_image's one line with ingest's reason, not a usage error.
    images: Annotated[list[Path], typer.Argument(help="Image files (any size; anything OpenCV reads), or folders "
                                                      "of them (searched at any depth).", readable=False)],
    model: ModelOption = None,
    detect_faces: Annotated[bool, typer.Option("--detect-faces", help="Classify each face found (OpenCV Haar "
                                                                        "cascade) instead of the whole image.")] = False,
    margin: Annotated[float, typer.Option(help="With --detect-faces: share of the face box added on each side.",
                                          min=0.0, max=2.0)] = 0.3,
    format_: Annotated[OutputFormat, typer.Option("--format", help="table for people, json for programs.")
                       ] = OutputFormat.table,
    tracking_uri: TrackingOption = None,
    allow_external: AllowExternalOption = False,
) -> None:
    """Classify images with a registered (or any logged) model: class and probabilities per image or face."""
    from workbench.ship import predict

    images = predict.expand(images)
    pictures = predict.read_images(images)
    detector = predict.face_detector() if detect_faces else None
    ws = workspace(tracking_uri=tracking_uri)
    uri = model_uri(ws.client(), model, allow_external)  # a refused URI answers before TensorFlow loads
    quiet_environment()
    loaded = predict.load_model(uri, ws.tracking_uri)
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
    out: Annotated[Optional[Path], typer.Option(help="Output folder \\[default: exports/<model name or run id>/].")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Check agreement on this folder's images \\[default: the "
                                                        "source run's test split].")] = None,
    min_agreement: Annotated[float, typer.Option(help="Least share of identical predicted classes.",
                                                 min=0.0, max=1.0)] = 0.995,
    max_images: Annotated[int, typer.Option(help="Most images the agreement check uses.", min=1)] = 500,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export of the same model "
                                                                "version and quantization.")] = False,
    tracking_uri: TrackingOption = None,
    allow_external: AllowExternalOption = False,
) -> None:
    """Write NAME-vVERSION-QUANTIZE.tflite and .labels.txt, check they decide like the Keras model, and log both on its run."""
    from workbench.ship import export, predict

    ws = workspace(tracking_uri=tracking_uri)
    client = ws.client()
    uri = model_uri(client, model, allow_external)
    quiet_environment()
    loaded = predict.load_model(uri, ws.tracking_uri)
    result = export.export(ws, client, loaded, quantize=quantize.value, out_dir=out, images_dir=images,
                           min_agreement=min_agreement, max_images=max_images, overwrite=overwrite)
    console.print(f"agreement with Keras: {result.agreement:.2%} of {result.images} images "
                  f"({result.images_source})", highlight=False)
    if not result.passed:
        raise WorkbenchError(f"TFLite agreement {result.agreement:.2%} is under --min-agreement "
                             f"{min_agreement:.1%}: nothing written or logged; try --quantize none")
    console.print(f"wrote {result.tflite_path} ({result.size_mb:.2f} MB, quantize {quantize.value}) and "
                  f"{result.labels_path}", highlight=False)
    if result.run_id:
        console.print(f"logged tflite_agreement, tflite_size_mb and tflite/ artifacts on run {result.run_id}",
                      highlight=False)


# --- servers ---------------------------------------------------------------------------------------

serve_app = typer.Typer(no_args_is_help=True, help="Start the MLflow UI, a model server or optuna-dashboard (loopback only by default).")

HostOption = Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the server to the network.")]


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start(argv: list[str], host: str, what: str, port: int, env: dict[str, str] | None = None) -> None:
    """Replace this process with the server (so Ctrl-C and signals reach it directly), in `env`
    (default: this process's environment) with the venv's own tools first on its PATH."""
    if not loopback(host):
        err_console.print(f"warning: {what} will listen on {host}:{port}, reachable from the network and without "
                          "authentication; use the default --host 127.0.0.1 unless that is what you want",
                          highlight=False)
    # The venv's own tools first: `mlflow models serve` starts its web server by name.
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    exe = shutil.which(argv[0], path=env["PATH"])
    if exe is None:
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"{argv[0]} is not installed: run `make install`")
    err_console.print(f"{what}: http://{host}:{port}", highlight=False)
    os.execve(exe, [exe, *argv[1:]], env)


def ui_workers() -> int:
    """MLflow's UI starts 4 web workers; each imports MLflow, which on 2 cores took 39 s before the
    first answer. One worker per 2 cores (at least 1, at most 4) serves one user as well.
    $WORKBENCH_UI_WORKERS overrides."""
    text = os.environ.get("WORKBENCH_UI_WORKERS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise WorkbenchError(f"WORKBENCH_UI_WORKERS={text!r}: give a number of workers, e.g. 2", exit_code=2)
        return int(text)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@serve_app.command("ui")
def serve_ui(host: HostOption = "127.0.0.1", port: int = 5000, tracking_uri: TrackingOption = None) -> None:
    """The MLflow UI on the tracking store; its address is printed once it answers."""
    import subprocess
    import time

    ws = workspace(tracking_uri=tracking_uri)
    ws.client()  # a corrupted or wrong store is one line here, not a server that fails later
    if not loopback(host):
        err_console.print(f"warning: the MLflow UI will listen on {host}:{port}, reachable from the network and "
                          "without authentication; use the default --host 127.0.0.1 unless that is what you want",
                          highlight=False)
    workers = ui_workers()
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise WorkbenchError("mlflow is not installed: run `make install`")
    started = time.monotonic()
    server = subprocess.Popen([exe, "ui", "--backend-store-uri", ws.tracking_uri, "--host", host, "--port", str(port),
                               "--workers", str(workers)])
    probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/health"
    try:
        while not _answers(probe):
            if server.poll() is not None:
                raise WorkbenchError(f"the MLflow UI exited ({server.returncode}) before answering on port {port}: "
                                     "is the port in use? try --port")
            time.sleep(0.3)
        err_console.print(f"MLflow UI: http://{host}:{port} (answering after {time.monotonic() - started:.0f} s, "
                          f"{workers} worker{'s' * (workers != 1)}); open "
                          f"http://{host}:{port}/#/experiments?{ui.MODEL_TRAINING}", highlight=False)
        server.wait()
    except KeyboardInterrupt:
        errors.forget_interrupts()   # a server stopped on Ctrl-C is not an interrupted run
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    finally:
        if server.poll() is None:
            server.kill()


@serve_app.command("model")
def serve_model(model: ModelOption = None, host: HostOption = "127.0.0.1", port: int = 5001,
                tracking_uri: TrackingOption = None) -> None:
    """The model server for apps (default model: the only champion): POST /invocations with an image
    file, base64 images in JSON, or pixel tensors of any size; answers class names and probabilities."""
    import uvicorn

    from workbench.cli.common import versions
    from workbench.ship import predict, serving

    ws = workspace(tracking_uri=tracking_uri)
    uri = model_uri(ws.client(), model)
    predict.model_info(uri, ws.tracking_uri)  # a wrong name is one line here, before TensorFlow loads
    quiet_environment()
    loaded = predict.load_model(uri, ws.tracking_uri)
    if not loopback(host):
        err_console.print(f"warning: the model server will listen on {host}:{port}, reachable from the network and "
                          "without authentication; use the default --host 127.0.0.1 unless that is what you want",
                          highlight=False)
    err_console.print(f"model server for {uri}: http://{host}:{port} (classes {', '.join(loaded.classes)}; "
                      f"images of any size are resized to {loaded.image_size} px)", highlight=False)
    try:
        # Uvicorn shuts down on Ctrl-C or SIGTERM, raises the signal again for the handler it
        # replaced (ours), and swallows the KeyboardInterrupt that gives.
        uvicorn.run(serving.create_app(loaded, versions()), host=host, port=port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        errors.forget_interrupts()   # a server stopped by a signal is not an interrupted run


@serve_app.command("dashboard")
def serve_dashboard(host: HostOption = "127.0.0.1", port: int = 8080, storage: StorageOption = None) -> None:
    """optuna-dashboard on the study storage."""
    from workbench.track.sweep import make_storage

    url = workspace(storage=storage).storage
    make_storage(url)  # a damaged store is one line here; a new one gets its tables (the dashboard will not make them)
    _start(["optuna-dashboard", url, "--host", host, "--port", str(port)], host, "optuna-dashboard", port)
