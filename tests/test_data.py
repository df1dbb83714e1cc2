"""Data stage: the synthetic set is materialised once, splits are stratified and grouped, and
each balance strategy changes only the training split, deterministically."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench import spec as S
from workbench.data import balance
from workbench.data.dataset import assign_splits, class_counts, prepare
from workbench.workspace import Workspace


@pytest.fixture
def tiny(tiny_spec):
    return prepare(S.load("tiny"), Workspace())


def test_prepare_is_stable_and_covers_every_class_in_every_split(tiny):
    again = prepare(S.load("tiny"), Workspace())
    assert again.digest == tiny.digest
    counts = class_counts(tiny.frame)
    assert tuple(counts.index) == tiny.classes == ("fake", "real", "with_mask")
    assert (counts[["train", "val", "test"]] > 0).all().all()
    assert counts["total"].sum() == 180
    # The split follows the 60/20/20 ratios within a couple of images per class.
    share = counts["train"] / counts["total"]
    assert share.between(0.5, 0.7).all()


def test_digest_changes_with_the_split_seed(tiny_spec):
    assert prepare(S.load("tiny"), Workspace()).digest != prepare(S.load("tiny", ["seed=8"]), Workspace()).digest


def test_groups_never_span_two_splits():
    frame = pd.DataFrame({"label": ["a"] * 40 + ["b"] * 20,
                          "group_id": [f"g{i // 3}" for i in range(60)]})
    frame["split"] = assign_splits(frame, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert frame.groupby("group_id")["split"].nunique().max() == 1
    assert set(frame["split"]) == {"train", "val", "test"}


def test_none_and_class_weight_keep_the_training_split(tiny):
    train = tiny.part("train")
    assert balance.balanced(tiny, "none", Workspace()).train.equals(train)
    weighted = balance.balanced(tiny, "class_weight", Workspace())
    counts = train["label"].value_counts()
    weights = weighted.class_weight
    # The rarest class weighs most, and weight x count is the same for every class.
    assert weights[tiny.classes.index("fake")] == max(weights.values())
    products = {round(weights[i] * counts[c], 6) for i, c in enumerate(tiny.classes)}
    assert len(products) == 1


def test_undersample_cuts_every_class_to_the_smallest(tiny):
    train = tiny.part("train")
    out = balance.balanced(tiny, "undersample", Workspace()).train
    assert out["label"].value_counts().nunique() == 1
    assert len(out) == len(tiny.classes) * train["label"].value_counts().min()
    assert set(out["file"]) <= set(train["file"])


def test_oversample_tops_up_from_training_images_only_and_is_cached(tiny):
    train = tiny.part("train")
    first = balance.balanced(tiny, "oversample", Workspace()).train
    counts = first["label"].value_counts()
    assert counts.nunique() == 1 and counts.iloc[0] == train["label"].value_counts().max()
    copies = first[first["augmented_from"].notna() & (first["augmented_from"] != "")]
    assert len(copies) == len(first) - len(train)
    # Every copy keeps its source's group, and every source is a training image.
    assert set(copies["augmented_from"]) <= set(train["sha256"])
    assert set(copies["group_id"]) <= set(train["group_id"])
    assert set(copies["augmentation"]) <= set(balance.RECIPE)
    second = balance.balanced(tiny, "oversample", Workspace()).train
    assert list(second["sha256"]) == list(first["sha256"])  # same seed, same copies


def test_a_balance_target_cuts_large_classes_and_grows_small_ones(tiny):
    train = tiny.part("train")
    counts = train["label"].value_counts()
    target = int((counts.min() + counts.max()) // 2)
    out = balance.balanced(tiny, "oversample", Workspace(), target=target).train
    assert (out["label"].value_counts() == target).all()
    under = balance.balanced(tiny, "undersample", Workspace(), target=target).train
    assert under["label"].value_counts().max() == target
    assert under["label"].value_counts()["fake"] == counts["fake"]  # smaller classes stay whole


def test_copies_of_one_picture_never_land_in_two_splits(workdir):
    """A folder of photos where every picture also stands as a byte-identical copy and as a
    re-saved JPEG (a near duplicate): ingested and split as a sweep does it, each picture's
    family stays in one split, known here from the file names, not from workbench's groups."""
    import cv2
    from conftest import write_spec

    from workbench.data import ingest, synth

    raw = workdir / "photos"
    for label in ("with_mask", "without_mask"):
        (raw / label).mkdir(parents=True)
        for i in range(30):
            face = synth.render_face(11, i, synth.FaceAttributes(mask=label == "with_mask", old=False, fake=False), 48)
            ok, jpeg = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (raw / label / f"p{i:02d}.jpg").write_bytes(jpeg.tobytes())
            (raw / label / f"p{i:02d}_copy.jpg").write_bytes(jpeg.tobytes())
            resaved = cv2.imdecode(cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR)
            cv2.imwrite(str(raw / label / f"p{i:02d}_resaved.png"), resaved)
    ws = Workspace()
    ingest.ingest("folders", raw, "dups", ws.manifests, ws.decoded)
    write_spec(workdir, {"name": "dups", "dataset": {"source": "manifests", "manifests": [{"name": "dups"}]},
                         "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "seed": 3})
    frame = prepare(S.load("dups"), Workspace()).frame
    assert len(frame) == 180
    family = frame["label"] + "/" + frame["path"].str.extract(r"(p\d\d)", expand=False)
    assert frame.groupby(family)["split"].nunique().max() == 1
    assert frame.groupby(family).size().eq(3).all()
    # Splits still follow their ratios: 30 families of 3 per class, about 18 / 6 / 6 of them.
    families = frame.assign(family=family).drop_duplicates("family")
    assert families.groupby(["label", "split"]).size().between(4, 20).all()
