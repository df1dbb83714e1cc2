"""The errors workbench raises on purpose. Each carries a one-line, user-facing message naming
the file or field at fault and saying what to do; the CLI prints that line and exits with the
error's code instead of a traceback, so bad input never looks like a crash."""


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
