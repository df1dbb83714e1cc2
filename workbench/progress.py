"""What a sweep shows while it runs: on a terminal, a live bar with trial i/N, state counts, the
best value so far, elapsed time and ETA; in non-interactive output (CI logs, files) one plain line
per finished trial carrying the same figures. It reads only the study, so the same display serves
a sweep in this process and a coordinator watching worker processes."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class SweepProgress:
    def __init__(self, console: Console, total: int, metric: str):
        self.console, self.total, self.metric = console, total, metric
        self.started = time.monotonic()
        self.shown: set[int] = set()
        self.live = console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.task = self.bar.add_task("trials", total=total)

    def __enter__(self) -> SweepProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()

    def _summary(self, trials: list[optuna.trial.FrozenTrial]) -> tuple[int, str, str]:
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in
                  (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
        counts = " ".join(f"{k} {v}" for k, v in states.items() if v)
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = "-" if not values else _short(max(values) if self.maximize else min(values))
        return done, counts, best

    def update(self, study: optuna.Study) -> None:
        """Show every trial that finished since the last call, and refresh the bar."""
        self.maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        trials = [t for t in study.get_trials(deepcopy=False) if "budget" not in t.user_attrs]
        done, counts, best = self._summary(trials)
        elapsed = time.monotonic() - self.started
        eta = "-" if not done else f"{elapsed / max(done, 1) * max(self.total - done, 0):.0f}s"
        for t in trials:
            if t.state.is_finished() and t.number not in self.shown:
                self.shown.add(t.number)
                value = "-" if not t.values else _short(t.values[0])
                reason = t.user_attrs.get("error", "")
                params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
                line = (f"[{done}/{self.total}] trial {t.number} {t.state.name.lower()} {self.metric}={value} "
                        f"(best {best}; {counts}; {elapsed:.0f}s elapsed, eta {eta})  {params}")
                self.console.print(line + (f"  error: {reason}" if reason else ""), highlight=False, markup=False,
                                   soft_wrap=True)
        self.bar.update(self.task, completed=done, description=f"{counts or 'starting'} | best {best}")
