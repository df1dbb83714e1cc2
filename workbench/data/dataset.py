"""From a spec's `dataset` block to the images a run trains, validates and tests on.

Every image arrives the same way: through an ingested manifest (`workbench data ingest`). The
embedded synthetic faces are no exception: they are generated once as a raw folder of class
folders under `data/synthetic/`, then ingested like any photo folder, so one manifest schema and
one loader serve both. `prepare(spec, ws)` merges the spec's manifests (mapping their labels to the
experiment's classes and regrouping duplicates *across* datasets), splits them by group, and
returns a `Dataset`: a manifest frame, the class list and a digest that changes whenever the
images, labels or split assignment change. `balance.balanced` then materialises what one
configuration trains on, so that `train()` only ever reads.

Splits are assigned by *group*, never image by image: exact and near duplicates, a picture two
datasets share, and every augmented copy of one source image share a group, and a group lands in
one split. Within a class, groups are shuffled with the spec's seed and filled into the splits by
the requested ratios (stratification). Balancing touches the training split only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.data import ingest, leakage, synth
from workbench.errors import DataError
from workbench.spec import ManifestSource, Spec, Split, SyntheticData
from workbench.workspace import Workspace, build_once, locked

SPLITS = ("train", "val", "test")
# A fold's extra split: the training sources' own validation images, scored beside the held-out
# source's (the objective) to show what the model would have been chosen by in distribution.
IN_DISTRIBUTION_VAL = "val_in_distribution"


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str             # where the images came from, for lineage (the manifests folder)
    frame: pd.DataFrame     # manifest rows plus `file` (absolute path to read) and `split`
    classes: tuple[str, ...]
    digest: str
    synthetic: bool = False  # generated faces, not photographs
    left_out: dict[str, int] = field(default_factory=dict)  # why images of the manifests were not used
    held_out: str | None = None  # a fold's: the source it validates and tests on, never trains on

    def describe(self) -> str:
        """One line: the images per split and what was left out and why."""
        counts = self.counts()
        sizes = ", ".join(f"{split} {int(counts[split].sum())}" for split in counts.columns if split != "total")
        dropped = "; ".join(f"{n} {why}" for why, n in self.left_out.items() if n)
        return f"{self.name}: {len(self.frame)} images ({sizes}), classes {', '.join(self.classes)}" + \
            (f"; left out {dropped}" if dropped else "")

    def part(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        """Images per class and split."""
        return class_counts(self.frame)

    def source_counts(self) -> pd.DataFrame:
        """Images per class and source dataset (what a merge contributed)."""
        return pd.crosstab(self.frame["label"], self.frame["source"], margins=True, margins_name="total")


# --- sources ---------------------------------------------------------------------------------------

def synthetic_name(data: SyntheticData, seed: int) -> str:
    return f"{data.task}-{data.size}px-n{data.count}-seed{seed}"


def synthetic_root(data: SyntheticData, seed: int, ws: Workspace) -> Path:
    """The generated raw folder (class folders of JPEGs), like a downloaded dataset's."""
    return ws.data / "synthetic" / synthetic_name(data, seed)


def ensure_synthetic(data: SyntheticData, seed: int, ws: Workspace) -> str:
    """Generate the synthetic faces and ingest them, each once; returns the manifest's name."""
    root = synthetic_root(data, seed, ws)
    build_once(root, "dataset.json",
               lambda staging: synth.generate(staging, task=data.task, seed=seed, size=data.size, count=data.count),
               ws.locks)
    name = synthetic_name(data, seed)
    manifests = ws.manifests
    if not (manifests / f"{name}.json").is_file():
        with locked(manifests / f".{name}.lock"):
            if not (manifests / f"{name}.json").is_file():
                ingest.ingest("folders", root, name, manifests, ws.decoded,
                              extra={"synthetic": json.loads((root / "dataset.json").read_text())})
    return name


