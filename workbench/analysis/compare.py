"""Reading runs back out of MLflow and comparing them: the `workbench compare` table (axes,
hyperparameters, the validation objective, test metrics and cost side by side, sorted best first,
filtered to what differs, grouped, and tested for whether the winner is really better), and the
leaderboard a sweep ends with, which is a narrower view of the same table.

Everything here starts from the tracking store, not from in-process state, so the same table can
be rebuilt at any time for any sweep, on any machine that can reach the store. MLflow is touched
only by `select_runs`, `load_predictions` (`track.evidence`) and `load_repeats`; the rest are pure functions over
a frame of runs (`runs_frame`, in the columns `mlflow.search_runs` gives), so every column can
be checked in a test on runs built by hand.
Runs are ranked by the validation objective unless told otherwise (choosing by test figures
would make the reported test figure of the winner optimistic), by `vocabulary.better`'s directions.
The table keeps raw numbers (csv and json carry them as they are); the human formats go through
`display_frame`, which rounds and joins a group's mean and std into "mean ± std".
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from workbench import vocabulary
from workbench.errors import TrackingError, WorkbenchError, first_line
from workbench.measure import stats
from workbench.track import store
from workbench.track.evidence import ScoredImages, load_predictions, scored_images  # noqa: F401 (re-exported)

# The registry's axes: what a study is about, always the first columns after the run.
REGISTRY_AXES = ("backbone", "balance", "augmentation")
# Always shown (unless --only-diff drops a constant one); any other training param appears only
# when it varies, since a column of 25 identical defaults says nothing.
HYPERPARAMETERS = ("learning_rate", "batch_size", "epochs", "dropout", "dense_units", "optimizer",
                   "image_size", "weights", "alpha", "pooling", "dense_layers")
IDENTITY = ("run_id", "run_name", "state")
STATS_COLUMNS = ("f1_macro_ci", "f1_diff_vs_best", "f1_diff_ci", "mcnemar_b", "mcnemar_c", "p_vs_best",
                 "p_holm", "note")
DEFAULT_SORT = vocabulary.DEFAULT_SELECTION
STATS_TOP = 5
STATS_MAX_ROWS = 20
FORMATS = ("table", "csv", "markdown", "html", "latex", "json")
SUFFIXES = {"table": ".txt", "csv": ".csv", "markdown": ".md", "html": ".html", "latex": ".tex", "json": ".json"}


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    """MLflow stores params as text; numbers should sort as numbers."""
    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().sum() == column.notna().sum() else column


# --- choosing runs (MLflow) ------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    runs: pd.DataFrame          # as mlflow.search_runs returns them
    experiment: str
    experiment_id: str
    sweep_run_id: str | None    # set when the runs are one sweep's trials
    description: str            # "tiny, sweep run 1a2b…": for titles and error messages


def select_runs(client, *, experiment: str | None = None, sweep: str | None = None,
                tags: Sequence[str] = (), filter_string: str | None = None) -> Selection:
    """The runs to compare: one sweep's trials (`sweep` = a sweep run id, or "latest" with an
    experiment), or every trial and single run of an experiment (sweep parents left out), narrowed
    by `tags` ("key=value", all must hold) and an MLflow filter expression."""
    where = store.scope(client, experiment=experiment, sweep=sweep)
    clauses = [_tag_clause(tag) for tag in tags]
    if filter_string and filter_string.strip():
        clauses.append(filter_string.strip())
    try:
        runs = runs_frame(store.configuration_runs(client, where, clauses))
    except MlflowException as err:
        shown = " AND ".join([*([f"tags.mlflow.parentRunId = '{where.sweep_run_id}'"] if where.sweep_run_id else []),
                              *clauses])
        raise TrackingError(f"--filter/--tag: MLflow rejects {shown!r}: {first_line(err)}") from None
    if runs.empty:
        narrowed = [f"--tag {t}" for t in tags] + ([f"--filter {filter_string!r}"] if filter_string else [])
        raise WorkbenchError(f"{where.description}{' with ' + ' '.join(narrowed) if narrowed else ''}: no runs match")
    return Selection(runs, where.experiment, where.experiment_id, where.sweep_run_id, where.description)


def runs_frame(runs) -> pd.DataFrame:
    """Runs as one row each, in the columns `mlflow.search_runs` gives (run_id, experiment_id,
    status, artifact_uri, start_time, end_time, metrics.*, params.*, tags.*)."""
    rows = [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "status": r.info.status,
             "artifact_uri": r.info.artifact_uri,
             "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True),
             "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True),
             **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
             **{f"params.{k}": v for k, v in r.data.params.items()},
             **{f"tags.{k}": v for k, v in r.data.tags.items()}} for r in runs]
    info = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]
    frame = pd.DataFrame(rows, columns=None if rows else info)
    for column in [c for c in frame.columns if c.startswith(("params.", "tags."))]:
        # A run without the param or tag: None, as MLflow has it (metrics stay NaN).
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _tag_clause(tag: str) -> str:
    key, sep, value = tag.partition("=")
    if not sep or not key.strip():
        raise WorkbenchError(f"--tag {tag}: expected KEY=VALUE, e.g. --tag workbench.state=finished")
    quote = '"' if "'" in value else "'"
    return f"tags.`{key.strip()}` = {quote}{value.strip()}{quote}"


# --- the table (pure) ------------------------------------------------------------------------------

def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run, columns in reading order: run, registry axes, hyperparameters, test
    quality (accuracy, macro-F1, per-class F1, calibration, overfitting gap) and cost (size,
    parameters, train time, latency). Params become numbers where they all parse as numbers."""
    if runs.empty:
        return pd.DataFrame(columns=list(IDENTITY))
    n = len(runs)
    blank = pd.Series([None] * n, index=runs.index, dtype=object)
    status = runs["status"].astype(str).str.lower() if "status" in runs else blank
    table = pd.DataFrame({
        "run_id": runs["run_id"],
        "run_name": runs.get("tags.mlflow.runName", blank),
        # Runs not made by workbench have no state tag: MLflow's own status stands in.
        "state": runs.get(f"tags.{vocabulary.STATE}", blank).fillna(status),
    })
    params = [c.removeprefix("params.") for c in runs.columns if c.startswith("params.")]
    extra = sorted(p for p in params if p not in (*REGISTRY_AXES, *HYPERPARAMETERS, *vocabulary.NOT_HYPERPARAMETERS)
                   and runs[f"params.{p}"].nunique(dropna=False) > 1)
    for name in (*REGISTRY_AXES, *HYPERPARAMETERS, *extra):
        if name in params:
            table[name] = _numeric_if_possible(runs[f"params.{name}"])
    for name in (*vocabulary.QUALITY, *[f"test_f1_{c}" for c in _classes(runs)], *vocabulary.QUALITY_AFTER,
                 *vocabulary.COST):
        column = runs.get(f"metrics.{name}")
        if column is None:
            continue
        column = pd.to_numeric(column, errors="coerce")
        if name in vocabulary.INTEGER_METRICS and (column.dropna() % 1 == 0).all():
            column = column.round().astype("Int64")
        table[name] = column
        # A configuration trained with repeats logs the spread of every metric beside its mean.
        spread = runs.get(f"metrics.{name}_std")
        if spread is not None and spread.notna().any():
            table[f"{name}_std"] = pd.to_numeric(spread, errors="coerce")
    return table.reset_index(drop=True)


