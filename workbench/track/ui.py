"""The MLflow UI's landing view of a sweep. The link `workbench sweep` prints opens the sweep's
experiment on a saved view: the sweep's trials as rows (best objective first), the objective,
test scores, the searched hyperparameters and each trial's state (finished, pruned,
interrupted, failed) as columns, and in the chart view the learning curves and the objective
before anything else. MLflow keeps such views as experiment tags
(`mlflow.sharedViewState.<key>`, the same record its own *Share* button writes, read when the
address carries `viewStateShareKey=<key>`), so the view is data in the tracking store: any
MLflow UI on that store, a team's server included, opens it. What the UI cannot be told
this way (rows it folds, a trial page's chart order) README says in one line each."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from workbench import vocabulary

if TYPE_CHECKING:  # the CLI imports this module to print a link; MLflow loads only when a view is saved
    from mlflow import MlflowClient

SHARED_VIEW = "mlflow.sharedViewState."   # MLflow UI: experiment tag prefix of a shared view
SHARE_KEY = "viewStateShareKey"           # ... and the address parameter that opens one
# MLflow 3's UI opens an experiment in its GenAI (traces) layout unless the address asks for
# model training; the experiment's own kind tag does not win over the UI's remembered switch.
MODEL_TRAINING = "workflowType=machine_learning"
DEFAULT_HOST = "http://127.0.0.1:5000"

# Curves first (what a trial learned, epoch by epoch), then how the trials score.
CURVES = ("val_f1_macro", "val_loss", "loss", "val_accuracy", "accuracy")
SCORES = (vocabulary.OBJECTIVE, "test_f1_macro", "test_accuracy")


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: `metrics.`objective``, `params.`lr`` …"""
    return f"{kind}.`{key}`"


def sweep_view(parent_run_id: str, objective: str, hyperparameters: list[str], transfer: bool = False) -> dict:
    """The saved view of one sweep: its trials (the runs whose parent is the sweep's run, so the
    UI lists them as rows instead of folding them under it), best objective first; with
    `transfer` (an objective measured on a held-out source) the in-distribution score and the
    transfer gap beside it."""
    ascending = vocabulary.lower_is_better(objective)
    scores = (SCORES[0], vocabulary.IN_DISTRIBUTION, vocabulary.TRANSFER_GAP, *SCORES[1:]) if transfer else SCORES
    columns = [column("metrics", m) for m in scores]
    columns += [column("tags", vocabulary.STATE)]
    columns += [column("params", p) for p in hyperparameters]
    columns += [column("attributes", "Duration")]
    sections = [{"uuid": "workbench-curves", "name": "Learning curves", "display": True, "isReordered": True},
                {"uuid": "workbench-scores", "name": "Objective and test scores", "display": True, "isReordered": True}]
    charts = [_line(metric, "workbench-curves") for metric in CURVES]
    charts += [_bar(metric, "workbench-scores") for metric in scores]
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": column("metrics", vocabulary.OBJECTIVE),
        "orderByAsc": ascending,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "compareRunCharts": charts,
        "compareRunSections": sections,
        # Sections in the order given here, not re-sorted by name; metrics the view does not
        # name still get charts of their own, after these.
        "isAccordionReordered": True,
    }


def _card(kind: str, metric: str, section: str) -> dict:
    return {"uuid": f"workbench-{kind.lower()}-{metric}", "type": kind, "metricKey": metric,
            "displayName": metric, "metricSectionId": section, "isGenerated": False, "deleted": False,
            "runsCountToCompare": 10}


def _line(metric: str, section: str) -> dict:
    return {**_card("LINE", metric, section), "lineSmoothness": 0, "scaleType": "linear",
            "xAxisScaleType": "linear", "xAxisKey": "step", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [],
            "range": {"xMin": None, "xMax": None, "yMin": None, "yMax": None}}


def _bar(metric: str, section: str) -> dict:
    return _card("BAR", metric, section)


def save_sweep_view(client: MlflowClient, experiment_id: str, parent_run_id: str, objective: str,
                    hyperparameters: list[str], transfer: bool = False) -> str:
    """Store the sweep's view on its experiment; the key is the sweep run's id, so a resumed
    sweep rewrites its own view and two sweeps of one spec keep theirs apart."""
    view = sweep_view(parent_run_id, objective, hyperparameters, transfer)
    client.set_experiment_tag(experiment_id, SHARED_VIEW + parent_run_id, json.dumps(view, separators=(",", ":")))
    return parent_run_id


def experiment_url(experiment_id: str, host: str = DEFAULT_HOST) -> str:
    """An experiment's runs in the model-training layout."""
    return f"{host}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}"


def sweep_url(experiment_id: str, parent_run_id: str, host: str = DEFAULT_HOST) -> str:
    """The sweep's saved view (see `save_sweep_view`)."""
    return f"{experiment_url(experiment_id, host)}&{SHARE_KEY}={parent_run_id}"
