"""Beyond one dataset: scoring a trained model on data it was not trained on, honestly, and the
train x test matrix that asks S1's question (how do datasets collected by different people
influence each other?) in one command.

Honest by default: an image whose duplicate group (exact or near copy, as `data check` groups
them) meets any image the model trained or validated on is left out, and the count is recorded
(`excluded_seen`); images of classes the model does not know are an error unless mapped, or, in
the matrix, left out and counted (`excluded_unknown`). Macro averages run over the classes the
scored images hold. An evaluation is an MLflow run (`workbench.role=evaluation`) with the same
evidence a trial logs: metrics, per-class report, confusion matrix, per-image predictions and the
most confident mistakes. The scoring is values in, values out; `evaluate_model` and `matrix` are
the edges that load models and write runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import vocabulary
from workbench.data import dataset, ingest
from workbench.errors import DataError, WorkbenchError
from workbench.measure import stats
from workbench.measure.evaluate import Evaluation, evaluate, most_confident_mistakes
from workbench.model import pipeline
from workbench.spec import Spec, first_config, validate
from workbench.track import store
from workbench.track.evidence import seen, trained_on
from workbench.vocabulary import Artifacts
from workbench.workspace import Workspace

SPLIT_CHOICES = ("all", "train", "val", "test")


# --- which images, under which labels --------------------------------------------------------------

def target_frame(ws: Workspace, data: str, split: str = "all") -> tuple[str, pd.DataFrame]:
    """The images `data` names: an ingested dataset NAME (all of it, or one of its own published
    splits), or a SPEC (its merged data, whole or one of its splits). Returns a name and rows
    with `file`, `label`, `sha256`, `phash`."""
    if split not in SPLIT_CHOICES:
        raise WorkbenchError(f"--split {split}: choose from {', '.join(SPLIT_CHOICES)}")
    if (ws.manifests / f"{data}.csv").is_file():
        frame, _ = ingest.read_manifest(data, ws.manifests)
        frame = frame.assign(file=dataset.files(frame, ws.manifests), split=frame["original_split"])
    else:
        from workbench.spec import load

        prepared = dataset.prepare(load(data, folder=ws.experiments), ws)
        frame, data = prepared.frame, prepared.name
    if split != "all":
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise DataError(f"--data {data} --split {split}: no images in that split")
    return data, frame.reset_index(drop=True)


def parse_mapping(text: str | None) -> dict[str, str | None]:
    """`--classes 'a: x, b: y'` (a YAML mapping, braces optional; `null` leaves a label out)."""
    import yaml

    if not text or not text.strip():
        return {}
    body = text.strip()
    try:
        mapping = yaml.safe_load(body if body.startswith("{") else "{" + body + "}")
    except yaml.YAMLError:
        mapping = None
    if not isinstance(mapping, dict):
        raise WorkbenchError(f"--classes {text!r}: expected 'label: class, label: class'")
    return {str(k): None if v is None else str(v) for k, v in mapping.items()}


def map_labels(frame: pd.DataFrame, classes: tuple[str, ...], mapping: dict[str, str | None],
               strict: bool, what: str) -> tuple[pd.DataFrame, int]:
    """Rows relabelled to the model's classes. Labels mapped to null are left out; labels the model
    does not know are an error when `strict`, else left out. Returns rows and how many were left
    out for an unknown label."""
    bad_targets = sorted({v for v in mapping.values() if v is not None} - set(classes))
    if bad_targets:
        raise WorkbenchError(f"--classes: {', '.join(bad_targets)} not among the model's classes ({', '.join(classes)})")
    labels = frame["label"].map(lambda label: mapping.get(label, label))
    kept = frame.assign(label=labels)[labels.notna()]
    unknown = sorted(set(kept["label"]) - set(classes))
    if unknown and strict:
        raise WorkbenchError(f"{what}: label(s) {', '.join(unknown)} are not classes of the model "
                             f"({', '.join(classes)}); map them with --classes '{unknown[0]}: CLASS' "
                             f"(or '{unknown[0]}: null' to leave them out)")
    known = kept[kept["label"].isin(classes)]
    return known.reset_index(drop=True), len(kept) - len(known)


@dataclass(frozen=True)
class Scored:
    evaluation: Evaluation
    frame: pd.DataFrame          # the scored rows, in the evaluation's order
    mistakes: list[int]
    mistake_images: np.ndarray


def score(model, classes: tuple[str, ...], image_size: int, frame: pd.DataFrame) -> Scored:
    """The model on these images, decoded exactly as training decodes them."""
    if frame.empty:
        raise DataError("nothing left to score: every image was left out")
    images = pipeline.image_dataset(frame, classes, image_size=image_size, batch_size=32)
    probabilities = model.predict(images, verbose=0)
    y = pipeline.labels_of(frame, classes)
    evaluation = evaluate(y, probabilities, classes, present_only=True)
    mistakes = most_confident_mistakes(y, probabilities, k=16)
    return Scored(evaluation, frame, mistakes,
                  pipeline.load_images([frame["file"].iloc[i] for i in mistakes], image_size))


def intervals(scored: Scored, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Bootstrap 95 % intervals of accuracy and macro-F1 (over the classes present)."""
    e = scored.evaluation
    predicted = e.probabilities.argmax(axis=1)
    present = sorted(set(e.y_true.tolist()))
    acc = stats.bootstrap_accuracy(predicted == e.y_true, resamples, seed)
    f1 = stats.bootstrap_f1_macro(e.y_true, predicted, list(range(len(e.classes))), resamples, seed,
                                  average_over=present)
    return {"test_accuracy_low": acc[0], "test_accuracy_high": acc[1],
            "test_f1_macro_low": f1[0], "test_f1_macro_high": f1[1]}


