"""`workbench init NAME PHOTOS_DIR [PHOTOS_DIR...]`: from folders of photos to a spec a user can
sweep at once. Each folder (class folders of photos, or train/val/test of class folders) becomes a
merged source of the spec; the data are ingested and split exactly as a sweep will (so any
problem with them is reported now, in one line), and the spec is written with a comment on
every choice, each following the photos: the balance axis is searched only when the classes are
imbalanced, the image size follows the photos' median shorter side (capped for CPU training),
MobileNetV2 uses ImageNet weights when they are cached on this machine, and a merge of several
folders suggests `workbench matrix`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.data.dataset import Dataset, prepare
from workbench.errors import SpecError
from workbench.spec import load, validate
from workbench.workspace import Workspace

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SIZES = (32, 64, 96, 128)      # the largest that the photos' median shorter side reaches
IMBALANCED = 1.5               # largest class / smallest class above which balance is searched
MOBILENET_SIZES = (96, 128, 160, 192, 224)   # the input sizes Keras has ImageNet weights for
SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}   # ingested and split with these, and written into the spec
SEED = 42
TRIALS = 8


@dataclass(frozen=True)
class Started:
    path: Path                   # the spec written
    data: Dataset                # its data, ingested and split
    image_size: int
    imbalanced: bool
    weights: str                 # imagenet or none
    sources: list[str]
    next_commands: list[str]
    trials: int                  # the spec's budget, as written


def source_names(folders: list[Path]) -> list[str]:
    """A manifest name per folder: its own name, made safe, numbered when two collide."""
    names: list[str] = []
    for folder in folders:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("._-") or "photos"
        base = base if NAME.match(base) else f"photos_{base}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def image_size(data: Dataset) -> tuple[int, int | None]:
    """The input size for these photos and their median shorter side (None when unknown)."""
    frame = data.frame
    if not {"width", "height"} <= set(frame.columns):
        return 64, None
    shorter = frame[["width", "height"]].astype(float).min(axis=1).median()
    fitting = [s for s in SIZES if s <= shorter]
    return (fitting[-1] if fitting else SIZES[0]), int(shorter)


def mobilenet_size(size: int) -> int:
    """The smallest input size Keras has MobileNetV2 ImageNet weights for, at least `size`."""
    return min((s for s in MOBILENET_SIZES if s >= size), default=MOBILENET_SIZES[0])


def _yaml(name: str, folders: list[Path], sources: list[str], data: Dataset, size: int, shorter: int | None,
          imbalanced: bool, weights: str) -> str:
    counts = data.frame["label"].value_counts()
    classes = ", ".join(f"{label} {counts[label]}" for label in data.classes)
    mobile = mobilenet_size(size)
    lines = [
        f"# {name}: written by `workbench init` on {dt.date.today().isoformat()} from "
        f"{', '.join(str(f) for f in folders)}",
        f"# {len(data.frame)} images; classes: {classes}.",
        "# Edit freely: `workbench specs validate " + name + "` checks it; the README's \"The experiment",
        "# registry\" explains every key.",
        f"name: {name}",
        f"description: {name} photos ({', '.join(data.classes)}), a small CNN vs MobileNetV2.",
        "dataset:",
        "  source: manifests",
        "  manifests:            # one per folder; several are merged, and `workbench matrix` compares them",
        *[f"    - {{name: {s}, adapter: folders, path: '{f}'}}" for s, f in zip(sources, folders)],
        "# By duplicate group: a photo and its copies never straddle train, validation and test.",
        f"split: {{train: {SPLIT['train']}, val: {SPLIT['val']}, test: {SPLIT['test']}}}",
        "params:",
        "  backbone: [simple_cnn, mobilenet_v2]   # trained from scratch vs pretrained, fine-tuned whole",
        f"  image_size: {size}" + (f"                        # the photos' median shorter side is {shorter} px;"
                                   " larger sizes train slower on a CPU" if shorter else ""),
        ("  balance: [none, oversample, class_weight]   # the classes are imbalanced (largest / smallest "
         f"{counts.max() / counts.min():.1f})") if imbalanced else
        "  balance: none          # the classes are about equally large",
        "  augmentation: [none, flip]",
        "  learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}",
        "  epochs: 10",
        "  batch_size: 32",
        "  restore_best: true     # keep the best validation epoch's weights",
        "backbone_params:",
        "  mobilenet_v2:",
        f"    weights: {weights}" + ("         # cached on this machine" if weights == "imagenet" else
                                     "             # ImageNet weights are not cached here: "
                                     "`workbench weights fetch mobilenet_v2` on a connected machine"),
        f"    image_size: {mobile}",
        "enqueue:                 # the first trial: the quick baseline, a model to beat within minutes",
        "  - {backbone: simple_cnn}",
        f"trials: {TRIALS}",
        f"seed: {SEED}",
        "",
    ]
    return "\n".join(lines)


def start(ws: Workspace, name: str, folders: list[Path], *, weights_cached: Callable[[int], bool],
          force: bool = False) -> Started:
    """Write `experiments/NAME.yaml` for these folders (refused when it exists, unless `force`).
    `weights_cached(size)` says whether MobileNetV2's ImageNet weights for that input size are on
    this machine (the model stage knows where Keras keeps them)."""
    if not NAME.match(name):
        raise SpecError(f"NAME {name!r}: use letters, digits, '.', '_' or '-' (it names the spec and its experiment)")
    path = ws.experiments / f"{name}.yaml"
    if path.exists() and not force:
        raise SpecError(f"{path} exists: choose another NAME, or pass --force to write over it")
    folders = [Path(f).expanduser().resolve() for f in folders]
    for folder in folders:
        if not folder.is_dir():
            raise SpecError(f"{folder}: not a folder of photos (class folders of images, or train/val/test of them)")
    sources = source_names(folders)
    raw = {"name": name, "dataset": {"source": "manifests", "manifests": [
        {"name": s, "adapter": "folders", "path": str(f)} for s, f in zip(sources, folders)]},
        "split": SPLIT, "seed": SEED}
    data = prepare(validate(raw, source=f"workbench init {name}"), ws)
    size, shorter = image_size(data)
    counts = data.frame["label"].value_counts()
    imbalanced = counts.max() / counts.min() > IMBALANCED
    weights = "imagenet" if weights_cached(mobilenet_size(size)) else "none"
    text = _yaml(name, folders, sources, data, size, shorter, imbalanced, weights)
    ws.experiments.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    written = load(name, folder=ws.experiments)   # a valid spec, or this is a bug of ours
    commands = [f"workbench sweep {name}", f"workbench compare --experiment {name} --sweep latest",
                f"workbench promote --name {name} --experiment {name}"]
    if len(folders) > 1:
        commands.append(f"workbench matrix {name}")
    return Started(path, data, size, imbalanced, weights, sources, commands, written.trials)