def files(frame: pd.DataFrame, manifests_dir: Path) -> list[str]:
    """Where to read each row's image: the normalised copy ingest made for files TensorFlow cannot
    decode as they are, else the raw file. Rows need `source` (the manifest name), `path` and
    `decoded`; this is the one rule training, evaluation and export all use. A row that resolves
    outside its dataset's root (an edited manifest's `..` or absolute path, a link swapped in after
    ingest) is refused, so a manifest can never make a run read another file of the machine."""
    roots: dict[str, tuple[Path, Path]] = {}
    out = []
    for source, path, decoded in zip(frame["source"], frame["path"], frame.get("decoded", [""] * len(frame))):
        if source not in roots:
            sidecar = ingest.read_sidecar(source, manifests_dir)
            roots[source] = (Path(os.path.realpath(sidecar["raw_root"])),
                             Path(os.path.realpath(sidecar["interim_root"])))
        raw_root, interim_root = roots[source]
        # `decoded` is relative to the folder holding the dataset's interim copies.
        root, file = (interim_root, interim_root.parent / decoded) if decoded else (raw_root, raw_root / path)
        if not ingest.contained(file, root):
            raise DataError(f"{manifests_dir / source}.csv: row {ingest.printable(str(decoded or path))!r} "
                            f"resolves outside {root}; the manifest or the folder changed after ingest: "
                            f"ingest {source} again", exit_code=2)
        out.append(str(file))
    return out


def raw_folder(source: ManifestSource, ws: Workspace) -> Path:
    path = Path(source.path).expanduser()
    return path if path.is_absolute() else ws.raw / path


