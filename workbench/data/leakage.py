"""Duplicates and leaks: which images are the same picture, and whether a split keeps them apart.

Two images are one *group* when their bytes match (sha256), when their perceptual hashes are
within a few bits (re-encoded, resized, noised or blurred copies), or when the project recorded
that one was made from the other (a shared `group_id`, which oversampled copies inherit from their
source). A split leaks when a group has members in two splits: the model is then tested on
pictures it has, in effect, trained on, which is how S1's "augment, then split" recipe inflated
its scores. `check` counts such groups in a split manifest, and the groups that merged datasets
share, so a run can refuse or flag a leaky split; `size_stats` summarises image sizes per source
for the same report. Pure functions over frames; nothing here touches disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workbench.errors import DataError

MAX_EXAMPLES = 20
MAX_EXAMPLE_PATHS = 10
_CHUNK = 256  # rows per block of the pairwise comparison: 256 x 12,000 uint64 is about 25 MB
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression keeps later finds near constant
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def union_equal(self, values) -> None:
        """Join every row to the first row carrying the same non-empty value."""
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            if value:
                self.union(i, first.setdefault(value, i))


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element; numpy < 2.0 has no bitwise_count, so fall back to a table."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    bytes_ = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_POPCOUNT[bytes_].sum(axis=-1, dtype=np.uint8)


def close_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of uint64 hashes at Hamming distance <= max_distance, block by block."""
    firsts, seconds = [], []
    for start in range(0, len(hashes), _CHUNK):
        block = hashes[start:start + _CHUNK]
        # Only later hashes are compared, so each pair is computed once.
        distance = popcount64(block[:, None] ^ hashes[None, start:])
        rows, cols = np.nonzero(distance <= max_distance)
        later = cols > rows
        firsts.append(rows[later] + start)
        seconds.append(cols[later] + start)
    if not firsts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _join_near(groups: _UnionFind, phash, max_distance: int) -> None:
    rows = [i for i, value in enumerate(phash) if value]
    if not rows or max_distance < 0:
        return
    try:
        values = np.array([int(phash[i], 16) for i in rows], dtype=np.uint64)
    except (ValueError, OverflowError):
        bad = next(phash[i] for i in rows if not _is_hash(phash[i]))
        raise DataError(f"phash {bad!r} is not a 64-bit hex string") from None
    # Equal hashes are joined directly; the quadratic step then only sees distinct values.
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    for row, u in zip(rows, inverse.ravel()):
        groups.union(row, rows[first[u]])
    if max_distance > 0:
        for a, b in zip(*close_pairs(unique, max_distance)):
            groups.union(rows[first[a]], rows[first[b]])


def _is_hash(value: str) -> bool:
    try:
        return 0 <= int(value, 16) < 2**64
    except ValueError:
        return False


def _roots(sha256, phash, max_distance: int, lineage=None) -> list[int]:
    n = len(sha256)
    groups = _UnionFind(n)
    groups.union_equal(sha256)
    _join_near(groups, phash, max_distance)
    if lineage is not None:
        groups.union_equal(lineage)
    return [groups.find(i) for i in range(n)]


def near_duplicate_groups(keys: list[str], sha256: list[str], phash: list[str],
                          max_distance: int) -> dict[str, str]:
    """Map each key to its group's representative (the group's smallest key).

    Exact duplicates (equal non-empty sha256) and near duplicates (phash Hamming distance <=
    max_distance; empty phash: exact only) share a group, transitively.
    """
    keys, sha256, phash = list(keys), list(sha256), list(phash)
    if not len(keys) == len(sha256) == len(phash):
        raise ValueError("keys, sha256 and phash must have the same length")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    roots = _roots(sha256, phash, max_distance)
    smallest: dict[int, str] = {}
    for key, root in zip(keys, roots):
        if root not in smallest or key < smallest[root]:
            smallest[root] = key
    return {key: smallest[root] for key, root in zip(keys, roots)}


