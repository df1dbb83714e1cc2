"""Ingest: every published layout becomes a manifest with the labels and splits its folders give,
messy files are converted or reported instead of crashing the run, duplicates share a group, the
raw folder is never written, and the same folder always gives the same manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import unprivileged
from PIL import Image

from workbench.data.ingest import ADAPTERS, MANIFEST_COLUMNS, ingest, read_manifest
from workbench.errors import DataError

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 60)


def picture(seed: int, size: int = 48) -> np.ndarray:
    """A distinct RGB image: random coloured rectangles and discs, so perceptual hashes differ."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(5):
        colour = rng.integers(0, 256, 3)
        x0, y0 = rng.integers(0, size - 8, 2)
        r = int(rng.integers(4, size // 2))
        if rng.random() < 0.5:
            image[y0:y0 + r, x0:x0 + r] = colour
        else:
            image[(yy - y0) ** 2 + (xx - x0) ** 2 < r * r] = colour
    return image


def save(path: Path, image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **options)
    return path


def halves(size, left, right, mode="RGB") -> Image.Image:
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """One folder per published layout, plus a messy class-folder tree with every awkward kind."""
    root = tmp_path_factory.mktemp("raw")
    seed = iter(range(1000))

    fm = root / "facemask" / "Face Mask Dataset"
    for split, n in (("Train", 3), ("Validation", 1), ("Test", 2)):
        for label in ("WithMask", "WithoutMask"):
            for i in range(n):
                save(fm / split / label / f"{i}.png", picture(next(seed)))
    (root / "facemask" / "Face Mask Dataset" / "README.txt").write_text("ignore me")

    yonsei = root / "yonsei" / "real_and_fake_face"
    for i in range(2):
        save(yonsei / "training_real" / f"real_{i:05d}.jpg", picture(next(seed), 64), quality=95)
    for name in ("easy_1_1111.jpg", "mid_2_0011.jpg", "hard_3_1000.jpg"):
        save(yonsei / "training_fake" / name, picture(next(seed), 64), quality=95)

    v1 = root / "maskv1" / "Mask_Datasets"
    for split, n in (("Train", 2), ("Validation", 1)):
        for label in ("Mask", "No_mask"):
            for i in range(n):
                save(v1 / split / label / f"{label}_{i}.jpeg", picture(next(seed)), quality=95)

    presplit = root / "presplit"
    for split in ("TRAIN", "valid", "test"):
        for label in ("a", "b"):
            save(presplit / split / label / "x.png", picture(next(seed)))

    messy = root / "messy"
    good, odd = messy / "good", messy / "odd"
    original = save(good / "original.png", picture(500, 64))
    (good / "exact_copy.png").write_bytes(original.read_bytes())
    near = Image.fromarray(picture(500, 64)).resize((56, 56), Image.Resampling.LANCZOS)
    save(good / "near_copy.jpg", near, quality=80)
    save(good / "other.png", picture(501, 64))
    save(good / "UPPER.JPG", picture(502), quality=90)
    save(good / "gray.png", Image.fromarray(picture(503)).convert("L"))
    (good / "README.txt").write_text("not an image, so it is reported")
    (good / ".DS_Store").write_bytes(b"\0\1junk")
    save(good / ".hidden.png", picture(504))

    save(odd / "rgba.png", halves((48, 32), (0, 0, 0, 0), (*RED, 255), "RGBA"))
    palette = Image.new("P", (48, 32), 0)
    palette.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    palette.paste(1, (24, 0, 48, 32))
    save(odd / "palette.png", palette, transparency=0)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    save(odd / "gray16.png", Image.fromarray(ramp))
    save(odd / "cmyk.jpg", Image.new("RGB", (40, 40), BLUE).convert("CMYK"), quality=95)
    save(odd / "photo.webp", picture(505), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape; a viewer turns it 90 degrees clockwise
    save(odd / "rotated.jpg", halves((64, 32), RED, BLUE), quality=95, exif=exif.tobytes())
    save(odd / "wide.png", halves((1100, 60), RED, BLUE))

    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.png").write_text("this is not a picture")
    noise = np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    (odd / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    save(odd / "tiny.png", picture(506, 10))
    save(odd / "strip.png", Image.new("RGB", (20001, 16), RED))
    return root


@pytest.fixture(scope="module")
def messy(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    before = tree_digest(raw)
    result = ingest("folders", raw / "messy", "messy", out / "manifests", out / "interim")
    frame, sidecar = read_manifest("messy", out / "manifests")
    return result, frame.set_index("path", drop=False), sidecar, out, before


def run(raw: Path, tmp_path: Path, source: str, folder: str, name: str = "ds"):
    result = ingest(source, raw / folder, name, tmp_path / "manifests", tmp_path / "interim")
    frame, sidecar = read_manifest(name, tmp_path / "manifests")
    return result, frame, sidecar


def test_facemask12k_keeps_folder_labels_and_published_splits(raw, tmp_path):
    result, frame, sidecar = run(raw, tmp_path, "facemask12k", "facemask")
    expected = {"train": 3, "val": 1, "test": 2}
    assert result.counts == sidecar["counts"] == {"WithMask": expected, "WithoutMask": expected}
    assert result.kept == len(frame) == 12 and result.skipped == 0
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert frame["path"].iloc[0].startswith("Face Mask Dataset/Test/WithMask/")
    assert set(frame["source"]) == {"ds"} and set(frame["format"]) == {"png"}
    assert (frame["decoded"] == "").all()  # small RGB PNGs: TensorFlow reads them as they are
    # Pointing at the archive's own folder gives the same images.
    inner, _, _ = run(raw, tmp_path / "inner", "facemask12k", "facemask/Face Mask Dataset")
    assert inner.counts == result.counts


def test_yonsei_labels_real_and_fake_with_difficulty(raw, tmp_path):
    result, frame, _ = run(raw, tmp_path, "yonsei_realfake", "yonsei")
    assert list(frame.columns) == MANIFEST_COLUMNS + ["difficulty"]
    assert result.counts == {"fake": {"": 3}, "real": {"": 2}}
    difficulty = dict(zip(frame["path"].str.rsplit("/", n=1).str[-1], frame["difficulty"]))
    assert difficulty == {"easy_1_1111.jpg": "easy", "mid_2_0011.jpg": "mid",
                          "hard_3_1000.jpg": "hard", "real_00000.jpg": "", "real_00001.jpg": ""}
    assert set(frame["original_split"]) == {""} and set(frame["format"]) == {"jpeg"}


def test_maskdataset_v1_and_presplit_folders(raw, tmp_path):
    result, _, _ = run(raw, tmp_path, "maskdataset_v1", "maskv1")
    assert result.counts == {"Mask": {"train": 2, "val": 1}, "No_mask": {"train": 2, "val": 1}}
    result, frame, _ = run(raw, tmp_path / "p", "folders", "presplit")
    # Split folders are recognised whatever their case or spelling (valid / val / validation).
    assert result.counts == {"a": {"test": 1, "train": 1, "val": 1}, "b": {"test": 1, "train": 1, "val": 1}}


def test_wrong_layout_or_missing_folder_is_one_line_naming_the_path(raw, tmp_path):
    with pytest.raises(DataError, match=r"yonsei: not a facemask12k folder; expected .*Train") as err:
        ingest("facemask12k", raw / "yonsei", "x", tmp_path, tmp_path / "interim")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="nowhere: raw dataset folder not found"):
        ingest("folders", raw / "nowhere", "x", tmp_path, tmp_path / "interim")
    with pytest.raises(DataError, match="unknown dataset source"):
        ingest("imagenet", raw / "messy", "x", tmp_path, tmp_path / "interim")
    with pytest.raises(DataError, match="inside the raw folder"):
        ingest("folders", raw / "messy", "x", raw / "messy" / "out", tmp_path / "interim")
    with pytest.raises(DataError, match="would replace the raw folder"):
        ingest("folders", raw / "messy", "messy", tmp_path, raw)
    with pytest.raises(DataError, match=r"ingest the dataset 'absent' first"):
        read_manifest("absent", tmp_path)
    assert set(ADAPTERS) == {"facemask12k", "yonsei_realfake", "maskdataset_v1", "folders"}


def test_split_folders_beside_other_folders_are_refused(tmp_path):
    # Read as class folders, every image under train/ would be labelled "train".
    for name, seed in (("train/mask/a.png", 1), ("train/bare/b.png", 2), ("extras/c.png", 3)):
        (tmp_path / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / name).write_bytes(_png(picture(seed)))
    with pytest.raises(DataError, match=r"split folders \(train\) beside other folders \(extras\)") as err:
        ingest("folders", tmp_path / "raw", "mixed", tmp_path / "m", tmp_path / "i")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_unusable_files_are_reported_and_the_rest_kept(messy):
    result, frame, sidecar, _, _ = messy
    report = pd.read_csv(result.report_path, dtype=str, keep_default_na=False)
    reasons = dict(zip(report["path"], report["reason"]))
    assert reasons["odd/empty.jpg"] == "empty file"
    assert reasons["odd/text.png"].startswith("not an image: ")
    assert reasons["odd/truncated.jpg"].startswith("truncated: ")
    assert reasons["odd/tiny.png"] == "too small: 10x10"
    assert reasons["odd/strip.png"] == "too large: 20001x16"
    # The content decides, not the suffix: a text file in a class folder is reported, not skipped.
    assert reasons["good/README.txt"] == "not an image: text"
    assert len(reasons) == result.skipped == sidecar["skipped"] == 6
    # Hidden files (.DS_Store, .hidden.png) are neither kept nor reported, only counted.
    assert not any("/." in p for p in [*frame["path"], *reasons])
    assert result.ignored == sidecar["ignored"] == 2
    assert result.kept == len(frame) == 13
    assert "good/UPPER.JPG" in frame.index


def test_original_properties_and_which_files_get_a_decoded_copy(messy):
    _, frame, _, _, _ = messy
    described = frame[["width", "height", "channels", "format"]].agg(" ".join, axis=1).to_dict()
    assert described["odd/rotated.jpg"] == "64 32 3 jpeg"      # the file as stored, not as shown
    assert described["good/gray.png"] == "48 48 1 png"
    assert described["odd/rgba.png"] == "48 32 4 png"
    assert described["odd/palette.png"] == "48 32 1 png"
    assert described["odd/gray16.png"] == "64 32 1 png"
    assert described["odd/cmyk.jpg"] == "40 40 4 jpeg"
    assert described["odd/photo.webp"] == "48 48 3 webp"
    copied = set(frame.index[frame["decoded"] != ""])
    assert copied == {f"odd/{n}" for n in ("rgba.png", "palette.png", "gray16.png", "cmyk.jpg",
                                           "photo.webp", "rotated.jpg", "wide.png")}
    assert frame.at["odd/photo.webp", "decoded"] == "messy/odd/photo.webp.png"
    assert frame["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert frame["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()


def decoded(messy, path: str) -> np.ndarray:
    _, frame, sidecar, out, _ = messy
    file = out / "interim" / frame.at[path, "decoded"]
    assert str(file.parent).startswith(sidecar["interim_root"])
    image = Image.open(file)
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_decoded_copies_are_upright_rgb_as_a_viewer_shows_them(messy):
    rotated = decoded(messy, "odd/rotated.jpg")
    assert rotated.shape == (64, 32, 3)                          # width and height swapped
    assert np.abs(rotated[:28] - RED).max() < 40                  # stored left half now on top
    assert np.abs(rotated[36:] - BLUE).max() < 40
    rgba = decoded(messy, "odd/rgba.png")
    assert (rgba[:, :24] == 255).all() and (rgba[:, 24:] == RED).all()   # transparent -> white
    palette = decoded(messy, "odd/palette.png")
    assert (palette[:, :24] == 255).all() and (palette[:, 24:] == GREEN).all()
    ramp = decoded(messy, "odd/gray16.png")
    assert ramp.shape == (32, 64, 3) and ramp[0, 0, 0] == 0 and ramp[0, -1, 0] == 255
    assert np.all(np.diff(ramp[0, :, 0]) >= 0)                    # scaled, not wrapped
    assert np.abs(decoded(messy, "odd/cmyk.jpg") - BLUE).max() < 12
    assert decoded(messy, "odd/photo.webp").shape == (48, 48, 3)
    wide = decoded(messy, "odd/wide.png")
    assert wide.shape == (56, 1024, 3)                            # longer side capped at 1024


def test_exact_and_near_duplicates_share_a_group(messy):
    _, frame, _, _, _ = messy
    group = frame["group_id"]
    assert group["good/original.png"] == group["good/exact_copy.png"] == group["good/near_copy.jpg"]
    distinct = ["good/original.png", "good/other.png", "good/UPPER.JPG", "good/gray.png",
                "odd/photo.webp"]
    assert group[distinct].nunique() == len(distinct)
    # Groups are numbered in the order of their smallest path.
    assert group.iloc[0] == "messy:0" and group.str.startswith("messy:").all()


def test_raw_tree_is_untouched(messy, raw):
    *_, before = messy
    assert tree_digest(raw) == before


def test_ingest_is_deterministic(messy, raw, tmp_path):
    result, _, sidecar, out, _ = messy
    for _ in range(2):  # the second run replaces the first one's outputs in place
        again = ingest("folders", raw / "messy", "messy", tmp_path / "manifests", tmp_path / "interim")
    assert [p.name for p in (tmp_path / "interim").iterdir()] == ["messy"]  # no staging left over
    assert again.manifest_path.read_bytes() == result.manifest_path.read_bytes()
    assert again.report_path.read_bytes() == result.report_path.read_bytes()
    assert tree_digest(tmp_path / "interim" / "messy") == tree_digest(out / "interim" / "messy")
    fresh = json.loads((tmp_path / "manifests" / "messy.json").read_text())
    assert {k: v for k, v in fresh.items() if k not in ("created", "interim_root")} == \
        {k: v for k, v in sidecar.items() if k not in ("created", "interim_root")}
    assert sidecar["raw_root"] == str((raw / "messy").resolve())


def test_names_that_are_not_utf8_and_empty_class_folders_in_split_layouts(tmp_path):
    root = os.fsencode(tmp_path / "raw")
    for name, seed in ((b"train/se\xf1ora/a.png", 1), (b"train/se\xf1ora/b\xff.png", 2),
                       (b"train/plain/caf\\xe9.png", 3), (b"train/plain/caf\xe9.png", 4), (b"val/plain/c.png", 5)):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(_png(picture(seed)))
    os.makedirs(os.path.join(root, b"val/se\xf1ora"))
    result = ingest("folders", tmp_path / "raw", "latin", tmp_path / "m", tmp_path / "i")
    frame, sidecar = read_manifest("latin", tmp_path / "m")
    rows = frame.set_index("path")
    # The label and path are written with escapes (a UTF-8 file cannot hold the raw bytes), and the
    # image is read through a copy whose name is valid UTF-8 too.
    assert rows.at["train/se\\xf1ora/b\\xff.png", "label"] == "se\\xf1ora"
    assert rows.at["train/se\\xf1ora/a.png", "decoded"] == "latin/train/se\\xf1ora/a.png.png"
    assert rows.at["train/plain/caf\\xe9.png", "decoded"] == ""          # a real backslash: read as it is
    report = pd.read_csv(result.report_path, dtype=str, keep_default_na=False)
    assert dict(zip(report["path"], report["reason"])) == {
        "train/plain/caf\\xe9.png": "name collides with another file's once written as valid UTF-8",
        "val/se\\xf1ora/": "empty class folder: no files, so no images of this class"}
    assert result.counts == {"plain": {"train": 1, "val": 1}, "se\\xf1ora": {"train": 2}}
    assert sidecar["notes"] == []   # every class has images somewhere


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_unreadable_folder_is_reported_not_skipped():
    """The real permission fault: `workbench data ingest` over a tree with a mode-000 folder, run as
    an unprivileged user when the suite runs as root (for root the mode would not bind)."""
    with unprivileged.workspace("workbench-ingest-") as root:
        good, hidden_away = root / "raw" / "a", root / "raw" / "a" / "locked"
        save(good / "x.png", picture(1))
        save(hidden_away / "y.png", picture(2))
        save(root / "raw" / "b" / "z.png", picture(3))
        hidden_away.chmod(0)
        done = unprivileged.workbench("data", "ingest", "folders", str(root / "raw"), "--name", "locked", cwd=root,
                                      env={"WORKBENCH_DATA": str(root / "data")})
        assert done.returncode == 0, done.stdout + done.stderr
        manifests = root / "data" / "manifests"
        report = pd.read_csv(manifests / "locked.report.csv", dtype=str, keep_default_na=False)
        assert dict(zip(report["path"], report["reason"])) == {"a/locked/": "unreadable folder: Permission denied"}
        frame, sidecar = read_manifest("locked", manifests)
        assert sorted(frame["path"]) == ["a/x.png", "b/z.png"] and sidecar["kept"] == 2


def test_ingest_on_every_core_writes_the_one_core_manifest_and_reports_progress(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "many"
    for i in range(72):
        folder = raw / ("with_mask", "without_mask")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture(1000 + i)).save(folder / f"{i:03d}.jpg", quality=90)
    for i in range(3):  # larger than training ever reads: each gets a downscaled decoded copy
        Image.fromarray(picture(2000 + i, size=1100)).save(raw / "with_mask" / f"big{i}.png")
    (raw / "without_mask" / "note.jpg").write_text("not a photo")
    outputs, heard = {}, {}
    for workers in ("1", "2"):
        monkeypatch.setenv("WORKBENCH_INGEST_WORKERS", workers)
        calls = []
        out = tmp_path / f"out{workers}"
        result = ingest("folders", raw, "many", out / "manifests", out / "interim",
                        progress=lambda done, total: calls.append((done, total)))
        outputs[workers] = (result.manifest_path.read_bytes(), result.report_path.read_bytes(),
                            tree_digest(out / "interim" / "many"))
        heard[workers] = calls
        assert result.kept == 75 and result.skipped == 1
    assert outputs["2"] == outputs["1"]
    # Every file opened is heard of once, in order, up to the total.
    for calls in heard.values():
        assert calls == [(n, 76) for n in range(1, 77)]
