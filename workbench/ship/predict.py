"""Using a shipped model: load it by URI (the registry's `models:/NAME@champion` by default) and
classify image files, whole or face by face.

A model knows its classes and input size from the metadata logged with it, so any image ingest
accepts (any size, JPEG, PNG, BMP, WebP, TIFF..., grayscale, 16-bit, CMYK, with alpha or EXIF
rotation) is decoded by ingest's own reader and converted the way training saw images: upright
RGB, resized to the model's side with area interpolation, float pixels in [0, 255]; a file that
ingest would leave out is refused with ingest's reason. With face detection on, OpenCV's Haar
cascade finds frontal faces; each box, widened by a margin so the crop is framed like the
training images (a head with some background), is classified on its own. Loading and reading
are the edges; the rest takes arrays and returns values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.data import ingest
from workbench.errors import WorkbenchError, first_line
from workbench.track import store

# Share of the face box added on each side before cropping: Haar boxes are tight around the
# eyes and mouth, while training images show the whole head with background around it.
FACE_MARGIN = 0.3
BATCH = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    model: object               # a Keras model
    classes: tuple[str, ...]
    image_size: int
    run_id: str | None          # the run that trained it, for lineage and artifacts


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    box: tuple[int, int, int, int] | None = None     # x, y, width, height of the face in the image

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


@dataclass(frozen=True)
class ImageResult:
    image: str
    predictions: list[Prediction] = field(default_factory=list)
    note: str | None = None     # e.g. "no face found"

    def as_dict(self) -> dict:
        out = {"image": self.image, "predictions": [
            {"class": p.label, "confidence": round(p.confidence, 6),
             "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()},
             **({"box": list(p.box)} if p.box is not None else {})} for p in self.predictions]}
        if self.note:
            out["note"] = self.note
        return out


# --- the model ---------------------------------------------------------------------------------------

# Models come from the configured tracking store: its registry or its runs. Anything else (a
# file path, http, s3) is code from elsewhere, loaded only when the user says so.
TRUSTED_SCHEMES = ("models:/", "runs:/")


def model_uri(model: str | None, registered_champions: list[str] | None = None, allow_external: bool = False) -> str:
    """A full model URI from what the user typed: a URI as is, a bare NAME as NAME's champion,
    nothing as the champion of the only registered model that has one. URIs outside the
    configured store are refused unless `allow_external`."""
    if model:
        uri = model if ":/" in model or "/" in model else f"models:/{model}@champion"
        if not uri.startswith(TRUSTED_SCHEMES) and not allow_external:
            raise WorkbenchError(f"--model {model}: not a model of the configured tracking store (models:/NAME@alias, "
                                 "models:/NAME/VERSION or runs:/RUN_ID/model); pass --allow-external-model to load "
                                 "it anyway", exit_code=2)
        return uri
    champions = registered_champions or []
    if len(champions) == 1:
        return f"models:/{champions[0]}@champion"
    known = ", ".join(champions) if champions else "none: run `workbench promote` first"
    raise WorkbenchError(f"--model: say which model to use, e.g. --model models:/NAME@champion "
                         f"(registered models with a champion: {known})")


def registered_champions(client) -> list[str]:
    return sorted(m.name for m in client.search_registered_models() if "champion" in (m.aliases or {}))


def _unloadable(uri: str, err: Exception) -> WorkbenchError:
    return WorkbenchError(f"--model {uri}: cannot load it ({first_line(err)[:200]}); check the name, alias and "
                          "--tracking-uri", exit_code=2)


def model_info(uri: str, tracking_uri: str):
    """MLflow's description of the model behind a URI in the store at `tracking_uri` (no weights
    loaded); a URI that names no model is the one-line error `load_model` gives."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with store.fluent(tracking_uri):  # models:/ and runs:/ URIs resolve only in MLflow's current store
            return mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as err:
        raise _unloadable(uri, err) from None


def load_model(uri: str, tracking_uri: str) -> LoadedModel:
    """The Keras model behind a URI in the store at `tracking_uri`, with the classes and input
    size it was logged with."""
    import mlflow
    from mlflow.exceptions import MlflowException

    info = model_info(uri, tracking_uri)
    try:
        # Keras' safe mode refuses models that carry arbitrary code (Lambda layers, pickled functions).
        with store.fluent(tracking_uri):
            model = mlflow.keras.load_model(uri, load_model_kwargs={"safe_mode": True})
    except (MlflowException, OSError) as err:
        raise _unloadable(uri, err) from None
    except ValueError as err:
        if "safe_mode" not in str(err) and "unsafe" not in str(err).lower() and "lambda" not in str(err).lower():
            raise
        raise WorkbenchError(f"--model {uri}: refused: the model carries code (e.g. a Lambda layer) that Keras' "
                             "safe mode will not run; workbench's own models never do", exit_code=2) from None
    metadata = info.metadata or {}
    classes = metadata.get("classes")
    if not classes and info.run_id:
        try:  # models logged before metadata carried the classes keep them beside the run
            labels = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path="model_labels.json",
                                                         tracking_uri=tracking_uri)
            classes = json.loads(Path(labels).read_text())["classes"]
        except (MlflowException, OSError, KeyError):
            classes = None
    if not classes:
        raise WorkbenchError(f"--model {uri}: its metadata names no classes and its run has no "
                             "model_labels.json; it was not logged by workbench")
    shape = model.input_shape
    image_size = int(metadata.get("image_size") or shape[1])
    if int(model.output_shape[-1]) != len(classes):
        raise WorkbenchError(f"--model {uri}: {model.output_shape[-1]} outputs but {len(classes)} classes "
                             "in its metadata; the model and its labels disagree")
    return LoadedModel(uri=uri, model=model, classes=tuple(classes), image_size=image_size, run_id=info.run_id)