def _classes(runs: pd.DataFrame) -> list[str]:
    """Class names in the runs' own order (the `classes` param), then any other per-class F1 seen."""
    ordered: list[str] = []
    for joined in runs.get("params.classes", pd.Series(dtype=object)).dropna().unique():
        ordered += [c for c in str(joined).split(",") if c and c not in ordered]
    metric_names = {c.removeprefix("metrics.test_f1_") for c in runs.columns if c.startswith("metrics.test_f1_")}
    metric_names -= {"macro", "weighted"}
    return [c for c in ordered if c in metric_names] + sorted(metric_names - set(ordered))


def resolve_column(table: pd.DataFrame, column: str, option: str = "--sort") -> str:
    """A column of `table`, accepting a metric without its "test_" prefix (f1_macro)."""
    for candidate in (column, f"test_{column}"):
        if candidate in table.columns:
            return candidate
    raise WorkbenchError(f"{option} {column}: no such column (choose from {', '.join(map(str, table.columns))})")


def default_sort(table: pd.DataFrame) -> str:
    # Validation before test: a test figure ranks only runs that have nothing else to go by.
    for candidate in (DEFAULT_SORT, "val_f1_macro", "val_accuracy", "test_f1_macro", "test_accuracy"):
        if candidate in table.columns and table[candidate].notna().any():
            return candidate
    return "run_name"


