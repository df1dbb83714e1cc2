"""One tiny trial, end to end: real training on real (small) images, logged into a temporary
MLflow store with everything a user expects to find in the UI."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from workbench import spec as S
from workbench import vocabulary
from workbench.data.balance import balanced as balance
from workbench.data.dataset import prepare
from workbench.model.train import train
from workbench.track import store as tracking
from workbench.track.run import tracked_run
from workbench.workspace import Workspace


@pytest.fixture
def store(workdir) -> str:
    return f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"


def test_train_returns_history_and_test_evaluation_without_any_tracking(tiny_spec):
    spec = S.load("tiny", ["balance=oversample", "augmentation=flip"])
    ws = Workspace()
    data = prepare(spec, ws)
    config = S.single_config(spec)
    # Data are materialised before training (oversampled copies written once, cached); train() only reads.
    balanced = balance(data, config.balance, ws, config.balance_target, config.seed)
    before = sorted(ws.data.rglob("*"))
    result = train(config, data, balanced, scratch=ws.scratch("cache"))
    assert sorted(ws.data.rglob("*")) == before  # train() wrote nothing
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1_macro"):
        assert len(result.history[key]) == 2, key
    metrics = result.evaluation.metrics
    classes = data.classes
    truth = [classes[i] for i in result.evaluation.y_true]
    assert truth == list(data.part("test")["label"])   # scored against the test split's own labels
    guessed = [classes[i] for i in result.evaluation.probabilities.argmax(axis=1)]
    for name, value in counted_scores(truth, guessed, classes).items():
        assert metrics[f"test_{name}"] == pytest.approx(value, abs=1e-9), name
    chosen = result.evaluation.probabilities[np.arange(len(truth)), result.evaluation.y_true]
    assert metrics["test_log_loss"] == pytest.approx(-np.log(np.clip(chosen, 1e-7, 1)).mean(), rel=1e-3)
    assert result.evaluation.confusion.sum() == len(data.part("test"))
    # Oversampling evens out the training classes.
    assert result.train_images == 3 * data.part("train")["label"].value_counts().max()
    # Everything the run records comes back as values: the cost probes and the mistakes to show.
    assert result.cost["total_params"] >= result.cost["trainable_params"] > 0 and result.cost["latency_ms_batch1"] > 0
    wrong = np.flatnonzero(result.evaluation.probabilities.argmax(axis=1) != result.evaluation.y_true)
    assert set(result.mistakes) <= set(wrong) and len(result.mistakes) == min(len(wrong), 16)
    assert result.mistake_images.shape == (len(result.mistakes), 32, 32, 3)


def test_a_run_logs_params_curves_metrics_artifacts_and_a_loadable_model(tiny_spec, store):
    spec = S.load("tiny")
    config = S.single_config(spec)
    ws = Workspace(tracking_uri=store)
    data = prepare(spec, ws)
    client = tracking.connect(store)
    experiment_id = tracking.ensure_experiment(client, spec.name)
    outcome = tracked_run(ws, client, spec, config, data, experiment_id=experiment_id)

    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[vocabulary.ROLE] == "run" and run.data.tags[vocabulary.STATE] == "finished"
    assert run.data.tags["workbench.seed"] == "7"
    for key, value in config.model_dump().items():
        assert run.data.params[key] == str(value)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1_macro"):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    metrics = run.data.metrics
    assert metrics["objective"] == pytest.approx(metrics["val_f1_macro"])
    # The training summary and the cost of the model.
    assert metrics["best_epoch"] in (1, 2) and "overfit_gap" in metrics and metrics["test_log_loss"] > 0
    assert metrics["total_params"] >= metrics["trainable_params"] > 0
    for key in ("model_size_mb", "latency_ms_batch1", "latency_ms_per_image_batch32", "train_seconds",
                "train_images_per_second"):
        assert metrics[key] > 0, key
    assert run.data.tags["workbench.device"].startswith("CPU")
    assert run.data.tags["workbench.spec_hash"] == spec.content_hash()
    assert run.data.tags["workbench.tensorflow_version"] and run.data.tags["workbench.keras_version"].startswith("3")

    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=outcome.run_id, tracking_uri=store))
    for name in ("evaluation/confusion_matrix.png", "evaluation/learning_curves.png",
                 "evaluation/most_confident_mistakes.png", "evaluation/figures.html",
                 "evaluation/classification_report.txt", "data/manifest.csv", "data/class_counts.csv"):
        assert (artifacts / name).stat().st_size > 0, name
    predictions = pd.read_csv(artifacts / "evaluation/test_predictions.csv")
    assert list(predictions["sha256"]) == list(data.part("test")["sha256"])
    assert (predictions["true"] == data.part("test")["label"]).all()
    # Every logged test score is the one the logged predictions give, counted here by hand.
    for name, value in counted_scores(list(predictions["true"]), list(predictions["predicted"]), data.classes).items():
        assert metrics[f"test_{name}"] == pytest.approx(value, abs=1e-9), name
    assert np.allclose(predictions[[f"p_{c}" for c in data.classes]].sum(axis=1), 1, atol=1e-4)
    html = (artifacts / "evaluation/figures.html").read_text()
    assert "<script src=" not in html and "Most confident mistakes" in html
    counts = json.loads((artifacts / "evaluation/confusion_matrix.json").read_text())
    assert counts["classes"] == list(data.classes)
    assert np.array(counts["matrix"]).sum() == len(data.part("test"))

    # Lineage: the dataset is an input of the run, identified by its digest.
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == data.digest

    with tracking.fluent(store):  # runs:/ addresses resolve in MLflow's current store only
        info = mlflow.models.get_model_info(f"runs:/{outcome.run_id}/model")
        assert info.signature is not None
        model = mlflow.pyfunc.load_model(f"runs:/{outcome.run_id}/model")
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    probabilities = np.asarray(model.predict(images))
    assert probabilities.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def counted_scores(truth: list[str], guessed: list[str], classes) -> dict[str, float]:
    """Accuracy and per-class and macro precision, recall and F1, by counting (no library)."""
    pairs = list(zip(truth, guessed))
    scores = {"accuracy": sum(t == g for t, g in pairs) / len(pairs)}
    for name in classes:
        hit = sum(t == g == name for t, g in pairs)
        said, real = sum(g == name for g in guessed), sum(t == name for t in truth)
        precision, recall = (hit / said if said else 0.0), (hit / real if real else 0.0)
        scores.update({f"precision_{name}": precision, f"recall_{name}": recall,
                       f"f1_{name}": 2 * precision * recall / (precision + recall) if hit else 0.0})
    for kind in ("precision", "recall", "f1"):
        scores[f"{kind}_macro"] = sum(scores[f"{kind}_{name}"] for name in classes) / len(classes)
    return scores


def test_same_seed_same_run(tiny_spec):
    spec = S.load("tiny", ["epochs=1"])
    ws = Workspace()
    data = prepare(spec, ws)
    first = train(S.single_config(spec), data, scratch=ws.scratch("cache"))
    second = train(S.single_config(spec), data, scratch=ws.scratch("cache"))
    assert first.history["loss"] == pytest.approx(second.history["loss"], rel=1e-4)
    assert first.evaluation.metrics == pytest.approx(second.evaluation.metrics)