def fingerprint(root: Path) -> str:
    """What the raw folder holds, cheaply: every file's path, size and modification time."""
    entries = []
    for top, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            try:
                stat = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            entries.append(f"{os.path.relpath(os.path.join(top, name), root)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def ensure_ingested(source: ManifestSource, ws: Workspace) -> None:
    """A spec that says where a dataset's raw folder is gets it ingested on first use, and again
    whenever the folder's contents change; a missing folder is one line saying where it was
    expected, in which layout, and how to get it."""
    root = raw_folder(source, ws)
    layout = ingest.ADAPTERS[source.adapter].layout
    if not root.is_dir():
        how = f"{source.get}; unpack it" if source.get else "put it"
        raise DataError(f"dataset {source.name}: no folder {root} (expected layout {layout}); {how} there, or "
                        "point --data DIR (or $WORKBENCH_RAW) at the folder that holds it", exit_code=2)
    manifests = ws.manifests
    mark = fingerprint(root)

    def current() -> bool:
        try:
            sidecar = ingest.read_sidecar(source.name, manifests)
        except DataError:
            return False
        return sidecar.get("fingerprint") == mark and sidecar.get("raw_root") == str(root.resolve()) and \
            (manifests / f"{source.name}.csv").is_file()

    if current():
        return
    with locked(manifests / f".{source.name}.lock"):
        if not current():
            ingest.ingest(source.adapter, root, source.name, manifests, ws.decoded, extra={"fingerprint": mark})


def write_smoke_trees(spec: Spec, ws: Workspace, per_class: int = 16, size: int = 48) -> list[Path]:
    """For `--smoke`: each raw folder the spec names, filled with generated faces in that
    dataset's real published layout (under the raw-data root the caller chose), once."""
    written = []
    for source in getattr(spec.dataset, "manifests", []):
        if source.adapter is None:
            raise DataError(f"dataset.manifests[{source.name}]: --smoke needs the spec to name the dataset's "
                            "adapter and path, to generate a tree in its layout", exit_code=2)
        root = raw_folder(source, ws)
        if not root.is_dir():
            build_once(root, ".", lambda staging, s=source: synth.generate_layout(
                staging, s.adapter, per_class=per_class, seed=spec.seed + len(written), size=size), ws.locks)
        written.append(root)
    return written


def load_manifests(sources: list[ManifestSource], ws: Workspace, near_duplicate_distance: int = 4
                   ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The manifests merged, labels mapped, and duplicate groups joined across datasets (sources
    that name their raw folder are ingested first, when needed); and how many images were left
    out on the way, by reason (files ingest could not use, labels mapped to null)."""
    parts, left_out = [], {}
    for source in sources:
        if source.adapter is not None:
            ensure_ingested(source, ws)
        frame, sidecar = ingest.read_manifest(source.name, ws.manifests)
        if sidecar.get("skipped"):
            report = ingest.report_of(source.name, ws.manifests)
            why = f"files of {source.name} that are not usable images (listed in {report})"
            left_out[why] = int(sidecar["skipped"])
        unknown = set(source.classes) - set(frame["label"])
        if unknown:
            raise DataError(f"dataset.manifests[{source.name}].classes: no label(s) {', '.join(sorted(unknown))} "
                            f"in that manifest (it has: {', '.join(sorted(set(frame['label'])))})", exit_code=2)
        frame["original_label"] = frame["label"]
        frame["label"] = frame["label"].map(lambda label: source.classes.get(label, label))
        dropped = frame["label"].isna()
        if dropped.any():
            labels = ", ".join(sorted(set(frame.loc[dropped, "original_label"])))
            left_out[f"images of {source.name} labelled {labels} (mapped to null)"] = int(dropped.sum())
        parts.append(frame[~dropped].copy())
    frame = pd.concat(parts, ignore_index=True).fillna("")
    if frame.empty:
        raise DataError(f"dataset.manifests: the class mapping leaves no images "
                        f"(every label of {', '.join(s.name for s in sources)} is mapped to null)", exit_code=2)
    frame["file"] = files(frame, ws.manifests)
    frame["group_id"] = leakage.merged_group_ids(frame, near_duplicate_distance)
    return frame, left_out


# --- splitting ------------------------------------------------------------------------------------

def assign_splits(manifest: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.Series:
    """A split name for every row of `manifest` (needs `label` and `group_id` columns)."""
    rng = np.random.default_rng(seed)
    # A group whose images carry different labels is stratified under its most common label.
    group_label = manifest.groupby("group_id")["label"].agg(lambda s: s.value_counts().index[0])
    group_size = manifest.groupby("group_id").size()
    cut_points = np.cumsum([ratios[name] for name in SPLITS])
    split_of_group: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label])
        order = rng.permutation(len(groups))
        sizes = group_size.loc[groups].to_numpy()[order]
        # Each group goes where the middle of its images falls on the cumulative scale, so the
        # splits get their share of images even when groups differ in size.
        centres = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        for idx, centre in zip(order, centres):
            split_of_group[groups[idx]] = SPLITS[int(np.searchsorted(cut_points, centre, side="right"))]
    return manifest["group_id"].map(split_of_group).rename("split")


def split_frame(frame: pd.DataFrame, split: Split, seed: int) -> pd.Series:
    """The split of every row: the spec's ratios by group, or the dataset's own where kept."""
    assigned = assign_splits(frame, split.ratios(), seed)
    if split.keep_original_split and "original_split" in frame:
        original = frame["original_split"].where(frame["original_split"].isin(SPLITS))
        assigned = original.fillna(assigned)
    return assigned


def published_leaks(frame: pd.DataFrame) -> pd.Series:
    """Rows to leave out when a dataset's own splits are kept: a duplicate group (exact or near
    copies) that spans splits stays whole in its latest split (test, else validation), and its
    copies in earlier splits are dropped, so no test image has a copy in training while the
    published test set stays as published. Returns each row's reason, "" for kept rows."""
    order = {name: i for i, name in enumerate(SPLITS)}
    rank = frame["split"].map(order)
    latest = rank.groupby(frame["group_id"]).transform("max")
    dropped = rank < latest
    reason = pd.Series("", index=frame.index)
    names = {order["val"]: "copies of validation images", order["test"]: "copies of test images"}
    reason[dropped] = latest[dropped].map(lambda r: f"{names[r]} in the published training or validation split")
    return reason


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals: what runs log and users read."""
    splits = [*SPLITS, *([IN_DISTRIBUTION_VAL] if (frame["split"] == IN_DISTRIBUTION_VAL).any() else [])]
    table = pd.crosstab(frame["label"], frame["split"]).reindex(columns=splits, fill_value=0)
    table["total"] = table.sum(axis=1)
    return table


def _sizes(frame: pd.DataFrame, labels: set[str]) -> str:
    """`lonely (1 image), rare (3 images, 1 group of duplicates)`: why a class cannot fill a split."""
    described = []
    for label in sorted(labels):
        rows = frame[frame["label"] == label]
        images, groups = len(rows), rows["group_id"].nunique()
        size = f"{images} image{'s' * (images != 1)}"
        if groups != images:
            size += f", {groups} group{'s' * (groups != 1)} of duplicates"
        described.append(f"{label} ({size})")
    return ", ".join(described)


def digest(frame: pd.DataFrame) -> str:
    """Content identity of a split dataset: image bytes, labels and split assignment."""
    rows = sorted(zip(frame["sha256"], frame["label"], frame["split"]))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def prepare(spec: Spec, ws: Workspace) -> Dataset:
    """Materialise the spec's data in `ws` and split it; the same spec always gives the same Dataset."""
    if isinstance(spec.dataset, SyntheticData):
        name = ensure_synthetic(spec.dataset, spec.seed, ws)
        sources, distance = [ManifestSource(name=name)], 4
    else:
        sources, distance = spec.dataset.manifests, spec.dataset.near_duplicate_distance
        name = "+".join(m.name for m in sources)
    frame, left_out = load_manifests(sources, ws, distance)
    frame["split"] = split_frame(frame, spec.split, spec.seed)
    if spec.split.keep_original_split:
        reasons = published_leaks(frame)
        left_out.update({why: int(n) for why, n in reasons[reasons != ""].value_counts().items()})
        frame = frame[reasons == ""].reset_index(drop=True)
    classes = tuple(sorted(frame["label"].unique()))
    if len(classes) < 2:
        raise DataError(f"dataset {name}: only one class ({', '.join(classes)}); a classifier needs at least two", exit_code=2)
    for split in SPLITS:
        absent = set(classes) - set(frame.loc[frame["split"] == split, "label"])
        if absent:
            raise DataError(f"dataset {name}: split '{split}' gets no image of class {_sizes(frame, absent)}; "
                            "every class needs images in train, val and test: add images of it, map it to "
                            "null in the spec's classes, or change the split ratios", exit_code=2)
    synthetic = all(ingest.read_sidecar(s.name, ws.manifests).get("synthetic") for s in sources)
    return Dataset(name=name, source=str(ws.manifests.resolve()), frame=frame, classes=classes,
                   digest=digest(frame), synthetic=synthetic, left_out=left_out)


def prepare_checked(spec: Spec, ws: Workspace) -> tuple[Dataset, leakage.LeakReport]:
    """`prepare`, then proof that no test image has a copy in training (`data check` in short):
    what a sweep does before anything trains. A leak is one line naming an example and exit 1."""
    data = prepare(spec, ws)
    report = leakage.check(data.frame, getattr(spec.dataset, "near_duplicate_distance", 4))
    if report.leaks:
        raise DataError(f"{spec.name}: {report.exact_across + report.near_across} duplicate group(s) span two splits "
                        f"(e.g. {', '.join(report.examples[0]['paths'][:2])}); run `workbench data check {spec.name}`")
    return data, report


# --- selection on a source the model did not train on ----------------------------------------------

def folds(spec: Spec, data: Dataset) -> list[Dataset]:
    """What one configuration of `spec` trains on, by its objective's rule: `data` itself (in
    distribution), the fold holding `holdout_source` out, or one fold per source in the spec's
    order (leave one source out)."""
    held_out = spec.held_out_sources()
    return [holdout(data, source, key=f"objective.{spec.objective.rule}") for source in held_out] or [data]


def holdout(data: Dataset, source: str, key: str = "objective.holdout_source") -> Dataset:
    """`data` as a fold that never trains on `source`: the other sources' training split trains;
    `source`'s validation split validates (and so selects and prunes) and its test split tests,
    each without any image whose duplicate group meets training; the other sources' validation
    split is kept as IN_DISTRIBUTION_VAL, to score beside. Everything else (`source`'s training
    split, the other sources' test split) plays no part. A class missing from any of the three
    parts is one line naming the source, the part and the class, and exit 2."""
    frame, split = data.frame, data.frame["split"]
    held = frame["source"] == source
    training = ~held & (split == "train")
    met = held & frame["group_id"].isin(set(frame.loc[training, "group_id"]))
    parts = {"train": training, "val": held & (split == "val") & ~met, "test": held & (split == "test") & ~met,
             IN_DISTRIBUTION_VAL: ~held & (split == "val")}
    others = ", ".join(sorted(set(frame.loc[~held, "source"])))
    for part, where, remedy in (("train", f"training image in {others}", others), ("val", "validation image", source),
                                ("test", "test image", source)):
        absent = set(data.classes) - set(frame.loc[parts[part], "label"])
        if absent:
            raise DataError(f"{key}: holding {source} out leaves no {where} of class {', '.join(sorted(absent))}; "
                            f"add images of it to {remedy}, map it to null in the spec's classes, or choose another "
                            "rule", exit_code=2)
    fold = pd.concat([frame[where].assign(split=part) for part, where in parts.items()], ignore_index=True)
    left_out = dict(data.left_out)
    if met.any():
        left_out[f"images of {source} whose duplicate group meets training"] = int(met.sum())
    return Dataset(name=f"{data.name} ({source} held out)", source=data.source, frame=fold, classes=data.classes,
                   digest=digest(fold), synthetic=data.synthetic, left_out=left_out, held_out=source)
