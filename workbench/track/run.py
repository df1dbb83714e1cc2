"""One tracked run: `train()` wrapped in an MLflow run. `workbench run` calls it once; a sweep
calls it once per trial with the sweep's run as parent. This module is the MLflow edge of a run:
it decides nothing about training and computes nothing about the model, it writes down what
`train()` returned, under the names `vocabulary` gives, through a client bound to the
workspace's store.

A run records the resolved configuration as params, the dataset's lineage, per-epoch curves as
they happen, then the test metrics, the cost, figures, reports, per-image predictions and the
model. Whatever happens it ends in a definite state, tagged `workbench.state`: `finished`,
`pruned` (curves kept, no test evaluation), `interrupted` (Ctrl-C or SIGTERM: KILLED) or
`failed` (the reason as a tag and an error artefact), and Keras' memory is released, so the next
trial in the same process starts clean.

Under a transfer rule (`objective.holdout_source`, `leave_one_source_out`) a run trains on the
fold `dataset.folds` gives and logs `objective_in_distribution` and `transfer_gap` beside its
objective; leave-one-source-out nests one `fold` run per held-out source, as repeats nest one
run per seed.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from workbench import errors, vocabulary
from workbench.data import dataset
from workbench.data.balance import balanced
from workbench.data.dataset import IN_DISTRIBUTION_VAL, Dataset
from workbench.model.train import TrainResult, train
from workbench.spec import Spec, TrialConfig
from workbench.track import store
from workbench.vocabulary import Artifacts
from workbench.workspace import Workspace

# MLflow registers the local-file dataset source twice and then warns that a path is ambiguous.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    objective: float
    metrics: dict[str, float]     # everything logged at the end: test quality, summary, cost
    model_run: str = ""           # the run holding the model, when not this one (repeats, folds)

    @property
    def model_run_id(self) -> str:
        return self.model_run or self.run_id


@dataclass(frozen=True)
class RunLog:
    """One MLflow run, written through a client bound to a workspace's store (never MLflow's
    process-wide "current run"), so runs of two workspaces can be written in one process."""

    client: MlflowClient
    run_id: str

    @classmethod
    def start(cls, client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
              parent_run_id: str | None = None) -> RunLog:
        from mlflow.tracking.context.registry import resolve_tags

        # The user, source and git tags MLflow's own start_run adds, so the UI's columns fill alike.
        tags = resolve_tags({**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
        return cls(client, client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)

    def params(self, values: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def tags(self, values: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def artifacts(self, folder: str | Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=path)

    def dict(self, value: dict, file: str) -> None:
        self.client.log_dict(self.run_id, value, file)

    def text(self, value: str, file: str) -> None:
        self.client.log_text(self.run_id, value, file)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def tracked_run(ws: Workspace, client: MlflowClient, spec: Spec, config: TrialConfig, data: Dataset, *,
                experiment_id: str, parent_run_id: str | None = None, trial_number: int | None = None,
                callbacks: list = (), on_start: Callable[[str], None] | None = None, name: str | None = None,
                tags: dict[str, str] | None = None) -> RunOutcome:
    """One configuration trained and recorded, on what the spec's objective rule makes of `data`
    (`dataset.folds`): a single run; a run holding one nested `repeat` run per seed (seed,
    seed + 1, ...; same split) when the spec asks for repeats; under leave-one-source-out, a run
    holding one nested `fold` run per source held out (each with its repeats). A trial's run when
    `trial_number` is given (nested under the sweep's `parent_run_id`), else a single run.
    `on_start` learns the run's id as soon as it exists; `name` and `tags` add to the defaults."""
    role = "trial" if trial_number is not None else "run"
    name = name or (f"trial-{trial_number:03d}" if trial_number is not None else f"{spec.name}-{config.backbone}")
    folds = dataset.folds(spec, data)
    tags = {**_tags(spec, folds[0] if len(folds) == 1 else data, config.seed, role), **(tags or {})}
    if trial_number is not None:
        tags[vocabulary.TRIAL] = str(trial_number)
    if spec.repeats > 1:
        tags[vocabulary.REPEATS] = str(spec.repeats)
    if len(folds) > 1:
        tags[vocabulary.FOLDS] = ",".join(fold.held_out for fold in folds)
    run = RunLog.start(client, experiment_id, name, tags, parent_run_id)
    if on_start:
        on_start(run.run_id)
    if len(folds) == 1:
        return _configuration(ws, run, spec, config, folds[0], experiment_id, name, callbacks)
    return _each_source_out(ws, run, spec, config, data, folds, experiment_id, name, callbacks)


def _each_source_out(ws: Workspace, run: RunLog, spec: Spec, config: TrialConfig, data: Dataset,
                     folds: list[Dataset], experiment_id: str, name: str, callbacks: list) -> RunOutcome:
    """Leave one source out: one nested `fold` run per source held out, summarised like repeats
    (`_summarise`: the objective is the folds' mean, `objective_std` their spread). The pruner
    watches the first fold only: a configuration it stops is not worth the others."""
    with ends_definitely(run):
        run.params(_run_params(spec, config, data, held_out=",".join(fold.held_out for fold in folds)))
        outcomes = []
        for k, fold in enumerate(folds):
            fold_name = f"{name}-without-{fold.held_out}"
            child = RunLog.start(run.client, experiment_id, fold_name, _tags(spec, fold, config.seed, "fold"),
                                 run.run_id)
            outcomes.append(_configuration(ws, child, spec, config, fold, experiment_id, fold_name,
                                           callbacks if k == 0 else []))
        return _summarise(run, spec, outcomes)


def _configuration(ws: Workspace, run: RunLog, spec: Spec, config: TrialConfig, data: Dataset, experiment_id: str,
                   name: str, callbacks: list) -> RunOutcome:
    if spec.repeats == 1:
        return _train_and_log(ws, run, spec, config, data, callbacks)
    return _repeat(ws, run, spec, config, data, experiment_id, name, callbacks)


def _tags(spec: Spec, data: Dataset, seed: int, role: str) -> dict[str, str]:
    return {vocabulary.ROLE: role, vocabulary.SPEC: spec.name, vocabulary.SPEC_HASH: spec.content_hash(),
            vocabulary.DATASET_DIGEST: data.digest, vocabulary.SEED: str(seed),
            vocabulary.SYNTHETIC: str(data.synthetic).lower(), **provenance_tags(),
            **({vocabulary.FOLD: data.held_out} if data.held_out else {})}


def _run_params(spec: Spec, config: TrialConfig, data: Dataset, exclude: set[str] = frozenset(),
                held_out: str | None = None) -> dict:
    rule = spec.objective.rule
    held_out = held_out or data.held_out
    return {**config.model_dump(exclude=exclude), vocabulary.DATASET: data.name,
            vocabulary.DATASET_DIGEST_PARAM: data.digest, vocabulary.CLASSES: ",".join(data.classes),
            vocabulary.OBJECTIVE_PARAM: spec.objective.metric, vocabulary.RULE: rule,
            **({vocabulary.HOLDOUT_SOURCE: held_out} if held_out else {})}


def _train_and_log(ws: Workspace, run: RunLog, spec: Spec, config: TrialConfig, data: Dataset,
                   callbacks: list) -> RunOutcome:
    try:
        with ends_definitely(run):
            run.params(_run_params(spec, config, data))
            log_dataset(run, data)
            training = balanced(data, config.balance, ws, config.balance_target, config.seed)
            result = train(config, data, training, scratch=ws.scratch("cache"), monitor=spec.objective.metric,
                           callbacks=[epoch_logger(run), *callbacks])
            objective = result.objective(spec.objective.metric, config.restore_best)
            metrics = log_result(run, ws, result, config, data.classes, objective, spec.objective.metric)
            run.tags({vocabulary.STATE: "finished"})
            run.end("FINISHED")
            return RunOutcome(run.run_id, objective, metrics)
    finally:
        release_memory()


def _repeat(ws: Workspace, run: RunLog, spec: Spec, config: TrialConfig, data: Dataset, experiment_id: str,
            name: str, callbacks: list) -> RunOutcome:
    """Its metrics are the repeats' means, each with its sample standard deviation as
    `<metric>_std`; its objective is the mean objective; its model is the best repeat's (tag
    `workbench.model_run_id`). The pruner watches the first repeat only: a configuration it
    stops is not worth N seeds."""
    with ends_definitely(run):
        run.params({**_run_params(spec, config, data, exclude={"seed"}), "repeats": spec.repeats})
        outcomes = []
        for k in range(spec.repeats):
            seed = config.seed + k
            tags = {**_tags(spec, data, seed, "repeat"), vocabulary.REPEAT: str(k)}
            child = RunLog.start(run.client, experiment_id, f"{name}-seed{seed}", tags, run.run_id)
            outcomes.append(_train_and_log(ws, child, spec, config.model_copy(update={"seed": seed}), data,
                                           callbacks if k == 0 else []))
        return _summarise(run, spec, outcomes)


def _summarise(run: RunLog, spec: Spec, outcomes: list[RunOutcome]) -> RunOutcome:
    """A run standing for several trainings of one configuration (repeats, folds): every metric
    they share as its mean, with its sample standard deviation as `<metric>_std` (the spread over
    seeds, or over held-out sources); the objective the mean objective; the model the best
    training's (tag `workbench.model_run_id`). Ends the run."""
    import numpy as np

    # A fold trained with repeats brings its seeds' spread; the spread here is over the folds.
    shared = {m for m in set.intersection(*(set(o.metrics) for o in outcomes)) if not m.endswith("_std")}
    values = {m: np.array([o.metrics[m] for o in outcomes], dtype=float) for m in sorted(shared)}
    metrics = {**{m: float(v.mean()) for m, v in values.items()},
               **{f"{m}_std": float(v.std(ddof=1)) for m, v in values.items()}}
    objectives = np.array([o.objective for o in outcomes])
    metrics.update({vocabulary.OBJECTIVE: float(objectives.mean()),
                    f"{vocabulary.OBJECTIVE}_std": float(objectives.std(ddof=1))})
    run.metrics(metrics)
    pick = np.argmin if vocabulary.lower_is_better(spec.objective.metric) else np.argmax
    best = outcomes[int(pick(objectives))]
    run.tags({vocabulary.MODEL_RUN: best.model_run_id, vocabulary.STATE: "finished"})
    run.end("FINISHED")
    return RunOutcome(run.run_id, float(objectives.mean()), metrics, best.model_run_id)


@contextmanager
def ends_definitely(run: RunLog):
    """End the run in a definite state if the body raises: a pruned trial as FINISHED, tagged
    `pruned` (its curves are kept); Ctrl-C or SIGTERM as KILLED, tagged `interrupted`; anything
    else as FAILED, tagged `failed`, with the reason as a tag and the traceback as an artefact, so
    no run stays RUNNING forever in the UI. The error propagates."""
    try:
        yield
    except optuna.TrialPruned:
        run.tags({vocabulary.STATE: "pruned"})
        run.end("FINISHED")
        raise
    except KeyboardInterrupt as err:
        # Ctrl-C or SIGTERM: the run did nothing wrong; it is KILLED and says so, and the sweep
        # retries its configuration first on resume.
        with _ignoring(Exception):
            run.tags({vocabulary.STATE: "interrupted", vocabulary.ERROR: f"interrupted ({errors.signal_name(err)})"})
        with _ignoring(Exception):
            run.end("KILLED")
        raise
    except BaseException as err:
        with _ignoring(Exception):  # the store itself may be what failed (read-only, disk full): still end the run
            # Error messages quote store URLs; their passwords never reach a tag or an artefact.
            run.tags({vocabulary.STATE: "failed",
                      vocabulary.ERROR: errors.scrub(f"{type(err).__name__}: {err}")[:500]})
            run.text(errors.scrub(traceback.format_exc()), Artifacts.ERROR)
        with _ignoring(Exception):
            run.end("FAILED")
        raise


@contextmanager
def _ignoring(*kinds):
    """Ending a run must not stop halfway: a failure to write one tag does not keep it RUNNING.
    (A second Ctrl-C is not ignored: it is a KeyboardInterrupt, not an Exception.)"""
    try:
        yield
    except kinds:
        pass


def release_memory() -> None:
    import keras

    _forget_custom_gradients()
    # clear_session(free_memory=True) already runs gc.collect(); a second full collection here
    # cost another 0.5 s per trial (TensorFlow and MLflow keep millions of objects alive).
    keras.backend.clear_session(free_memory=True)


def _forget_custom_gradients() -> None:
    """Every traced train step leaves its whole graph alive in TensorFlow: Keras' optimizer
    all-reduces the gradients (even on one device), which goes through `tf.custom_gradient`, and
    in graph mode that registers a gradient function, closing over the graph, in a global
    registry nothing ever prunes. A sweep process grew by the train step of every trial (7 MB a
    trial for the 32 px CNN, +19 % over 30 trials). The entries are consulted only while their
    graph is being traced, so once a run is over they are dead weight and can go."""
    try:
        from tensorflow.python.framework import ops

        registry = ops._gradient_registry._registry  # private, hence the guard
    except (ImportError, AttributeError):
        return
    for name in [name for name in registry if str(name).startswith("CustomGradient-")]:
        registry.pop(name, None)


# --- what a run writes --------------------------------------------------------------------------------

def provenance_tags() -> dict[str, str]:
    """What code made a run: the versions `workbench --version` prints, and the git commit."""
    from importlib.metadata import version

    import keras
    import optuna
    import tensorflow as tf

    tags = {"workbench.tensorflow_version": tf.__version__, "workbench.keras_version": keras.__version__,
            "workbench.mlflow_version": mlflow.__version__, "workbench.optuna_version": optuna.__version__,
            "workbench.version": version("workbench")}
    if commit := git_commit():
        tags[vocabulary.GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def epoch_logger(run: RunLog):
    """A Keras callback that streams each epoch's logs to the run (step = epoch)."""
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: run.metrics(
        {k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1))


def log_dataset(run: RunLog, data: Dataset) -> None:
    """Lineage: the split manifest as an MLflow dataset input, its class counts and the file itself."""
    # sha256 and phash let a later evaluation leave out what this model saw (exact and near copies).
    columns = [c for c in ("source", "path", "sha256", "phash", "label", "original_label", "group_id", "split",
                           "decoded") if c in data.frame.columns]
    frame = data.frame[columns]
    dataset_input = mlflow.data.from_pandas(frame, source=data.source, name=data.name, digest=data.digest,
                                            targets="label")
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(dataset_input._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
    try:
        run.client.log_inputs(run.run_id, inputs)
    except MlflowException:
        # The store looks the dataset up, then inserts it: two workers' first trials logging the
        # same dataset at once race, and the loser hits the unique key. The row now exists, so a
        # second try finds it (CI once lost a trial of a two-worker sweep this way).
        time.sleep(0.5)
        run.client.log_inputs(run.run_id, inputs)
    counts = data.counts()
    run.params({size: int(counts[size.removeprefix("images_")].sum()) for size in vocabulary.SPLIT_SIZES})
    if IN_DISTRIBUTION_VAL in counts:
        run.params({vocabulary.IN_DISTRIBUTION_SIZE: int(counts[IN_DISTRIBUTION_VAL].sum())})
    if data.left_out:
        run.metrics({"images_left_out": sum(data.left_out.values())})
        run.tags({vocabulary.LEFT_OUT: "; ".join(f"{n} {why}" for why, n in data.left_out.items())})
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(Path(tmp) / Path(Artifacts.MANIFEST).name, index=False)
        counts.to_csv(Path(tmp) / Path(Artifacts.CLASS_COUNTS).name)
        data.source_counts().to_csv(Path(tmp) / Path(Artifacts.SOURCE_COUNTS).name)
        run.artifacts(tmp, str(Path(Artifacts.MANIFEST).parent))


def log_result(run: RunLog, ws: Workspace, result: TrainResult, config: TrialConfig, classes: tuple[str, ...],
               objective: float, monitor: str = "val_f1_macro") -> dict[str, float]:
    """Everything a finished training leaves behind, written into the run: metrics
    (quality, training summary around `monitor`, the metric training chose its epoch by; cost;
    the objective), the evidence (figures, reports, predictions) and the model. Returns the
    metrics it logged."""
    from workbench.measure.evaluate import training_summary

    metrics = {**result.evaluation.metrics, **result.calibration, **issue_metrics(result.label_issues),
               **training_summary(result.history, monitor), **result.timings,
               **result.cost, "train_images": result.train_images, vocabulary.OBJECTIVE: objective}
    if result.in_distribution:  # a fold: the objective was measured on a held-out source
        home = result.in_distribution[monitor]
        metrics.update({vocabulary.IN_DISTRIBUTION: home,
                        vocabulary.TRANSFER_GAP: vocabulary.transfer_gap(objective, home, monitor)})
    run.metrics(metrics)
    run.tags({vocabulary.DEVICE: result.runtime.device,
                     "workbench.mixed_precision": str(result.runtime.mixed_precision).lower(),
                     "workbench.xla": str(result.runtime.xla).lower()})
    log_evidence(run, result.evaluation, result.test_frame, result.mistakes, result.mistake_images,
                 history=result.history, phase_boundary=result.phase_boundary, calibrated=result.calibrated,
                 temperature=result.temperature, issues=result.label_issues, issue_images=result.issue_images)
    run.dict(result.history, Artifacts.HISTORY)
    log_model(run, ws, result.model, config, classes)
    return metrics


def issue_metrics(issues) -> dict[str, float]:
    """How many validation and test images confident learning flags, and what share of them."""
    if issues is None or not len(issues):
        return {}
    flagged = int(issues["issue"].sum())
    return {"label_issues": flagged, "label_issue_rate": flagged / len(issues)}


def log_evidence(run: RunLog, evaluation, frame, mistakes, mistake_images, history=None, phase_boundary=None,
                 title: str = "workbench run: evaluation", calibrated=None, temperature: float | None = None,
                 issues=None, issue_images=None) -> None:
    """What a scored model leaves behind, for a trial's test split and an evaluation on another
    dataset alike: the figures as PNG plus one interactive page, the classification report, the
    confusion matrix and the per-image predictions (with the probabilities the served model
    gives: `calibrated` when there are such); for a trained run also the reliability diagram and
    the likely label errors (`evaluation/label_issues.csv`, flagged images only, most suspect first)."""
    import matplotlib.pyplot as plt

    from workbench.measure import figures

    pairs = figures.figure_pairs(evaluation, history, images=mistake_images, picked=mistakes,
                                 phase_boundary=phase_boundary, calibrated=calibrated, temperature=temperature,
                                 issues=issues, issue_images=issue_images)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (png, _) in pairs.items():
            # Each figure lays itself out (tight_layout), so no second, "tight" render; light PNG
            # compression: evidence for every trial should cost the sweep little.
            png.savefig(Path(tmp) / f"{name}.png", dpi=110, pil_kwargs={"compress_level": 1})
            plt.close(png)
        figures.write_html_page({name: html for name, (_, html) in pairs.items() if html is not None},
                                Path(tmp) / Path(Artifacts.FIGURES).name, title=title)
        Path(tmp, Path(Artifacts.REPORT_TEXT).name).write_text(evaluation.report_text)
        predictions(evaluation, frame, calibrated).to_csv(Path(tmp) / Path(Artifacts.PREDICTIONS).name, index=False)
        if issues is not None:
            flagged = issues[issues["issue"]].drop(columns=["issue", "file"], errors="ignore")
            flagged.to_csv(Path(tmp) / Path(Artifacts.LABEL_ISSUES).name, index=False)
        run.artifacts(tmp, Artifacts.EVALUATION)
    run.dict(evaluation.confusion_json(), Artifacts.CONFUSION)
    run.dict(evaluation.report, Artifacts.REPORT)


def predictions(evaluation, frame, probabilities=None):
    """Per-image predictions, keyed by content hash: what paired tests between runs (McNemar,
    bootstrap) need, and what proves two runs were scored on the same images. The probability
    columns are `probabilities` when given (a trained run's calibrated ones, which the served
    model gives; the predicted class is the same either way)."""
    import pandas as pd

    shown = evaluation.probabilities if probabilities is None else probabilities
    table = pd.DataFrame({"sha256": frame["sha256"].to_numpy(), "path": frame["path"].to_numpy(),
                          "source": frame["source"].to_numpy(),
                          "true": [evaluation.classes[i] for i in evaluation.y_true],
                          "predicted": [evaluation.classes[i] for i in evaluation.probabilities.argmax(axis=1)]})
    for i, name in enumerate(evaluation.classes):
        table[f"p_{name}"] = shown[:, i].round(6)
    return table


def log_model(run: RunLog, ws: Workspace, model, config: TrialConfig, classes) -> None:
    """The Keras model with its signature: float32 RGB pixels in [0, 255] -> class probabilities.
    MLflow logs models only into its process-wide current run, so the run is made current for
    this call alone, on the workspace's store (`store.fluent`), and left ended; the caller ends
    it again with its own final state."""
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    example = np.zeros((1, config.image_size, config.image_size, 3), dtype="float32")
    signature = infer_signature(example, model.predict_on_batch(example))
    # Explicit requirements: MLflow's inference would re-load the model in a subprocess (slow).
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    # No input_example: MLflow 3.17's Keras flavour fails to save one for image tensors.
    with store.fluent(ws.tracking_uri), mlflow.start_run(run_id=run.run_id):
        mlflow.keras.log_model(model, name=Artifacts.MODEL, signature=signature, pip_requirements=requirements,
                               metadata={"classes": list(classes), "image_size": config.image_size})
    run.dict({"classes": list(classes)}, Artifacts.LABELS)
