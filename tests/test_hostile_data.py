"""Hostile data, end to end: a scraped-looking folder generated at test time (zero-byte, truncated,
text and HTML files named like images, 16-bit, grayscale, RGBA, palette, CMYK and EXIF-rotated
images, a 1 px image, a decompression-bomb header, symlinks leading out of the root, an unreadable
file, a pipe, names that are not UTF-8 or hold spaces, quotes and newlines, suffix-less and oddly
suffixed images, hidden files, an empty class folder, a class with one image, a dataset with one
class) goes through ingest, `data check`, a one-trial sweep and `predict`. Each case in
`tests/hostile.py` is asserted here, and README.md's table is generated from those records.

Every command runs as an unprivileged user when the suite runs as root (`tests/unprivileged.py`),
so the mode-000 file is unreadable to workbench whoever runs the tests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import hostile
import numpy as np
import pandas as pd
import pytest
import unprivileged
from conftest import REPO, write_spec
from hostile import COPIED, DATASET_CASES, FILE_CASES, KEPT
from PIL import Image

from workbench.data import dataset, ingest
from workbench.data.synth import FaceAttributes, render_face
from workbench.errors import DataError

MASKED, BARE = FaceAttributes(mask=True, old=False, fake=False), FaceAttributes(mask=False, old=False, fake=False)
FACES_PER_CLASS = 8
MLFLOW_LOG = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.")
SIZE = 40


def face_rgb(index: int, masked: bool) -> np.ndarray:
    return cv2.cvtColor(render_face(23, index, MASKED if masked else BARE, SIZE), cv2.COLOR_BGR2RGB)


def encoded(image: np.ndarray | Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_header(side: int = 20000) -> bytes:
    """A valid PNG start claiming side x side gray pixels, then a little data: tiny on disk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * (side + 1) * 4)) + png_chunk(b"IEND", b""))


