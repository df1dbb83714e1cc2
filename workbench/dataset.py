"""From a spec's `dataset` block to a split manifest the pipeline can read.

A `Dataset` is a manifest frame (one row per image: its file, label, group and split) plus the
class list and a digest that changes whenever the images, labels or split assignment change, so
two runs can be seen to have trained on the same data. The embedded default is generated here
on first use under `data/synthetic/` (atomically, so an interrupted or concurrent generation
never leaves a half-written folder behind) and reused afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workbench import paths, synth
from workbench.errors import DataError
from workbench.spec import Spec, SyntheticData
from workbench.split import assign_splits, class_counts


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path              # the folder the manifest's relative paths start from
    frame: pd.DataFrame     # manifest rows plus `file` (absolute path) and `split`
    classes: tuple[str, ...]
    digest: str

    def part(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        return class_counts(self.frame)


def synthetic_root(data: SyntheticData, seed: int) -> Path:
    return paths.data_dir() / "synthetic" / f"{data.task}-{data.size}px-n{data.count}-seed{seed}"


def ensure_synthetic(data: SyntheticData, seed: int) -> Path:
    """Generate the synthetic set once; a finished folder is recognised by its dataset.json."""
    root = synthetic_root(data, seed)
    if (root / "dataset.json").is_file() and (root / "manifest.csv").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        synth.generate(staging, task=data.task, seed=seed, size=data.size, count=data.count)
        try:
            os.rename(staging, root)
        except OSError:
            if not (root / "dataset.json").is_file():  # not a concurrent worker's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def read_manifest(root: Path) -> pd.DataFrame:
    path = root / "manifest.csv"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    missing = {"path", "sha256", "label", "group_id"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    return frame


def prepare(spec: Spec) -> Dataset:
    """Materialise the spec's data and split it; the same spec always gives the same Dataset."""
    root = ensure_synthetic(spec.dataset, spec.seed)
    frame = read_manifest(root)
    frame["file"] = [str((root / p).resolve()) for p in frame["path"]]
    frame["split"] = assign_splits(frame, spec.split.model_dump(), spec.seed)
    classes = tuple(sorted(frame["label"].unique()))
    for split in ("train", "val", "test"):
        absent = set(classes) - set(frame.loc[frame["split"] == split, "label"])
        if absent:
            raise DataError(f"{root}: split '{split}' has no images of class(es) "
                            f"{', '.join(sorted(absent))}; use more images or other split ratios")
    return Dataset(name=root.name, root=root, frame=frame, classes=classes, digest=digest(frame))


def digest(frame: pd.DataFrame) -> str:
    """Content identity of a split dataset: image bytes, labels and split assignment."""
    rows = sorted(zip(frame["sha256"], frame["label"], frame["split"]))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
