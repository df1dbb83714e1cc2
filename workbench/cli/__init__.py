"""The `workbench` command line: the front door to every stage. One module per stage holds its
thin commands (`data`: specs, data and weights; `sweep`: run, sweep, leaderboard; `compare`:
compare, report, evaluate, matrix; `ship`: promote, rollback, predict, export, serve), all on the one app of
`common`. TensorFlow and MLflow are imported only inside the commands that need them, so
`workbench specs list` answers instantly. Every `WorkbenchError` becomes one line on stderr and
its exit code (2 for a bad spec), never a traceback; `--debug` shows the traceback instead."""

from __future__ import annotations

import os
import sys

# Typer carries its own copy of click: its usage errors are these classes, not click's.
from typer._click import exceptions as click_errors

# Imported in the order the stages run, which is the order `workbench --help` lists them.
from workbench.cli import compare, data, ship, sweep  # noqa: F401,I001  (registers the commands)
from workbench.cli.common import app, err_console
from workbench.cli.ship import serve_app

app.add_typer(serve_app, name="serve")
from workbench.errors import WorkbenchError, scrub


def main(argv: list[str] | None = None) -> None:
    """The console script; `argv` (default: the process's arguments) lets a test run a command
    in-process exactly as the script runs it."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Progress lines must reach CI logs and `tee` as they happen, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    debug = "--debug" in args or bool(os.environ.get("WORKBENCH_DEBUG"))
    if "--debug" in args:
        args.remove("--debug")
    try:
        # Not standalone: click's usage errors come back here, to be said in one line like ours.
        code = app(args=args, prog_name="workbench", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click_errors.ClickException as err:
        message = err.format_message()
        if message:  # a bare group (`workbench data`) has printed its help already
            context = getattr(err, "ctx", None)
            where = context.command_path if context is not None else "workbench"
            err_console.print(f"error: {message} (see `{where} --help`)", highlight=False, markup=False,
                              soft_wrap=True)
        sys.exit(err.exit_code)
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