def rgba(index: int) -> Image.Image:
    """A face whose left quarter is fully transparent over black: a viewer shows it white."""
    pixels = np.dstack([face_rgb(index, True), np.full((SIZE, SIZE), 255, np.uint8)])
    pixels[:, : SIZE // 4] = 0
    return Image.fromarray(pixels, "RGBA")


def sixteen_bit(rgb: np.ndarray) -> np.ndarray:
    """48-bit colour for OpenCV to write: each 8-bit level v becomes 257 v (full scale stays full)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257


def write(root: Path, name: str | bytes, data: bytes) -> str:
    """Write raw bytes under root (a bytes name may hold anything but '/' and NUL); returns the path."""
    path = os.path.join(os.fsencode(root), os.fsencode(name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return os.fsdecode(path)


def build_corpus(root: Path) -> dict[str, str]:
    """The hostile tree under root/hostile (and what its links point at under root/outside);
    returns each FileCase key's real path (for predict)."""
    raw, outside = root / "hostile", root / "outside"
    for k in range(FACES_PER_CLASS):
        write(raw, f"masked/face-{k:02d}.png", encoded(face_rgb(k, True), "PNG"))
        write(raw, f"bare/face-{k:02d}.jpg", encoded(face_rgb(100 + k, False), "JPEG", quality=95))
    write(raw, "lonely/face.png", encoded(face_rgb(300, False), "PNG"))
    (raw / "empty").mkdir()
    for hidden in (".DS_Store", "masked/.DS_Store", "masked/._face-00.png", "__MACOSX/masked/._face-00.png"):
        write(raw, hidden, b"\0\5\26\7junk")
    write(outside, "face.jpg", encoded(face_rgb(400, True), "JPEG", quality=95))

    files: dict[str, str] = {}
    jpeg = encoded(face_rgb(200, False), "JPEG", quality=95)
    png = encoded(face_rgb(201, True), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise; a viewer turns it back
    data = {
        "zero_bytes": b"",
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "truncated_png": png[: len(png) // 2],
        "text_as_jpg": b"shopping list\nmilk\neggs\n",
        "html_as_png": b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>nope</body></html>\n",
        "binary_non_image": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504),
        "text_suffix": b"Faces scraped on 2024-05-01. Do not redistribute.\n",
        "sixteen_bit": cv2.imencode(".png", sixteen_bit(face_rgb(202, True)))[1].tobytes(),
        "grayscale": encoded(Image.fromarray(face_rgb(203, False)).convert("L"), "PNG"),
        "rgba": encoded(rgba(204), "PNG"),
        "palette": encoded(Image.fromarray(face_rgb(205, False)).quantize(64), "PNG"),
        "cmyk": encoded(Image.fromarray(face_rgb(206, True)).convert("CMYK"), "JPEG", quality=95),
        "exif_rotated": encoded(np.ascontiguousarray(np.rot90(face_rgb(207, False))), "JPEG", quality=95,
                                exif=exif.tobytes()),
        "one_pixel": encoded(np.zeros((1, 1, 3), np.uint8), "PNG"),
        "bomb": bomb_header(),
        "non_utf8": encoded(face_rgb(208, True), "PNG"),
        "newline_name": encoded(face_rgb(209, False), "PNG"),
        "long_name": encoded(rgba(210), "PNG"),
        "spaces": encoded(face_rgb(211, False), "JPEG", quality=95),
        "trailing_quote": encoded(face_rgb(212, True), "PNG"),
        "odd_suffix": encoded(face_rgb(213, False), "JPEG", quality=95),
        "no_suffix": encoded(face_rgb(214, True), "JPEG", quality=95),
        "wrong_suffix": encoded(face_rgb(215, False), "PNG"),
    }
    real_names: dict[str, str | bytes] = {"non_utf8": b"masked/caf\xe9.png", "newline_name": "bare/two\nlines.png"}
    for case in FILE_CASES:
        name = real_names.get(case.key, case.file)
        if case.key in data:
            files[case.key] = write(raw, name, data[case.key])
    files["symlink_outside"] = str(raw / "masked/outside.jpg")
    os.symlink(outside / "face.jpg", files["symlink_outside"])
    files["symlink_inside"] = str(raw / "bare/alias.jpg")
    os.symlink("face-00.jpg", files["symlink_inside"])
    os.symlink("../masked", raw / "bare/linked-folder")
    files["fifo"] = str(raw / "bare/pipe.jpg")
    os.mkfifo(files["fifo"])
    files["unreadable"] = write(raw, "bare/unreadable.jpg", jpeg)
    os.chmod(files["unreadable"], 0)   # binds: workbench never runs as root here (see unprivileged)
    assert set(files) == {c.key for c in FILE_CASES if c.key != "linked_folder"}

    for k in range(4):  # a dataset with one class
        write(root / "solo", f"only/face-{k}.png", encoded(face_rgb(500 + k, True), "PNG"))
    return files


def snapshot(*roots: Path) -> dict[bytes, tuple]:
    """Every entry under the roots (links not followed): type and mode, size, mtime, and the
    content's digest or the link's target. Pipes and unreadable files are not opened."""
    state = {}
    for root in roots:
        for top, dirs, names in os.walk(os.fsencode(root)):
            for name in [b".", *dirs, *names]:
                path = os.path.join(top, name)
                info = os.lstat(path)
                entry: tuple = (info.st_mode, info.st_size, info.st_mtime_ns)
                if stat.S_ISLNK(info.st_mode):
                    entry += (os.readlink(path),)
                elif stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                    with open(path, "rb") as handle:
                        entry += (hashlib.sha256(handle.read()).hexdigest(),)
                state[path] = entry
    return state


@dataclass
class Yard:
    root: Path
    env: dict[str, str]
    files: dict[str, str]
    before: dict[bytes, tuple]
    manifest: pd.DataFrame
    sidecar: dict
    report: dict[str, str]
    ingest_out: str


def workbench_cli(*args: str, cwd: Path, env: dict):
    """The console script, run as an unprivileged user when the suite runs as root."""
    return unprivileged.workbench(*args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def yard() -> Yard:
    # Not under pytest's temporary folder, which the unprivileged user cannot reach.
    with unprivileged.workspace("workbench-hostile-") as root:
        files = build_corpus(root / "raw")
        before = snapshot(root / "raw")
        (root / "experiments").mkdir()
        env = {"WORKBENCH_DATA": str(root / "data"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
               "WORKBENCH_STORAGE": f"sqlite:///{root / 'mlruns' / 'optuna.db'}"}
        done = workbench_cli("data", "ingest", "folders", str(root / "raw" / "hostile"), "--name", "hostile",
                             cwd=root, env=env)
        assert done.returncode == 0, done.stderr
        manifests = root / "data" / "manifests"
        frame, sidecar = ingest.read_manifest("hostile", manifests)
        report = pd.read_csv(manifests / "hostile.report.csv", dtype=str, keep_default_na=False)
        yield Yard(root, env, files, before, frame.set_index("path", drop=False), sidecar,
                   dict(zip(report["path"], report["reason"])), done.stdout)


SWEEP_SPEC = {
    "name": "hostile",
    "dataset": {"source": "manifests", "manifests": [{"name": "hostile", "classes": {"lonely": None}}]},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 1, "batch_size": 8, "dense_units": 8},
    "trials": 1,
    "seed": 5,
}


@pytest.fixture(scope="module")
def swept(yard) -> str:
    """One one-trial sweep over the whole tree (the one-image class mapped to null); its run id."""
    from mlflow.tracking import MlflowClient

    write_spec(yard.root, SWEEP_SPEC)
    done = workbench_cli("sweep", "hostile", "--trials", "1", cwd=yard.root, env=yard.env)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(yard.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("hostile")
    [trial] = client.search_runs([experiment.experiment_id], "tags.`workbench.role` = 'trial'")
    assert trial.data.tags["workbench.state"] == "finished", trial.data.tags.get("workbench.error")
    return trial.info.run_id


def one_line_error(result, code: int = 1) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # MLflow logs its own start-up (creating a fresh store's tables) before workbench says anything.
    lines = [line for line in result.stderr.strip().splitlines() if not MLFLOW_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


# --- every file of the corpus -------------------------------------------------------------------------

@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.key)
def test_ingest_keeps_or_reports_each_file(yard, case):
    if case.key == "unreadable":   # the mode bound: the real permission fault, not a stand-in
        assert yard.report[case.file] == "unreadable: Permission denied"
    if case.kept:
        row = yard.manifest.loc[case.file]
        assert row["label"] == case.file.split("/")[0] and case.file not in yard.report
        assert bool(row["decoded"]) == (case.outcome == COPIED)
        assert (Path(yard.sidecar["interim_root"]).parent / row["decoded"]).is_file() or not row["decoded"]
    else:
        reason = yard.report[case.file]
        assert reason.startswith(case.outcome) if case.outcome.endswith(": ") else reason == case.outcome, reason
        assert case.file not in yard.manifest.index


def test_the_report_lists_every_file_left_out_and_the_manifest_the_rest(yard):
    left_out = {c.file for c in FILE_CASES if not c.kept}
    assert set(yard.report) == left_out | {"empty/"}
    faces = {f"masked/face-{k:02d}.png" for k in range(FACES_PER_CLASS)} | \
        {f"bare/face-{k:02d}.jpg" for k in range(FACES_PER_CLASS)}
    assert set(yard.manifest.index) == {c.file for c in FILE_CASES if c.kept} | faces | {"lonely/face.png"}
    assert all("\n" not in text for text in [*yard.report, *yard.report.values(), *yard.manifest.index])
    kept, left = len(yard.manifest), len(yard.report)
    assert f"hostile: {kept} images kept, {left} left out" in " ".join(yard.ingest_out.split())


def test_what_training_reads_is_inside_the_root_and_valid_utf8(yard):
    read = dataset.files(yard.manifest, Path(yard.env["WORKBENCH_DATA"]) / "manifests")
    for path, file in zip(yard.manifest["path"], read):
        file.encode("utf-8")  # TensorFlow takes paths as UTF-8 strings
        assert Path(file).is_file(), path
    row = yard.manifest.loc["masked/caf\\xe9.png"]
    assert row["decoded"] == "hostile/masked/caf\\xe9.png.png"
    long_copy = yard.manifest.loc[f"masked/{'x' * 251}.png", "decoded"]
    assert re.fullmatch(r"hostile/[0-9a-f]{32}\.png", long_copy)   # its own name + .png is 259 bytes
    group = yard.manifest["group_id"]
    assert group["bare/alias.jpg"] == group["bare/face-00.jpg"]   # a link inside is a duplicate of its target


def test_odd_but_valid_images_are_seen_upright_and_as_a_viewer_shows_them(yard):
    interim = Path(yard.sidecar["interim_root"]).parent

    def copy(path: str) -> np.ndarray:
        return np.asarray(Image.open(interim / yard.manifest.at[path, "decoded"]).convert("RGB")).astype(int)

    upright, stored = face_rgb(207, False), np.rot90(face_rgb(207, False))
    exif = copy("bare/face-exif6.jpg")
    # JPEG costs a few levels per pixel; the sideways face as stored would differ several times more.
    assert np.abs(exif - upright).mean() < 8 < np.abs(exif - stored).mean()
    rgba_copy = copy("masked/face-rgba.png")
    assert (rgba_copy[:, : SIZE // 4] == 255).all()                                   # transparent -> white
    assert np.abs(rgba_copy[:, SIZE // 4:] - face_rgb(204, True)[:, SIZE // 4:]).max() == 0
    assert np.abs(copy("masked/face-16bit.png") - face_rgb(202, True)).max() <= 1   # scaled, not wrapped
    assert np.abs(copy("masked/face-cmyk.jpg") - face_rgb(206, True)).mean() < 6


# --- dataset-level cases ------------------------------------------------------------------------------

def test_hidden_files(yard):
    # .DS_Store at the root and in masked/, an AppleDouble ._ file, and the __MACOSX folder.
    assert yard.sidecar["ignored"] == 4
    assert not any("DS_Store" in p or "/._" in p or "MACOSX" in p for p in [*yard.report, *yard.manifest.index])


def test_empty_class_folder(yard):
    assert yard.report["empty/"].startswith("empty class folder: ")
    assert any("empty" in note and "no usable image" in note for note in yard.sidecar["notes"])
    assert "empty" not in set(yard.manifest["label"])


def test_single_image_class(yard):
    write_spec(yard.root, {**SWEEP_SPEC, "name": "lonely", "dataset": {
        "source": "manifests", "manifests": [{"name": "hostile"}]}})
    message = one_line_error(workbench_cli("data", "check", "lonely", cwd=yard.root, env=yard.env), code=2)
    assert re.fullmatch(r"dataset hostile: split 'val' gets no image of class lonely \(1 image\); every "
                        r"class needs images in train, val and test: add images of it, map it to null in the "
                        r"spec's classes, or change the split ratios", message), message


def test_single_class_dataset(yard):
    done = workbench_cli("data", "ingest", "folders", str(yard.root / "raw" / "solo"), "--name", "solo",
                         cwd=yard.root, env=yard.env)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((yard.root / "data" / "manifests" / "solo.json").read_text())
    assert sidecar["kept"] == 4 and any(note.startswith("only one class (only)") for note in sidecar["notes"])
    check = workbench_cli("data", "check", "solo", cwd=yard.root, env=yard.env)
    assert check.returncode == 0, check.stderr
    write_spec(yard.root, {**SWEEP_SPEC, "name": "solo", "dataset": {
        "source": "manifests", "manifests": [{"name": "solo"}]}})
    message = one_line_error(workbench_cli("run", "solo", cwd=yard.root, env=yard.env), code=2)
    assert message == "dataset solo: only one class (only); a classifier needs at least two"


def test_manifest_escape(yard):
    manifests = Path(yard.env["WORKBENCH_DATA"]) / "manifests"
    for suffix in (".csv", ".json"):
        (manifests / f"edited{suffix}").write_bytes((manifests / f"hostile{suffix}").read_bytes())
    frame = pd.read_csv(manifests / "edited.csv", dtype=str, keep_default_na=False)
    frame["source"] = "edited"
    escape = "../outside/face.jpg"   # from raw/hostile: a real image, outside the root
    frame.loc[frame["path"] == "bare/face-00.jpg", "path"] = escape
    frame.to_csv(manifests / "edited.csv", index=False)
    write_spec(yard.root, {**SWEEP_SPEC, "name": "on-edited", "dataset": {
        "source": "manifests", "manifests": [{"name": "edited", "classes": {"lonely": None}}]}})
    message = one_line_error(workbench_cli("data", "check", "on-edited", cwd=yard.root, env=yard.env), code=2)
    assert message.startswith(f"{manifests / 'edited'}.csv: row '{escape}' resolves outside "), message
    # Absolute paths and decoded copies outside the interim folder are refused alike.
    for path, decoded in (("/etc/hostname", ""), ("bare/face-00.jpg", "../../raw/outside/face.jpg")):
        row = pd.DataFrame({"source": ["hostile"], "path": [path], "decoded": [decoded]})
        with pytest.raises(DataError, match="resolves outside"):
            dataset.files(row, manifests)


def test_whole_corpus(yard, swept):
    from mlflow.tracking import MlflowClient

    check = workbench_cli("data", "check", "hostile", cwd=yard.root, env=yard.env)
    assert check.returncode == 0 and "no leak" in check.stdout, check.stdout + check.stderr
    params = MlflowClient(yard.env["MLFLOW_TRACKING_URI"]).get_run(swept).data.params
    trained = sum(int(params[f"images_{s}"]) for s in ("train", "val", "test"))
    assert trained == len(yard.manifest) - 1   # every kept image but the one-image class mapped to null
    # Deterministic: ingesting again elsewhere gives the same manifest and report, byte for byte.
    elsewhere = yard.root / "again"
    done = workbench_cli("data", "ingest", "folders", str(yard.root / "raw" / "hostile"), "--name", "hostile",
                         cwd=yard.root, env={**yard.env, "WORKBENCH_DATA": str(elsewhere)})
    assert done.returncode == 0, done.stderr
    manifests = Path(yard.env["WORKBENCH_DATA"]) / "manifests"
    for name in ("hostile.csv", "hostile.report.csv"):
        assert (elsewhere / "manifests" / name).read_bytes() == (manifests / name).read_bytes(), name


# --- predict ------------------------------------------------------------------------------------------

REFUSED = [c for c in FILE_CASES if c.predicts is False]
CLASSIFIED = [c for c in FILE_CASES if c.predicts]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.key)
def test_predict_refuses_a_bad_file_in_one_line_with_ingest_reason(yard, case):
    file = yard.files[case.key]
    message = one_line_error(workbench_cli("predict", file, "--model", "runs:/0/model", cwd=yard.root, env=yard.env))
    assert message == f"{ingest.printable(file)}: {yard.report[case.file]}"


def test_predict_sees_what_training_saw(yard, swept):

    from workbench.model import pipeline
    from workbench.ship import predict

    files = [yard.files[c.key] for c in CLASSIFIED]
    done = workbench_cli("predict", *files, "--model", f"runs:/{swept}/model", "--format", "json",
                         cwd=yard.root, env=yard.env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["image"] for r in results] == [ingest.printable(f) for f in files]

    kept = [c for c in CLASSIFIED if c.kept]
    rows = yard.manifest.loc[[c.file for c in kept]].reset_index(drop=True)
    rows["file"] = dataset.files(rows, Path(yard.env["WORKBENCH_DATA"]) / "manifests")
    classes = tuple(json.loads(done.stdout)["classes"])
    rows["label"] = classes[0]
    [(seen_in_training, _)] = list(pipeline.image_dataset(rows, classes, image_size=32, batch_size=64))
    seen_by_predict = np.stack([predict.to_input(predict.read_image(yard.files[c.key]), 32) for c in kept])
    # One resize for both: converted copies match exactly, and what is left for JPEGs is Pillow's
    # and TensorFlow's decoders rounding differently (1.3 to 1.7 levels on average here); a
    # transparent band shown black instead of white, or a sideways face, differs by far more.
    differences = np.abs(seen_by_predict - seen_in_training.numpy()).mean(axis=(1, 2, 3))
    assert differences.max() < 2.5, dict(zip([c.key for c in kept], differences.round(2)))
    assert (differences == 0).sum() >= len(kept) // 2, dict(zip([c.key for c in kept], differences.round(2)))

    model = predict.load_model(f"runs:/{swept}/model", yard.env["MLFLOW_TRACKING_URI"]).model
    training_view = predict.probabilities(model, seen_in_training.numpy())
    shown = np.array([[r["predictions"][0]["probabilities"][c] for c in classes] for r in results
                      if r["image"] in {ingest.printable(yard.files[c.key]) for c in kept}])
    assert np.abs(shown - training_view).max() < 0.05


# --- the README table ---------------------------------------------------------------------------------

def test_every_case_is_asserted_here():
    named = {c.key for c in DATASET_CASES}
    assert all(callable(globals().get(f"test_{key}")) for key in named), named - set(globals())
    assert {c.key for c in FILE_CASES} <= {c.key for c in hostile.DATA_CASES}
    assert {c.outcome for c in FILE_CASES if c.kept} <= {KEPT, COPIED}


def test_readme_table_is_generated_from_the_cases():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert hostile.readme_block(readme) == hostile.table(), \
        "README.md's hostile-input table is stale: run `PYTHONPATH=. python -m tests.hostile --write README.md`"


def test_raw_tree_is_untouched(yard, swept):
    # Last: after ingest, check, the sweep and predict have all read the tree.
    assert snapshot(yard.root / "raw") == yard.before
