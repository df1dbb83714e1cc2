"""Online augmentation policies, one axis of the registry: `none`, `flip`, `s2`, `s4`, `custom`.

Each policy is a small stack of Keras preprocessing layers applied to training batches inside the
tf.data pipeline; validation and test batches are never augmented. `s2` and `s4` are the
reference studies' own ImageDataGenerator settings translated to layers (a Keras rotation
factor is a fraction of a full turn, so 10 degrees is 10/360).
"""

from __future__ import annotations

import keras

from workbench import spec as spec_module

POLICIES = {
    "none": {},
    "flip": {"flip": True},
    # S2 (Xception): rotation 10, zoom 0.2, width/height shift 0.1, shear 0.2, horizontal flip.
    "s2": {"rotation": 10, "zoom": 0.2, "shift": 0.1, "shear": 0.2, "flip": True},
    # S4 (baseline CNN): rotation 40, width/height shift 0.2, shear 0.2, zoom 0.2, horizontal flip.
    "s4": {"rotation": 40, "zoom": 0.2, "shift": 0.2, "shear": 0.2, "flip": True},
    "custom": None,  # the spec's `augmentation_options`
}
assert set(POLICIES) == set(spec_module.AUGMENTATIONS), "spec.AUGMENTATIONS and augment.POLICIES disagree"


def build_policy(name: str, seed: int, options: dict | None = None) -> keras.Sequential | None:
    """The layers of one policy, or None when it has none (so the pipeline skips the map entirely)."""
    params = POLICIES[name] if name != "custom" else (options or {})
    layers = []
    if params.get("flip"):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.get("rotation"):
        layers.append(keras.layers.RandomRotation(params["rotation"] / 360, fill_mode="reflect", seed=seed))
    if params.get("zoom"):
        layers.append(keras.layers.RandomZoom(params["zoom"], fill_mode="reflect", seed=seed))
    if params.get("shift"):
        layers.append(keras.layers.RandomTranslation(params["shift"], params["shift"], fill_mode="reflect", seed=seed))
    if params.get("shear"):
        layers.append(keras.layers.RandomShear(params["shear"], params["shear"], fill_mode="reflect", seed=seed))
    if params.get("brightness"):
        layers.append(keras.layers.RandomBrightness(params["brightness"], value_range=(0, 255), seed=seed))
    if params.get("contrast"):
        layers.append(keras.layers.RandomContrast(params["contrast"], value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name=f"augment_{name}") if layers else None
