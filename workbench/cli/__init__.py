"""The `workbench` command line: the front door to every stage. One module per stage holds its
thin commands (`data`: specs, data and weights; `sweep`: run, sweep, leaderboard; `compare`:
compare and report; `ship`: promote, rollback, predict, export), all on the one app of
`common`. TensorFlow and MLflow are imported only inside the commands that need them, so
`workbench specs list` answers instantly. Every `WorkbenchError` becomes one line on stderr and
its exit code (2 for a bad spec), never a traceback; `--debug` shows the traceback instead."""

from __future__ import annotations

import os
import sys

# Imported in the order the stages run, which is the order `workbench --help` lists them.
from workbench.cli import data, sweep, compare, crossdata, ship  # noqa: F401,I001  (registers the commands)
from workbench.cli.common import app, err_console
from workbench.cli.serve import serve_app

app.add_typer(serve_app, name="serve")
from workbench.errors import WorkbenchError
from workbench.record import scrub


def main() -> None:
    # Progress lines must reach CI logs and `tee` as they happen, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    debug = "--debug" in sys.argv[1:] or bool(os.environ.get("WORKBENCH_DEBUG"))
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
    try:
        app()
    except WorkbenchError as err:
        if debug:
            raise
        err_console.print(f"error: {scrub(str(err))}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: the current run was ended as KILLED; rerun the same command to resume")
        sys.exit(130)
    except Exception as err:  # a bug of ours, or a failure nobody foresaw: still one line
        if debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        err_console.print(f"error: {type(err).__name__}: {scrub(first)[:300]} (unexpected; rerun with --debug for "
                          "the traceback)", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
