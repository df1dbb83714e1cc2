"""The synthetic face generator: byte-for-byte determinism, exact class proportions, a raw folder in
the `folders` layout the real-dataset adapters read, and attributes that actually change the pixels."""

import csv
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from workbench.data import synth
from workbench.data.synth import FaceAttributes, generate, plan, render_face

COLUMNS = ["path", "label", "mask", "age", "authenticity", "difficulty"]


def read_rows(root: Path) -> tuple[list[str], list[dict]]:
    """The generator's attributes.csv, each row with its image's sha256 and index added."""
    with (root / synth.ATTRIBUTES).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames), list(reader)
    for row in rows:
        row["sha256"] = hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
        row["index"] = int(Path(row["path"]).stem.split("_")[-1])
    return columns, rows


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_fake_set(tmp_path_factory) -> Path:
    """A mask3_fake set large enough to contain every class, shared by the read-only tests."""
    return generate(tmp_path_factory.mktemp("fake3"), "mask3_fake", seed=7, size=32, count=60)


def test_same_arguments_give_identical_files(tmp_path, small_fake_set):
    again = generate(tmp_path / "again", "mask3_fake", seed=7, size=32, count=60)
    assert file_hashes(again) == file_hashes(small_fake_set)
    assert len(file_hashes(again)) == 60 + 2  # the images, dataset.json and attributes.csv


def test_different_seed_gives_different_images(tmp_path):
    a = generate(tmp_path / "a", "mask2", seed=0, size=32, count=10)
    b = generate(tmp_path / "b", "mask2", seed=1, size=32, count=10)
    hashes_a = {r["sha256"] for r in read_rows(a)[1]}
    hashes_b = {r["sha256"] for r in read_rows(b)[1]}
    assert not hashes_a & hashes_b
    attrs = FaceAttributes(mask=False, old=False, fake=False)
    assert not np.array_equal(render_face(0, 3, attrs, 32), render_face(1, 3, attrs, 32))


def test_image_i_does_not_depend_on_count(tmp_path):
    short = read_rows(generate(tmp_path / "20", "mask3_fake", seed=3, size=32, count=20))[1]
    long = read_rows(generate(tmp_path / "40", "mask3_fake", seed=3, size=32, count=40))[1]
    by_index = {r["index"]: r for r in long}
    same_class = [r for r in short if by_index[r["index"]]["label"] == r["label"]]
    # Exact class counts at every count rule out full prefix stability; the plan keeps most
    # labels, and wherever the label is kept the image (and its name, hash) is the same.
    assert len(same_class) >= 14
    for row in same_class:
        assert by_index[row["index"]] == row
    short_plan, long_plan = plan("mask3_fake", 20, 3), plan("mask3_fake", 40, 3)
    for (label_s, attrs_s), (label_l, attrs_l) in zip(short_plan, long_plan):
        if label_s == label_l:
            assert attrs_s == attrs_l


def test_class_counts_follow_the_source_proportions():
    counts = synth.class_counts("mask3_fake", 1200)
    assert counts == {"fake": 96, "real": 606, "with_mask": 498}
    assert min(counts, key=counts.get) == "fake"
    assert 5 < counts["real"] / counts["fake"] < 7
    assert synth.class_counts("mask2", 1500) == {"with_mask": 750, "without_mask": 750}
    assert synth.class_counts("mask_age4", 2944) == {"mask_old": 689, "mask_young": 775,
                                                     "nomask_old": 724, "nomask_young": 756}
    for task, classes in synth.TASKS.items():
        for count in (len(classes), len(classes) + 1, 97, 1000):
            counts = synth.class_counts(task, count)
            assert list(counts) == classes
            assert sum(counts.values()) == count and min(counts.values()) >= 1
            planned = [label for label, _ in plan(task, count, seed=0)]
            assert {c: planned.count(c) for c in classes} == counts


def test_plan_is_shuffled_and_attributes_match_the_class():
    entries = plan("mask3_fake", 300, seed=0)
    labels = [label for label, _ in entries]
    assert labels != sorted(labels)
    assert entries == plan("mask3_fake", 300, seed=0)
    for label, attrs in entries:
        assert attrs.fake == (label == "fake")
        assert attrs.mask == (label == "with_mask")
        assert (attrs.fake_region in synth.FAKE_REGIONS) == attrs.fake
        assert (attrs.difficulty in synth.FAKE_LEVELS) == attrs.fake
    ages = {attrs.old for _, attrs in entries}
    assert ages == {True, False}
    for label, attrs in plan("mask_age4", 40, seed=0):
        assert label == f"{'mask' if attrs.mask else 'nomask'}_{'old' if attrs.old else 'young'}"
        assert not attrs.fake


