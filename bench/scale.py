"""Real-dataset scale. Memory: one training epoch of workbench's input pipeline over 10,000
generated 224 px JPEGs (Face Mask 12K's order of size, at the input size of most pretrained
backbones), once with a memory budget the decoded split does not fit in (it must spill to a file
cache) and once with one it fits in (cached in memory). Each side runs in its own process, and its
peak resident memory is the kernel's figure for that process. Ingest: 4,000 camera-size JPEGs
opened on one core and on every core.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from common import (
    alternate,
    bench_data,
    median,
    proc_status,
    python,
    rss_mb,
    run_child,
    timed,
)

IMAGES, SIZE = 10_000, 224
CLASSES = ("fake", "real", "with_mask")
BUDGET = "512M"          # the split needs ~1.4 GB decoded: it cannot fit, so it must spill
NO_BUDGET = "64G"        # fits whatever the split: everything cached in memory
BUDGET_BYTES = 512 * 2**20


def images_folder() -> Path:
    """The 10,000 JPEGs, generated once (smooth random colour fields with sensor-like noise: their
    JPEG size and decoding cost are those of photos of that size)."""
    import cv2
    import numpy as np

    folder = bench_data() / f"scale-{SIZE}px-n{IMAGES}"
    if (folder / "done").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in CLASSES:
        (folder / label).mkdir(parents=True)
    for i in range(IMAGES):
        rng = np.random.default_rng(i)
        field = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        image = np.clip(field + rng.normal(0, 4, field.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg").write_bytes(buf.tobytes())
    (folder / "done").write_text("ok\n")
    return folder


def frame_of(folder: Path):
    import pandas as pd

    files = sorted(folder.glob("*/*.jpg"))
    return pd.DataFrame({"file": [str(f) for f in files], "label": [f.parent.name for f in files]})


def side() -> dict:
    """In a fresh process: one epoch of the training pipeline at 224 px under the memory budget
    in $WORKBENCH_CACHE_BUDGET, spilling to a temporary folder when the split does not fit."""
    from common import quiet

    quiet()
    from workbench.model import pipeline as P

    frame = frame_of(images_folder())
    baseline = rss_mb()
    with tempfile.TemporaryDirectory(dir=bench_data()) as spill:
        plan = P.CachePlan(disk_dir=Path(spill) / "cache")
        budget = plan.budget
        ds = P.image_dataset(frame, CLASSES, image_size=SIZE, batch_size=32, training=True, seed=0, cache=plan,
                             name="train")

        def epoch() -> int:
            return sum(int(labels.shape[0]) for _, labels in ds)
        seconds, seen = timed(epoch)
        disk = sum(f.stat().st_size for f in Path(spill).rglob("*") if f.is_file())
    return {"budget_bytes": budget, "on_disk": bool(plan.on_disk), "images": seen, "seconds": round(seconds, 2),
            "baseline_rss_mb": round(baseline, 1), "peak_rss_mb_self": round(proc_status("VmHWM"), 1),
            "disk_cache_bytes": disk}


def cache(quick: bool) -> dict:
    """Both sides, alternating, each in its own process; peak resident memory per process."""
    images_folder()  # generated before any side runs

    def run(budget: str):
        def go() -> dict:
            with tempfile.NamedTemporaryFile(suffix=".json", dir=bench_data()) as out:
                env = {**os.environ, "WORKBENCH_CACHE_BUDGET": budget}
                code, seconds, peak = run_child([python(), str(Path(__file__).with_name("bench.py")),
                                                 "--cache-side", "--result", out.name], env=env)
                if code != 0:
                    raise RuntimeError(f"cache side with budget {budget} exited {code}")
                return {**json.loads(Path(out.name).read_text()), "peak_rss_mb": round(peak, 1),
                        "process_seconds": round(seconds, 1)}
        return go

    runs = alternate([("budget", run(BUDGET)), ("in_memory", run(NO_BUDGET))], 1 if quick else 3)
    budget, memory = runs["budget"], runs["in_memory"]
    images = budget[0]["images"]
    return {
        "setup": {"images": images, "image_size": SIZE, "budget": BUDGET, "no_budget": NO_BUDGET,
                  "rounds": len(budget)},
        "runs": runs,
        # The spilled cache's bytes per image, as written: uint8 pixels plus tf.data's record framing.
        "cache_bytes_per_image": round(median([r["disk_cache_bytes"] for r in budget]) / images),
        "peak_rss_mb": median([r["peak_rss_mb"] for r in budget]),
        "peak_rss_mb_in_memory": median([r["peak_rss_mb"] for r in memory]),
        "baseline_rss_mb": median([r["baseline_rss_mb"] for r in budget]),
        "spilled": all(r["on_disk"] for r in budget) and not any(r["on_disk"] for r in memory),
        "epoch_seconds": {"budget": median([r["seconds"] for r in budget]),
                          "in_memory": median([r["seconds"] for r in memory])},
        "budget_mb": BUDGET_BYTES / 2**20,
    }


# --- ingest at camera size -----------------------------------------------------------------------

CAMERA = (2048, 1536)      # a 3-megapixel photo, as phones export and share them
CAMERA_IMAGES = 4_000      # 1,000 with --quick


def camera_folder(count: int) -> Path:
    """`count` camera-size JPEGs in two class folders, generated once: smooth colour fields with
    sensor-like grain, so their size (~0.4 MB) and decoding cost are a photo's."""
    import cv2
    import numpy as np

    width, height = CAMERA
    folder = bench_data() / f"camera-{width}x{height}-n{count}"
    if (folder / "done").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in ("with_mask", "without_mask"):
        (folder / label).mkdir(parents=True)
    # Grain: one noise image twice the photo's size, from which each photo takes its own window.
    grain = np.random.default_rng(0).normal(0, 6, (2 * height, 2 * width, 3)).astype(np.int16)
    for i in range(count):
        rng = np.random.default_rng(i)
        field = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height),
                           interpolation=cv2.INTER_CUBIC)
        y, x = rng.integers(0, height), rng.integers(0, width)
        image = np.clip(field + grain[y:y + height, x:x + width], 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / ("with_mask", "without_mask")[i % 2] / f"{i:05d}.jpg").write_bytes(buf.tobytes())
    (folder / "done").write_text("ok\n")
    return folder


