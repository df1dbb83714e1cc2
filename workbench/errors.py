"""The errors workbench raises on purpose. Each carries a one-line, user-facing message naming
the file or field at fault and saying what to do; the CLI prints that line and exits with the
error's code instead of a traceback, so bad input never looks like a crash. Messages quote URLs through `masked`/`scrub`, so a
store's password never reaches a terminal or a log."""

import re
from urllib.parse import urlparse, urlunparse


class WorkbenchError(Exception):
    """A problem the user can fix; `str(err)` is the one line to show them. Exit code 2 means
    the input named something invalid (a spec, a folder, a URL, a model); 1, that a valid
    request could not be carried out (a leak found, a run that cannot be promoted)."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(WorkbenchError):
    """An experiment spec (or a --set override) is invalid."""

    exit_code = 2


class DataError(WorkbenchError):
    """A dataset cannot be built or read."""


class WeightsError(WorkbenchError):
    """Pretrained weights are requested but cannot be had (offline, missing file)."""


class TrackingError(WorkbenchError):
    """The MLflow tracking store or Optuna storage cannot be used as named (a bad URL, a
    corrupted database): bad input, exit code 2."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or `kill` (SIGTERM) reached a command. A KeyboardInterrupt, so every
    `except KeyboardInterrupt` that ends a run or a sweep as KILLED handles both alike; it knows
    its signal, so the command exits 130 or 143 as a shell expects."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130


# The signals received, oldest first. A signal handler raises where the interpreter happens to
# be, and an exception raised inside a finalizer or weakref callback is printed and dropped by
# Python; so the request is also kept here, for the next safe point (`raise_if_interrupted`:
# each epoch's end, each trial's start) to raise again. Only the CLI's handlers ever add to it.
_requested: list[str] = []


def interrupt(signal_name: str) -> None:
    """What a SIGINT / SIGTERM handler does: remember the request, and raise it now."""
    _requested.append(signal_name)
    raise Interrupted(signal_name)


def interrupted_by() -> str | None:
    return _requested[0] if _requested else None


def forget_interrupts() -> None:
    """A command that ended itself cleanly on a signal (a server stopping) has nothing to resume."""
    _requested.clear()


def raise_if_interrupted() -> None:
    """Raise a signal that arrived earlier and was swallowed where it was raised."""
    if _requested:
        raise Interrupted(_requested[0])


def signal_name(err: BaseException) -> str:
    return err.signal_name if isinstance(err, Interrupted) else "SIGINT"


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): what a one-line
    error quotes of a library's exception, whose later lines are tracebacks and SQL."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<secret>[^@\s]+)@")


def scrub(text: str) -> str:
    """Any text with the passwords of URLs in it replaced by *** (error messages quote URLs)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def masked(url: str) -> str:
    """A storage or tracking URL as it may be shown or logged: any password replaced by ***."""
    try:
        parsed = urlparse(url)
    except ValueError:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
    if parsed.password is None:
        return url
    netloc = f"{parsed.username}:***@{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    return urlunparse(parsed._replace(netloc=netloc))
