"""What one configuration trains on: the training split under a balance strategy of the
registry (`spec.registry.BALANCES`: as it is, class weights, undersampled, or oversampled with
S1's OpenCV recipe). The strategies themselves are registry entries; this module gives them the
training rows and, for oversampling, the copies: made once per (images and their lineage, seed,
target, recipe) under the workspace's `data/interim/oversample/`, each keeping its source's
group id so it can never sit in another split than its original, then reused by every trial
that asks for them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.data.dataset import Dataset
from workbench.errors import DataError
from workbench.spec.registry import BALANCES
from workbench.workspace import Workspace, build_once

# Offline copies for `oversample`: S1's OpenCV recipe.
RECIPE = ("rotate_cw", "rotate_acw", "hflip", "noise", "blur")
RECIPE_VERSION = "s1-v1"  # bump when the augmentation code changes, so caches are rebuilt


@dataclass(frozen=True)
class Balanced:
    train: pd.DataFrame
    class_weight: dict[int, float] | None = None


def balanced(data: Dataset, strategy: str, ws: Workspace, target: int = 0, seed: int = 0) -> Balanced:
    """The training split under one balance strategy of the registry (validation and test keep
    the real class mix, so every strategy is judged on the same data). `target` is the images per
    class to reach (0: the strategy's own choice, e.g. the smallest class for `undersample`, the
    largest for `oversample`); oversampled copies are cached under `ws`'s data folder."""
    entry = BALANCES.get(strategy)
    if entry is None:
        raise ValueError(f"unknown balance strategy {strategy!r}")

    def copies(train: pd.DataFrame, target: int, seed: int) -> pd.DataFrame:
        return oversample(train, target, seed, ws)

    train, class_weight = entry.apply(data.part("train"), data.classes, target, seed, copies)
    return Balanced(train, class_weight)


def oversample(train: pd.DataFrame, target: int, seed: int, ws: Workspace) -> pd.DataFrame:
    """Top every class up to `target` images with augmented copies of its own training images.
    Each copy keeps its source's group id, so it can never sit in another split than its
    original; copies are deterministic by seed and written once per (images and their lineage,
    seed, target, recipe) under `data/interim/oversample/`, then reused by every trial that asks for them."""
    # The copies carry their sources' lineage (dataset, group, path), so that is part of the key:
    # the same pictures under another manifest or grouping get copies of their own.
    lineage = [c for c in ("sha256", "label", "source", "path", "group_id") if c in train.columns]
    rows = train[lineage].astype(str).agg("\x1f".join, axis=1)
    key = hashlib.sha256("|".join([RECIPE_VERSION, str(seed), str(target), *sorted(rows)]).encode()).hexdigest()[:16]
    cache = build_once(ws.data / "interim" / "oversample" / key, "copies.csv",
                       lambda staging: _write_copies(train, target, seed, staging), ws.locks)
    copies = pd.read_csv(cache / "copies.csv", dtype=str, keep_default_na=False)
    copies["file"] = [str(cache.resolve() / name) for name in copies["file"]]
    return pd.concat([train, copies], ignore_index=True)


def _write_copies(train: pd.DataFrame, target: int, seed: int, staging: Path) -> None:
    import cv2

    rows = []
    for index, (label, group) in enumerate(sorted(train.groupby("label"), key=lambda kv: kv[0])):
        sources = group.sort_values("file").reset_index(drop=True)
        missing = target - len(sources)
        rng = np.random.default_rng([seed, len(rows), missing])
        for k in range(max(missing, 0)):
            src = sources.iloc[k % len(sources)]  # round-robin: every source used evenly
            image = cv2.imread(src["file"], cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"{src['file']}: cannot be read to make an oversampled copy", exit_code=2)
            operation = RECIPE[int(rng.integers(len(RECIPE)))]
            # Short names of our own (the source is in `augmented_from`): a class or file name of
            # any length or character cannot make a path too long or leave the folder.
            name = f"class{index}/{k:05d}_{operation}.png"
            (staging / f"class{index}").mkdir(exist_ok=True)
            if not cv2.imwrite(str(staging / name), augment(image, operation, rng)):
                raise DataError(f"{staging / name}: cannot write an oversampled copy (disk full?)")
            rows.append({**{c: src[c] for c in train.columns if c not in ("file", "sha256")},
                         "file": name, "sha256": hashlib.sha256((staging / name).read_bytes()).hexdigest(),
                         "augmented_from": src["sha256"], "augmentation": operation})
    pd.DataFrame(rows, columns=[*[c for c in train.columns if c != "file"], "file", "augmented_from",
                                "augmentation"]).to_csv(staging / "copies.csv", index=False)


def augment(image: np.ndarray, operation: str, rng: np.random.Generator) -> np.ndarray:
    """One step of S1's OpenCV recipe, with its strength drawn from `rng`."""
    import cv2

    h, w = image.shape[:2]
    if operation in ("rotate_cw", "rotate_acw"):
        angle = float(rng.uniform(10, 25)) * (-1 if operation == "rotate_cw" else 1)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    if operation == "hflip":
        return cv2.flip(image, 1)
    if operation == "noise":
        noise = rng.normal(0, rng.uniform(5, 15), image.shape)
        return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if operation == "blur":
        k = int(rng.choice([3, 5]))
        return cv2.GaussianBlur(image, (k, k), 0)
    raise ValueError(f"unknown augmentation {operation!r}")
