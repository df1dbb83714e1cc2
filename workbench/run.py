"""One tracked run: `train()` wrapped in an MLflow run. `workbench run` calls it once; a sweep
calls it once per trial with the sweep's run as parent.

The run records the resolved configuration as params, the dataset's lineage, per-epoch curves
as they happen, then the test metrics, figures, reports and the model. Whatever happens it ends
in a definite state, tagged `workbench.state`: `finished`, `pruned` (curves kept, no test
evaluation) or `failed` (the reason as a tag and an error artefact), and Keras' memory is
released, so the next trial in the same process starts clean.
"""

from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass
from typing import Callable

import mlflow
import optuna

from workbench import tracking
from workbench.dataset import Dataset
from workbench.spec import Spec, TrialConfig
from workbench.train import train


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    objective: float
    metrics: dict[str, float]     # everything logged at the end: test quality, summary, cost


def tracked_run(spec: Spec, config: TrialConfig, data: Dataset, *, experiment_id: str,
                parent_run_id: str | None = None, trial_number: int | None = None,
                callbacks: list = (), on_start: Callable[[str], None] | None = None) -> RunOutcome:
    role = "trial" if trial_number is not None else "run"
    tags = {tracking.ROLE: role, tracking.SPEC: spec.name, tracking.SPEC_HASH: spec.content_hash(),
            "workbench.dataset_digest": data.digest, "workbench.seed": str(config.seed)}
    if trial_number is not None:
        tags[tracking.TRIAL] = str(trial_number)
    if commit := tracking.git_commit():
        tags["workbench.git_commit"] = commit
    tags.update(tracking.version_tags())
    name = f"trial-{trial_number:03d}" if trial_number is not None else f"{spec.name}-{config.backbone}"
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id, tags=tags)
    try:
        if on_start:
            on_start(run.info.run_id)
        mlflow.log_params({**config.model_dump(), "dataset": data.name, "dataset_digest": data.digest,
                           "classes": ",".join(data.classes), "objective": spec.objective.metric})
        tracking.log_dataset(data)
        result = train(config, data, callbacks=[tracking.epoch_logger(), *callbacks], monitor=spec.objective.metric)
        metrics = tracking.log_result(result, config, data.classes)
        objective = result.objective(spec.objective.metric, config.restore_best)
        mlflow.log_metric("objective", objective)
        mlflow.set_tag(tracking.STATE, "finished")
        mlflow.end_run("FINISHED")
        return RunOutcome(run.info.run_id, objective, metrics)
    except optuna.TrialPruned:
        mlflow.set_tag(tracking.STATE, "pruned")
        mlflow.end_run("FINISHED")
        raise
    except BaseException as err:
        # KeyboardInterrupt included: the run must not stay RUNNING forever in the UI.
        mlflow.set_tags({tracking.STATE: "failed", "workbench.error": f"{type(err).__name__}: {err}"[:500]})
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        _release_memory()


def _release_memory() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()