def sort_table(table: pd.DataFrame, column: str, order: str | None = None, objective: str | None = None) -> pd.DataFrame:
    """Best first by `vocabulary.better`: descending for scores, ascending for losses, latency, size
    and cost (and for text); `objective` names what the `objective` column stands for; `order`
    ("asc" or "desc") overrides. Runs without a value go last, and runs that did not finish after
    every finished one."""
    if order not in (None, "asc", "desc"):
        raise WorkbenchError(f"--order {order}: choose asc or desc")
    numeric = pd.api.types.is_numeric_dtype(table[column])
    ascending = (order == "asc") if order else (not numeric or vocabulary.lower_is_better(column, objective))
    table = table.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    if "state" in table.columns:
        # Finished runs first, as promote can only choose those: a run that logged its objective
        # and then failed (say, writing its model) must not top the table that names the winner.
        table = table.sort_values("state", key=lambda s: s.fillna("") != "finished", kind="stable")
    return table.reset_index(drop=True)


def objective_of(runs: pd.DataFrame) -> str | None:
    """The metric the runs' `objective` stands for (their `objective` param), if they agree."""
    return vocabulary.objective_of(runs.get(f"params.{vocabulary.OBJECTIVE_PARAM}", pd.Series(dtype=object)).dropna())


def only_differences(table: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """The columns whose value is not the same in every row (and those in `keep`): what can
    explain why one run beat another. One row has nothing to differ from, so it keeps all."""
    if len(table) < 2:
        return table
    kept = [c for c in table.columns if c in keep or c in ("run_id", "run_name", "count")
            or table[c].astype(str).nunique(dropna=False) > 1]
    return table[kept]


def group_table(table: pd.DataFrame, by: Sequence[str], sort: str, order: str | None = None,
                objective: str | None = None) -> pd.DataFrame:
    """Runs pooled per combination of `by` (e.g. backbone, balance): `count` runs and, for every
    metric and cost column, `<column>_mean` and `<column>_std` (sample std; blank for one run).
    When sorting by a metric, only runs that have it (finished ones) are pooled and counted."""
    keys = [resolve_column(table, key.strip(), "--group-by") for key in by if key.strip()]
    if not keys:
        raise WorkbenchError("--group-by: name at least one column, e.g. --group-by backbone,balance")
    measured = [c for c in table.columns if is_measure(c) and c not in keys
                and pd.api.types.is_numeric_dtype(table[c])]
    pooled = table[table[sort].notna()] if sort in measured else table
    grouped = pooled.groupby(keys, dropna=False, sort=False)
    out = grouped.size().rename("count").to_frame()
    for column in measured:
        values = grouped[column]
        out[f"{column}_mean"] = values.mean().astype(float)
        out[f"{column}_std"] = values.std().astype(float)
    out = out.reset_index()
    target = sort if sort in keys else f"{sort}_mean"
    if target not in out.columns:
        raise WorkbenchError(f"--sort {sort}: cannot rank groups by it (sort by a metric or a --group-by column)")
    return sort_table(out, target, order, objective)


def is_measure(column: str) -> bool:
    if column.endswith("_std"):  # a repeated configuration's spread travels with its mean
        return False
    return column in (*vocabulary.QUALITY, *vocabulary.QUALITY_AFTER, *vocabulary.COST) or column.startswith("test_f1_")


# --- is the winner really better? (pure, given the predictions) ------------------------------------

def add_paired_stats(table: pd.DataFrame, predictions: dict[str, pd.DataFrame | None], top: int = STATS_TOP,
                     resamples: int = 1000, seed: int = 0,
                     repeats: dict[str, tuple[str, list[float]]] | None = None) -> pd.DataFrame:
    """For the first `top` rows (the table is sorted, the first is the best): a bootstrap 95 %
    interval of macro-F1 (`f1_macro_ci`, "[low, high]") and, against the best run on the same
    test set, the difference in macro-F1 with its paired bootstrap interval (`f1_diff_vs_best`,
    `f1_diff_ci`) and McNemar's test (`mcnemar_b`: images the best got right and this run wrong,
    `mcnemar_c`: the reverse, `p_vs_best`), its p-value Holm-corrected across the runs compared
    (`p_holm`: the top-5 comparison is several tests at once). `note` says which test was used,
    or why a run was not compared. Resampling is paired: every run on the same test set is
    resampled with the same image indices. Configurations trained with repeats (`repeats`: run id
    -> (dataset digest, per-seed test macro-F1 in seed order)) are compared with the best by a
    paired t-test over their seeds instead, paired seed by seed where the test set is shared."""
    out = table.copy()
    repeats = repeats or {}
    n = len(out)
    ci: list[str | None] = [None] * n
    diff_ci: list[str | None] = [None] * n
    diff = [math.nan] * n
    b = pd.array([pd.NA] * n, dtype="Int64")
    c = pd.array([pd.NA] * n, dtype="Int64")
    p = [math.nan] * n
    note = [""] * n
    sets = {run_id: scored_images(frame) for run_id, frame in predictions.items() if frame is not None and len(frame)}
    best_id = out["run_id"].iloc[0] if n else None
    best = sets.get(best_id)
    for i in range(min(top, n)):
        run_id = out["run_id"].iloc[i]
        mine = sets.get(run_id)
        if run_id in repeats:
            note[i] = _repeats_note(i, repeats.get(best_id), repeats[run_id], p, diff)
            continue
        if mine is None:
            state = out["state"].iloc[i] if "state" in out else ""
            note[i] = f"no test predictions logged{f' ({state})' if state and state != 'finished' else ''}"
            continue
        low, high = stats.bootstrap_f1_macro(mine.frame["true"], mine.frame["predicted"], mine.labels,
                                             resamples=resamples, seed=seed)
        ci[i] = f"[{low:.4f}, {high:.4f}]"
        if i == 0:
            note[i] = "best: the reference for p_vs_best"
        elif best is None:
            note[i] = ("not compared: the best run has no test predictions of its own (a configuration "
                       "trained with repeats is compared over its seeds)")
        elif mine.digest != best.digest:
            note[i] = (f"different test set (digest {mine.digest}, {len(mine.frame)} images; "
                       f"best {best.digest}, {len(best.frame)} images): not compared")
        else:
            diff[i], diff_ci[i], b[i], c[i], p[i], note[i] = _paired_vs_best(mine, best, resamples, seed)
    out["f1_macro_ci"] = pd.Series(ci, dtype=object)
    out["f1_diff_vs_best"], out["f1_diff_ci"] = diff, pd.Series(diff_ci, dtype=object)
    out["mcnemar_b"], out["mcnemar_c"], out["p_vs_best"] = b, c, p
    out["p_holm"], out["note"] = stats.holm(p), note
    return out


def _paired_vs_best(mine: ScoredImages, best: ScoredImages, resamples: int,
                    seed: int) -> tuple[float, str, int, int, float, str]:
    """Compare one run with the best on their shared test set: macro-F1 difference, its interval, McNemar."""
    labels = sorted(set(best.labels) | set(mine.labels))
    diff, low, high = stats.bootstrap_f1_macro_difference(
        mine.frame["true"], mine.frame["predicted"], best.frame["predicted"], labels,
        resamples=resamples, seed=seed)
    result = stats.mcnemar((best.frame["true"] == best.frame["predicted"]).to_numpy(),
                           (mine.frame["true"] == mine.frame["predicted"]).to_numpy())
    note = ("McNemar exact binomial" if result.method == "exact"
            else "McNemar chi-square, continuity-corrected")
    return diff, f"[{low:+.4f}, {high:+.4f}]", result.b, result.c, result.p_value, note


def _repeats_note(i: int, best: tuple[str, list[float]] | None, mine: tuple[str, list[float]], p: list, diff: list) -> str:
    """Fill p[i] and diff[i] from per-seed scores; say which test was used, or why none was."""
    from scipy import stats as scipy_stats

    if i == 0:
        return f"best: the reference for p_vs_best ({len(mine[1])} seeds)"
    if best is None:
        return "not compared: the best run has no repeats to pair with"
    if best[0] != mine[0] or len(best[1]) != len(mine[1]) or len(mine[1]) < 2:
        return "not compared: the repeats do not share a test set and a seed count"
    gaps = np.subtract(mine[1], best[1])
    diff[i] = float(gaps.mean())
    if np.ptp(gaps) == 0:
        # The same gap on every seed leaves no spread to test against: a p of 0 would call two
        # seeds' equal luck significant, so no p at all.
        return f"not tested: the gap is {diff[i]:+.4f} on every one of {len(mine[1])} seeds (no spread)"
    p[i] = float(scipy_stats.ttest_rel(mine[1], best[1]).pvalue)
    return f"paired t-test over {len(mine[1])} seeds, macro-F1"


def load_repeats(client, runs: pd.DataFrame) -> dict[str, tuple[str, list[float]]]:
    """Per-seed test macro-F1 of every run trained with repeats (its nested `repeat` runs)."""
    found = {}
    column = f"tags.{vocabulary.REPEATS}"
    if column not in runs:
        return found
    for row in runs[runs[column].notna()].itertuples():
        run_id = row.run_id
        children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{run_id}' AND tags.`{vocabulary.ROLE}` = 'repeat'")
        scored = sorted((int(c.data.tags.get(vocabulary.REPEAT, 0)), c.data.metrics.get("test_f1_macro")) for c in children)
        if scored and all(v is not None for _, v in scored):
            digest = client.get_run(run_id).data.tags.get(vocabulary.DATASET_DIGEST, "")
            found[run_id] = (digest, [v for _, v in scored])
    return found


# --- the whole comparison --------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    table: pd.DataFrame
    sort: str          # the column it is ranked by (a group's `<sort>_mean` when grouped)
    grouped: bool


def compare(runs: pd.DataFrame, *, sort: str | None = None, order: str | None = None, top: int | None = None,
            only_diff: bool = False, group_by: Sequence[str] = (), stats: bool | None = None,
            predictions_for: Callable[[list[str]], dict[str, pd.DataFrame | None]] | None = None,
            stats_top: int = STATS_TOP, resamples: int = 1000, seed: int = 0,
            repeats_for: Callable[[pd.DataFrame], dict] | None = None) -> Comparison:
    """`workbench compare` as a function: the table, sorted best first, cut to `top` rows, with
    paired statistics for the first `stats_top` runs (`stats`: None means on when at most 20
    rows are shown; `predictions_for` fetches the runs' test predictions), pooled by `group_by`
    (no statistics then: they compare runs), and reduced to the columns that differ."""
    table = comparison_table(runs)
    column = resolve_column(table, sort) if sort else default_sort(table)
    objective = objective_of(runs)
    table = sort_table(table, column, order, objective)
    group_by = [g for g in group_by if g.strip()]
    if group_by:
        table = group_table(table, group_by, column, order, objective)
        ranked_by = column if column in table.columns else f"{column}_mean"
    else:
        ranked_by = column
        if top:
            table = table.head(top)
        if (len(table) <= STATS_MAX_ROWS if stats is None else stats) and predictions_for is not None:
            wanted = list(table["run_id"].iloc[:stats_top])
            repeated = repeats_for(runs[runs["run_id"].isin(wanted)]) if repeats_for else {}
            table = add_paired_stats(table, predictions_for([w for w in wanted if w not in repeated]), stats_top,
                                     resamples, seed, repeated)
    if group_by and top:
        table = table.head(top)
    if only_diff:
        table = only_differences(table, keep=(ranked_by, *[g.strip() for g in group_by]))
    return Comparison(table.reset_index(drop=True), ranked_by, bool(group_by))


# --- the leaderboard a sweep ends with ---------------------------------------------------------------

def leaderboard(runs: pd.DataFrame, top: int | None = 10, sort: str | None = None) -> pd.DataFrame:
    """The comparison table narrowed to what a sweep's closing lines need: the run, the registry
    axes that vary, the validation objective it was chosen by, and its test figures beside."""
    if runs.empty:
        return pd.DataFrame()
    ranked = compare(runs, sort=sort, top=top, stats=False).table
    keep = ["run_name", "state",
            *[a for a in (*REGISTRY_AXES, "learning_rate") if a in ranked and (len(ranked) == 1 or
                                                                              ranked[a].nunique(dropna=False) > 1)],
            *[c for m in ranked.columns if m in vocabulary.QUALITY
              or (m.startswith("test_f1_") and not m.endswith(("_weighted", "_std"))) for c in (m, f"{m}_std")],
            "run_id"]
    return ranked[[c for c in keep if c in ranked]]


# --- formats ---------------------------------------------------------------------------------------

def format_value(value) -> str:
    """Numbers as a person reads them: 4 significant digits, whole numbers whole, '-' for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "is_integer") and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.4g}"
    return str(value)


def display_frame(table: pd.DataFrame, format_value: Callable[[object], str] = format_value) -> pd.DataFrame:
    """The table as text for people: numbers rounded (by `format_value`), missing as '-', and a
    group's `<x>_mean`/`<x>_std` pair shown as one column `<x>` = "mean ± std"."""
    shown = {}
    for column in table.columns:
        base = column.removesuffix("_std")
        if column.endswith("_std") and (f"{base}_mean" in table.columns or base in table.columns):
            continue
        mean_of = column.removesuffix("_mean") if column.endswith("_mean") else column
        if f"{mean_of}_std" in table.columns:  # a group's mean, or a repeated configuration's
            shown[mean_of] = [format_value(m) + ("" if pd.isna(s) else f" ± {format_value(s)}")
                              for m, s in zip(table[column].tolist(), table[f"{mean_of}_std"].tolist())]
        else:
            shown[column] = [format_value(v) for v in table[column].tolist()]
    return pd.DataFrame(shown, index=range(len(table)), dtype=object)


def _right_aligned(table: pd.DataFrame) -> dict[str, bool]:
    """Which display columns hold numbers (right-aligned in every human format)."""
    aligned = {}
    for column in display_frame(table).columns:
        source = column if column in table.columns and not f"{column}_mean" in table.columns else f"{column}_mean"
        source = source if source in table.columns else column
        aligned[column] = bool(pd.api.types.is_numeric_dtype(table[source]))
    return aligned


def rich_table(table: pd.DataFrame, title: str | None = None):
    from rich.table import Table

    shown, right = display_frame(table), _right_aligned(table)
    out = Table(title=title, title_justify="left")
    for column in shown.columns:
        out.add_column(column, justify="right" if right[column] else "left")
    for row in shown.itertuples(index=False):
        out.add_row(*row)
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (written here: pandas' to_markdown needs tabulate)."""
    shown, right = display_frame(table), _right_aligned(table)

    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    lines = [cells(shown.columns), "| " + " | ".join("---:" if right[c] else "---" for c in shown.columns) + " |"]
    lines += [cells(row) for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# What a reader of a page looks for first, after the run: how good it is and whether that holds.
FIRST = (vocabulary.OBJECTIVE, "test_accuracy", "test_f1_macro")


def objective_first(table: pd.DataFrame) -> pd.DataFrame:
    """The columns in the order a page shows them: the run, the objective and the headline test
    scores (with their spreads), the statistics, then the axes, parameters and everything else."""
    head = [c for c in IDENTITY if c in table]
    scores = [c for name in FIRST for c in (name, f"{name}_mean", f"{name}_std") if c in table]
    statistics = [c for c in STATS_COLUMNS if c in table]
    rest = [c for c in table.columns if c not in {*head, *scores, *statistics}]
    return table[head + scores + statistics + rest]


def to_html_table(table: pd.DataFrame) -> str:
    """The bare <table> (for the report and the html format's page), objective and statistics first."""
    return display_frame(objective_first(table)).to_html(index=False, border=0, classes="compare", escape=True)


def render(table: pd.DataFrame, fmt: str, title: str | None = None) -> str:
    """The table in one of FORMATS. csv and json keep raw values (json: a list of records, NaN as
    null); markdown, html (a whole page) and latex (a tabular) show the display text."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2, double_precision=15) + "\n"
    if fmt == "markdown":
        return to_markdown(table)
    if fmt == "html":
        from workbench.measure.figures import Section, page

        return page(title or "workbench compare", [Section("", html=to_html_table(table))])
    if fmt == "latex":
        right = _right_aligned(table)
        shown = display_frame(table)
        return shown.to_latex(index=False, escape=True,
                              column_format="".join("r" if right[c] else "l" for c in shown.columns))
    if fmt == "table":
        from rich.console import Console

        buffer = io.StringIO()
        # Files get the table at full width: nothing to wrap to.
        Console(file=buffer, width=100_000, color_system=None).print(rich_table(table, title))
        return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
    raise WorkbenchError(f"--format {fmt}: choose from {', '.join(FORMATS)}")


def write_all(table: pd.DataFrame, folder: str | Path, stem: str = "compare", title: str | None = None) -> list[Path]:
    """The table in every format, as `<folder>/<stem>.txt|csv|md|html|tex|json`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FORMATS:
        path = folder / f"{stem}{SUFFIXES[fmt]}"
        path.write_text(render(table, fmt, title), encoding="utf-8")
        written.append(path)
    return written
