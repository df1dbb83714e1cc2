"""Reading back the evidence a run logged: its per-image test predictions and the split manifest
of the images it trained on. Comparing runs, evaluating a model on other data and the promotion
gate all start from these files rather than from in-process state, so any of them can be
rebuilt later, on any machine that reaches the store. `scored_images` keys predictions by image
content so two runs line up image by image; `seen` says which images share a duplicate group
with a model's training data, so nothing a model saw is ever counted as new."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from workbench.data import leakage
from workbench.vocabulary import Artifacts


def load_predictions(client, run_ids: Iterable[str]) -> dict[str, pd.DataFrame | None]:
    """Each run's `evaluation/test_predictions.csv`, or None where the run has none (pruned,
    failed, or logged before predictions were)."""
    found: dict[str, pd.DataFrame | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts(run_id, Artifacts.PREDICTIONS, str(Path(tmp) / run_id))
                found[run_id] = pd.read_csv(path, dtype={"sha256": str, "path": str, "true": str, "predicted": str})
            except (MlflowException, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
                found[run_id] = None
    return found


def manifest(client, run_id: str | None) -> pd.DataFrame | None:
    """A run's logged split manifest (every image with its hashes, label and split), or None."""
    if not run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return pd.read_csv(client.download_artifacts(run_id, Artifacts.MANIFEST, tmp), dtype=str,
                               keep_default_na=False)
    except (MlflowException, OSError, pd.errors.ParserError):
        return None


def trained_rows(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """The rows of a split manifest a model learned from or was chosen on: train and val."""
    return None if frame is None or "split" not in frame else frame[frame["split"].isin(("train", "val"))]


def trained_on(client, run_id: str | None) -> pd.DataFrame | None:
    """The training and validation images of a model's run (its logged split manifest)."""
    return trained_rows(manifest(client, run_id))


@dataclass(frozen=True)
class ScoredImages:
    frame: pd.DataFrame   # one row per (sha256, true label), sorted, so runs line up image by image
    digest: str           # short hash of the set of (sha256, true label) pairs
    labels: list[str]


def scored_images(predictions: pd.DataFrame) -> ScoredImages:
    """A run's test predictions keyed for pairing. Two runs used the same test set iff their
    sets of (image sha256, true label) pairs are equal, i.e. iff their digests are equal; a
    repeated pair (the same picture twice) counts once."""
    frame = (predictions.astype({"sha256": str, "true": str, "predicted": str})
             .drop_duplicates(["sha256", "true"]).sort_values(["sha256", "true"], kind="stable")
             .reset_index(drop=True))
    joined = "\n".join(frame["sha256"] + "\t" + frame["true"])
    labels = [c.removeprefix("p_") for c in predictions.columns if c.startswith("p_")]
    if not labels or not set(frame["true"]) | set(frame["predicted"]) <= set(labels):
        labels = sorted(set(frame["true"]) | set(frame["predicted"]))
    return ScoredImages(frame, hashlib.sha256(joined.encode()).hexdigest()[:12], labels)


def seen(frame: pd.DataFrame, trained_on: pd.DataFrame | None, max_distance: int = 4) -> np.ndarray:
    """Which rows of `frame` share a duplicate group (same bytes, or perceptual hashes within
    `max_distance` bits) with an image the model trained or validated on."""
    if trained_on is None or trained_on.empty or frame.empty:
        return np.zeros(len(frame), dtype=bool)

    def column(table: pd.DataFrame, name: str) -> list[str]:
        return table[name].fillna("").astype(str).tolist() if name in table else [""] * len(table)

    keys = [f"seen:{i}" for i in range(len(trained_on))] + [f"new:{i}" for i in range(len(frame))]
    groups = leakage.near_duplicate_groups(keys, column(trained_on, "sha256") + column(frame, "sha256"),
                                           column(trained_on, "phash") + column(frame, "phash"), max_distance)
    touched = {groups[k] for k in keys[:len(trained_on)]}
    return np.array([groups[f"new:{i}"] in touched for i in range(len(frame))], dtype=bool)
