"""Leakage: exact and near duplicates are grouped transitively and fast, S1's "augment, then split
row by row" is caught as a leak, and the same rows split by group are clean."""

from __future__ import annotations

import hashlib
import time

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workbench.data import leakage
from workbench.data.balance import augment
from workbench.data.dataset import assign_splits
from workbench.data.leakage import LeakReport, check, near_duplicate_groups, size_stats


def test_groups_are_transitive_and_keyed_by_their_smallest_member():
    base = 0x0123456789ABCDEF
    phash = [f"{h:016x}" for h in (base, base ^ 0b111, base ^ 0b111_1111, 0xFFFF0000FFFF0000,
                                   0xFFFF0000FFFF0000)]
    groups = near_duplicate_groups(["e", "d", "c", "b", "a"], ["x", "", "", "", "y"], phash, 4)
    # e~d (3 bits) and d~c (4 bits) chain although e and c are 7 bits apart; b and a share a phash.
    assert groups == {"e": "c", "d": "c", "c": "c", "b": "a", "a": "a"}
    # Exact duplicates join without a phash; with max_distance 0 only equal hashes join.
    exact = near_duplicate_groups(["p", "q", "r"], ["s", "s", "t"], ["", "", ""], 4)
    assert exact == {"p": "p", "q": "p", "r": "r"}
    assert near_duplicate_groups(["e", "d"], ["1", "2"], phash[:2], 0) == {"e": "e", "d": "d"}


def test_popcount_fallback_matches_numpy(monkeypatch):
    values = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    fast = leakage.popcount64(values)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert np.array_equal(leakage.popcount64(values), fast.astype(np.uint8))


def test_twelve_thousand_images_group_in_seconds():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 12_000, dtype=np.uint64) * np.uint64(2)
    hashes[1:200:2] = hashes[0:200:2] ^ np.uint64(0b1011)   # 100 planted near pairs, 3 bits apart
    keys = [f"img{i:05d}" for i in range(len(hashes))]
    start = time.perf_counter()
    groups = near_duplicate_groups(keys, [f"sha{i}" for i in range(len(keys))],
                                   [f"{h:016x}" for h in hashes], 4)
    assert time.perf_counter() - start < 10
    assert all(groups[keys[i + 1]] == keys[i] for i in range(0, 200, 2))
    assert len(set(groups.values())) == len(keys) - 100


def picture(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    cv2.circle(image, tuple(int(v) for v in rng.integers(16, 48, 2)), 12,
               tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return image


def row(image: np.ndarray, path: str, label: str, source: str = "s1") -> dict:
    png = cv2.imencode(".png", image)[1].tobytes()
    rgb = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return {"path": path, "label": label, "source": source, "sha256": hashlib.sha256(png).hexdigest(),
            "phash": str(imagehash.phash(rgb)), "width": str(image.shape[1]), "height": str(image.shape[0])}


@pytest.fixture(scope="module")
def augmented() -> pd.DataFrame:
    """S1's recipe: 30 sources, each with a noisy, a blurred and a flipped copy and a re-saved
    duplicate, all as rows of their own, like the copies the original study split."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(30):
        source, label = picture(i), ("fake", "real")[i % 2]
        rows.append(row(source, f"{label}/{i}.png", label) | {"parent": f"{label}/{i}.png"})
        rows.append(row(source, f"{label}/{i}_dup.png", label) | {"parent": f"{label}/{i}.png"})
        for op in ("noise", "blur", "hflip"):
            rows.append(row(augment(source, op, rng), f"{label}/{i}_{op}.png", label)
                        | {"parent": f"{label}/{i}.png"})
    return pd.DataFrame(rows)


def test_splitting_augmented_copies_row_by_row_leaks(augmented):
    naive = augmented.drop(columns="parent").assign(
        split=np.random.default_rng(0).choice(["train", "val", "test"], len(augmented), p=[.6, .3, .1]))
    report = check(naive, max_distance=4)
    assert report.leaks
    assert report.exact_across > 0          # a source and its re-saved duplicate on two sides
    assert report.near_across > 0           # noise / blur copies on another side than the source
    assert report.cross_source == 0
    assert 0 < len(report.examples) <= 20
    example = report.examples[0]
    assert len(example["splits"]) > 1 and example["group"] == min(example["paths"])
    # Phash cannot see flips; the lineage the project records (group_id) can.
    flips_apart = augmented.assign(split=np.where(augmented["path"].str.contains("hflip"), "test", "train"))
    assert not check(flips_apart.drop(columns="parent")).leaks
    assert check(flips_apart.assign(group_id=augmented["parent"])).near_across == 30


def test_splitting_by_group_does_not_leak(augmented):
    frame = augmented.copy()
    keys = list(frame["path"])
    groups = near_duplicate_groups(keys, list(frame["sha256"]), list(frame["phash"]), 4)
    # Noise and blur copies are found by phash, exact copies by sha256; flips are not.
    found = frame["path"].map(groups)
    derived = frame["path"].str.contains("_(?:noise|blur|dup)")
    assert (found[derived] == frame.loc[derived, "parent"]).all()
    # Flipped copies take their recorded source's group, as balance.oversample does.
    frame["group_id"] = frame["parent"].map(groups)
    frame["split"] = assign_splits(frame, {"train": 0.6, "val": 0.3, "test": 0.1}, seed=3)
    assert set(frame["split"]) == {"train", "val", "test"}
    report = check(frame, max_distance=4)
    assert not report.leaks
    assert (report.exact_across, report.near_across, report.examples) == (0, 0, [])
    assert report.exact_within == 30        # each re-saved duplicate sits beside its source
    # The verdict does not rest on group_id alone: hashes agree without it.
    assert not check(frame.drop(columns="group_id"), max_distance=4).leaks


def test_duplicates_shared_by_merged_datasets_are_counted(augmented):
    a = augmented.iloc[:5].assign(source="facemask", split="train")
    b = augmented.iloc[[0, 10]].assign(source="yonsei", split="train")  # 0 also in facemask
    report = check(pd.concat([a, b], ignore_index=True).drop(columns="phash"))
    assert report == LeakReport(exact_within=2, exact_across=0, near_across=0, cross_source=1,
                                examples=report.examples)
    assert not report.leaks
    assert report.examples[0]["sources"] == ["facemask", "yonsei"]


def test_size_stats_per_source():
    frame = pd.DataFrame({"source": ["a", "a", "a", "b"], "width": ["10", "30", "20", "600"],
                          "height": ["5", "15", "10", "600"]})
    stats = size_stats(frame)
    assert stats.loc["a"].to_dict() == {"images": 3, "width_min": 10, "width_median": 20,
                                        "width_max": 30, "height_min": 5, "height_median": 10,
                                        "height_max": 15}
    assert stats.loc["b", "width_max"] == 600