def ingest(quick: bool) -> dict:
    """`workbench data ingest folders`' work on the camera-size tree (1,000 photos with --quick),
    on one core (WORKBENCH_INGEST_WORKERS=1), then on every core; each ingest writes a fresh
    manifest and fresh decoded copies."""
    from common import quiet

    quiet()
    from workbench.data import ingest as I

    count = 1_000 if quick else CAMERA_IMAGES
    folder = camera_folder(count)
    cores = I.workers()

    def run(workers: int):
        def go() -> dict:
            os.environ["WORKBENCH_INGEST_WORKERS"] = str(workers)
            with tempfile.TemporaryDirectory(dir=bench_data()) as out:
                seconds, result = timed(lambda: I.ingest("folders", folder, "camera", Path(out) / "manifests",
                                                          Path(out) / "decoded"))
            return {"seconds": round(seconds, 2), "kept": result.kept}
        return go

    # One round: 4,000 photos take minutes each way, far above the machine's second-scale noise.
    runs = alternate([("one_core", run(1)), ("every_core", run(cores))], 1)
    one, every = median([r["seconds"] for r in runs["one_core"]]), median([r["seconds"] for r in runs["every_core"]])
    assert all(r["kept"] == count for side in runs.values() for r in side), runs
    return {"setup": {"images": count, "size": f"{CAMERA[0]}x{CAMERA[1]}", "cores": cores,
                      "megabytes": round(sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20)},
            "runs": runs, "seconds_one_core": one, "seconds_every_core": every,
            "images_per_second": round(count / every, 1), "ingest_speedup": round(one / every, 2)}
