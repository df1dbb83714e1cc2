"""Learning is asserted, not assumed: a model trained the way `make sweep` trains one must have
learned a task the tests show is learnable, and every later stage must keep what it learned.

The store behind these tests (conftest's `learned`) holds a two-trial sweep of LEARN, mask / no mask at
32 px, swept and promoted through the console script. Its margins are ones a broken pipeline
cannot reach: labels shuffled against images, doubled or missing preprocessing, or test images
augmented leave the model near chance (0.5) or make its logged figures disagree with its
model, and a class order that differs between training and prediction names faces wrongly."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import LEARNED_CLASS_FLOOR, LEARNED_FLOOR, fresh_faces, workbench_cli
from mlflow.tracking import MlflowClient

from workbench import vocabulary


@pytest.fixture(scope="module")
def trial(learned):
    """The champion's run: the trial the sweep's validation objective ranked first."""
    return MlflowClient(learned.uri).get_run(learned.run_id)


def test_every_trained_model_beats_chance_by_a_wide_margin_on_every_class(learned):
    client = MlflowClient(learned.uri)
    assert learned.classes == ("with_mask", "without_mask") and len(learned.trials) == 2
    assert learned.run_id == learned.trials[0]   # promote shipped the best on validation
    for run_id in learned.trials:
        run = client.get_run(run_id)
        metrics = run.data.metrics
        assert run.data.tags[vocabulary.STATE] == "finished"
        assert metrics["test_accuracy"] >= LEARNED_FLOOR, metrics["test_accuracy"]
        # Selection is on validation: it must have learned there too, not only on test.
        # With restore_best the objective is the best epoch's score (training on 2 CPU threads is not
        # bit-for-bit repeatable, and the last epoch is not always the best).
        assert metrics["objective"] == metrics["best_val_f1_macro"] >= LEARNED_FLOOR
        for name in learned.classes:
            assert metrics[f"test_recall_{name}"] >= LEARNED_CLASS_FLOOR, (name, metrics)
        # The curves say it learned: training loss fell from the first epoch to the last.
        losses = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
        assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses


def test_logged_test_figures_are_the_models_own_predictions_on_unaugmented_images(learned, trial):
    """Reload the logged model, feed it the test images exactly as they are on disk, and get the
    logged probabilities back: a test split that was augmented, shuffled against its labels or
    scored by another model would not."""
    import tensorflow as tf

    from workbench.model import pipeline

    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=learned.run_id, tracking_uri=learned.uri))
    logged = pd.read_csv(artifacts / "evaluation" / "test_predictions.csv")
    manifest = pd.read_csv(artifacts / "data" / "manifest.csv")
    test = manifest[manifest["split"] == "test"].set_index("sha256").loc[logged["sha256"]]
    assert list(test["label"]) == list(logged["true"])          # labels travel with their images
    mlflow.set_tracking_uri(learned.uri)   # the model's runs:/ address resolves in the learned store
    model = mlflow.keras.load_model(f"runs:/{learned.run_id}/model")
    files = [str(learned.root / "data" / "synthetic" / "mask2-32px-n800-seed7" / path) for path in test["path"]]
    images = pipeline.load_images(files, 32).astype("float32")
    again = model.predict(tf.constant(images), verbose=0)
    columns = [f"p_{name}" for name in learned.classes]
    np.testing.assert_allclose(logged[columns].to_numpy(), again, atol=2e-4)
    accuracy = (np.asarray(learned.classes)[again.argmax(axis=1)] == logged["true"]).mean()
    assert accuracy == pytest.approx(trial.data.metrics["test_accuracy"], abs=1e-6)


def test_predict_names_freshly_rendered_faces_of_each_class(learned, tmp_path):
    """Faces of another seed, the same person with and without a mask, through `workbench
    predict` as a user runs it: a class order or preprocessing that differs between training
    and prediction names them wrongly."""
    faces = fresh_faces(tmp_path / "faces")
    files = [str(f) for label in learned.classes for f in faces[label]]
    done = workbench_cli("predict", *files, "--model", "faces", "--format", "json", cwd=learned.root,
                         env=learned.env())
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["classes"] == list(learned.classes)
    named = {r["image"]: r["predictions"][0]["class"] for r in payload["results"]}
    recalls = {label: np.mean([named[str(f)] == label for f in faces[label]]) for label in learned.classes}
    assert min(recalls.values()) >= LEARNED_CLASS_FLOOR, recalls
    assert np.mean(list(recalls.values())) >= LEARNED_FLOOR, recalls


# Which way each metric a trial logs improves, written out by hand: the oracle `vocabulary.better`
# is checked against, so inverting the rule for any one metric fails here.
LOWER_IS_BETTER = {
    "loss", "val_loss", "test_log_loss", "test_ece", "overfit_gap", "overfit_gap_loss", "latency_ms_batch1",
    "latency_ms_per_image_batch32", "model_size_mb", "total_params", "trainable_params", "frozen_params",
    "train_seconds", "train_cpu_seconds", "test_ece_calibrated", "test_brier", "test_brier_calibrated",
    "test_log_loss_calibrated", "label_issues", "label_issue_rate",
}
HIGHER_IS_BETTER = {
    "accuracy", "val_accuracy", "val_f1_macro", "best_val_f1_macro", "final_train_accuracy", "final_val_accuracy",
    "objective", "test_accuracy", "test_f1_macro", "test_f1_weighted", "test_precision_macro",
    "test_precision_weighted", "test_recall_macro", "test_recall_weighted", "test_roc_auc_ovr",
    "train_images_per_second", "test_f1_with_mask", "test_f1_without_mask", "test_precision_with_mask",
    "test_precision_without_mask", "test_recall_with_mask", "test_recall_without_mask",
}
# Counts and positions that rank nothing; `better` may say either, no command sorts by them.
NEITHER = {"best_epoch", "epochs_run", "train_images", "lr", "temperature"}


def test_every_metric_a_trial_logs_ranks_the_way_it_improves(trial):
    logged = set(trial.data.metrics)
    assert logged == LOWER_IS_BETTER | HIGHER_IS_BETTER | NEITHER, "a metric is new or gone: classify it above"
    wrong = {m for m in LOWER_IS_BETTER if vocabulary.better(m) != "min"} | \
            {m for m in HIGHER_IS_BETTER if vocabulary.better(m) != "max"}
    assert not wrong, wrong
    # A run's objective follows the metric it stands for; a group's mean follows its metric.
    assert (vocabulary.better("objective", "val_loss"), vocabulary.better("objective", "val_f1_macro")) == ("min", "max")
    assert (vocabulary.better("test_ece_mean"), vocabulary.better("test_f1_macro_mean")) == ("min", "max")
    # Beside a transfer objective: its in-distribution twin follows it; the gap is smaller when better.
    home = vocabulary.IN_DISTRIBUTION
    assert [vocabulary.better(home, m) for m in ("val_loss", "val_f1_macro")] == ["min", "max"]
    assert vocabulary.better(vocabulary.TRANSFER_GAP) == "min"
    # Per-class scores are scores whatever the class is called.
    assert vocabulary.better("test_f1_hair_loss") == vocabulary.better("test_recall_small_size") == "max"


def test_version_prints_what_every_run_records(trial):
    from conftest import workbench_in_process

    said = workbench_in_process("--version", cwd=Path.cwd())
    assert said.returncode == 0
    printed = dict(zip(*[iter(said.stdout.split())] * 2))
    assert list(printed) == ["workbench", "tensorflow", "keras", "mlflow", "optuna"]
    tags = trial.data.tags
    assert printed == {"workbench": tags["workbench.version"], "tensorflow": tags["workbench.tensorflow_version"],
                       "keras": tags["workbench.keras_version"], "mlflow": tags["workbench.mlflow_version"],
                       "optuna": tags["workbench.optuna_version"]}
