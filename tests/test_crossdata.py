"""Beyond one dataset: `evaluate` scores a model on another dataset leaving out exactly the images
it trained or validated on (planted exact and near copies), `matrix` trains once per merged
dataset and fills a train x test table. (Repeats, a configuration trained on several seeds, are
shown in test_transfer.py, whose effect is measured against their spread.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import pytest
from conftest import workbench_in_process, write_spec
from mlflow.tracking import MlflowClient

from workbench import spec as S
from workbench import vocabulary
from workbench.analysis import crossdata
from workbench.data import synth
from workbench.data.dataset import prepare
from workbench.track import store
from workbench.track.run import tracked_run
from workbench.workspace import Workspace


def two_class_spec(name: str, manifests: list[dict], **extra) -> dict:
    return {"name": name, "dataset": {"source": "manifests", "manifests": manifests},
            "split": {"train": 0.6, "val": 0.2, "test": 0.2},
            "params": {"backbone": "simple_cnn", "image_size": 32, "epochs": 1, "batch_size": 16, "dense_units": 16},
            "trials": 1, "seed": 3, **extra}


@pytest.fixture
def own_data(workdir, monkeypatch):
    """Two small photo-like folders in the `folders` layout, under the raw-data root."""
    raw = workdir / "raw"
    monkeypatch.setenv("WORKBENCH_RAW", str(raw))
    monkeypatch.setenv("WORKBENCH_DATA", str(workdir / "data"))
    synth.generate(raw / "first", "mask2", seed=1, size=32, count=60)
    synth.generate(raw / "second", "mask2", seed=2, size=32, count=40)
    return raw


def test_evaluate_leaves_out_exactly_the_images_the_model_saw(own_data, workdir):
    write_spec(workdir, two_class_spec("first", [{"name": "first", "adapter": "folders", "path": "first"}]))
    spec = S.load("first")
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    ws = Workspace(tracking_uri=uri)
    data = prepare(spec, ws)
    client = store.connect(uri)
    outcome = tracked_run(ws, client, spec, S.first_config(spec), data,
                          experiment_id=store.ensure_experiment(client, "first"))

    # Plant into the second dataset: 3 exact copies and 2 re-encoded (near) copies of images the
    # model trained or validated on, and 2 copies of its test images (which it never saw).
    target = own_data / "second" / "with_mask"
    seen = data.frame[data.frame["split"].isin(("train", "val"))]
    seen = seen[seen["label"] == "with_mask"]
    for i, file in enumerate(seen["file"].iloc[:3]):
        shutil.copy(file, target / f"planted_exact_{i}.jpg")
    for i, file in enumerate(seen["file"].iloc[3:5]):
        image = cv2.imread(file)
        cv2.imwrite(str(target / f"planted_near_{i}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 60])
    test = data.part("test")
    for i, file in enumerate(test[test["label"] == "with_mask"]["file"].iloc[:2]):
        shutil.copy(file, target / f"unseen_test_{i}.jpg")
    ingested = workbench_in_process("data", "ingest", "folders", str(own_data / "second"), "--name", "second", cwd=workdir)
    assert ingested.returncode == 0, ingested.stderr

    honest = crossdata.evaluate_model(ws, client, f"runs:/{outcome.run_id}/model", "second")
    assert honest.excluded_seen == 5 and honest.images == 40 + 2
    everything = crossdata.evaluate_model(ws, client, f"runs:/{outcome.run_id}/model", "second", include_seen=True)
    assert everything.excluded_seen == 0 and everything.images == 47

    run = client.get_run(honest.run_id)
    assert run.data.tags["workbench.role"] == "evaluation" and run.data.tags[vocabulary.MODEL_RUN] == outcome.run_id
    assert run.data.metrics["excluded_seen"] == 5 and run.data.metrics["images_evaluated"] == 42
    m = run.data.metrics
    assert m["eval_second_f1_macro_low"] <= m["eval_second_f1_macro"] <= m["eval_second_f1_macro_high"]
    assert m["eval_second_accuracy"] == pytest.approx(honest.metrics["test_accuracy"])
    artifacts = {f.path for f in client.list_artifacts(honest.run_id, "evaluation")}
    for name in ("confusion_matrix.png", "figures.html", "test_predictions.csv", "confusion_matrix.json",
                 "most_confident_mistakes.png", "classification_report.txt"):
        assert f"evaluation/{name}" in artifacts, name

    # Labels the model does not know: one line, unless mapped (or mapped to null: left out).
    (own_data / "third" / "covered").mkdir(parents=True)
    for file in list((own_data / "second" / "with_mask").iterdir())[:6]:
        shutil.copy(file, own_data / "third" / "covered" / file.name)
    shutil.copytree(own_data / "second" / "without_mask", own_data / "third" / "bare")
    workbench_in_process("data", "ingest", "folders", str(own_data / "third"), "--name", "third", cwd=workdir)
    cli = workbench_in_process("evaluate", "--model", f"runs:/{outcome.run_id}/model", "--data", "third",
                               "--tracking-uri", uri, cwd=workdir)
    assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1
    assert "label(s) bare, covered are not classes of the model" in cli.stderr and "--classes" in cli.stderr
    mapped = workbench_in_process("evaluate", "--model", f"runs:/{outcome.run_id}/model", "--data", "third",
                                  "--classes", "covered: with_mask, bare: without_mask", "--tracking-uri", uri, cwd=workdir)
    assert mapped.returncode == 0, mapped.stderr
    assert "macro-F1" in mapped.stdout and "left out" in mapped.stdout

    # One class of the model's mapped out: counted and said; averages over the class present,
    # the printed figures are the logged report's, and the absent class gets no 0.0 of its own.
    single = workbench_in_process("evaluate", "--model", f"runs:/{outcome.run_id}/model", "--data", "third",
                                  "--classes", "covered: null, bare: without_mask", "--tracking-uri", uri, cwd=workdir)
    assert single.returncode == 0, single.stderr
    said = " ".join(single.stdout.split())
    bare = len(list((own_data / "third" / "bare").iterdir()))
    assert "6 mapped to null by --classes" in said and "absent from the data: with_mask" in said, said
    run = client.get_run(re.search(r"evaluation run ([0-9a-f]{32})", said).group(1))
    m = run.data.metrics
    assert m["images_evaluated"] + m["excluded_seen"] == bare and m["excluded_mapped_out"] == 6
    assert "eval_third_f1_with_mask" not in m and run.data.tags["workbench.classes_absent"] == "with_mask"
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/classification_report.json",
                                                       str(workdir))).read_text())
    assert report["macro avg"]["f1-score"] == pytest.approx(m["eval_third_f1_macro"])
    printed = re.search(r"macro-F1 (\d\.\d{3}) \[", said).group(1)
    assert printed == f"{m['eval_third_f1_macro']:.3f}" and "with_mask" not in report


def test_matrix_has_a_row_and_a_column_per_source(own_data, workdir):
    manifests = [{"name": "first", "adapter": "folders", "path": "first"},
                 {"name": "second", "adapter": "folders", "path": "second"}]
    write_spec(workdir, two_class_spec("both", manifests))
    result = workbench_in_process("matrix", "both", cwd=workdir, env={"WORKBENCH_RAW": str(own_data),
                                                                       "WORKBENCH_DATA": str(workdir / "data")})
    assert result.returncode == 0, result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("both").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`workbench.role` = 'matrix'")
    assert parent.info.status == "FINISHED"
    table = crossdata.pd.read_csv(client.download_artifacts(parent.info.run_id, "matrix/matrix.csv", str(workdir)))
    assert sorted(zip(table["trained_on"], table["tested_on"])) == [
        ("first", "first"), ("first", "second"), ("second", "first"), ("second", "second")]
    assert (table["test_f1_macro_low"] <= table["test_f1_macro"]).all()
    assert (table["test_f1_macro"] <= table["test_f1_macro_high"]).all()
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    roles = sorted(r.data.tags["workbench.role"] for r in children)
    assert roles == ["evaluation"] * 4 + ["run"] * 2
    assert {f"f1_{s}_on_{t}" for s in ("first", "second") for t in ("first", "second")} <= set(parent.data.metrics)
    assert "trained on first, tested on second" in result.stdout
