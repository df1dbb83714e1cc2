"""The `workbench` command line: the front door to every stage. One module per stage holds its
thin commands (`data`: specs, data and weights; `sweep`: run, sweep, leaderboard; `compare`:
compare, report, evaluate, matrix; `ship`: promote, rollback, predict, export, serve), all on the one app of
`common`. TensorFlow and MLflow are imported only inside the commands that need them, so
`workbench specs list` answers instantly. Every `WorkbenchError` becomes one line on stderr and
its exit code (2 for a bad spec), never a traceback; `--debug` shows the traceback instead."""

from __future__ import annotations

import os
import signal
import sys

# Typer carries its own copy of click: its usage errors are these classes, not click's.
from typer._click import exceptions as click_errors

# Imported in the order the stages run, which is the order `workbench --help` lists them.
from workbench.cli import compare, data, ship, sweep  # noqa: F401,I001  (registers the commands)
from workbench.cli.common import app, err_console
from workbench.cli.ship import serve_app

app.add_typer(serve_app, name="serve")
from workbench import errors
from workbench.errors import Interrupted, WorkbenchError, scrub

INTERRUPTED = ("interrupted by {signal}: finished runs and trials are kept, the one in progress was ended as KILLED "
               "(tagged interrupted); rerun the same command to resume")


def _interrupt(signum, frame) -> None:
    errors.interrupt(signal.Signals(signum).name)


def _interrupted(name: str) -> None:
    """The one line an interrupted command ends with, and the shell's exit code for the signal."""
    # A second signal while this line is written must not turn into a traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    err_console.print(INTERRUPTED.format(signal=name), highlight=False, soft_wrap=True)
    sys.exit(Interrupted(name).exit_code)


def _catch_signals() -> None:
    """SIGINT and SIGTERM become `Interrupted` in the main thread, so `kill PID` ends the current
    run and the sweep as KILLED exactly as Ctrl-C does, instead of leaving them RUNNING. A signal
    the process was told to ignore (a background job under nohup) stays ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    # Raised inside a finalizer, the interrupt is dropped by Python with a printed traceback; it
    # is raised again at the next safe point (`errors.raise_if_interrupted`), so say nothing.
    default = sys.unraisablehook
    sys.unraisablehook = lambda event: None if isinstance(event.exc_value, KeyboardInterrupt) else default(event)


def main(argv: list[str] | None = None) -> None:
    """The console script; `argv` (default: the process's arguments) lets a test run a command
    in-process exactly as the script runs it."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Progress lines must reach CI logs and `tee` as they happen, not when a buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    debug = "--debug" in args or bool(os.environ.get("WORKBENCH_DEBUG"))
    if argv is None:   # the console script, not a test calling main() in its own process
        _catch_signals()
    if "--debug" in args:
        args.remove("--debug")
    try:
        # Not standalone: click's usage errors come back here, to be said in one line like ours.
        code = app(args=args, prog_name="workbench", standalone_mode=False)
        # Typer turns a KeyboardInterrupt into a silent exit code 130: say what happened.
        if errors.interrupted_by() or code == 130:
            _interrupted(errors.interrupted_by() or "SIGINT")
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
    except KeyboardInterrupt as err:   # one that arrived outside the command itself
        _interrupted(errors.interrupted_by() or errors.signal_name(err))
    except Exception as err:  # a bug of ours, or a failure nobody foresaw: still one line
        if debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        err_console.print(f"error: {type(err).__name__}: {scrub(first)[:300]} (unexpected; rerun with --debug for "
                          "the traceback)", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
