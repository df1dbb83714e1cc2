"""`workbench data audit SPEC`: likely label errors across a whole dataset. Every image gets an
out-of-sample probability by K-fold training of the spec's configuration (`first_config`, the one
`workbench run` trains): the images are cut into K folds by duplicate group, so no picture and its
copies are ever split between training and the fold it is scored in, stratified by label; each
fold is scored by a model trained on the others (with a group-wise slice of those for its
validation split: early stopping and the temperature). Confident learning then ranks all images
by how unlikely their given label is (`measure.label_issues`).

The audit writes `label_issues.csv` (every image, most suspect first) and `label_issues.html`
(the top suspects as thumbnails with both labels) under the workspace's reports folder and logs
both, with its figures, as an MLflow run (role `audit`) in the spec's experiment. It costs K
trainings: a progress callback reports each epoch.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from workbench import vocabulary
from workbench.data.balance import balanced
from workbench.data.dataset import Dataset, prepare_checked
from workbench.errors import SpecError
from workbench.measure import label_issues
from workbench.model import pipeline
from workbench.model.train import train
from workbench.spec import Spec, first_config
from workbench.track import store
from workbench.track.run import RunLog, ends_definitely, provenance_tags, release_memory
from workbench.vocabulary import Artifacts
from workbench.workspace import Workspace

SHOWN = 48       # suspects on the HTML page
VAL_FOLDS = 5    # a fold's validation split is one fifth of the images it does not score
THUMB = 96       # their thumbnails' size in pixels


@dataclass(frozen=True)
class AuditOutcome:
    run_id: str
    images: int
    folds: int
    issues: int
    accuracy: float                  # of the out-of-fold predictions
    ranking: pd.DataFrame            # every image, most suspect first
    csv: Path
    page: Path


def folds_of(frame: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of every row: whole duplicate groups, classes spread evenly."""
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise SpecError(f"--folds {folds}: need at least 2", exit_code=2)
    smallest = frame.groupby("label")["group_id"].nunique().min()
    if smallest < max(folds, VAL_FOLDS):
        raise SpecError(f"--folds {folds}: class {frame.groupby('label')['group_id'].nunique().idxmin()} has only "
                        f"{smallest} distinct image(s); an audit needs at least {max(folds, VAL_FOLDS)} per class",
                        exit_code=2)
    which = np.empty(len(frame), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(frame, frame["label"], frame["group_id"])):
        which[held] = k
    return which


def fold_data(data: Dataset, fold: np.ndarray, k: int, seed: int) -> Dataset:
    """The dataset as fold k's training sees it: fold k is the test split; of the other folds, a
    fifth (whole groups, stratified) is the validation split and the rest the training split."""
    frame = data.frame.reset_index(drop=True)
    rest = np.flatnonzero(fold != k)
    inner = folds_of(frame.iloc[rest], VAL_FOLDS, seed + k)
    split = np.full(len(frame), "test", dtype=object)
    split[rest] = np.where(inner == 0, "val", "train")
    return replace(data, frame=frame.assign(split=split))


def audit(ws: Workspace, spec: Spec, *, folds: int = 5, on_epoch: Callable[[], None] | None = None) -> AuditOutcome:
    """Train the spec's configuration K times, rank every image's label, write and log the result."""
    import keras

    data, _ = prepare_checked(spec, ws)
    config = first_config(spec)
    frame = data.frame.reset_index(drop=True)
    fold = folds_of(frame, folds, spec.seed)
    probabilities = np.zeros((len(frame), len(data.classes)))
    client = store.connect(ws.tracking_uri)
    experiment_id = store.ensure_experiment(client, spec.name)
    run = RunLog.start(client, experiment_id, f"audit-{spec.name}",
                       {vocabulary.ROLE: "audit", vocabulary.SPEC: spec.name, vocabulary.SPEC_HASH: spec.content_hash(),
                        vocabulary.DATASET_DIGEST: data.digest, **provenance_tags()})
    ticks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: on_epoch())] if on_epoch else []
    with ends_definitely(run):
        run.params({**config.model_dump(), "folds": folds, vocabulary.DATASET: data.name,
                    vocabulary.CLASSES: ",".join(data.classes), "images": len(frame)})
        for k in range(folds):
            part = fold_data(data, fold, k, spec.seed)
            try:
                result = train(config, part, balanced(part, config.balance, ws, config.balance_target, config.seed),
                               scratch=ws.scratch("cache"), monitor=spec.objective.metric, callbacks=ticks)
            finally:
                release_memory()
            held = np.flatnonzero(part.frame["split"].to_numpy() == "test")
            # train() scores the test split in the frame's row order, so its rows line up with `held`.
            probabilities[held] = result.calibrated
        y = pipeline.labels_of(frame, data.classes)
        ranked = label_issues.rank(y, probabilities, data.classes)
        rows = frame.iloc[ranked["row"].to_numpy()].reset_index(drop=True)
        ranking = pd.concat([rows[["path", "source", "split", "file"]].assign(fold=fold[ranked["row"].to_numpy()]),
                             ranked.drop(columns="row")], axis=1)
        accuracy = float((probabilities.argmax(axis=1) == y).mean())
        issues = int(ranking["issue"].sum())
        out = ws.reports / f"{spec.name}-audit"
        out.mkdir(parents=True, exist_ok=True)
        csv, page = out / Path(Artifacts.AUDIT).name, out / Path(Artifacts.AUDIT_PAGE).name
        ranking.drop(columns="file").to_csv(csv, index=False)
        page.write_text(render_page(spec.name, ranking, folds, accuracy))
        run.metrics({"label_issues": issues, "label_issue_rate": issues / len(frame), "oof_accuracy": accuracy})
        run.artifacts(str(out), str(Path(Artifacts.AUDIT).parent))
        run.tags({vocabulary.STATE: "finished"})
        run.end("FINISHED")
    return AuditOutcome(run.run_id, len(frame), folds, issues, accuracy, ranking.drop(columns="file"), csv, page)


def _thumbnail(file: str) -> str:
    import tensorflow as tf

    image = pipeline.load_images([file], THUMB)[0]
    return base64.b64encode(tf.io.encode_jpeg(image, quality=85).numpy()).decode()


def render_page(name: str, ranking: pd.DataFrame, folds: int, accuracy: float) -> str:
    """A self-contained page: the top suspects, each a thumbnail with its path and both labels."""
    top = ranking.head(SHOWN)
    cells = "\n".join(
        f'<figure><img src="data:image/jpeg;base64,{_thumbnail(r.file)}" width="{THUMB}" height="{THUMB}" alt="">'
        f"<figcaption><b>given {html.escape(r.given)}</b><br>likely {html.escape(r.suggested)} "
        f"({r.score:.2f}){' &#9873;' if r.issue else ''}<br><small>{html.escape(r.path)}</small></figcaption></figure>"
        for r in top.itertuples())
    flagged = int(ranking["issue"].sum())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(name)}: label audit</title>
<style>body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;width:180px;margin:6px;vertical-align:top}}
figcaption{{font-size:12px;word-break:break-all}}</style></head><body>
<h1>{html.escape(name)}: likely label errors</h1>
<p>{len(ranking)} images scored out of sample by {folds}-fold training (folds never split a duplicate group);
out-of-fold accuracy {accuracy:.3f}. Confident learning flags {flagged} ({100 * flagged / len(ranking):.1f} %,
marked &#9873;). The {len(top)} lowest-scoring images follow, the score being the model's probability for the
given label. The full ranking is in label_issues.csv.</p>
{cells}
</body></html>
"""