def merged_group_ids(frame: pd.DataFrame, max_distance: int) -> list[str]:
    """Group ids for datasets merged in a spec: each manifest's own groups (recorded lineage),
    joined across manifests wherever images are exact or near duplicates of each other, so a
    picture that two datasets share can never sit in train through one and in test through the
    other. Ids are the group's smallest `source:path`, stable across runs."""
    keys = [f"{source}:{path}" for source, path in zip(_column(frame, "source"), _column(frame, "path"))]
    roots = _roots(_column(frame, "sha256"), _column(frame, "phash"), max_distance,
                   lineage=[f"{s}|{g}" for s, g in zip(_column(frame, "source"), _column(frame, "group_id"))])
    smallest: dict[int, str] = {}
    for key, root in zip(keys, roots):
        if root not in smallest or key < smallest[root]:
            smallest[root] = key
    return [smallest[root] for root in roots]


@dataclass(frozen=True)
class LeakReport:
    exact_within: int    # rows that repeat an earlier row's bytes inside the same split
    exact_across: int    # byte-identical groups with members in 2+ splits
    near_across: int     # groups of different files (near or recorded copies) in 2+ splits
    cross_source: int    # groups with members from 2+ sources (datasets merged)
    examples: list[dict] = field(default_factory=list)  # up to 20 offending groups

    @property
    def leaks(self) -> bool:
        return self.exact_across > 0 or self.near_across > 0


def _column(frame: pd.DataFrame, name: str) -> list[str]:
    if name not in frame.columns:
        return [""] * len(frame)
    return ["" if pd.isna(v) else str(v) for v in frame[name]]


def check(frame: pd.DataFrame, max_distance: int = 4) -> LeakReport:
    """Count the duplicate groups a split manifest lets leak across splits or sources.

    Needs `path` and `sha256`; uses `phash` (empty: exact duplicates only), `split`, `source`
    and, when present, `group_id` (recorded lineage, e.g. augmented copies) if the frame has them.
    """
    missing = {"path", "sha256"} - set(frame.columns)
    if missing:
        raise DataError(f"leakage check: the manifest lacks column(s) {', '.join(sorted(missing))}")
    rows = pd.DataFrame({name: _column(frame, name)
                         for name in ("path", "sha256", "phash", "split", "source")})
    lineage = _column(frame, "group_id") if "group_id" in frame.columns else None
    rows["group"] = _roots(list(rows["sha256"]), list(rows["phash"]), max_distance, lineage)

    hashed = rows[rows["sha256"] != ""]
    exact_within = int(hashed.duplicated(["split", "sha256"]).sum())
    exact_across = int((hashed.groupby("sha256")["split"].nunique() > 1).sum())

    per_group = rows.groupby("group").agg(splits=("split", "nunique"), files=("sha256", "nunique"),
                                          sources=("source", "nunique"), first=("path", "min"))
    # A group of one file in two splits is an exact leak; near_across needs two different files
    # on different sides, which (as every pair is then connected) is splits > 1 and files > 1.
    near_across = int(((per_group["splits"] > 1) & (per_group["files"] > 1)).sum())
    cross_source = int((per_group["sources"] > 1).sum())

    offending = per_group[(per_group["splits"] > 1) | (per_group["sources"] > 1)].copy()
    offending["order"] = offending["splits"] <= 1  # split leaks first, then shared sources
    offending = offending.sort_values(["order", "first"]).head(MAX_EXAMPLES)
    members = rows[rows["group"].isin(offending.index)].groupby("group")
    examples = []
    for group in offending.index:
        part = members.get_group(group)
        examples.append({"group": offending.at[group, "first"],
                         "splits": sorted(set(part["split"])),
                         "sources": sorted(set(part["source"])),
                         "paths": sorted(part["path"])[:MAX_EXAMPLE_PATHS]})
    return LeakReport(exact_within=exact_within, exact_across=exact_across,
                      near_across=near_across, cross_source=cross_source, examples=examples)


def size_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Image count and min / median / max width and height per source (one row per source)."""
    sizes = pd.DataFrame({"source": _column(frame, "source"),
                          "width": pd.to_numeric(frame["width"], errors="coerce").to_numpy(),
                          "height": pd.to_numeric(frame["height"], errors="coerce").to_numpy()})
    stats = sizes.groupby("source")[["width", "height"]].agg(["min", "median", "max"])
    stats.columns = [f"{side}_{stat}" for side, stat in stats.columns]
    stats.insert(0, "images", sizes.groupby("source").size())
    return stats
