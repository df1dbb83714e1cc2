"""Side-by-side speed benchmarks of one run's parts: the input pipeline against what users would
otherwise write (Keras' ImageDataGenerator, as the reference studies did) and against the model
alone on tensors already in memory (the upper bound); a run with full MLflow tracking against the
same run untracked; and the champion's inference latency in Keras against TFLite.

Each comparison runs a warm-up, then rounds in which the sides take turns going first; figures are
medians over rounds. Every side goes through workbench's own code (`pipeline.image_dataset`,
`backbones.build_model`, `run.tracked_run`, `train.train`, `evaluate.latency_ms`, `export.convert`),
so what is measured is the product, not a copy of it.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import alternate, bench_data, median, median_interval, timed

from workbench.workspace import Workspace

# The same images, model, augmentation and epochs for every side of the pipeline comparison.
PIPELINE = {"images": int(os.environ.get("BENCH_PIPELINE_IMAGES", 1000)), "source_px": int(os.environ.get("BENCH_PIPELINE_PX", 600)),
            "image_size": 64, "epochs": 5, "batch_size": 32,
            "augmentation": os.environ.get("BENCH_PIPELINE_AUGMENTATION", "flip")}


def _compiled_model(config, num_classes: int):
    """A fresh model compiled exactly as `train.train` compiles it (same seed every time)."""
    import keras

    from workbench.model import backbones

    keras.utils.set_random_seed(config.seed)
    model = backbones.build_model(config, num_classes)
    model.compile(optimizer=backbones.make_optimizer(config, config.learning_rate),
                  loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.optimizer.build(model.trainable_variables)
    return model


def _image_data_generator():
    """Keras 3 keeps the studies' ImageDataGenerator in its legacy module; tf-keras has it too."""
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:  # a Keras without the legacy module: the bench extra's tf-keras
        from tf_keras.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


def pipeline_images(count: int, px: int):
    """`count` synthetic faces as px-by-px JPEGs in class folders (the layout flow_from_directory
    reads), made once: drawn at 128 px by workbench's generator, then resized to `px` with a
    little sensor noise so their JPEG size and decoding cost are those of photos that size."""
    import cv2
    import numpy as np
    import pandas as pd

    from workbench import spec as S
    from workbench.data import dataset

    folder = bench_data() / f"pipeline-{px}px-n{count}"
    if not (folder / "done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        faces = dataset.prepare(S.validate({"name": "bench-faces", "seed": 0, "dataset": {
            "source": "synthetic", "task": "mask3_fake", "count": count, "size": 128}}), Workspace()).frame
        rng = np.random.default_rng(0)
        for file, label in zip(faces["file"], faces["label"]):
            image = cv2.imread(file, cv2.IMREAD_COLOR)
            if px != image.shape[0]:
                image = cv2.resize(image, (px, px), interpolation=cv2.INTER_CUBIC).astype(np.float32)
                image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            (folder / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / label / Path(file).name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / "done").write_text("ok\n")
    files = sorted(folder.glob("*/*.jpg"))
    return folder, pd.DataFrame({"file": [str(f) for f in files], "label": [f.parent.name for f in files]})


