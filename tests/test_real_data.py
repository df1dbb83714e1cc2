"""Real datasets in, leakage out: trees in the reference studies' layouts (drawn with the
synthetic face renderer) are ingested from the command line, merged and re-mapped in a spec as
S1 did, split by group so a picture two datasets share never straddles a split, checked for
leaks, and trained on with the dataset's lineage logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
from conftest import workbench_in_process, write_spec
from mlflow.tracking import MlflowClient

from workbench import spec as S
from workbench.data.dataset import prepare
from workbench.data.synth import FaceAttributes, render_face
from workbench.track import store
from workbench.track.run import tracked_run
from workbench.workspace import Workspace

MASKED, BARE = FaceAttributes(mask=True, old=False, fake=False), FaceAttributes(mask=False, old=False, fake=False)


def face(path: Path, index: int, attrs: FaceAttributes, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), render_face(11, index, attrs, size))
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    fm = root / "Face Mask Dataset"
    index = 0
    for split, n in (("Train", 12), ("Validation", 4), ("Test", 4)):
        for cls, attrs in (("WithMask", MASKED), ("WithoutMask", BARE)):
            for _ in range(n):
                face(fm / split / cls / f"{index:04d}.png", index, attrs)
                index += 1
    # Face Mask 12K as published leaks: one training image also sits in its Test folder.
    shutil.copy(fm / "Train/WithMask/0000.png", fm / "Test/WithMask/dup-of-0000.png")
    yonsei = root / "real_and_fake_face"
    for k in range(10):
        face(yonsei / "training_real" / f"real_{k:05d}.jpg", 500 + k, BARE)
        level, region = ("easy", "mid", "hard")[k % 3], ("eyes", "nose", "mouth")[k % 3]
        face(yonsei / "training_fake" / f"{level}_{k}_1111.jpg", 600 + k,
             FaceAttributes(mask=False, old=False, fake=True, fake_region=region, difficulty=level))
    # The same picture in both datasets (the merge must keep its two copies in one split).
    shutil.copy(fm / "Train/WithoutMask/0012.png", yonsei / "training_real" / "shared.png")
    return root


@pytest.fixture
def ingested(workdir, raw):
    for source, folder, name in (("facemask12k", "Face Mask Dataset", "fm12k"),
                                 ("yonsei_realfake", "real_and_fake_face", "yonsei")):
        result = workbench_in_process("data", "ingest", source, str(raw / folder), "--name", name, cwd=workdir,
                                      env={"WORKBENCH_DATA": str(workdir / "data")})
        assert result.returncode == 0, result.stderr
        assert f"{name}:" in result.stdout and "kept" in result.stdout
    return workdir


S1 = {
    "name": "s1mini",
    "dataset": {"source": "manifests", "manifests": [
        {"name": "fm12k", "classes": {"WithMask": "with_mask", "WithoutMask": "real"}},
        {"name": "yonsei"}]},
    "split": {"train": 0.6, "val": 0.3, "test": 0.1},
    "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 1, "batch_size": 8, "dense_units": 8},
    "seed": 3,
}


def test_merged_spec_maps_classes_and_never_splits_a_shared_picture(ingested, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(ingested / "data"))
    write_spec(ingested, S1)
    data = prepare(S.load("s1mini"), Workspace())
    assert data.classes == ("fake", "real", "with_mask")
    counts = data.source_counts()
    assert counts.loc["real", "fm12k"] == 20 and counts.loc["real", "yonsei"] == 11
    assert counts.loc["fake", "yonsei"] == 10 and counts.loc["with_mask", "fm12k"] == 21
    assert data.frame.groupby("group_id")["split"].nunique().max() == 1
    shared = data.frame[data.frame["path"].str.endswith(("0012.png", "shared.png"))]
    assert len(shared) == 2 and shared["group_id"].nunique() == 1 and shared["source"].nunique() == 2

    check = workbench_in_process("data", "check", "s1mini", cwd=ingested, env={"WORKBENCH_DATA": str(ingested / "data")})
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no leak" in check.stdout and "shared between datasets: 1" in check.stdout


def test_published_split_leak_is_reported_with_a_non_zero_exit(ingested):
    check = workbench_in_process("data", "check", "fm12k", cwd=ingested, env={"WORKBENCH_DATA": str(ingested / "data")})
    assert check.returncode == 1
    assert "across splits: 1" in check.stdout
    assert check.stderr.strip().startswith("error: fm12k: 1 duplicate group(s) span two splits")


def test_keep_original_split_respects_the_dataset_folders(ingested, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(ingested / "data"))
    write_spec(ingested, {**S1, "name": "s3mini",
                          "dataset": {"source": "manifests", "manifests": [{"name": "fm12k"}]},
                          "split": {"keep_original_split": True}})
    data = prepare(S.load("s3mini"), Workspace())
    assert (data.frame["split"] == data.frame["original_split"]).all()
    assert data.counts().loc["WithMask", "test"] == 5


def test_a_run_on_merged_data_logs_its_lineage(ingested, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(ingested / "data"))
    write_spec(ingested, S1)
    spec = S.load("s1mini")
    uri = f"sqlite:///{ingested / 'mlruns' / 'mlflow.db'}"
    ws = Workspace(tracking_uri=uri)
    data = prepare(spec, ws)
    client = store.connect(uri)
    outcome = tracked_run(ws, client, spec, S.single_config(spec), data,
                          experiment_id=store.ensure_experiment(client, spec.name))
    run = MlflowClient(uri).get_run(outcome.run_id)
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest == data.digest and dataset.name == "fm12k+yonsei"
    assert int(run.data.params["images_train"]) + int(run.data.params["images_val"]) + \
        int(run.data.params["images_test"]) == len(data.frame)
    assert {"data/class_counts_by_source.csv", "data/manifest.csv"} <= {
        f.path for f in MlflowClient(uri).list_artifacts(outcome.run_id, "data")}
