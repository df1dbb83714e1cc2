"""`workbench serve ui|model|dashboard`: the servers workbench starts (the MLflow UI, the
champion behind MLflow's REST scoring server, optuna-dashboard), each bound to 127.0.0.1 unless
`--host` says otherwise, with a warning when that exposes it: none of them asks who is calling,
and the model server answers anyone who can reach it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from typing import Annotated

import typer

from workbench.cli.common import ModelOption, StorageOption, TrackingOption, connect, err_console

serve_app = typer.Typer(no_args_is_help=True, help="Start the MLflow UI, a model server or optuna-dashboard (loopback only by default).")

HostOption = Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the server to the network.")]


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start(argv: list[str], host: str, what: str, port: int) -> None:
    """Replace this process with the server (so Ctrl-C and signals reach it directly)."""
    if not loopback(host):
        err_console.print(f"warning: {what} will listen on {host}:{port}, reachable from the network and without "
                          "authentication; use the default --host 127.0.0.1 unless that is what you want",
                          highlight=False)
    # The venv's own tools first: `mlflow models serve` starts its web server by name.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    exe = shutil.which(argv[0])
    if exe is None:
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"{argv[0]} is not installed: run `make install`")
    err_console.print(f"{what}: http://{host}:{port}", highlight=False)
    os.execv(exe, [exe, *argv[1:]])


@serve_app.command("ui")
def serve_ui(host: HostOption = "127.0.0.1", port: int = 5000, tracking_uri: TrackingOption = None) -> None:
    """The MLflow UI on the tracking store (opens on the model-training view via the printed address)."""
    from workbench import record

    uri = record.tracking_uri(tracking_uri)
    record.connect(uri)  # a corrupted or wrong store is one line here, not a server that fails later
    err_console.print(f"open http://{host}:{port}/#/experiments?workflowType=machine_learning", highlight=False)
    _start(["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)], host, "MLflow UI", port)


@serve_app.command("model")
def serve_model(model: ModelOption = None, host: HostOption = "127.0.0.1", port: int = 5001,
                tracking_uri: TrackingOption = None) -> None:
    """MLflow's scoring server for a registered model (default: the only champion): POST /invocations."""
    from workbench.cli.ship import _model_uri

    client = connect(tracking_uri)
    uri = _model_uri(client, model)
    os.environ["MLFLOW_TRACKING_URI"] = client.tracking_uri
    _start(["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", host, "-p", str(port)],
           host, f"model server for {uri}", port)


@serve_app.command("dashboard")
def serve_dashboard(host: HostOption = "127.0.0.1", port: int = 8080, storage: StorageOption = None) -> None:
    """optuna-dashboard on the study storage."""
    from workbench import paths
    from workbench.sweep import make_storage

    url = storage or paths.default_storage_url()
    make_storage(url)  # a damaged store is one line here; a new one gets its tables (the dashboard will not make them)
    _start(["optuna-dashboard", url, "--host", host, "--port", str(port)], host, "optuna-dashboard", port)