def test_files_attributes_and_dataset_json(small_fake_set):
    from PIL import Image

    root = small_fake_set
    columns, rows = read_rows(root)
    assert columns == COLUMNS
    assert len(rows) == 60
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert {r["label"] for r in rows} == set(synth.TASKS["mask3_fake"])
    assert len({r["index"] for r in rows}) == 60
    for row in rows:
        assert row["path"].split("/")[0] == row["label"]  # the `folders` layout: <class>/<file>
        with Image.open(root / row["path"]) as img:
            assert (img.size, img.mode, img.format) == ((32, 32), "RGB", "JPEG")
        assert row["mask"] == ("yes" if row["label"] == "with_mask" else "no")
        assert row["age"] in ("young", "old")
        assert row["authenticity"] == ("fake" if row["label"] == "fake" else "real")
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert images == [r["path"] for r in rows]
    info = json.loads((root / "dataset.json").read_text())
    assert info == {"task": "mask3_fake", "seed": 7, "size": 32, "count": 60,
                    "classes": ["fake", "real", "with_mask"],
                    "class_counts": synth.class_counts("mask3_fake", 60),
                    "generator_version": synth.GENERATOR_VERSION}


def test_fake_files_are_named_like_yonsei(small_fake_set):
    _, rows = read_rows(small_fake_set)
    for row in rows:
        name = row["path"].split("/")[1]
        index = row["index"]
        if row["label"] == "fake":
            assert row["difficulty"] in ("easy", "mid", "hard")
            assert name == f"{row['difficulty']}_{index:05d}.jpg"
        else:
            assert row["difficulty"] == ""
            assert name == f"{index:05d}.jpg"


def test_render_face_shape_and_purity():
    attrs = FaceAttributes(mask=True, old=True, fake=False)
    img = render_face(5, 2, attrs, 48)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_face(5, 2, attrs, 48))


def test_attributes_visibly_change_the_face():
    plain = FaceAttributes(mask=False, old=False, fake=False)
    age_diffs = []
    for index in range(4):
        bare = render_face(11, index, plain, 64).astype(np.float32)
        masked = render_face(11, index, FaceAttributes(mask=True, old=False, fake=False), 64)
        diff = np.abs(masked.astype(np.float32) - bare)
        assert diff[32:54, 16:48].mean() > 15      # the lower face is covered
        assert diff[:16].mean() < 1                # the same person and scene above it
        old = render_face(11, index, FaceAttributes(mask=False, old=True, fake=False), 64)
        age_diffs.append(np.abs(old.astype(np.float32) - bare).mean())
        easy = render_face(11, index, FaceAttributes(False, False, True, "nose", "easy"), 64)
        hard = render_face(11, index, FaceAttributes(False, False, True, "nose", "hard"), 64)
        easy_diff = np.abs(easy.astype(np.float32) - bare).mean()
        hard_diff = np.abs(hard.astype(np.float32) - bare).mean()
        assert easy_diff > hard_diff > 0
    # Grey hair and wrinkles always show; how much depends on the face (a small face with
    # cropped blond hair ages subtly).
    assert min(age_diffs) > 0.5 and np.mean(age_diffs) > 4


def test_lit_from_lights_each_image_from_the_side_named():
    face = FaceAttributes(mask=True, old=False, fake=False)
    for index in range(6):
        left = render_face(3, index, face, 48, lit_from=180).astype(np.float32)
        right = render_face(3, index, face, 48, lit_from=0).astype(np.float32)
        # The same scene, only its light moved: lit from the left, the left is brighter than when
        # lit from the right, and the right darker, steadily across the image.
        shift = (left - right).mean(axis=(0, 2))
        assert shift[:16].mean() > 20 and shift[-16:].mean() < -20
        assert np.corrcoef(shift, np.arange(48))[0, 1] < -0.9
    generated = generate(Path(tempfile.mkdtemp()), "mask2", seed=3, size=32, count=8, lit_from={"with_mask": 180})
    assert json.loads((generated / "dataset.json").read_text())["lit_from"] == {"with_mask": 180}
    with pytest.raises(ValueError, match="lit_from: no class fake in task 'mask2'"):
        generate(Path(tempfile.mkdtemp()), "mask2", count=4, lit_from={"fake": 0})


@pytest.mark.parametrize("kwargs, words", [
    ({"task": "mask5"}, ["unknown task", "mask2", "mask3_fake", "mask_age4"]),
    ({"task": "mask2", "size": 8}, ["size", "16", "1024"]),
    ({"task": "mask2", "size": 2048}, ["size", "2048"]),
    ({"task": "mask_age4", "count": 3}, ["count", "4"]),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, words):
    with pytest.raises(ValueError) as err:
        generate(tmp_path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert not any(tmp_path.iterdir())


def test_render_face_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        render_face(0, 0, FaceAttributes(mask=False, old=False, fake=False), 4)


def test_fake_attributes_must_name_region_and_level():
    with pytest.raises(ValueError, match="fake_region"):
        render_face(0, 0, FaceAttributes(mask=False, old=False, fake=True), 32)


def test_cli_generates_the_same_bytes_and_rejects_bad_options(tmp_path):
    from conftest import workbench_in_process

    outs = []
    for name in ("a", "b"):
        result = workbench_in_process("data", "synth", "--task", "mask2", "--size", "32", "--count", "40", "--seed", "5",
                                      "--out", str(tmp_path / name), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "wrote 40 images" in result.stdout and "with_mask 20" in result.stdout
        outs.append(file_hashes(tmp_path / name))
    assert outs[0] == outs[1]
    bad = workbench_in_process("data", "synth", "--task", "mask9", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "task" in bad.stderr
