"""The reference studies one command away: every spec in experiments/ runs end to end with
`--smoke` on a generated tree in its study's real folder layout (ingest, leak check, sweep and,
for S4, the TFLite export of its champion), a study whose data is missing says in one line where
it was expected and how to get it, `--data` points a spec at another folder, and S3's published
splits lose their cross-split duplicates with a count of what was left out."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import REPO, workbench_cli, workbench_in_process
from mlflow.tracking import MlflowClient

from workbench import spec as S
from workbench.api import Workspace as WorkbenchWorkspace
from workbench.data import synth
from workbench.data.dataset import folds, prepare
from workbench.workspace import Workspace

STUDIES = {  # spec: (classes, whether it ships a TFLite file)
    "s1_merge_vgg16_mobilenet": ("fake, real, with_mask", False),
    "s2_mask_age_xception_densenet": ("mask_old, mask_young, nomask_old, nomask_young", False),
    "s3_facemask12k_custom_cnn": ("WithMask, WithoutMask", False),
    "s4_maskv1_baseline_mobilenet": ("Mask, No_mask", True),
    "quickstart": ("fake, real, with_mask", False),
}


@pytest.mark.parametrize("name", STUDIES)
def test_every_spec_runs_end_to_end_in_smoke_mode(repo_experiments, workdir, name):
    classes, ships = STUDIES[name]
    # quickstart (what `make sweep` runs) through the console script; the studies through its entry
    # point in-process, which saves each one TensorFlow's and MLflow's imports.
    run = workbench_cli if name == "quickstart" else workbench_in_process
    # S2's second trial would train Xception or MobileNetV2 on top of DenseNet169 (the published
    # configuration, enqueued first): 20 s more of the suite for no path the others do not take.
    trials = 1 if name == "s2_mask_age_xception_densenet" else 2
    result = run("sweep", name, "--smoke", *(["--trials", "1"] if trials == 1 else []), cwd=workdir,
                 env={"WORKBENCH_DATA": str(workdir / "data")})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"classes {classes}" in lines[0] and "leak check: no image has a copy in another split" in lines[1], lines[:2]
    assert f"[{trials}/{trials}] trial" in result.stdout and "Traceback" not in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{name}-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`workbench.role` = 'trial'")
    assert len(runs) == trials and all(r.info.status == "FINISHED" for r in runs)
    spec = S.load(name)
    if spec.enqueue:  # the published configuration runs first
        first = min(runs, key=lambda r: int(r.data.tags["workbench.trial"]))
        for key, value in spec.enqueue[0].items():
            if key not in S.SMOKE_PARAMS:
                assert first.data.params[key] == str(value), key
    if spec.dataset.source == "manifests":  # the smoke tree is in the study's own layout
        root = workdir / "data" / "smoke" / f"{name}-smoke" / "raw"
        assert {p.name for p in root.iterdir()} == {m.path for m in spec.dataset.manifests}
    if ships:
        assert "shipped: run" in result.stdout and "agreement with Keras 100.00%" in result.stdout
        [exported] = (workdir / "exports" / "s4-mask-smoke").glob("*.tflite")
        assert exported.name.startswith("s4-mask-smoke-v1-") and exported.stat().st_size > 0


def test_missing_data_is_one_line_naming_the_folder_and_how_to_get_it(repo_experiments, workdir):
    result = workbench_in_process("sweep", "s1_merge_vgg16_mobilenet", cwd=workdir,
                                  env={"WORKBENCH_DATA": str(workdir / "data"), "WORKBENCH_RAW": ""})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: dataset facemask12k: no folder ") and "data/raw/Face Mask Dataset" in line
    assert "{Train,Validation,Test}/{WithMask,WithoutMask}" in line
    assert "ashishjangra27/face-mask-12k-images-dataset" in line and "--data DIR" in line


def test_data_points_a_spec_at_another_folder_and_a_changed_folder_is_ingested_again(repo_experiments, workdir,
                                                                                      tmp_path, monkeypatch):
    elsewhere = tmp_path / "downloads"
    synth.generate_layout(elsewhere / "Mask_Datasets", "maskdataset_v1", per_class=12, size=32)
    monkeypatch.setenv("WORKBENCH_RAW", str(elsewhere))
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    spec = S.load("s4_maskv1_baseline_mobilenet")
    first = prepare(spec, Workspace())
    assert len(first.frame) == 24 and first.frame["file"].str.startswith(str(elsewhere)).all()
    extra = next((elsewhere / "Mask_Datasets" / "Train" / "Mask").iterdir())
    shutil.copy(extra, extra.with_name("another.jpg"))   # an exact duplicate lands in the folder
    again = prepare(spec, Workspace())
    assert len(again.frame) == 25  # re-ingested, and the copy is grouped with its original
    groups = again.frame.groupby("group_id")["split"].nunique()
    assert groups.max() == 1


def test_published_splits_lose_their_cross_split_copies_and_say_how_many(repo_experiments, workdir, tmp_path,
                                                                        monkeypatch):
    raw = tmp_path / "raw"
    root = synth.generate_layout(raw / "Face Mask Dataset", "facemask12k", per_class=15, size=32)
    # Face Mask 12K's published folders share images: copy three test images into Train.
    test_images = sorted((root / "Test" / "WithMask").iterdir())[:3]
    for image in test_images:
        shutil.copy(image, root / "Train" / "WithMask" / f"copy_{image.name}")
    monkeypatch.setenv("WORKBENCH_RAW", str(raw))
    monkeypatch.setenv("WORKBENCH_DATA", str(workdir / "data"))
    data = prepare(S.load("s3_facemask12k_custom_cnn"), Workspace())
    assert data.left_out == {"copies of test images in the published training or validation split": 3}
    assert "left out 3 copies of test images" in data.describe()
    counts = data.frame.groupby("split").size()
    assert counts["test"] == 6 and counts["train"] == 18  # the published test set is kept whole
    assert data.frame.groupby("group_id")["split"].nunique().max() == 1
    shared = set(data.part("train")["sha256"]) & set(data.part("test")["sha256"])
    assert not shared
    check = workbench_in_process("data", "check", "s3_facemask12k_custom_cnn", cwd=workdir,
                                 env={"WORKBENCH_RAW": str(raw), "WORKBENCH_DATA": str(workdir / "data")})
    assert check.returncode == 0 and "no leak" in check.stdout, check.stdout + check.stderr


def test_smoke_keeps_the_study_but_shrinks_it():
    spec = S.load(REPO / "experiments" / "s2_mask_age_xception_densenet.yaml")
    small = S.smoke(spec)
    assert small.name == "s2_mask_age_xception_densenet-smoke" and small.trials == 2
    assert small.params.backbone.values == spec.params.backbone.values
    assert small.backbone_params["xception"]["image_size"] == 71  # its minimum
    assert small.backbone_params["xception"]["cut_at"] == "block13_pool"
    config = S.single_config(small)
    assert (config.epochs, config.weights, config.eager) == (1, "none", True)
    assert [p["backbone"] for p in small.enqueue] == ["densenet169", "xception"]
    assert pd.Series([m.name for m in small.dataset.manifests]).tolist() == ["mask_age4"]


def test_the_transfer_spec_holds_its_second_source_out_on_the_real_layouts(repo_experiments, workdir):
    # mask_transfer merges two studies' datasets under one pair of classes and chooses on the
    # second: on generated trees in both real layouts, both train in the merge, one in the fold.
    done = workbench_in_process("data", "check", "mask_transfer", "--smoke", cwd=workdir,
                                env={"WORKBENCH_DATA": str(workdir / "data")})
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [line for line in done.stdout.splitlines() if "held out" in line]
    assert "(maskdataset_v1 held out)" in line and "classes with_mask, without_mask" in line
    ws = WorkbenchWorkspace(workdir, data=workdir / "data")
    spec, smoke_ws = ws.for_spec(ws.spec("mask_transfer", smoke=True), smoke=True)
    merged = prepare(spec, smoke_ws)
    [fold] = folds(spec, merged)
    assert set(merged.part("train")["source"]) == {"facemask12k", "maskdataset_v1"}
    assert set(fold.part("train")["source"]) == {"facemask12k"}
    assert set(fold.part("val")["source"]) == set(fold.part("test")["source"]) == {"maskdataset_v1"}
