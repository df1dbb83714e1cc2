"""What the current machine offers a run, decided once per run: the device, mixed precision and
XLA. On a GPU both speed-ups are on by default (`auto`); on a CPU both stay off, since float16
math is emulated there and XLA compilation costs more than it saves on small models. A spec can
force either with `on` / `off`."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf


@dataclass(frozen=True)
class Runtime:
    device: str           # "GPU: NVIDIA H100 80GB HBM3" or "CPU: <model name>"
    gpus: int
    mixed_precision: bool
    xla: bool


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect(mixed_precision: str = "auto", xla: str = "auto") -> Runtime:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU: {details.get('device_name', gpus[0].name)}"
    else:
        device = f"CPU: {_cpu_name()}"

    def switch(value: str) -> bool:
        return value == "on" or (value == "auto" and bool(gpus))

    return Runtime(device=device, gpus=len(gpus), mixed_precision=switch(mixed_precision), xla=switch(xla))


def apply(runtime: Runtime) -> None:
    """Set the global dtype policy before the model is built (Keras reads it at layer creation)."""
    keras.mixed_precision.set_global_policy("mixed_float16" if runtime.mixed_precision else "float32")