# --- the MLflow edge ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationOutcome:
    run_id: str
    data: str
    images: int
    excluded_seen: int
    excluded_unknown: int
    metrics: dict[str, float]       # as computed (test_accuracy, ...); logged as eval_<data>_accuracy, ...
    excluded_mapped_out: int = 0    # images whose label --classes mapped to null
    absent_classes: tuple[str, ...] = ()   # the model's classes the scored images do not hold
    prefix: str = "eval"            # the logged metrics' prefix: eval_<data>


def renamed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {(prefix + key.removeprefix("test")) if key.startswith("test_") else key: value
            for key, value in metrics.items()}


def log_evaluation(client, scored: Scored, *, experiment_id: str, name: str, tags: dict[str, str], params: dict,
                   extra_metrics: dict[str, float], parent_run_id: str | None = None) -> tuple[str, dict[str, float]]:
    from workbench.track.run import RunLog, log_evidence, provenance_tags

    metrics = {**scored.evaluation.metrics, **intervals(scored), **extra_metrics,
               "images_evaluated": float(len(scored.frame))}
    absent = scored.evaluation.absent_classes
    tags = {**tags, **({"workbench.classes_absent": ",".join(absent)} if absent else {})}
    run = RunLog.start(client, experiment_id, name, {vocabulary.ROLE: "evaluation", vocabulary.STATE: "finished",
                                                     **provenance_tags(), **tags}, parent_run_id)
    status = "FAILED"
    try:
        run.params(params)
        run.metrics(renamed(metrics, vocabulary.eval_prefix(params.get("data", "data"))))
        log_evidence(run, scored.evaluation, scored.frame, scored.mistakes, scored.mistake_images,
                     title=f"workbench evaluation: {name}")
        status = "FINISHED"
    finally:
        run.end(status)
    return run.run_id, metrics


def evaluate_model(ws: Workspace, client, model_uri: str, data: str, *, split: str = "all", mapping: dict | None = None,
                   include_seen: bool = False) -> EvaluationOutcome:
    """`workbench evaluate`: score a model (runs:/... or models:/NAME@alias) on an ingested dataset
    or a spec's data, leaving out what it saw unless `include_seen`, and log it as an evaluation
    run in the model's own experiment, linked to the run (and version) that trained it."""
    from workbench.ship import predict

    loaded = predict.load_model(model_uri, client.tracking_uri)
    name, frame = target_frame(ws, data, split)
    mapped_out = int(frame["label"].map(lambda label: label in (mapping or {}) and mapping[label] is None).sum())
    frame, unknown = map_labels(frame, loaded.classes, mapping or {}, strict=True, what=f"--data {data}")
    if include_seen:
        mask = np.zeros(len(frame), dtype=bool)
    else:
        saw = trained_on(client, loaded.run_id)
        if saw is None or not {"sha256", "phash"} <= set(saw.columns):
            # Scoring everything while saying "left out 0" would pass seen images off as new ones.
            raise WorkbenchError(f"{model_uri}: cannot tell which images it trained on (its run has no readable "
                                 f"split manifest with hashes); pass --include-seen to score every image anyway")
        mask = seen(frame, saw)
    scored = score(loaded.model, loaded.classes, loaded.image_size, frame[~mask].reset_index(drop=True))
    experiment_id = (client.get_run(loaded.run_id).info.experiment_id if loaded.run_id
                     else store.ensure_experiment(client, "evaluations"))
    tags = {vocabulary.MODEL_URI: model_uri, **({vocabulary.MODEL_RUN: loaded.run_id} if loaded.run_id else {})}
    if model_uri.startswith("models:/"):
        tags["workbench.model_version"] = _version_of(client, model_uri)
    params = {"data": name, "split": split, "include_seen": include_seen, vocabulary.CLASSES: ",".join(loaded.classes),
              "classes_mapping": ", ".join(f"{k}: {v}" for k, v in (mapping or {}).items()) or "-"}
    run_id, metrics = log_evaluation(client, scored, experiment_id=experiment_id, name=f"evaluate-{name}", tags=tags,
                                     params=params, extra_metrics={"excluded_seen": float(mask.sum()),
                                                                   "excluded_unknown": float(unknown),
                                                                   "excluded_mapped_out": float(mapped_out)})
    return EvaluationOutcome(run_id, name, len(scored.frame), int(mask.sum()), unknown, metrics, mapped_out,
                             tuple(scored.evaluation.absent_classes), vocabulary.eval_prefix(name))


