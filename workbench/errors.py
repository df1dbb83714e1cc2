"""The errors workbench raises on purpose. Each carries a one-line, user-facing message naming
the file or field at fault and saying what to do; the CLI prints that line and exits with the
error's code instead of a traceback, so bad input never looks like a crash."""


class WorkbenchError(Exception):
    """A problem the user can fix; `str(err)` is the one line to show them."""

    exit_code = 1


class SpecError(WorkbenchError):
    """An experiment spec (or a --set override) is invalid."""

    exit_code = 2


class DataError(WorkbenchError):
    """A dataset cannot be built or read."""


class WeightsError(WorkbenchError):
    """Pretrained weights are requested but cannot be had (offline, missing file)."""


class TrackingError(WorkbenchError):
    """The MLflow tracking store or Optuna storage refuses what we ask."""
