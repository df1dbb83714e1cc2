"""The model server an app calls: `workbench serve model`. It speaks MLflow's scoring protocol
(`GET /ping`, `GET /health`, `POST /invocations`) so clients written for `mlflow models serve`
keep working, and adds what an app needs: photos as they come and answers that name classes.

`POST /invocations` takes
- an image file as the body (`Content-Type: image/jpeg`, `image/png`, ... or
  `application/octet-stream`);
- JSON with base64-encoded image files: `{"images": ["<base64>", ...]}`, or MLflow's
  `{"inputs": {"image": [...]}}` / `{"instances": [{"image": {"b64": "..."}}]}`;
- JSON with pixel tensors, RGB in [0, 255], one image (H, W, 3) or a batch (N, H, W, 3), under
  `inputs`, `instances` or `inputs.image`.
Every image, whatever its size, is decoded and resized exactly as training decoded and resized
its images (ingest's reader, then `model.pipeline.resize`), and the answer is
`{"predictions": [{"class": "with_mask", "probabilities": {"with_mask": 0.98, ...}}, ...]}` in the
order of the inputs, with the model's class order under `classes`. A wrong input is HTTP 400 (415
for a body of another type) with one short line in `message`, never the request echoed back.
`GET /metadata` says what the model is and what it accepts.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from workbench.ship.predict import LoadedModel, probabilities, to_input

MAX_IMAGES = 256
ACCEPTS = ("a JSON body ({\"images\": [base64 image files]} or {\"inputs\": pixel tensors, RGB 0-255}) "
           "or an image file (Content-Type: image/jpeg, image/png, ...)")


class BadInput(ValueError):
    """What was wrong with a request, in one line; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- requests -> model inputs (values in, values out) ---------------------------------------------

def from_file(data: bytes, size: int, what: str = "the image") -> np.ndarray:
    """An encoded image file (any format and size ingest reads) as the model takes it."""
    from workbench.data import ingest

    picture = ingest.decode(data, max_side=None)
    if isinstance(picture, str):
        raise BadInput(f"{what} is not a usable image: {picture}")
    rgb = np.asarray(picture.rgb, dtype=np.uint8)
    return to_input(np.ascontiguousarray(rgb[:, :, ::-1]), size)


def from_pixels(values, size: int) -> np.ndarray:
    """Pixel tensors as a batch at the model's size: one (H, W, 3) image or (N, H, W, 3); grey
    (H, W) or (H, W, 1) images get three channels. Images already at the model's size are taken
    as they are; others are resized as training resizes."""
    from workbench.model.pipeline import resize

    try:
        array = np.asarray(values, dtype="float32")
    except (ValueError, TypeError):
        raise BadInput("pixel tensors must be numbers in nested lists of equal lengths (images of one size per "
                       "request; send images of different sizes as base64 files)") from None
    if array.ndim == 2:                       # one grey image
        array = array[None, ..., None]
    elif array.ndim == 3:                     # one image (H, W, 3 or 1), else a batch of grey ones
        array = array[None] if array.shape[-1] in (1, 3) else array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape:
        raise BadInput(f"pixel tensors must be one RGB image (height, width, 3) or a batch (n, height, width, 3); "
                       f"got shape {tuple(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise BadInput("pixels must be RGB values in [0, 255]")
    if array.shape[1:3] == (size, size):
        return array
    return np.stack([resize(np.rint(image).astype(np.uint8), size).numpy().astype("float32") for image in array])


def _b64(text: str, i: int) -> bytes:
    try:
        return base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"image {i} is not valid base64") from None


def from_json(payload, size: int) -> np.ndarray:
    """The images a JSON request holds (see the module's description), as a batch."""
    if isinstance(payload, dict):
        keys = [k for k in ("images", "inputs", "instances", "dataframe_split") if k in payload]
        if not keys:
            raise BadInput(f"the JSON has none of the keys images, inputs, instances (got {', '.join(map(str, payload))[:80]})")
        payload = payload[keys[0]]
        if isinstance(payload, dict) and "image" in payload:
            payload = payload["image"]
    if isinstance(payload, str):
        payload = [payload]
    if isinstance(payload, list) and payload and all(isinstance(x, (str, dict)) for x in payload):
        files = [x if isinstance(x, str) else (x.get("image", {}) or {}) for x in payload]
        files = [f["b64"] if isinstance(f, dict) and "b64" in f else f for f in files]
        if not all(isinstance(f, str) for f in files):
            raise BadInput('each image must be a base64 string, {"b64": ...} or {"image": ...}')
        if len(files) > MAX_IMAGES:
            raise BadInput(f"{len(files)} images in one request; send at most {MAX_IMAGES}")
        return np.stack([from_file(_b64(f, i), size, f"image {i}") for i, f in enumerate(files)])
    if not isinstance(payload, list) or not payload:
        raise BadInput(f"expected images: {ACCEPTS}")
    batch = from_pixels(payload, size)
    if len(batch) > MAX_IMAGES:
        raise BadInput(f"{len(batch)} images in one request; send at most {MAX_IMAGES}")
    return batch


def from_request(body: bytes, content_type: str, size: int) -> np.ndarray:
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body:
        raise BadInput(f"the request has no body; send {ACCEPTS}")
    if kind.startswith("image/") or kind == "application/octet-stream":
        return from_file(body, size)[None]
    if kind in ("application/json", "") or kind.endswith("+json"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadInput(f"the body is not valid JSON ({str(err).splitlines()[0][:80]})") from None
        return from_json(payload, size)
    raise BadInput(f"Content-Type {kind} is not accepted; send {ACCEPTS}", status=415)


def answer(loaded: LoadedModel, batch: np.ndarray) -> dict:
    p = probabilities(loaded.model, batch)
    return {"predictions": [{"class": loaded.classes[int(row.argmax())],
                             "probabilities": {c: round(float(v), 6) for c, v in zip(loaded.classes, row)}}
                            for row in p],
            "classes": list(loaded.classes)}


# --- the web app ------------------------------------------------------------------------------------

def create_app(loaded: LoadedModel, versions: dict[str, str] | None = None) -> FastAPI:
    """The app: FastAPI resolves the handlers' annotations at module level, hence its imports up there."""
    app = FastAPI(title=f"workbench model server: {loaded.uri}", docs_url=None, redoc_url=None)

    @app.get("/ping")
    @app.get("/health")
    def ping():
        return PlainTextResponse("\n")

    @app.get("/version")
    def version():
        return versions or {}

    @app.get("/metadata")
    def metadata():
        return {"model": loaded.uri, "run_id": loaded.run_id, "classes": list(loaded.classes),
                "image_size": loaded.image_size, "accepts": ACCEPTS,
                "input": {"name": "image", "resized_to": [loaded.image_size, loaded.image_size, 3]}}

    @app.post("/invocations")
    async def invocations(request: Request):
        try:
            batch = from_request(await request.body(), request.headers.get("content-type", ""), loaded.image_size)
        except BadInput as err:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": str(err)}, status_code=err.status)
        return answer(loaded, batch)

    return app
