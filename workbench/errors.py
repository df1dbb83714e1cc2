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
