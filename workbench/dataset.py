"""From a spec's `dataset` block to a split manifest the pipeline can read.

A `Dataset` is a manifest frame (one row per image: its file, label, source, group and split) plus
the class list and a digest that changes whenever the images, labels or split assignment change,
so two runs can be seen to have trained on the same data. Two kinds of source:

- `synthetic`, the embedded default, generated here on first use under `data/synthetic/`
  (atomically, so an interrupted or concurrent generation never leaves a half-written folder);
- `manifests`, datasets ingested from the user's disk (`workbench data ingest`), merged with the
  spec's class mapping and regrouped across datasets, so an image two datasets share can never
  sit in train through one and in test through the other.
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

from workbench import ingest, leakage, paths, synth
from workbench.errors import DataError
from workbench.spec import ManifestData, Spec, Split, SyntheticData
from workbench.split import SPLITS, assign_splits, class_counts


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str             # where the images came from, for lineage (a folder)
    frame: pd.DataFrame     # manifest rows plus `file` (absolute path to read) and `split`
    classes: tuple[str, ...]
    digest: str

    def part(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        """Images per class and split."""
        return class_counts(self.frame)

    def source_counts(self) -> pd.DataFrame:
        """Images per class and source dataset (what a merge contributed)."""
        return pd.crosstab(self.frame["label"], self.frame["source"], margins=True, margins_name="total")


# --- synthetic ------------------------------------------------------------------------------------

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


def _synthetic_frame(data: SyntheticData, seed: int) -> tuple[pd.DataFrame, str]:
    root = ensure_synthetic(data, seed)
    path = root / "manifest.csv"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    frame["file"] = [str((root / p).resolve()) for p in frame["path"]]
    return frame, str(root.resolve())


# --- ingested manifests ---------------------------------------------------------------------------

def _manifest_frame(data: ManifestData) -> tuple[pd.DataFrame, str]:
    parts = []
    for source in data.manifests:
        frame, sidecar = ingest.read_manifest(source.name, paths.manifests_dir())
        unknown = set(source.classes) - set(frame["label"])
        if unknown:
            raise DataError(f"dataset.manifests[{source.name}].classes: no label(s) {', '.join(sorted(unknown))} "
                            f"in that manifest (it has: {', '.join(sorted(set(frame['label'])))})")
        frame["original_label"] = frame["label"]
        frame["label"] = frame["label"].map(lambda label: source.classes.get(label, label))
        frame = frame[frame["label"].notna()].copy()
        raw_root = Path(sidecar["raw_root"])
        # Images TensorFlow cannot read as they are were normalised at ingest (`decoded` is
        # relative to the folder that holds the dataset's interim_root); read those copies.
        decoded_base = Path(sidecar["interim_root"]).parent
        frame["file"] = [str(decoded_base / d) if d else str(raw_root / p)
                         for p, d in zip(frame["path"], frame["decoded"])]
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True).fillna("")
    frame["group_id"] = leakage.merged_group_ids(frame, data.near_duplicate_distance)
    # Lineage points at the manifests (which name their raw folders), a path MLflow can resolve.
    return frame, str(paths.manifests_dir().resolve())


# --- splitting and the whole ----------------------------------------------------------------------

def split_frame(frame: pd.DataFrame, split: Split, seed: int) -> pd.Series:
    """The split of every row: the spec's ratios by group, or the dataset's own where kept."""
    assigned = assign_splits(frame, split.ratios(), seed)
    if split.keep_original_split and "original_split" in frame:
        original = frame["original_split"].where(frame["original_split"].isin(SPLITS))
        assigned = original.fillna(assigned)
    return assigned


def prepare(spec: Spec) -> Dataset:
    """Materialise the spec's data and split it; the same spec always gives the same Dataset."""
    if isinstance(spec.dataset, SyntheticData):
        frame, source = _synthetic_frame(spec.dataset, spec.seed)
        name = Path(source).name
    else:
        frame, source = _manifest_frame(spec.dataset)
        name = "+".join(m.name for m in spec.dataset.manifests)
    frame["split"] = split_frame(frame, spec.split, spec.seed)
    classes = tuple(sorted(frame["label"].unique()))
    for split in SPLITS:
        absent = set(classes) - set(frame.loc[frame["split"] == split, "label"])
        if absent:
            raise DataError(f"{source}: split '{split}' has no images of class(es) "
                            f"{', '.join(sorted(absent))}; use more images or other split ratios")
    return Dataset(name=name, source=source, frame=frame, classes=classes, digest=digest(frame))


def digest(frame: pd.DataFrame) -> str:
    """Content identity of a split dataset: image bytes, labels and split assignment."""
    rows = sorted(zip(frame["sha256"], frame["label"], frame["split"]))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