def probabilities(model, batch: np.ndarray) -> np.ndarray:
    if len(batch) == 0:
        return np.zeros((0, int(model.output_shape[-1])), dtype="float32")
    return np.concatenate([np.asarray(model.predict_on_batch(batch[i:i + BATCH]), dtype="float32")
                           for i in range(0, len(batch), BATCH)])


# --- images ------------------------------------------------------------------------------------------

def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image decoded exactly as ingest decodes what training reads (upright by its
    EXIF orientation, transparency over white, 16-bit and CMYK scaled to 8-bit RGB), or a one-line
    error naming the file and the reason it is not a usable image (the reason ingest's report
    would give)."""
    picture = ingest.read_picture(Path(path), max_side=None)  # full size: faces in a group photo are small
    if isinstance(picture, str):
        raise WorkbenchError(f"{ingest.printable(str(path))}: {picture}")
    return np.ascontiguousarray(np.asarray(picture.rgb, dtype=np.uint8)[:, :, ::-1])


def to_input(bgr: np.ndarray, size: int) -> np.ndarray:
    """One image as the model takes it: RGB, size x size, float32 pixels in [0, 255], resized
    exactly as training resizes."""
    import cv2

    from workbench.model.pipeline import resize

    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return resize(rgb, size).numpy().astype("float32")


def face_detector():
    import cv2

    if not hasattr(cv2, "CascadeClassifier"):
        raise WorkbenchError(f"--detect-faces: OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved "
                             "CascadeClassifier out); install opencv-python-headless<5")
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if detector.empty():
        raise WorkbenchError(f"--detect-faces: cannot load {cv2.data.haarcascades}haarcascade_frontalface_default.xml; "
                             "reinstall opencv-python-headless")
    return detector


def detect_faces(bgr: np.ndarray, detector) -> list[tuple[int, int, int, int]]:
    """Frontal face boxes (x, y, width, height), largest first."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    smallest = max(24, round(0.08 * min(gray.shape)))
    found = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [tuple(int(v) for v in box) for box in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def face_crop(bgr: np.ndarray, box: tuple[int, int, int, int], margin: float = FACE_MARGIN) -> np.ndarray:
    """A square crop around the box, widened by `margin` of its size on each side and shifted
    (not squeezed) to stay inside the image."""
    height, width = bgr.shape[:2]
    x, y, w, h = box
    side = min(int(round(max(w, h) * (1 + 2 * margin))), width, height)
    cx, cy = x + w / 2, y + h / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return bgr[top:top + side, left:left + side]


def image_files(folder: Path) -> list[Path]:
    """The image files under a folder, at any depth, by name (hidden ones and other files skipped)."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand(paths: list[str | Path]) -> list[Path]:
    """The files to classify: each file named, and the image files of each folder named."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = image_files(path)
            if not inside:
                raise WorkbenchError(f"{ingest.printable(str(path))}: a folder with no image files "
                                     f"({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
            found += inside
        else:
            found.append(path)
    return found


def read_images(files: list[str | Path]) -> list[np.ndarray]:
    """Every file read before any model is loaded, so a typo fails in a second, not after it."""
    return [read_image(path) for path in files]


def predict_images(loaded: LoadedModel, images: list[np.ndarray], names: list[str], *, detector=None,
                   margin: float = FACE_MARGIN) -> list[ImageResult]:
    """One result per image: the whole image's class or, given a `face_detector()`, one
    prediction per face found."""
    inputs, owners, boxes = [], [], []
    notes: dict[int, str] = {}
    for index, image in enumerate(images):
        if detector is None:
            inputs.append(to_input(image, loaded.image_size))
            owners.append(index)
            boxes.append(None)
            continue
        faces = detect_faces(image, detector)
        if not faces:
            notes[index] = "no face found"
        for box in faces:
            inputs.append(to_input(face_crop(image, box, margin), loaded.image_size))
            owners.append(index)
            boxes.append(box)
    batch = np.stack(inputs) if inputs else np.zeros((0, loaded.image_size, loaded.image_size, 3), "float32")
    scores = probabilities(loaded.model, batch)
    per_image: list[list[Prediction]] = [[] for _ in images]
    for owner, box, row in zip(owners, boxes, scores):
        per_image[owner].append(Prediction(label=loaded.classes[int(np.argmax(row))], box=box,
                                           probabilities={c: float(p) for c, p in zip(loaded.classes, row)}))
    # Names are shown as one line of valid UTF-8, whatever bytes the file system allowed in them.
    return [ImageResult(image=ingest.printable(str(name)), predictions=per_image[i], note=notes.get(i))
            for i, name in enumerate(names)]
