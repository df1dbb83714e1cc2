"""Exporting a shipped model for phones and edge devices: TensorFlow Lite, checked against Keras.

A TFLite file is only worth shipping if it decides like the model it came from, so every export
is scored on real images: by default the source run's own test split, read back from the run's
`data/manifest.csv` and found through the datasets' manifests in `data/manifests/` (synthetic or
photographed, by the same rule training used), each file checked against the manifest's sha256 so
the images are exactly those the run was tested on. `--images DIR` scores any folder instead; when neither is available the check runs on random
pixels and says so. The figure is the share of images whose predicted class is the same; under
the bar (99.5 % by default) the export fails. It is logged on the source run as `tflite_agreement`
with `tflite_size_mb`, and a passing export's `<name>-v<version>-<quantize>.tflite` and
`.labels.txt` go under `tflite/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench import vocabulary
from workbench.errors import WorkbenchError, first_line
from workbench.ship.predict import (
    IMAGE_SUFFIXES,
    LoadedModel,
    image_files,
    probabilities,
    read_image,
    to_input,
)
from workbench.vocabulary import Artifacts
from workbench.workspace import Workspace

QUANTIZE = ("none", "dynamic", "float16")
MIN_AGREEMENT = 0.995
MAX_IMAGES = 500
RANDOM_IMAGES = 64


class ExportError(WorkbenchError):
    """The model cannot be exported, or its export does not decide like the original."""


@dataclass(frozen=True)
class ParityImages:
    images: np.ndarray          # (n, size, size, 3) float32 RGB in [0, 255]
    source: str                 # what they are, in words, for the user and the run's tags


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    tflite_path: Path
    labels_path: Path
    size_mb: float
    agreement: float
    images: int
    images_source: str
    run_id: str | None
    quantize: str
    passed: bool


# --- conversion and inference ------------------------------------------------------------------------

def convert(model, quantize: str = "none") -> bytes:
    """The Keras model as a TFLite flatbuffer, weights optionally quantized."""
    import tensorflow as tf

    if quantize not in QUANTIZE:
        raise ExportError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE)}")

    def configure(converter):
        if quantize in ("dynamic", "float16"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter

    # Both paths write a SavedModel and list its signatures on stdout: keep a command's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return configure(tf.lite.TFLiteConverter.from_keras_model(model)).convert()
        except Exception:  # Keras 3 models that the Keras path cannot trace go through a SavedModel
            with tempfile.TemporaryDirectory() as tmp:
                model.export(f"{tmp}/saved_model")
                try:
                    return configure(tf.lite.TFLiteConverter.from_saved_model(f"{tmp}/saved_model")).convert()
                except Exception as err:
                    raise ExportError(f"TFLite conversion failed ({first_line(err)[:200]}); the model may use an "
                                      "operation TFLite lacks") from None


def _interpreter(content: bytes):
    try:  # LiteRT is TFLite's successor; tf.lite.Interpreter still works but warns that it is deprecated
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(model_content=content)
    return Interpreter(model_content=content)


@contextlib.contextmanager
def _quiet_native_stderr():
    """TFLite's C++ runtime announces its CPU delegate straight on file descriptor 2; Python
    exceptions are unaffected (they propagate, they are not printed here)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tflite_probabilities(content: bytes, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out, current = [], None
    with _quiet_native_stderr():
        interpreter = _interpreter(content)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch].astype(source["dtype"])
            if current != len(chunk):  # the batch dimension is dynamic: size it once per chunk length
                interpreter.resize_tensor_input(source["index"], list(chunk.shape))
                interpreter.allocate_tensors()
                current = len(chunk)
            interpreter.set_tensor(source["index"], chunk)
            interpreter.invoke()
            out.append(np.array(interpreter.get_tensor(target["index"]), dtype="float32"))
    return np.concatenate(out) if out else np.zeros((0, 0), "float32")


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose argmax (the predicted class) is the same."""
    if len(reference) == 0:
        raise ExportError("no images to compare the TFLite model with")
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


# --- the images the check runs on ------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locate_test_files(manifest, manifests_dir: Path) -> list[Path]:
    """The run's test images on this machine (read through the datasets' own manifests, the same
    rule training used), each raw file checked against the sha256 the run logged; missing or
    changed files are left out."""
    from workbench.data import dataset, ingest

    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    found = []
    for source, rows in test.groupby("source", sort=False):
        try:
            frame, sidecar = ingest.read_manifest(str(source), manifests_dir)
        except WorkbenchError:
            continue  # that dataset is not ingested on this machine
        decoded = dict(zip(frame["path"], frame["decoded"]))
        rows = rows.assign(decoded=[decoded.get(p, "") for p in rows["path"]])
        for raw_path, read, sha in zip(rows["path"], dataset.files(rows, manifests_dir), rows["sha256"]):
            raw = Path(sidecar["raw_root"]) / raw_path
            if raw.is_file() and Path(read).is_file() and _sha256(raw) == sha:
                found.append(Path(read))
    return found


def run_test_images(client, run_id: str, image_size: int, manifests_dir: Path, limit: int = MAX_IMAGES
                    ) -> ParityImages | None:
    """The source run's test split, or None when its manifest or files are not on this machine."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        name = client.get_run(run_id).data.params.get(vocabulary.DATASET, "")
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, Artifacts.MANIFEST, tmp)
            manifest = pd.read_csv(local, dtype=str, keep_default_na=False)
    except (MlflowException, OSError, pd.errors.ParserError):
        return None
    if not {"path", "sha256", "split", "source"} <= set(manifest.columns):
        return None
    total = int((manifest["split"] == "test").sum())
    files = locate_test_files(manifest, manifests_dir)
    if not files:
        return None
    files = files[:limit]
    images = np.stack([to_input(read_image(f), image_size) for f in files])
    kept = f" (first {len(files)} of {total})" if len(files) < total else ""
    return ParityImages(images, f"the run's test split: {len(files)} images of {name}{kept}")


