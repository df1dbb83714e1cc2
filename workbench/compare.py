"""Reading runs back out of MLflow and ranking them: the leaderboard a sweep ends with.

Everything here starts from the tracking store, not from in-process state, so the same table
can be rebuilt at any time for any sweep (`workbench leaderboard`), on any machine that can
reach the store.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from workbench import tracking

AXES = ("backbone", "balance", "augmentation", "learning_rate", "batch_size", "epochs", "image_size")


def sweep_runs(experiment_id: str, parent_run_id: str) -> pd.DataFrame:
    """The trial runs nested under one sweep run, one row each."""
    return mlflow.search_runs(experiment_ids=[experiment_id], output_format="pandas",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def leaderboard(runs: pd.DataFrame, metric: str = "test_f1_macro", top: int | None = 10) -> pd.DataFrame:
    """Trials ranked by `metric` (best first), with the axes that vary and per-class test F1."""
    if runs.empty:
        return pd.DataFrame()
    table = pd.DataFrame({
        "trial": pd.to_numeric(runs.get(f"tags.{tracking.TRIAL}"), errors="coerce"),
        "state": runs.get(f"tags.{tracking.STATE}", pd.Series("?", index=runs.index)).fillna("running"),
    })
    for axis in AXES:
        column = f"params.{axis}"
        # Only the axes that differ between trials say anything about why one trial won.
        if column in runs and (len(runs) == 1 or runs[column].nunique(dropna=False) > 1):
            table[axis] = _numeric_if_possible(runs[column])
    metric_columns = ["metrics.objective", "metrics.test_accuracy", "metrics.test_f1_macro",
                      *sorted(c for c in runs.columns if c.startswith("metrics.test_f1_") and c != "metrics.test_f1_macro")]
    for column in metric_columns:
        if column in runs:
            table[column.removeprefix("metrics.")] = runs[column]
    table["run_id"] = runs["run_id"]
    if metric in table:
        table = table.sort_values(metric, ascending=False, na_position="last")
    return table.head(top).reset_index(drop=True) if top else table.reset_index(drop=True)


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    """MLflow stores params as text; numbers should sort as numbers."""
    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().sum() == column.notna().sum() else column