def _version_of(client, uri: str) -> str:
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        model, alias = rest.split("@", 1)
        return str(client.get_model_version_by_alias(model, alias).version)
    return rest.split("/", 1)[1] if "/" in rest else ""


# --- the matrix ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Matrix:
    parent_run_id: str
    experiment_id: str
    table: pd.DataFrame     # one row per (trained_on, tested_on)
    experiment: str = ""


def per_source(spec: Spec, source: str) -> Spec:
    """The spec restricted to one of its datasets (same classes mapping, split and configuration),
    validated in distribution: one dataset has no other source to hold out."""
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw["dataset"]["manifests"] = [m for m in raw["dataset"]["manifests"] if m["name"] == source]
    raw["objective"].pop("holdout_source", None)
    raw["objective"]["leave_one_source_out"] = False
    return validate(raw, source=f"{spec.name} [{source}]")


def matrix(ws: Workspace, spec: Spec, *, on_cell=None) -> Matrix:
    """`workbench matrix SPEC`: train the spec's configuration once per dataset it merges, then
    score every model on every dataset: its own test split on the diagonal, elsewhere the whole
    other dataset minus every image it saw (exact or near copies). All runs nest under one
    `matrix` run, which holds the table and its heatmap."""
    from workbench.measure import figures
    from workbench.ship import predict
    from workbench.track.run import tracked_run

    sources = [m.name for m in getattr(spec.dataset, "manifests", [])]
    if len(sources) < 2:
        raise WorkbenchError(f"{spec.name}: the matrix needs a spec that merges several datasets "
                             f"(dataset.manifests has {len(sources)})")
    client = store.connect(ws.tracking_uri)
    experiment_id = store.ensure_experiment(client, spec.name)
    parent = client.create_run(experiment_id, run_name="matrix", tags={
        vocabulary.ROLE: "matrix", vocabulary.SPEC: spec.name, vocabulary.SPEC_HASH: spec.content_hash()}).info.run_id
    status = "FAILED"
    try:
        config = first_config(spec)
        data = {s: dataset.prepare(per_source(spec, s), ws) for s in sources}
        models = {}
        for s in sources:
            outcome = tracked_run(ws, client, per_source(spec, s), config, data[s], experiment_id=experiment_id,
                                  parent_run_id=parent, name=f"train-{s}", tags={"workbench.matrix_source": s})
            models[s] = outcome.run_id
        rows = []
        for s in sources:
            loaded = predict.load_model(f"runs:/{models[s]}/model", ws.tracking_uri)
            seen_by_s = data[s].frame[data[s].frame["split"].isin(("train", "val"))]
            for t in sources:
                frame = data[t].part("test") if t == s else data[t].frame
                frame, unknown = map_labels(frame, loaded.classes, {}, strict=False, what=t)
                mask = seen(frame, seen_by_s) if t != s else np.zeros(len(frame), dtype=bool)
                kept = frame[~mask].reset_index(drop=True)
                row = {"trained_on": s, "tested_on": t, "images": len(kept), "excluded_seen": int(mask.sum()),
                       "excluded_unknown": unknown, "model_run_id": models[s]}
                if len(kept):
                    scored = score(loaded.model, loaded.classes, loaded.image_size, kept)
                    run_id, metrics = log_evaluation(
                        client, scored, experiment_id=experiment_id, name=f"{s}-on-{t}", parent_run_id=parent,
                        tags={vocabulary.MODEL_RUN: models[s], "workbench.matrix_cell": f"{s}->{t}"},
                        params={"data": t, "split": "test" if t == s else "all", vocabulary.CLASSES: ",".join(loaded.classes)},
                        extra_metrics={"excluded_seen": float(mask.sum()), "excluded_unknown": float(unknown)})
                    row.update({k: metrics[k] for k in ("test_accuracy", "test_accuracy_low", "test_accuracy_high",
                                                        "test_f1_macro", "test_f1_macro_low", "test_f1_macro_high")},
                               evaluation_run_id=run_id)
                rows.append(row)
                if on_cell:
                    on_cell(row)
        table = pd.DataFrame(rows)
        _log_matrix(client, parent, table, spec.name, figures)
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status=status)
    return Matrix(parent, experiment_id, table, spec.name)


def _log_matrix(client, parent: str, table: pd.DataFrame, name: str, figures) -> None:
    import mlflow

    metrics = []
    for row in table.itertuples():
        if not np.isnan(getattr(row, "test_f1_macro", np.nan)):
            metrics.append(mlflow.entities.Metric(f"f1_{row.trained_on}_on_{row.tested_on}", float(row.test_f1_macro), 0, 0))
    if metrics:
        client.log_batch(parent, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        table.to_csv(Path(tmp) / Path(Artifacts.MATRIX).name, index=False)
        sections = [figures.matrix_heatmap(table, value) for value in ("test_accuracy", "test_f1_macro")]
        figures.write_html_page({str(i): fig for i, fig in enumerate(sections) if fig is not None},
                                Path(tmp) / "matrix.html", title=f"{name}: trained on x tested on")
        client.log_artifacts(parent, tmp, artifact_path=str(Path(Artifacts.MATRIX).parent))
