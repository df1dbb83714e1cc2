"""Balance strategies, one axis of the registry: `none`, `undersample`, `oversample`, `class_weight`.

They act on the training split only; validation and test keep the real class mix, so every
strategy is judged on the same data. `oversample` is S1's recipe done right: new copies of a
minority class are made offline with OpenCV (clockwise / anticlockwise rotation, horizontal
flip, Gaussian noise, blur) from *training* images only, and each copy keeps its source's group
id, so a copy can never sit in another split than its original. Copies are deterministic by seed
and written once per (dataset, seed, recipe) under `data/interim/oversample/`, then reused by
every trial that asks for them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from workbench import paths
from workbench import spec as spec_module

STRATEGIES = ("none", "undersample", "oversample", "class_weight")
assert set(STRATEGIES) == set(spec_module.BALANCES), "spec.BALANCES and balance.STRATEGIES disagree"

RECIPE = ("rotate_cw", "rotate_acw", "hflip", "noise", "blur")
RECIPE_VERSION = "s1-v1"  # bump when the augmentation code changes, so caches are rebuilt


@dataclass(frozen=True)
class Balanced:
    train: pd.DataFrame
    class_weight: dict[int, float] | None = None


def rebalance(train: pd.DataFrame, strategy: str, classes: tuple[str, ...], seed: int, target: int = 0) -> Balanced:
    """Apply one strategy to a training frame (`file`, `label`, `group_id`, `sha256` columns).

    `target` is the images per class to reach (0: the smallest class for `undersample`, the
    largest for `oversample`); with a target, `oversample` also cuts larger classes down to it,
    as S1 did (5,000 a class: `real` undersampled, `fake` grown by augmentation)."""
    counts = train["label"].value_counts().reindex(classes, fill_value=0)
    if strategy == "none":
        return Balanced(train)
    if strategy == "class_weight":
        # Inverse frequency, scaled so a balanced dataset gets weight 1 everywhere.
        total, k = counts.sum(), len(classes)
        return Balanced(train, {i: float(total / (k * counts[c])) for i, c in enumerate(classes)})
    if strategy == "undersample":
        return Balanced(_cut(train, target or int(counts.min()), seed))
    if strategy == "oversample":
        target = target or int(counts.max())
        return Balanced(oversample(_cut(train, target, seed), target=target, seed=seed))
    raise ValueError(f"unknown balance strategy {strategy!r}")


def _cut(train: pd.DataFrame, target: int, seed: int) -> pd.DataFrame:
    """Randomly keep at most `target` images of every class (smaller classes stay whole)."""
    parts = [group.sample(n=min(target, len(group)), random_state=seed) for _, group in train.groupby("label")]
    return pd.concat(parts).sort_values("file").reset_index(drop=True)


def oversample(train: pd.DataFrame, target: int, seed: int) -> pd.DataFrame:
    """Top every class up to `target` images with augmented copies of its own training images."""
    cache = _cache_dir(train, target, seed)
    if not (cache / "copies.csv").is_file():
        _write_copies(train, target, seed, cache)
    copies = pd.read_csv(cache / "copies.csv", dtype=str, keep_default_na=False)
    copies["file"] = [str(cache / name) for name in copies["file"]]
    return pd.concat([train, copies], ignore_index=True)


def _cache_dir(train: pd.DataFrame, target: int, seed: int) -> Path:
    key = hashlib.sha256(
        "|".join([RECIPE_VERSION, str(seed), str(target), *sorted(train["sha256"] + train["label"])]).encode()
    ).hexdigest()[:16]
    return paths.data_dir() / "interim" / "oversample" / key


def _write_copies(train: pd.DataFrame, target: int, seed: int, cache: Path) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    rows = []
    try:
        for label, group in sorted(train.groupby("label"), key=lambda kv: kv[0]):
            sources = group.sort_values("file").reset_index(drop=True)
            missing = target - len(sources)
            rng = np.random.default_rng([seed, len(rows), missing])
            for k in range(max(missing, 0)):
                src = sources.iloc[k % len(sources)]  # round-robin: every source used evenly
                image = cv2.imread(src["file"], cv2.IMREAD_COLOR)
                operation = RECIPE[int(rng.integers(len(RECIPE)))]
                copy = augment(image, operation, rng)
                name = f"{label}/{Path(src['file']).stem}_{operation}_{k:05d}.png"
                (staging / label).mkdir(exist_ok=True)
                cv2.imwrite(str(staging / name), copy)
                rows.append({**{c: src[c] for c in train.columns if c not in ("file", "sha256")},
                             "file": name, "sha256": hashlib.sha256((staging / name).read_bytes()).hexdigest(),
                             "augmented_from": src["sha256"], "augmentation": operation})
        pd.DataFrame(rows, columns=[*[c for c in train.columns if c != "file"], "file",
                                    "augmented_from", "augmentation"]
                     ).to_csv(staging / "copies.csv", index=False)
        try:
            os.rename(staging, cache)
        except OSError:
            if not (cache / "copies.csv").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def augment(image: np.ndarray, operation: str, rng: np.random.Generator) -> np.ndarray:
    """One step of S1's OpenCV recipe, with its strength drawn from `rng`."""
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
