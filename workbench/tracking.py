"""The MLflow edge: where runs are stored and how a finished training is written into a run.

The tracking store is chosen by URI (default `sqlite:///mlruns/mlflow.db`, or an MLflow server a
team shares); with a local SQLite store, artifacts go under `mlruns/artifacts/<experiment>/`
beside the database so the whole record is one folder. `log_result` turns the values `train()`
returned into metrics, figures, reports and a model that `mlflow.pyfunc.load_model` can load.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from workbench.errors import TrackingError

# Every run carries these, so the MLflow UI and `compare` can tell sweeps from trials.
ROLE, TRIAL, STATE, SPEC, SPEC_HASH = ("workbench.role", "workbench.trial", "workbench.state",
                                       "workbench.spec", "workbench.spec_hash")

logging.getLogger("mlflow").setLevel(logging.WARNING)
# MLflow registers the local-file dataset source twice and then warns that a path is ambiguous.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


def connect(tracking_uri: str) -> MlflowClient:
    """Point MLflow at a store, creating a local SQLite database's folder on first use."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
    elif parsed.scheme in ("", "file"):
        raise TrackingError(f"--tracking-uri {tracking_uri}: MLflow 3 no longer accepts a file store; "
                            "use sqlite:///path/to/mlflow.db or an http(s):// server")
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri)


def artifact_root(tracking_uri: str) -> str | None:
    """Local SQLite stores keep artifacts beside the database; servers decide for themselves."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db.parent / "artifacts").resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    root = artifact_root(tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except MlflowException:
        # Another worker created it between our look-up and create: use theirs.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def version_tags() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"workbench.tensorflow_version": tf.__version__, "workbench.keras_version": keras.__version__,
            "workbench.mlflow_version": mlflow.__version__}


def epoch_logger():
    """A Keras callback that streams each epoch's logs to the active MLflow run (step = epoch)."""
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: mlflow.log_metrics(
        {k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1))


def log_dataset(data) -> None:
    """Lineage: the split manifest as an MLflow dataset input, its class counts and the file itself."""
    columns = [c for c in ("source", "path", "sha256", "label", "original_label", "group_id", "split")
               if c in data.frame.columns]
    frame = data.frame[columns]
    mlflow.log_input(mlflow.data.from_pandas(frame, source=data.source, name=data.name,
                                             digest=data.digest, targets="label"), context="training")
    counts = data.counts()
    mlflow.log_params({f"images_{split}": int(counts[split].sum()) for split in ("train", "val", "test")})
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(Path(tmp) / "manifest.csv", index=False)
        counts.to_csv(Path(tmp) / "class_counts.csv")
        data.source_counts().to_csv(Path(tmp) / "class_counts_by_source.csv")
        mlflow.log_artifacts(tmp, artifact_path="data")


def log_result(result, config, classes) -> dict[str, float]:
    """Everything a finished training leaves behind, written into the active run: metrics
    (quality, training summary, cost), figures as PNG plus one interactive HTML page, the
    reports, and the model. Returns the metrics it logged."""
    import matplotlib.pyplot as plt

    from workbench import cost, figures
    from workbench.evaluate import most_confident_mistakes, training_summary

    evaluation = result.evaluation
    metrics = {**evaluation.metrics, **training_summary(result.history), **result.timings,
               **cost.measure(result.model, config.image_size), "train_images": result.train_images}
    mlflow.log_metrics(metrics)
    mlflow.set_tags({"workbench.device": result.runtime.device,
                     "workbench.mixed_precision": str(result.runtime.mixed_precision).lower(),
                     "workbench.xla": str(result.runtime.xla).lower()})
    pairs = figures.figure_pairs(evaluation, result.history, phase_boundary=result.phase_boundary)
    # Only the mistakes shown in the grid are read back from disk, not the whole test split.
    shown = most_confident_mistakes(evaluation.y_true, evaluation.probabilities, k=16)
    images = load_images([result.test_frame["file"].iloc[i] for i in shown], config.image_size)
    pairs["most_confident_mistakes"] = figures.mistakes_grid(
        images, evaluation.y_true[shown], evaluation.probabilities[shown], evaluation.classes)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (png, _) in pairs.items():
            png.savefig(Path(tmp) / f"{name}.png", dpi=110, bbox_inches="tight")
            plt.close(png)
        figures.write_html_page({name: html for name, (_, html) in pairs.items() if html is not None},
                                Path(tmp) / "figures.html", title="workbench run: evaluation")
        Path(tmp, "classification_report.txt").write_text(evaluation.report_text)
        mlflow.log_artifacts(tmp, artifact_path="evaluation")
    log_predictions(result.test_frame, evaluation)
    mlflow.log_dict(evaluation.confusion_json(), "evaluation/confusion_matrix.json")
    mlflow.log_dict(evaluation.report, "evaluation/classification_report.json")
    mlflow.log_dict(result.history, "evaluation/history.json")
    log_model(result.model, config, classes)
    return metrics


PREDICTIONS = "evaluation/test_predictions.csv"


def log_predictions(test_frame, evaluation) -> None:
    """Per-image test predictions, keyed by content hash: what paired tests between runs
    (McNemar, bootstrap) need, and what proves two runs were scored on the same images."""
    import pandas as pd

    table = pd.DataFrame({"sha256": test_frame["sha256"].to_numpy(), "path": test_frame["path"].to_numpy(),
                          "true": [evaluation.classes[i] for i in evaluation.y_true],
                          "predicted": [evaluation.classes[i] for i in evaluation.probabilities.argmax(axis=1)]})
    for i, name in enumerate(evaluation.classes):
        table[f"p_{name}"] = evaluation.probabilities[:, i].round(6)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS).name
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=str(Path(PREDICTIONS).parent))


def load_images(files: list[str], size: int):
    """Images as the model saw them (RGB, resized), for figures; a few files, not a split."""
    import cv2
    import numpy as np

    images = [cv2.resize(cv2.cvtColor(cv2.imread(f, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), (size, size),
                         interpolation=cv2.INTER_AREA) for f in files]
    return np.stack(images) if images else np.zeros((0, size, size, 3), dtype="uint8")


def log_model(model, config, classes) -> None:
    """The Keras model with its signature: float32 RGB pixels in [0, 255] -> class probabilities."""
    import keras
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    example = np.zeros((1, config.image_size, config.image_size, 3), dtype="float32")
    signature = infer_signature(example, model.predict(example, verbose=0))
    # Explicit requirements: MLflow's inference would re-load the model in a subprocess (slow).
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]
    # No input_example: MLflow 3.17's Keras flavour fails to save one for image tensors.
    mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements,
                           metadata={"classes": list(classes), "image_size": config.image_size})
    mlflow.log_dict({"classes": list(classes)}, "model_labels.json")


def quiet_environment() -> None:
    """Keep progress bars and TensorFlow's start-up chatter out of the user's terminal and CI logs.

    TensorFlow's C++ layer prints CUDA probing and oneDNN notices straight to file descriptor 2
    before its logging is configured, where TF_CPP_MIN_LOG_LEVEL cannot reach them; so the first
    import happens here with that descriptor pointed at /dev/null. Python errors still surface:
    an exception raised by the import propagates after the descriptor is restored."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "tensorflow" in sys.modules or os.environ.get("WORKBENCH_TF_VERBOSE"):
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
