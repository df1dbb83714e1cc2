"""How a sweep reports on itself while it runs: `Progress` after each trial (counts by state,
best value, elapsed time and time left, all computed here, once), and `SweepListener`, the
methods a sweep calls as it goes. The CLI's progress bar and a notebook's cell implement a
listener; neither counts anything itself. This module imports neither Optuna nor TensorFlow
until a sweep is running, so the CLI can define its listener for free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from workbench.data.dataset import Dataset
    from workbench.data.leakage import LeakReport
    from workbench.spec import Spec

# Trial attributes a progress line quotes (the sweep module defines the rest).
ERROR_ATTR = "error"            # a trial that failed on its own (NaN loss, out of memory, ...)
KILLED_ATTR = "killed"          # interrupted (Ctrl-C) or its worker was lost
SKIPPED_ATTR = "skipped"        # drawn again: identical to a configuration already run
BUDGET_ATTR = "budget"          # asked for after other workers had taken the last trial


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial belongs in tables and progress: not a redraw or a budget overflow."""
    return not ({SKIPPED_ATTR, BUDGET_ATTR} & set(trial.user_attrs))


@dataclass(frozen=True)
class Progress:
    """Where a sweep stands after one of its trials finished: what a progress bar or a log line
    shows. Only trials that count (not redraws or budget overflows) are in the figures."""

    trial: FrozenTrial
    done: int                 # finished trials (complete or pruned) of the study
    total: int
    states: dict[str, int]    # complete, pruned, fail, running
    best: float | None
    elapsed: float            # seconds since this call started
    eta: float | None         # seconds left, from this call's pace

    @property
    def value(self) -> float | None:
        return self.trial.values[0] if self.trial.values else None

    @property
    def reason(self) -> str:
        return self.trial.user_attrs.get(ERROR_ATTR) or self.trial.user_attrs.get(KILLED_ATTR, "")


class SweepListener:
    """What a sweep tells whoever started it, as it happens. Every method does nothing here: the
    CLI's listener prints, a notebook's may draw; the sweep itself never prints."""

    def data(self, data: Dataset, leaks: LeakReport) -> None:
        """The data the trials will train on, checked: no test image has a copy in training."""

    def folds(self, folds: list[Dataset]) -> None:
        """Under a transfer rule: what each fold trains, validates and tests on (`dataset.folds`)."""

    def opened(self, sweep, total: int) -> None:
        """The study is open; `sweep.found` says what an earlier run left in it."""

    def trial(self, progress: Progress) -> None:
        """A trial finished (complete, pruned or failed), in this process or a worker."""

    def finished(self, spec: Spec, result, leaderboard) -> None:
        """The sweep is over and closed; `leaderboard` ranks its trials (before any `ship:` step)."""


def tally(study: optuna.Study) -> dict[str, int]:
    """Trials that count, by state (complete, pruned, fail, running, waiting): the one count the
    sweep run's metrics, the progress line and the resume line read."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}


class Clock:
    """Progress of one call: the study's counts with this call's pace for the time left."""

    def __init__(self, total: int, maximize: bool):
        self.total, self.maximize = total, maximize
        self.started, self.new = time.monotonic(), 0

    def progress(self, study: optuna.Study, trial: FrozenTrial) -> Progress:
        from optuna.trial import TrialState

        counts = tally(study)
        done = counts["complete"] + counts["pruned"]
        values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if counted(t) and t.values]
        self.new += trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.new * max(self.total - done, 0) if self.new else None
        states = {k: counts[k] for k in ("complete", "pruned", "fail", "running")}
        best = (max(values) if self.maximize else min(values)) if values else None
        return Progress(trial, done, self.total, states, best, elapsed, eta)