def pipeline(quick: bool) -> dict:
    """Train simple_cnn at 64 px with the same augmentation for a few epochs from JPEGs larger
    than 64 px: through workbench's pipeline, through ImageDataGenerator.flow_from_directory, and
    from float tensors already in memory. Each timing covers building the input and `fit`; the
    model is built and compiled identically beforehand on every side."""
    import numpy as np
    import tensorflow as tf

    from workbench import spec as S
    from workbench.model import pipeline as P
    from workbench.spec.registry import PRESETS
    from workbench.track import run

    # QUICK: fewer images as well as fewer rounds; the ratios, not the seconds, are what compare.
    p = {**PIPELINE, "images": min(PIPELINE["images"], 600)} if quick else PIPELINE
    spec = S.validate({"name": "bench-pipeline", "seed": 0,
                       "params": {"backbone": "simple_cnn", "image_size": p["image_size"],
                                  "augmentation": p["augmentation"], "batch_size": p["batch_size"],
                                  "epochs": p["epochs"], "dense_units": 64, "learning_rate": 1e-3}})
    root, frame = pipeline_images(p["images"], p["source_px"])
    classes, config = tuple(sorted(frame["label"].unique())), S.single_config(spec)
    n, size, batch, epochs = len(frame), p["image_size"], p["batch_size"], p["epochs"]

    # The upper bound's tensors: decoded and resized once, outside any timing.
    x, y = [], []
    for images, labels in P.image_dataset(frame, classes, image_size=size, batch_size=256):
        x.append(images.numpy()), y.append(labels.numpy())
    x, y = np.concatenate(x), np.concatenate(y)
    ImageDataGenerator = _image_data_generator()
    # The same policy in ImageDataGenerator's terms (its own argument names, as the studies wrote them).
    settings = PRESETS[p["augmentation"]]
    generator_options = {"horizontal_flip": bool(settings.get("flip")), "rotation_range": settings.get("rotation", 0),
                         "zoom_range": settings.get("zoom", 0.0), "width_shift_range": settings.get("shift", 0.0),
                         "height_shift_range": settings.get("shift", 0.0), "shear_range": settings.get("shear", 0.0)}

    def workbench_input():
        return P.image_dataset(frame, classes, image_size=size, batch_size=batch, training=True, seed=0,
                               augmentation=p["augmentation"], cache=P.CachePlan())

    x_all, y_all = tf.constant(x), tf.constant(y)

    def in_memory_input():
        # Batches gathered from one resident float tensor by shuffled indices (what Keras does
        # with NumPy arrays): no per-image work at all besides the augmentation.
        policy = P.build_policy(p["augmentation"], 0)
        ds = (tf.data.Dataset.range(n).shuffle(n, seed=0).batch(batch)
              .map(lambda i: (tf.gather(x_all, i), tf.gather(y_all, i))))
        if policy is not None:
            ds = ds.map(lambda a, b: (policy(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def generator_input():
        # The studies' way, with its defaults (nearest-neighbour resizing, Keras' one loading thread).
        return ImageDataGenerator(**generator_options).flow_from_directory(
            str(root), target_size=(size, size), batch_size=batch, class_mode="sparse", shuffle=True, seed=0)

    def side(make_input, steps: int | None = None):
        def go() -> float:
            model = _compiled_model(config, len(classes))
            seconds, _ = timed(lambda: model.fit(make_input(), epochs=1 if steps else epochs,
                                                 steps_per_epoch=steps, verbose=0))
            run.release_memory()
            return seconds
        return go

    inputs = (("workbench", workbench_input), ("imagedatagenerator", generator_input), ("in_memory", in_memory_input))
    # Warm-up, not recorded: a few steps a side load every library and TensorFlow kernel involved
    # (the files are already in the OS cache: the in-memory tensors were decoded from them).
    alternate([(name, side(make, steps=4)) for name, make in inputs], 1)
    seconds = alternate([(name, side(make)) for name, make in inputs], 2 if quick else 5)
    med = {name: median(values) for name, values in seconds.items()}
    images = n * epochs
    return {
        "setup": {**p, "train_images": n, "classes": list(classes), "rounds": len(seconds["workbench"]),
                  "imagedatagenerator_options": generator_options},
        "seconds": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "median_seconds": {name: round(v, 3) for name, v in med.items()},
        "images_per_second": {name: round(images / v, 1) for name, v in med.items()},
        # Throughput ratios: workbench's images/s over each other side's.
        "pipeline_vs_upper_bound": round(med["in_memory"] / med["workbench"], 3),
        "pipeline_vs_imagedatagenerator": round(med["imagedatagenerator"] / med["workbench"], 3),
        # No input pipeline can beat tensors already in memory: this is the most any pipeline
        # could gain on ImageDataGenerator with this model on this machine.
        "imagedatagenerator_ceiling": round(med["imagedatagenerator"] / med["in_memory"], 3),
        # Seconds each way spends on input beyond the upper bound (decoding, resizing, waiting).
        "input_seconds_beyond_upper_bound": {name: round(med[name] - med["in_memory"], 3)
                                             for name in ("workbench", "imagedatagenerator")},
    }


class _Timers:
    """Wall seconds spent in named product functions during one run (wrapped, not replaced)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, module, name: str, label: str | None = None) -> None:
        original = getattr(module, name)

        @functools.wraps(original)
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = label or name
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

        setattr(module, name, timed_call)

    def take(self) -> dict[str, float]:
        taken, self.seconds = self.seconds, {}
        return taken


def tracking(quick: bool) -> dict:
    """One quickstart CNN configuration trained with full MLflow tracking (`run.tracked_run`,
    what every sweep trial is) and untracked (`train.train`), same seed, alternating. The
    training part is `train_seconds`, the fit loop with its per-epoch validation (and, tracked,
    its per-epoch metric logging); the rest of a tracked run (test evaluation, cost probes,
    figures, model, artefacts, lineage) is its closing cost, reported in seconds."""
    from workbench import spec as S
    from workbench.data import dataset
    from workbench.data.balance import balanced
    from workbench.measure import figures
    from workbench.model import train as T
    from workbench.track import run, store

    spec = S.load("quickstart", ["backbone=simple_cnn", "balance=none", "augmentation=none",
                                 f"epochs={2 if quick else 3}"])
    config = S.single_config(spec)
    ws = Workspace()
    data = dataset.prepare(spec, ws)
    timers = _Timers()
    timers.wrap(T, "cost", "cost_probes")                 # latency probes and parameter counts
    timers.wrap(figures, "figure_pairs", "figures_build")
    timers.wrap(run, "log_model")
    timers.wrap(run, "log_result")                        # metrics, figures (built and saved), reports, model
    timers.wrap(run, "release_memory")
    logger = run.epoch_logger

    def timed_logger(log):
        # The per-epoch metric logging inside the training loop: the one thing tracking adds there.
        callback = logger(log)
        inner = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            started = time.perf_counter()
            inner(epoch, logs)
            timers.seconds["epoch_logging"] = timers.seconds.get("epoch_logging", 0.0) + time.perf_counter() - started
        callback.on_epoch_end = on_epoch_end
        return callback
    run.epoch_logger = timed_logger
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = store.connect(uri)
        experiment = store.ensure_experiment(client, "bench-tracking")
        tracked_ws = ws.with_(tracking_uri=uri)

        def tracked(cfg):
            def go() -> dict:
                timers.take()
                wall, outcome = timed(lambda: run.tracked_run(tracked_ws, client, spec, cfg, data,
                                                              experiment_id=experiment))
                return {"wall": wall, "train": outcome.metrics["train_seconds"],
                        "train_cpu": outcome.metrics["train_cpu_seconds"], **timers.take()}
            return go

        def untracked(cfg):
            def go() -> dict:
                timers.take()

                def once():
                    return T.train(cfg, data, balanced(data, cfg.balance, ws, cfg.balance_target, cfg.seed),
                                   scratch=ws.scratch("cache"))
                wall, result = timed(once)
                out = {"wall": wall, "train": result.timings["train_seconds"],
                       "train_cpu": result.timings["train_cpu_seconds"], **timers.take()}
                run.release_memory()  # as tracked_run does in its `finally`, outside the timing
                timers.take()
                return out
            return go

        short = config.model_copy(update={"epochs": 1})
        alternate([("untracked", untracked(short)), ("tracked", tracked(short))], 1)  # warm-up
        # Consecutive rounds swap which side goes first (untracked-tracked, tracked-untracked, ...):
        # load drifting over a block of two rounds falls on both sides alike. Runs of ten seconds
        # on a shared machine differ by several percent from one to the next; the median of many
        # paired ratios is what makes a 2 % budget measurable at all.
        rounds = alternate([("untracked", untracked(config)), ("tracked", tracked(config))], 3 if quick else 10)
    pairs = list(zip(rounds["tracked"], rounds["untracked"]))
    # Each round's two runs ran back to back: their ratio is the least disturbed by drifting load.
    wall_ratios = [t["train"] / u["train"] for t, u in pairs]
    cpu_ratios = [t["train_cpu"] / u["train_cpu"] for t, u in pairs]
    overhead = median(wall_ratios) - 1
    # Identical runs on this shared machine differ by up to a quarter in wall time and a tenth in
    # CPU time, far more than the 2 % being measured: the interval says how far the median can be
    # trusted (it narrows with rounds: `make bench` runs 10, QUICK 3).
    interval = [round(v - 1, 4) for v in median_interval(wall_ratios)]
    # The same extra, measured inside the tracked runs themselves (immune to the load drifting
    # between two runs): seconds spent logging metrics during training over the training time.
    in_loop = median([t.get("epoch_logging", 0.0) / t["train"] for t in rounds["tracked"]])
    closing = median([t["wall"] - t["train"] for t in rounds["tracked"]])
    parts = {key: round(median([t.get(key, 0.0) for t in rounds["tracked"]]), 3)
             for key in ("cost_probes", "figures_build", "log_result", "log_model", "release_memory")}
    return {
        "setup": {"spec": "quickstart", "backbone": config.backbone, "image_size": config.image_size,
                  "epochs": config.epochs, "train_images": int((data.frame["split"] == "train").sum()),
                  "rounds": len(pairs)},
        "runs": {side: [{k: round(v, 3) for k, v in r.items()} for r in results] for side, results in rounds.items()},
        "train_seconds_tracked": round(median([t["train"] for t in rounds["tracked"]]), 3),
        "train_seconds_untracked": round(median([u["train"] for u in rounds["untracked"]]), 3),
        "tracking_overhead": round(overhead, 4),
        "tracking_overhead_interval95": interval,
        "tracking_overhead_cpu": round(median(cpu_ratios) - 1, 4),
        "paired_ratios": {"wall": [round(v, 4) for v in wall_ratios], "cpu": [round(v, 4) for v in cpu_ratios]},
        "train_cpu_seconds_tracked": round(median([t["train_cpu"] for t in rounds["tracked"]]), 3),
        "train_cpu_seconds_untracked": round(median([u["train_cpu"] for u in rounds["untracked"]]), 3),
        "tracking_overhead_in_loop": round(in_loop, 5),
        "epoch_logging_seconds_per_epoch": round(median([t.get("epoch_logging", 0.0) for t in rounds["tracked"]])
                                                 / config.epochs, 4),
        # Everything a tracked run does besides training, in seconds per run.
        "closing_seconds": round(closing, 3),
        "closing_seconds_untracked": round(median([u["wall"] - u["train"] for u in rounds["untracked"]]), 3),
        "closing_parts_seconds": parts,
    }


def inference(model, image_size: int, quick: bool) -> dict:
    """Milliseconds per image of one Keras model and of its TFLite conversion, at batch 1 and 32:
    Keras through `evaluate.latency_ms` (what runs record), TFLite through the interpreter
    `workbench export` checks its files with, each after a warm-up call, alternating."""
    import numpy as np

    from workbench.measure import evaluate
    from workbench.ship import export

    converted, content = timed(lambda: export.convert(model))
    interpreter = export._interpreter(content)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def tflite_ms(batch: int, repeats: int) -> float:
        images = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 3)).astype(source["dtype"])
        interpreter.resize_tensor_input(source["index"], list(images.shape))
        interpreter.allocate_tensors()

        def call():
            interpreter.set_tensor(source["index"], images)
            interpreter.invoke()
            return interpreter.get_tensor(target["index"])
        call()  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times) / batch

    repeats = {1: 20 if quick else 50, 32: 5 if quick else 10}
    sides = []
    for batch in (1, 32):
        sides.append((f"keras_batch{batch}", lambda b=batch: evaluate.latency_ms(model, image_size, b, repeats[b])))
        sides.append((f"tflite_batch{batch}", lambda b=batch: tflite_ms(b, repeats[b])))
    ms = alternate(sides, 3 if quick else 7)
    med = {name: median(values) for name, values in ms.items()}
    return {
        "image_size": image_size, "tflite_size_mb": round(len(content) / 2**20, 3),
        "convert_seconds": round(converted, 2), "repeats_per_round": repeats, "rounds": len(ms["keras_batch1"]),
        "ms_per_image": {name: round(v, 4) for name, v in med.items()},
        "tflite_speedup_batch1": round(med["keras_batch1"] / med["tflite_batch1"], 3),
        "tflite_speedup_batch32": round(med["keras_batch32"] / med["tflite_batch32"], 3),
    }