def folder_images(folder: Path, image_size: int, limit: int = MAX_IMAGES) -> ParityImages:
    if not folder.is_dir():
        raise ExportError(f"--images {folder}: not a folder")
    files = image_files(folder)[:limit]
    if not files:
        raise ExportError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    images = np.stack([to_input(read_image(f), image_size) for f in files])
    return ParityImages(images, f"{len(files)} images from {folder}")


def random_images(image_size: int, count: int = RANDOM_IMAGES, seed: int = 0) -> ParityImages:
    images = np.random.default_rng(seed).uniform(0, 255, (count, image_size, image_size, 3)).astype("float32")
    return ParityImages(images, f"{count} random-pixel images (the run's test images are not on this machine; "
                                "pass --images DIR for a meaningful check)")


# --- the whole export --------------------------------------------------------------------------------

def default_out_dir(uri: str, exports: Path) -> Path:
    """exports/<model name> for registry URIs, exports/<run id> for runs:/ URIs."""
    rest = uri.split(":/", 1)[-1].strip("/")
    head = rest.split("/")[0].split("@")[0]
    return exports / (head or "model")


def file_stem(client, uri: str, quantize: str) -> str:
    """What an export is called: the model's name, version and quantization
    (`faces-v3-dynamic`), or for a run's model its run id's start (`run-1a2b3c4d-none`)."""
    rest = uri.split(":/", 1)[-1].strip("/")
    if uri.startswith("models:/"):
        name, _, which = rest.partition("@") if "@" in rest else rest.partition("/")
        version = which
        if "@" in rest:
            try:
                version = str(client.get_model_version_by_alias(name, which).version)
            except Exception:  # noqa: BLE001 - an alias that moved since loading: name it by the alias
                version = which
        return f"{name}-v{version}-{quantize}" if version.isdigit() else f"{name}-{version}-{quantize}"
    return f"run-{rest.split('/')[0][:8]}-{quantize}"


def target(client, uri: str, quantize: str, out_dir: Path) -> Path:
    """Where the export of this model version at this quantization is written."""
    return out_dir / f"{file_stem(client, uri, quantize)}.tflite"


def export(ws: Workspace, client, loaded: LoadedModel, *, quantize: str = "none", out_dir: Path | None = None,
           images_dir: Path | None = None, min_agreement: float = MIN_AGREEMENT, max_images: int = MAX_IMAGES,
           log_to_run: bool = True, overwrite: bool = False) -> ExportResult:
    """Convert, write `<name>-v<version>-<quantize>.tflite` and `.labels.txt` (under `ws`'s
    exports/ unless `out_dir`; an existing export of the same version and quantization is
    refused unless `overwrite`), measure agreement with Keras on the source run's test images as
    `ws` finds them, log it on the source run; files that agree less than `min_agreement` are
    removed again and never logged."""
    tflite_path = target(client, loaded.uri, quantize, out_dir or default_out_dir(loaded.uri, ws.exports))
    out_dir, labels_path = tflite_path.parent, tflite_path.with_suffix(".labels.txt")
    if tflite_path.exists() and not overwrite:
        raise ExportError(f"{tflite_path} exists (this model version, quantized {quantize}): pass --overwrite to "
                          "replace it, or --out another folder")
    content = convert(loaded.model, quantize)
    out_dir.mkdir(parents=True, exist_ok=True)
    tflite_path.write_bytes(content)
    labels_path.write_text("\n".join(loaded.classes) + "\n", encoding="utf-8")

    if images_dir is not None:
        parity = folder_images(images_dir, loaded.image_size, max_images)
    else:
        parity = (run_test_images(client, loaded.run_id, loaded.image_size, ws.manifests, max_images)
                  if loaded.run_id else None
                  ) or random_images(loaded.image_size)
    share = agreement(probabilities(loaded.model, parity.images), tflite_probabilities(content, parity.images))
    size_mb = len(content) / 2**20
    passed = share >= min_agreement
    if not passed:
        # A model that decides unlike its Keras original must not sit where an app would pick it up.
        tflite_path.unlink()
        labels_path.unlink()
    if log_to_run and loaded.run_id:
        _log(client, loaded.run_id, share, size_mb, quantize, parity.source,
             (tflite_path, labels_path) if passed else ())
    return ExportResult(out_dir, tflite_path, labels_path, size_mb, share, len(parity.images), parity.source,
                        loaded.run_id, quantize, passed)


def _log(client, run_id: str, share: float, size_mb: float, quantize: str, source: str, files) -> None:
    client.log_metric(run_id, "tflite_agreement", share)
    client.log_metric(run_id, "tflite_size_mb", size_mb)
    client.set_tag(run_id, "workbench.tflite_quantize", quantize)
    client.set_tag(run_id, "workbench.tflite_parity_images", source[:500])
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=Artifacts.TFLITE)
