"""Leakage-safe train / validation / test splits.

Images are assigned to splits by *group*, never one by one: every image that shares a group id
(exact or near duplicates, augmented copies of one source) lands in the same split, so no test
image has a sibling in training. Within each class, groups are shuffled with the spec's seed and
filled into the splits by the requested ratios, which keeps the class mix of every split close to
the whole (stratification). Pure functions over a manifest frame; nothing here touches disk.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(manifest: pd.DataFrame, ratios: dict[str, float], seed: int) -> pd.Series:
    """Return a split name for every row of `manifest` (needs `label` and `group_id` columns)."""
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
        total = sizes.sum()
        # Each group goes where the middle of its images falls on the cumulative scale, so the
        # splits get their share of images even when groups differ in size.
        centres = (np.cumsum(sizes) - sizes / 2) / total
        for idx, centre in zip(order, centres):
            split_of_group[groups[idx]] = SPLITS[int(np.searchsorted(cut_points, centre, side="right"))]
    return manifest["group_id"].map(split_of_group).rename("split")


def class_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals: what runs log and users read."""
    table = pd.crosstab(frame["label"], frame["split"]).reindex(columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    return table
