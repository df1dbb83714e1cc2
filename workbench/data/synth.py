"""Deterministic synthetic face datasets, so that every workbench pipeline can be built, tested and
demonstrated offline, with no download. It draws stylised faces with OpenCV primitives, carrying
the attributes the real face datasets label (mask or not, young or old, real or fake, where a fake
has one facial region transplanted from another face, Yonsei-style), inside cluttered, unevenly
lit, noisy, JPEG-compressed scenes so the tasks are learnable but not trivial. A dataset is a pure
function of (task, seed, size, count), written as a raw folder of `<class>/<id>.jpg` (ingested
like any photo folder) with a `dataset.json` and the faces' `attributes.csv`, byte for byte the
same on every run; image i depends only on
(seed, i, its attributes), and a larger count keeps almost every earlier image's class.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Bump whenever a change alters any rendered pixel: cached datasets and tracked runs record it.
GENERATOR_VERSION = "synth-4"

TASKS: dict[str, list[str]] = {
    "mask2": ["with_mask", "without_mask"],
    "mask3_fake": ["fake", "real", "with_mask"],
    "mask_age4": ["mask_old", "mask_young", "nomask_old", "nomask_young"],
}

# Relative class sizes, copied from the real datasets these tasks stand in for (mask3_fake: S1,
# mask_age4: S2), so that class imbalance, and the balancing strategies that fight it, behave as
# they would on the real data.
CLASS_WEIGHTS: dict[str, dict[str, int]] = {
    "mask2": {"with_mask": 1, "without_mask": 1},
    "mask3_fake": {"fake": 960, "real": 6081, "with_mask": 5000},
    "mask_age4": {"mask_old": 689, "mask_young": 775, "nomask_old": 724, "nomask_young": 756},
}

ATTRIBUTES = "attributes.csv"
ATTRIBUTE_COLUMNS = ["path", "label", "mask", "age", "authenticity", "difficulty"]

MIN_SIZE, MAX_SIZE = 16, 1024
FAKE_REGIONS = ("eyes", "nose", "mouth")
FAKE_LEVELS = ("easy", "mid", "hard")

# Independent random streams per image: np.random.default_rng([seed, index, STREAM]). Keeping them
# apart means, e.g., that turning a face into a fake does not reshuffle the face itself. Streams
# must be non-zero: SeedSequence ignores trailing zeros, so [s, i, 0] would alias [s, i].
_ATTR_STREAM, _DONOR_STREAM, _JPEG_STREAM, _PLAN_STREAM, _LIGHT_STREAM = 1, 2, 3, 4, 5


# --- difficulty knobs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FakeLevel:
    """How visible a transplanted region is. Yonsei's easy/mid/hard fakes differ the same way."""
    tone: float          # skin-tone mismatch of the patch, as a distance in BGR levels
    scale_error: float   # max relative size error of the pasted region
    offset_error: float  # max displacement of the pasted region, as a fraction of face width
    feather: float       # blend-mask softness, as a fraction of the region size (small = hard edge)
    seam: float          # darkening of the thin line along the paste boundary, 0..1


@dataclass(frozen=True)
class Knobs:
    """Everything that makes the tasks harder or easier. Rendering reads `KNOBS` at call time, so
    an experiment can swap it (`synth.KNOBS = dataclasses.replace(synth.KNOBS, ...)`); change
    the defaults only together with GENERATOR_VERSION."""
    # Yonsei has 240 easy, 480 mid and 240 hard fakes; here easy and mid are more common and
    # louder, so that at 64 px, with fakes as rare as in S1 (~8 % of images), a small CNN can
    # learn them at all from ~100 training examples: the quickstart's best trial lands at a
    # test macro-F1 of about 0.8-0.9, with hard fakes still missed (see README).
    fake_level_probs: tuple[float, float, float] = (0.45, 0.4, 0.15)   # easy, mid, hard
    fake_levels: dict[str, FakeLevel] = field(default_factory=lambda: {
        "easy": FakeLevel(tone=110.0, scale_error=0.2, offset_error=0.09, feather=0.03, seam=0.9),
        "mid": FakeLevel(tone=95.0, scale_error=0.14, offset_error=0.06, feather=0.05, seam=0.8),
        "hard": FakeLevel(tone=30.0, scale_error=0.08, offset_error=0.03, feather=0.15, seam=0.2),
    })
    old_fraction: float = 0.35            # share of old faces where age is not part of the class
    # Scene nuisances. They matter as much as fake visibility: with all of them near zero the same
    # CNN spots easy fakes 96% of the time.
    clutter_shapes: tuple[int, int] = (2, 10)
    noise_sigma: tuple[float, float] = (1.0, 5.0)   # Gaussian pixel noise at the output size
    blur_prob: float = 0.2                # chance of a slightly out-of-focus image
    light_gradient: float = 0.3           # max brightness change across the image, +/- fraction
    contrast: tuple[float, float] = (0.8, 1.15)
    brightness: tuple[float, float] = (-25.0, 25.0)
    face_scale: tuple[float, float] = (0.25, 0.37)  # face half-height as a fraction of the image
    max_rotation_deg: float = 14.0
    max_yaw: float = 0.35                 # features shift sideways by up to this x face width
    skin_like_mask_prob: float = 0.05     # masks close to the skin tone: hard mask/no-mask cases
    beard_prob: float = 0.14              # beards darken the lower face like a dark mask would
    glasses_prob: float = 0.15
    jpeg_quality: tuple[int, int] = (60, 95)


KNOBS = Knobs()


# --- attributes and plans ------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceAttributes:
    mask: bool
    old: bool
    fake: bool
    fake_region: str | None = None   # eyes | nose | mouth, for fakes only
    difficulty: str | None = None    # easy | mid | hard, for fakes only


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")


def _check_count(task: str, count: int) -> None:
    if count < len(TASKS[task]):
        raise ValueError(f"count must be at least {len(TASKS[task])} (one image per class) "
                         f"for task {task!r}, got {count}")


def class_counts(task: str, count: int) -> dict[str, int]:
    """Largest-remainder apportionment of `count` over the task's class weights, with at least one
    image per class, so the counts are exact and sum to `count`."""
    _check_task(task)
    _check_count(task, count)
    weights = CLASS_WEIGHTS[task]
    total = sum(weights.values())
    quotas = {c: count * w / total for c, w in weights.items()}
    counts = {c: math.floor(q) for c, q in quotas.items()}
    by_remainder = sorted(weights, key=lambda c: (-(quotas[c] - counts[c]), TASKS[task].index(c)))
    for c in by_remainder[:count - sum(counts.values())]:
        counts[c] += 1
    for c in TASKS[task]:
        if counts[c] == 0:  # only for tiny counts: borrow from the largest class
            counts[max(counts, key=counts.get)] -= 1
            counts[c] = 1
    return {c: counts[c] for c in TASKS[task]}


def _attributes(task: str, label: str, seed: int, index: int) -> FaceAttributes:
    # Attributes outside the class come from the image's own stream, so they do not depend on count.
    rng = np.random.default_rng([seed, index, _ATTR_STREAM])
    old = bool(rng.random() < KNOBS.old_fraction)
    region = FAKE_REGIONS[rng.integers(len(FAKE_REGIONS))]
    level = FAKE_LEVELS[rng.choice(len(FAKE_LEVELS), p=np.asarray(KNOBS.fake_level_probs) /
                                   sum(KNOBS.fake_level_probs))]
    if task == "mask2":
        return FaceAttributes(mask=label == "with_mask", old=old, fake=False)
    if task == "mask_age4":
        return FaceAttributes(mask=label.startswith("mask_"), old=label.endswith("_old"),
                              fake=False)
    if label == "fake":
        return FaceAttributes(mask=False, old=old, fake=True, fake_region=region, difficulty=level)
    return FaceAttributes(mask=label == "with_mask", old=old, fake=False)


def plan(task: str, count: int, seed: int) -> list[tuple[str, FaceAttributes]]:
    """(class name, attributes) for each index 0..count-1, with exact class counts in a
    deterministically shuffled order."""
    counts = class_counts(task, count)
    # Shuffle by ranking a per-index random key rather than shuffling a list: each index keeps its
    # key whatever the count, so growing a dataset relabels only the few images near a class
    # boundary instead of reshuffling them all (exact counts make full prefix stability impossible).
    keys = [np.random.default_rng([seed, i, _PLAN_STREAM]).random() for i in range(count)]
    sorted_labels = [c for c in TASKS[task] for _ in range(counts[c])]
    labels = [""] * count
    for rank, i in enumerate(np.argsort(keys, kind="stable")):
        labels[i] = sorted_labels[rank]
    return [(label, _attributes(task, label, seed, i)) for i, label in enumerate(labels)]


# --- sampling: every random draw for one face, in a fixed order ----------------------------------
# Faces are sampled completely before anything is drawn, and every draw happens whatever the
# attributes, so the same (seed, index) gives the same person with or without a mask, young or old.

SKIN_TONES_RGB = np.array([(255, 226, 200), (240, 196, 164), (214, 160, 120), (180, 124, 88),
                           (140, 92, 62), (100, 64, 44), (66, 42, 30)], np.float32)
HAIR_COLOURS_RGB = np.array([(20, 16, 14), (45, 30, 22), (85, 55, 35), (120, 80, 45),
                             (190, 150, 95), (225, 195, 130), (150, 60, 30)], np.float32)
IRIS_COLOURS_RGB = np.array([(60, 40, 25), (100, 65, 35), (70, 110, 160), (80, 120, 80),
                             (30, 25, 20)], np.float32)
MASK_COLOURS_RGB = np.array([(160, 200, 225), (235, 240, 240), (35, 35, 40), (240, 180, 200),
                             (150, 200, 180), (70, 90, 140)], np.float32)
HAIR_STYLES = ("short", "long", "bun", "curly", "buzz", "side")
MASK_PATTERNS = ("plain", "stripes", "dots")


def _bgr(rgb) -> np.ndarray:
    return np.asarray(rgb, np.float32)[::-1].copy()


def _pick(rng, palette: np.ndarray, jitter: float) -> np.ndarray:
    colour = palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3)
    return _bgr(np.clip(colour, 0, 255))


def _sample_face(rng: np.random.Generator) -> dict:
    """Every random draw for one face, in the fixed order that keeps a (seed, index) the same face."""
    f = _sample_head(rng)
    f.update(_sample_hair(rng))
    f.update(_sample_features(rng))
    f.update(_sample_accessories(rng))
    f.update(_sample_mask(rng, f["skin"]))
    f["wrinkles"] = rng.uniform(size=40)
    f["sag"] = rng.uniform(0.04, 0.12)
    return f


def _sample_head(rng: np.random.Generator) -> dict:
    """Draw the head's position, shape, pose and skin colour."""
    k = KNOBS
    f = {}
    f["cx"], f["cy"] = 0.5 + rng.uniform(-0.09, 0.09), 0.52 + rng.uniform(-0.05, 0.05)
    f["b"] = rng.uniform(*k.face_scale)
    f["a"] = f["b"] * rng.uniform(0.70, 0.86)
    f["jaw"], f["chin"] = rng.uniform(0.55, 0.95), rng.uniform(0.95, 1.05)
    f["rotation"] = rng.uniform(-k.max_rotation_deg, k.max_rotation_deg)
    f["yaw"] = rng.uniform(-k.max_yaw, k.max_yaw)
    # Skin: a point on a light-to-dark curve through real skin tones, plus a little hue noise.
    t = rng.uniform(0, len(SKIN_TONES_RGB) - 1)
    lo = int(t)
    hi = min(lo + 1, len(SKIN_TONES_RGB) - 1)
    skin = SKIN_TONES_RGB[lo] * (1 - (t - lo)) + SKIN_TONES_RGB[hi] * (t - lo)
    f["skin"] = _bgr(np.clip(skin + rng.normal(0, 6, 3), 0, 255))
    return f


def _sample_hair(rng: np.random.Generator) -> dict:
    """Draw the hair's colours, style and shape."""
    f = {}
    f["hair"] = _pick(rng, HAIR_COLOURS_RGB, 8)
    f["grey"] = rng.uniform(150, 235) * np.ones(3, np.float32) + rng.normal(0, 4, 3)
    f["grey_mix"] = rng.uniform(0.65, 1.0)
    f["hair_style"] = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
    f["hairline"] = rng.uniform(0.38, 0.55)      # how far the fringe comes down the forehead
    f["receding"] = rng.uniform(0.0, 1.0)        # for old faces: 0 = full hair, 1 = bald on top
    f["hair_volume"] = rng.uniform(1.04, 1.14)
    f["part"] = rng.uniform(-0.5, 0.5)
    f["strands"] = rng.uniform(size=(12, 4))
    return f


def _sample_features(rng: np.random.Generator) -> dict:
    """Draw the eyes, brows, nose, mouth, cheeks and ears."""
    f = {}
    f["eye_y"] = rng.uniform(-0.14, -0.03)
    f["eye_gap"] = rng.uniform(0.36, 0.46)
    f["eye_w"] = rng.uniform(0.15, 0.21)
    f["eye_open"] = rng.uniform(0.35, 0.6)
    f["eye_tilt"] = rng.uniform(-8, 8)
    f["gaze"] = rng.uniform(-0.3, 0.3, 2)
    f["iris"] = _pick(rng, IRIS_COLOURS_RGB, 10)
    f["brow_h"], f["brow_arch"] = rng.uniform(0.11, 0.19), rng.uniform(0.0, 0.08)
    f["brow_thick"], f["brow_tilt"] = rng.uniform(0.012, 0.03), rng.uniform(-0.04, 0.05)
    f["nose_len"], f["nose_w"] = rng.uniform(0.26, 0.40), rng.uniform(0.17, 0.27)
    f["nose_ridge"] = rng.random() < 0.6
    f["mouth_y"], f["mouth_w"] = rng.uniform(0.50, 0.62), rng.uniform(0.30, 0.46)
    f["lip_top"], f["lip_bottom"] = rng.uniform(0.025, 0.05), rng.uniform(0.03, 0.07)
    f["smile"] = rng.uniform(-0.4, 0.8)
    f["mouth_open"] = rng.random() < 0.15
    f["lip_red"] = rng.uniform(0.15, 0.55)
    f["blush"] = rng.uniform(0.0, 0.25)
    f["ear_size"] = rng.uniform(0.85, 1.15)
    return f


def _sample_accessories(rng: np.random.Generator) -> dict:
    """Draw the beard, glasses and clothes."""
    k = KNOBS
    f = {}
    f["beard"] = rng.random() < k.beard_prob
    f["beard_alpha"] = rng.uniform(0.35, 0.9)
    f["glasses"] = rng.random() < k.glasses_prob
    f["glasses_round"] = rng.random() < 0.5
    f["glasses_colour"] = _pick(rng, HAIR_COLOURS_RGB[:3], 15)
    f["clothes"] = rng.uniform(20, 235, 3).astype(np.float32)
    return f


def _sample_mask(rng: np.random.Generator, skin: np.ndarray) -> dict:
    """Draw the mask's colour, pattern and fit (drawn for every face, worn only by masked ones)."""
    f = {}
    f["mask_colour"] = _pick(rng, MASK_COLOURS_RGB, 12)
    if rng.random() < 0.4:  # cloth masks come in any colour
        f["mask_colour"] = rng.uniform(20, 240, 3).astype(np.float32)
    if rng.random() < KNOBS.skin_like_mask_prob:
        near_skin = skin * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3)
        f["mask_colour"] = np.clip(near_skin, 0, 255).astype(np.float32)
    f["mask_pattern"] = MASK_PATTERNS[rng.choice(3, p=[0.55, 0.25, 0.2])]
    f["mask_pattern_colour"] = rng.uniform(20, 240, 3).astype(np.float32)
    f["mask_top"] = rng.uniform(0.12, 0.2)       # mask top edge below the eye line
    f["mask_pleats"] = rng.random() < 0.5
    f["strap_white"] = rng.random() < 0.5
    return f


def _sample_scene(rng: np.random.Generator) -> dict:
    k = KNOBS
    s = {"bg": rng.uniform(30, 230, (2, 3)), "bg_angle": rng.uniform(0, 2 * np.pi)}
    n = int(rng.integers(k.clutter_shapes[0], k.clutter_shapes[1] + 1))
    s["clutter"] = [(int(rng.integers(5)), rng.uniform(size=8), rng.uniform(20, 235, 3),
                     rng.uniform(0.4, 1.0)) for _ in range(n)]
    s["bg_blur"] = rng.uniform(0, 2.5)
    s["light_angle"] = rng.uniform(0, 2 * np.pi)
    s["light"] = rng.uniform(0, k.light_gradient)
    s["contrast"] = rng.uniform(*k.contrast)
    s["brightness"] = rng.uniform(*k.brightness)
    s["cast"] = rng.uniform(0.92, 1.08, 3)
    s["blur"] = rng.uniform(0.3, 0.9) if rng.random() < k.blur_prob else 0.0
    s["noise"] = rng.uniform(*k.noise_sigma)
    return s


# --- drawing helpers -----------------------------------------------------------------------------
# Points are fixed-point with 4 fractional bits (shift=4) so small faces still get sub-pixel
# positions; every primitive is anti-aliased.

SHIFT = 4
AA = cv2.LINE_AA


def _p(x, y) -> tuple[int, int]:
    return int(round(x * 16)), int(round(y * 16))


def _poly(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)


def _c(colour) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(np.clip(colour, 0, 255)))


def _ellipse(img, centre, axes, colour, angle=0.0, start=0, end=360, thickness=None):
    """Filled unless a (float, pixel) line thickness is given."""
    width = -1 if thickness is None else max(1, int(round(thickness)))
    cv2.ellipse(img, _p(*centre), _p(max(axes[0], 0.1), max(axes[1], 0.1)), angle, start, end,
                _c(colour), width, AA, SHIFT)


def _fill(img, points, colour):
    cv2.fillPoly(img, [_poly(points)], _c(colour), AA, SHIFT)


def _line(img, points, colour, thickness):
    cv2.polylines(img, [_poly(points)], False, _c(colour), max(1, int(round(thickness))), AA, SHIFT)


def _blend(img, draw, alpha: float) -> None:
    """Draw semi-transparently: blush, fabric shading and see-through clutter are tints."""
    overlay = img.copy()
    draw(overlay)
    cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0, dst=img)


def _stencil(img, region: np.ndarray, draw) -> None:
    """Draw only inside `region` (uint8 mask): patterns and pleats stay on the cloth mask."""
    overlay = img.copy()
    draw(overlay)
    np.copyto(img, overlay, where=region[..., None] > 0)


# --- the face ------------------------------------------------------------------------------------

def _layout(f: dict, S: int) -> dict:
    """Pixel geometry of a sampled face on an S x S canvas, upright; rotation comes later."""
    g = {"cx": f["cx"] * S, "cy": f["cy"] * S, "a": f["a"] * S, "b": f["b"] * S}
    a, b, cx, cy, yaw = g["a"], g["b"], g["cx"], g["cy"], f["yaw"]
    # Turning the head moves features that stick out (the nose) more than flat ones (the eyes).
    g["eye_y"] = cy + f["eye_y"] * b
    g["eyes"] = [(cx + yaw * 0.18 * a + s * f["eye_gap"] * a * (1 + s * yaw * 0.25), s)
                 for s in (-1, 1)]
    g["eye_w"], g["eye_h"] = f["eye_w"] * a, f["eye_w"] * a * f["eye_open"]
    g["nose_x"] = cx + yaw * 0.32 * a
    g["nose_tip"] = g["eye_y"] + f["nose_len"] * b
    g["nose_w"] = f["nose_w"] * a
    g["mouth_x"], g["mouth_y"] = cx + yaw * 0.22 * a, cy + f["mouth_y"] * b
    g["mouth_w"] = f["mouth_w"] * a
    g["contour"] = _face_contour(f, g, sag=0.0)
    # Boxes (centre, half-size) a fake may swap; they matter for the transplant only.
    g["regions"] = {
        "eyes": ((cx + yaw * 0.18 * a, g["eye_y"] - 0.07 * b),
                 (f["eye_gap"] * a + g["eye_w"] * 1.6, 0.27 * b)),
        "nose": ((g["nose_x"], (g["eye_y"] + g["nose_tip"]) / 2 + 0.04 * b),
                 (g["nose_w"] * 1.5, (g["nose_tip"] - g["eye_y"]) * 0.7)),
        "mouth": ((g["mouth_x"], g["mouth_y"] + 0.03 * b),
                  (g["mouth_w"] * 1.1, 0.22 * b)),
    }
    return g


def _face_contour(f: dict, g: dict, sag: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)   # 0 = top of the head, pi = chin
    down = np.clip(-np.cos(t), 0, 1)                     # 0 above the centre line, 1 at the chin
    width = 1 - (1 - f["jaw"]) * down ** 2 + sag * np.sin(np.pi * down) ** 2
    x = g["cx"] + g["a"] * np.sin(t) * width
    y = g["cy"] - g["b"] * np.cos(t) * np.where(np.cos(t) < 0, f["chin"], 1.0)
    return np.stack([x, y], 1)


def _hair_colour(f: dict, old: bool) -> np.ndarray:
    return f["grey"] * f["grey_mix"] + f["hair"] * (1 - f["grey_mix"]) if old else f["hair"]


def _draw_head(f: dict, attrs: FaceAttributes, S: int):
    """The bare person on a transparent layer: (BGR uint8, alpha uint8, layout). What covers the
    face (hair, beard, mask, glasses) comes later, after a fake has had its region swapped."""
    g = _layout(f, S)
    a, b, cx, cy = g["a"], g["b"], g["cx"], g["cy"]
    u = S / 128  # line widths are specified for a 128 px canvas
    skin, hair = f["skin"], _hair_colour(f, attrs.old)
    layer = np.zeros((S, S, 3), np.uint8)
    alpha = np.zeros((S, S), np.uint8)

    def both(draw):
        # Each silhouette part goes into the colour layer (c=None: use the part's own colour)
        # and, as opaque, into the alpha layer (c=255).
        draw(layer, None)
        draw(alpha, 255)

    if f["hair_style"] == "long" and not _bald(f, attrs.old):
        back = [(cx - a * 1.2, cy - 0.2 * b), (cx + a * 1.2, cy - 0.2 * b),
                (cx + a * 1.35, cy + 1.45 * b), (cx - a * 1.35, cy + 1.45 * b)]
        both(lambda im, c: (_ellipse(im, (cx, cy - 0.1 * b), (a * 1.22, b * 1.12), c or hair),
                            _fill(im, back, c or hair * 0.9)))
    both(lambda im, c: _ellipse(im, (cx, cy + 2.0 * b), (a * 2.3, b * 0.95), c or f["clothes"]))
    neck = [(cx - 0.42 * a, cy + 0.5 * b), (cx + 0.42 * a, cy + 0.5 * b),
            (cx + 0.5 * a, cy + 1.4 * b), (cx - 0.5 * a, cy + 1.4 * b)]
    both(lambda im, c: _fill(im, neck, c or skin * 0.78))
    # Ears: the one on the side the head turns towards hides behind the cheek.
    for s in (-1, 1):
        ex = cx + s * a * (0.97 - 0.25 * max(0.0, s * f["yaw"]))
        both(lambda im, c: _ellipse(im, (ex, g["eye_y"] + 0.12 * b),
                                    (0.14 * a * f["ear_size"], 0.23 * b * f["ear_size"]),
                                    c or skin * 0.88))
    contour = _face_contour(f, g, sag=f["sag"] if attrs.old else 0.0)
    both(lambda im, c: _fill(im, contour, c or skin))

    # Round shading so the face reads as a volume, not a flat disc.
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    d2 = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
    face_px = np.zeros((S, S), np.uint8)
    _fill(face_px, contour, 255)
    shade = (1 - 0.28 * np.clip(d2, 0, 1.3) ** 2)[..., None]
    shaded = np.clip(layer * shade, 0, 255).astype(np.uint8)
    np.copyto(layer, shaded, where=face_px[..., None] > 0)
    if f["blush"] > 0.05:
        for x, _ in g["eyes"]:
            _blend(layer, lambda im: _ellipse(im, (x, g["nose_tip"]), (0.2 * a, 0.12 * b),
                                              (90, 90, 230)), f["blush"] * 0.5)

    if attrs.old:
        _draw_wrinkles(layer, f, g, u)
    _draw_eyes(layer, f, g, u, attrs.old)
    _draw_nose(layer, f, g, u)
    _draw_mouth(layer, f, g, u)
    return layer, alpha, g


def _bald(f: dict, old: bool) -> bool:
    return old and f["receding"] > 0.7


def _draw_hair(layer, alpha, f, g, u, old):
    a, b, cx, cy = g["a"], g["b"], g["cx"], g["cy"]
    hair, style = _hair_colour(f, old), f["hair_style"]
    receding = f["receding"] if old else 0.0
    if _bald(f, old):  # just tufts above the ears
        for s in (-1, 1):
            tuft = (cx + s * 0.93 * a, g["eye_y"] - 0.12 * b)
            _ellipse(layer, tuft, (0.14 * a, 0.3 * b), hair, angle=-s * 10)
            _ellipse(alpha, tuft, (0.14 * a, 0.3 * b), 255, angle=-s * 10)
        return
    vol = f["hair_volume"] if style != "buzz" else 1.01
    # Hair = the top of a slightly larger head ellipse down to the temples, minus the forehead
    # below the hairline. Receding hairlines climb and grow an M shape.
    top = g["eye_y"] - 0.02 * b
    t = np.linspace(-np.pi / 2 - 0.35, np.pi / 2 + 0.35, 40)
    outer = np.stack([cx + a * vol * np.sin(t), cy - 0.04 * b - b * vol * np.cos(t)], 1)
    outer = outer[outer[:, 1] <= top + 0.05 * b]
    line_y = cy - b * (f["hairline"] + 0.35 * receding)
    xs = np.linspace(cx + 0.95 * a, cx - 0.95 * a, 24)
    rel = (xs - cx) / a
    part = f["part"] if style == "side" else 0.0
    inner_y = line_y + 0.12 * b * rel ** 2 * (1 + 3 * receding) - 0.1 * b * part * rel \
        + 0.12 * b * receding * np.exp(-(rel / 0.2) ** 2)
    inner_y = np.where(np.abs(rel) > 0.85, top, inner_y)
    inner = np.stack([xs, inner_y], 1)
    shape = np.concatenate([outer, inner])
    region = np.zeros(alpha.shape, np.uint8)
    _fill(region, shape, 255)
    if style == "curly":
        for i, (p, q, r, _) in enumerate(f["strands"]):
            ang = -1.55 + 3.1 * i / 11
            curl = 0.16 * a * (0.7 + q)
            _ellipse(region, (cx + a * vol * np.sin(ang), cy - 0.04 * b - b * vol * np.cos(ang)),
                     (curl, curl), 255)
    if style == "bun":
        _ellipse(region, (cx, cy - b * vol * 1.05), (0.3 * a, 0.22 * b), 255)
    hair_layer = np.zeros_like(layer)
    hair_layer[:] = np.asarray(hair, np.uint8) if style != "buzz" else \
        np.asarray(0.55 * hair + 0.45 * f["skin"], np.uint8)

    def strands(im):  # texture, so the hair is not a flat sticker
        for p, q, r, s in f["strands"]:
            x0 = cx + (p - 0.5) * 1.8 * a
            pts = [(x0, cy - b * 1.1), (x0 + (q - 0.5) * a * 0.5, cy - b * (0.7 - 0.2 * r)),
                   (x0 + (q - 0.5) * a, cy - b * 0.3)]
            _line(im, pts, hair * (0.6 + 0.8 * s), 1.2 * u)
    strands(hair_layer)
    np.copyto(layer, hair_layer, where=region[..., None] > 0)
    np.maximum(alpha, region, out=alpha)


def _draw_eyes(img, f, g, u, old):
    b, skin = g["b"], f["skin"]
    brow_colour = _hair_colour(f, old) * 0.75
    for x, s in g["eyes"]:
        y, w, h = g["eye_y"], g["eye_w"] * (1 - 0.15 * max(0.0, -s * f["yaw"])), g["eye_h"]
        tilt = s * f["eye_tilt"]
        _ellipse(img, (x, y), (w, h), (235, 238, 240), angle=tilt)
        iris = (x + f["gaze"][0] * w * 0.5, y + f["gaze"][1] * h * 0.3)
        _ellipse(img, iris, (h * 0.95, h * 0.95), f["iris"])
        _ellipse(img, iris, (h * 0.42, h * 0.42), (15, 15, 15))
        _ellipse(img, (x, y), (w, h), skin * 0.3, tilt, 180, 360, thickness=1.6 * u)  # lid
        _ellipse(img, (x, y), (w, h), skin * 0.7, tilt, 20, 160, thickness=0.8 * u)
        by = y - f["brow_h"] * b
        brow = [(x - s * w * 1.2, by + f["brow_tilt"] * b), (x, by - f["brow_arch"] * b),
                (x + s * w * 1.3, by - f["brow_tilt"] * b * 0.5 + 0.03 * b)]
        brow = _smooth(brow)
        _line(img, brow, brow_colour, f["brow_thick"] * b)


def _draw_nose(img, f, g, u):
    b, skin = g["b"], f["skin"]
    x, tip, w = g["nose_x"], g["nose_tip"], g["nose_w"]
    if f["nose_ridge"]:
        ridge = _smooth([(x - 0.1 * w, g["eye_y"] + 0.05 * b),
                         (x + 0.05 * w, (g["eye_y"] + tip) / 2), (x + 0.15 * w, tip - 0.06 * b)])
        _line(img, ridge, skin * 0.8, 1.2 * u)
    _ellipse(img, (x, tip - 0.02 * b), (w * 0.45, 0.06 * b), skin * 1.08)
    _ellipse(img, (x, tip - 0.01 * b), (w * 0.55, 0.07 * b), skin * 0.7, 0, 10, 170,
             thickness=1.2 * u)
    for s in (-1, 1):
        _ellipse(img, (x + s * 0.28 * w, tip + 0.005 * b), (0.13 * w, 0.025 * b), skin * 0.4)


def _draw_mouth(img, f, g, u):
    b = g["b"]
    x, y, w = g["mouth_x"], g["mouth_y"], g["mouth_w"]
    lip = f["skin"] * (1 - f["lip_red"]) + np.array([70, 60, 190], np.float32) * f["lip_red"]
    lip = lip * 0.85
    corner = y - f["smile"] * 0.04 * b
    top, bottom = f["lip_top"] * b, f["lip_bottom"] * b
    gap = 0.035 * b if f["mouth_open"] else 0.0
    upper = _smooth([(x - w, corner), (x - 0.35 * w, y - top), (x, y - top * 0.7),
                     (x + 0.35 * w, y - top), (x + w, corner), (x, y + 0.01 * b)])
    lower = _smooth([(x + w, corner), (x + 0.4 * w, y + gap + bottom),
                     (x - 0.4 * w, y + gap + bottom), (x - w, corner), (x, y + gap)])
    if gap:
        _fill(img, [(x - w * 0.9, corner), (x, y - 0.01 * b), (x + w * 0.9, corner),
                    (x, y + gap + bottom * 0.6)], (40, 30, 60))
        _ellipse(img, (x, y + gap * 0.25), (w * 0.5, gap * 0.5), (225, 230, 235))
    _fill(img, upper, lip)
    _fill(img, lower, lip * 1.1)
    middle = _smooth([(x - w, corner), (x, y + gap * 0.5 + 0.012 * b), (x + w, corner)])
    _line(img, middle, lip * 0.45, 1.3 * u)


def _draw_beard(img, f, g, old):
    """A soft-edged beard and moustache. It darkens the lower face the way a dark mask would,
    which keeps mask detection honest, but it follows the jaw and leaves the lips showing."""
    a, b, cx = g["a"], g["b"], g["cx"]
    x, y, w = g["mouth_x"], g["mouth_y"], g["mouth_w"]
    region = np.zeros(img.shape[:2], np.uint8)
    _fill(region, g["contour"], 255)
    xs = np.linspace(cx - 1.3 * a, cx + 1.3 * a, 24)
    cut = y - 0.12 * b - 0.35 * b * ((xs - cx) / a) ** 2   # rises into sideburns at the ears
    _fill(region, np.vstack([np.stack([xs, cut], 1), [(cx + 1.3 * a, 0), (cx - 1.3 * a, 0)]]), 0)
    moustache = [(x - w * 1.05, y + 0.01 * b), (x - 0.3 * w, y - 0.1 * b),
                 (x + 0.3 * w, y - 0.1 * b), (x + w * 1.05, y + 0.01 * b), (x, y - 0.04 * b)]
    _fill(region, moustache, 255)
    _ellipse(region, (x, y + 0.02 * b), (w * 0.95, 0.07 * b), 0)
    soft = cv2.GaussianBlur(region.astype(np.float32) / 255, (0, 0), 0.04 * a)[..., None]
    soft *= f["beard_alpha"]
    beard = _hair_colour(f, old) * 0.7
    np.copyto(img, np.clip(img * (1 - soft) + beard * soft, 0, 255).astype(np.uint8))


def _draw_wrinkles(img, f, g, u):
    a, b, cx = g["a"], g["b"], g["cx"]
    r = f["wrinkles"]
    crease = f["skin"] * 0.62
    th = 1.0 * u
    # Forehead lines, uneven so they look drawn by age rather than by a ruler.
    for i in range(2 + int(r[0] * 3)):
        y = g["eye_y"] - (0.3 + 0.09 * i + 0.02 * r[1 + i]) * b
        half = (0.35 + 0.25 * r[5 + i]) * a
        pts = [(cx - half, y + 0.02 * b), (cx - half / 3, y - 0.01 * b * r[9 + i]),
               (cx + half / 3, y + 0.01 * b), (cx + half, y + 0.02 * b * r[12 + i])]
        _line(img, _smooth(pts), crease, th)
    for x, s in g["eyes"]:
        y, w = g["eye_y"], g["eye_w"]
        for k in range(3):  # crow's feet fanning from the outer corner
            ang = (-0.5 + 0.5 * k + 0.2 * (r[16 + k] - 0.5)) * s
            x0 = x + s * w * 1.15
            _line(img, [(x0, y), (x0 + s * 0.14 * a * math.cos(ang), y + 0.14 * a * math.sin(ang))],
                  crease, th)
        _ellipse(img, (x, y + g["eye_h"] * 1.3), (w * 0.8, g["eye_h"] * 0.9), crease, 0, 20, 160,
                 thickness=th)  # bags under the eyes
    for s in (-1, 1):  # nasolabial folds and drooping mouth corners
        x0 = g["nose_x"] + s * g["nose_w"] * 0.6
        fold = _smooth([(x0, g["nose_tip"] - 0.02 * b),
                        (x0 + s * 0.12 * a, (g["nose_tip"] + g["mouth_y"]) / 2),
                        (g["mouth_x"] + s * g["mouth_w"] * 1.25, g["mouth_y"] + 0.1 * b)])
        _line(img, fold, crease, th * 1.3)
        mx = g["mouth_x"] + s * g["mouth_w"] * 1.05
        _line(img, [(mx, g["mouth_y"] + 0.05 * b), (mx + s * 0.03 * a, g["mouth_y"] + 0.2 * b)],
              crease, th)


def _smooth(points, n: int = 24) -> np.ndarray:
    """Catmull-Rom through a few control points: cheap organic curves for lips, brows, folds."""
    p = np.asarray(points, np.float64)
    p = np.vstack([p[0], p, p[-1]])
    out = []
    for i in range(1, len(p) - 2):
        t = np.linspace(0, 1, max(2, n // (len(p) - 3)), endpoint=False)[:, None]
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    out.append(p[-2][None])
    return np.vstack(out)


def _draw_mask(img, alpha, f, g, u):
    a, b, cx = g["a"], g["b"], g["cx"]
    contour = g["contour"]
    top = g["eye_y"] + f["mask_top"] * b
    # Sides and bottom follow the jaw (a touch outside it); the top edge rises over the nose.
    centre = np.array([g["cx"], g["cy"]])
    lower = centre + (contour - centre) * 1.05
    lower = lower[lower[:, 1] >= top]
    lower = lower[np.argsort(np.arctan2(lower[:, 0] - cx, lower[:, 1] - g["cy"]))[::-1]]
    xs = np.linspace(lower[-1, 0], lower[0, 0], 20)
    bridge = np.exp(-((xs - g["nose_x"]) / (0.35 * a)) ** 2)
    top_edge = np.stack([xs, top + 0.03 * b - 0.09 * b * bridge], 1)
    shape = np.concatenate([lower, top_edge])
    region = np.zeros(alpha.shape, np.uint8)
    _fill(region, shape, 255)
    colour = f["mask_colour"]
    strap = np.array([235, 235, 235], np.float32) if f["strap_white"] else colour * 0.85
    for s in (-1, 1):
        ear = (cx + s * a * 0.97, g["eye_y"] + 0.12 * b)
        corners = (top_edge[0], top_edge[-1], lower[0], lower[-1])
        for p in [p for p in corners if np.sign(p[0] - cx) == s]:
            _line(img, [p, (ear[0], ear[1] + (0.15 * b if p[1] > top + 0.1 * b else -0.1 * b))],
                  strap, 1.6 * u)

    def cloth(im):
        _fill(im, shape, colour)
        if f["mask_pattern"] == "stripes":
            for k in range(-6, 7):
                x0 = cx + k * 0.2 * a
                _line(im, [(x0 - 0.3 * a, top - 0.2 * b), (x0 + 0.3 * a, g["cy"] + 1.2 * b)],
                      f["mask_pattern_colour"], 2.2 * u)
        elif f["mask_pattern"] == "dots":
            for i in range(-4, 5):
                for j in range(0, 7):
                    _ellipse(im, (cx + i * 0.22 * a + (j % 2) * 0.11 * a, top + j * 0.14 * b),
                             (0.04 * a, 0.04 * a), f["mask_pattern_colour"])
        if f["mask_pleats"]:
            for k in (0.3, 0.5, 0.7):
                y = top + k * (g["cy"] + b - top)
                _line(im, _smooth([(cx - a * 1.1, y + 0.03 * b), (g["nose_x"], y - 0.02 * b),
                                   (cx + a * 1.1, y + 0.03 * b)]), colour * 0.72, 1.1 * u)
        # Fabric shading: lit over the nose, darker towards the jaw.
        _blend(im, lambda o: _ellipse(o, (g["nose_x"], g["cy"] + 1.0 * b), (a * 1.2, b * 0.45),
                                      colour * 0.6), 0.5)
    _stencil(img, region, cloth)
    _line(img, np.vstack([shape, shape[:1]]), colour * 0.6, 1.0 * u)
    np.maximum(alpha, region, out=alpha)


def _draw_glasses(img, f, g, u):
    colour = f["glasses_colour"]
    th = 1.6 * u
    centres = [(x, g["eye_y"]) for x, _ in g["eyes"]]
    r = g["eye_w"] * 1.45
    for c in centres:
        if f["glasses_round"]:
            _ellipse(img, c, (r, r * 0.8), colour, thickness=th)
        else:
            x, y = c
            _line(img, [(x - r, y - 0.7 * r), (x + r, y - 0.7 * r), (x + r, y + 0.7 * r),
                        (x - r, y + 0.7 * r), (x - r, y - 0.7 * r)], colour, th)
    (x0, y0), (x1, y1) = centres
    _line(img, [(x0 + r, y0 - 0.2 * r), (x1 - r, y1 - 0.2 * r)], colour, th)


# --- fakes ---------------------------------------------------------------------------------------

def _transplant(layer, face, g, donor_face, donor_rng, attrs: FaceAttributes, S: int) -> None:
    """Paste one region of another person's face over this one, the way a crude face swap would:
    the donor's own skin tone, a slightly wrong size and position, and a seam where they meet."""
    level = KNOBS.fake_levels[attrs.difficulty]
    donor_attrs = FaceAttributes(mask=False, old=attrs.old, fake=False)
    donor_layer, _, dg = _draw_head(donor_face, donor_attrs, S)
    (tx, ty), (tw, th) = g["regions"][attrs.fake_region]
    (dx, dy), (dw, dh) = dg["regions"][attrs.fake_region]
    scale = 1 + donor_rng.uniform(-1, 1, 2) * level.scale_error
    angle = donor_rng.uniform(0, 2 * np.pi)
    shift = donor_rng.uniform(0.5, 1.0) * level.offset_error * g["a"]
    tx, ty = tx + shift * math.cos(angle), ty + shift * math.sin(angle)
    # Map the donor's box onto the (mis-sized, mis-placed) target box with one affine warp.
    sx, sy = tw * scale[0] / dw, th * scale[1] / dh
    warp = np.float32([[sx, 0, tx - sx * dx], [0, sy, ty - sy * dy]])
    patch = cv2.warpAffine(donor_layer, warp, (S, S), flags=cv2.INTER_LINEAR).astype(np.float32)
    # Tone: the patch keeps the direction of the donor's skin difference (mostly lighter or
    # darker, as in real swaps) but its size is set by the level, so easy fakes never blend in
    # by luck when donor and target happen to share a skin tone.
    direction = donor_face["skin"] - face["skin"] + donor_rng.normal(0, 8, 3)
    patch += direction / (np.linalg.norm(direction) + 1e-6) * level.tone \
        - (donor_face["skin"] - face["skin"])
    sharp = np.zeros((S, S), np.uint8)
    _ellipse(sharp, (tx, ty), (tw * scale[0], th * scale[1]), 255)
    soft = sharp.astype(np.float32) / 255
    sigma = level.feather * min(tw, th) * 2
    if sigma > 0.3:
        soft = cv2.GaussianBlur(soft, (0, 0), sigma)
    soft = soft[..., None]
    out = layer.astype(np.float32) * (1 - soft) + patch * soft
    if level.seam > 0:
        # The cut shows as a thin shadow line, 1/64 of the image wide at any size.
        k = np.ones((2 * max(1, round(S / 128)) + 1,) * 2, np.uint8)
        ring = (cv2.dilate(sharp, k) - cv2.erode(sharp, k)).astype(np.float32) / 255
        ring = cv2.GaussianBlur(ring, (0, 0), 0.6 * S / 128)[..., None]
        out *= 1 - level.seam * ring
    np.copyto(layer, np.clip(out, 0, 255).astype(np.uint8))


# --- the scene -----------------------------------------------------------------------------------

def _background(s: dict, S: int) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    along = (xx - 0.5) * math.cos(s["bg_angle"]) + (yy - 0.5) * math.sin(s["bg_angle"])
    t = np.clip(0.5 + along, 0, 1)
    img = (s["bg"][0] * (1 - t[..., None]) + s["bg"][1] * t[..., None]).astype(np.uint8)
    for kind, p, colour, opacity in s["clutter"]:
        def shape(im, kind=kind, p=p, colour=colour):
            x0, y0, x1, y1 = p[0] * S, p[1] * S, p[2] * S, p[3] * S
            if kind == 0:
                cv2.rectangle(im, _p(x0, y0), _p(x1, y1), _c(colour), -1, AA, SHIFT)
            elif kind == 1:
                _ellipse(im, (x0, y0), (0.05 * S + p[4] * 0.25 * S, 0.05 * S + p[5] * 0.25 * S),
                         colour, angle=p[6] * 180)
            elif kind == 2:
                _line(im, [(x0, y0), (x1, y1)], colour, 1 + p[4] * 0.04 * S)
            elif kind == 3:
                _line(im, [(x0, y0), (x1, y1), (p[4] * S, p[5] * S), (p[6] * S, p[7] * S)],
                      colour, 1 + p[4] * 0.02 * S)
            else:
                _fill(im, [(x0, y0), (x1, y1), (p[4] * S, p[5] * S)], colour)
        _blend(img, shape, opacity)
    if s["bg_blur"] > 0.3:  # shallow depth of field: the background is a little soft
        img = cv2.GaussianBlur(img, (0, 0), s["bg_blur"] * S / 128)
    return img


# How strongly a session's light falls off across the image (`lit_from`): as `Knobs.light_gradient`
# at its strongest, so the side is plain to see, and within a few degrees of the side named.
SESSION_LIGHT, SESSION_LIGHT_JITTER_DEG = 0.3, 15.0


def render_face(seed: int, index: int, attrs: FaceAttributes, size: int, lit_from: float | None = None) -> np.ndarray:
    """One face scene as a BGR uint8 (size, size, 3) image; a pure function of its arguments.
    `lit_from` (degrees: 0 the right, 180 the left) fixes where the light comes from, as in a photo
    session with one lamp; by default each image draws its own."""
    _check_size(size)
    if attrs.fake and not (attrs.fake_region in FAKE_REGIONS and attrs.difficulty in FAKE_LEVELS):
        raise ValueError(f"a fake face needs fake_region in {FAKE_REGIONS} and difficulty in "
                         f"{FAKE_LEVELS}, got {attrs.fake_region!r} and {attrs.difficulty!r}")
    S = 2 * size  # drawn at twice the size, then area-downscaled: cheap anti-aliasing
    u = S / 128
    rng = np.random.default_rng([seed, index])
    face, scene = _sample_face(rng), _sample_scene(rng)
    if lit_from is not None:  # after every draw, so the face and the scene stay the same otherwise
        jitter = np.random.default_rng([seed, index, _LIGHT_STREAM]).uniform(-1, 1) * SESSION_LIGHT_JITTER_DEG
        # The gradient brightens towards light_angle; the lamp stands on that side.
        scene["light_angle"], scene["light"] = math.radians(lit_from + jitter), SESSION_LIGHT
    layer, alpha, g = _draw_head(face, attrs, S)
    if attrs.fake:
        donor_rng = np.random.default_rng([seed, index, _DONOR_STREAM])
        _transplant(layer, face, g, _sample_face(donor_rng), donor_rng, attrs, S)
    if face["beard"]:
        _draw_beard(layer, face, g, attrs.old)
    _draw_hair(layer, alpha, face, g, u, attrs.old)
    if attrs.mask:
        _draw_mask(layer, alpha, face, g, u)
    if face["glasses"]:
        _draw_glasses(layer, face, g, u)

    turn = cv2.getRotationMatrix2D((g["cx"], g["cy"]), face["rotation"], 1.0)
    layer = cv2.warpAffine(layer, turn, (S, S), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(alpha, turn, (S, S), flags=cv2.INTER_LINEAR)
    w = alpha[..., None].astype(np.float32) / 255
    img = _background(scene, S).astype(np.float32) * (1 - w) + layer.astype(np.float32) * w

    # Light falls off across the image; the camera adds contrast, exposure and a colour cast.
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
    along = xx * math.cos(scene["light_angle"]) + yy * math.sin(scene["light_angle"])
    img = img * (1 + 2 * scene["light"] * along)[..., None]
    img = (img - 128) * scene["contrast"] + 128 + scene["brightness"]
    img = img * scene["cast"].astype(np.float32)

    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if scene["blur"]:
        img = cv2.GaussianBlur(img, (0, 0), scene["blur"] * size / 64)
    img = img + rng.normal(0, scene["noise"], img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- writing a dataset ---------------------------------------------------------------------------

def jpeg_quality(seed: int, index: int) -> int:
    lo, hi = KNOBS.jpeg_quality
    return int(np.random.default_rng([seed, index, _JPEG_STREAM]).integers(lo, hi + 1))


def file_name(index: int, attrs: FaceAttributes) -> str:
    """Fakes are named like the Yonsei set (`hard_00012.jpg`), so adapters can read the level."""
    return f"{attrs.difficulty}_{index:05d}.jpg" if attrs.fake else f"{index:05d}.jpg"


def generate(out_dir: Path, task: str, seed: int = 0, size: int = 64, count: int = 1500,
             lit_from: dict[str, float] | None = None) -> Path:
    """Write the dataset to `out_dir` as a raw folder in the `folders` layout (`<class>/<id>.jpg`),
    beside it `dataset.json` (the options and class counts) and `attributes.csv` (each face's
    drawn attributes: the ground truth behind its label). It is ingested like any photo folder;
    returns `out_dir`.

    `lit_from` maps a class to the side its photos are lit from (degrees, as `render_face`'s),
    as when a dataset's classes were photographed in separate sessions: a cue that tells the
    classes apart in this dataset and nowhere else, which a model can learn instead of the faces
    (a shortcut; horizontal flips take it away, since they swap the sides)."""
    _check_task(task)
    _check_size(size)
    _check_count(task, count)
    out_dir = Path(out_dir)
    unknown = set(lit_from or {}) - set(TASKS[task])
    if unknown:
        raise ValueError(f"lit_from: no class {', '.join(sorted(unknown))} in task {task!r}")
    rows = []
    for index, (label, attrs) in enumerate(plan(task, count, seed)):
        img = render_face(seed, index, attrs, size, (lit_from or {}).get(label))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality(seed, index)])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode image {index} as JPEG")
        rel = f"{label}/{file_name(index, attrs)}"
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.tobytes())
        rows.append({"path": rel, "label": label, "mask": "yes" if attrs.mask else "no",
                     "age": "old" if attrs.old else "young", "authenticity": "fake" if attrs.fake else "real",
                     "difficulty": attrs.difficulty or ""})
    rows.sort(key=lambda r: r["path"])
    with (out_dir / ATTRIBUTES).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=ATTRIBUTE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    info = {"task": task, "seed": seed, "size": size, "count": count, "classes": TASKS[task],
            "class_counts": class_counts(task, count), "generator_version": GENERATOR_VERSION,
            **({"lit_from": lit_from} if lit_from else {})}
    (out_dir / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir


# --- the reference studies' folder layouts (smoke runs) -------------------------------------------

# adapter -> (task, {class: folder path inside the dataset's folder}, split folders, suffix). The
# trees mirror what each study's users download, so `--smoke` exercises the real adapter, the real
# class mapping and the real split handling on faces drawn here.
LAYOUTS: dict[str, tuple[str, dict[str, str], dict[str, float], str]] = {
    "facemask12k": ("mask2", {"with_mask": "{split}/WithMask", "without_mask": "{split}/WithoutMask"},
                    {"Train": 0.6, "Validation": 0.2, "Test": 0.2}, ".png"),
    "yonsei_realfake": ("mask3_fake", {"real": "training_real", "fake": "training_fake"}, {}, ".jpg"),
    "maskdataset_v1": ("mask2", {"with_mask": "{split}/Mask", "without_mask": "{split}/No_mask"},
                       {"Train": 0.5, "Validation": 0.5}, ".jpg"),
    "folders": ("mask_age4", {c: c for c in TASKS["mask_age4"]}, {}, ".jpg"),
}


def generate_layout(root: Path, adapter: str, *, per_class: int = 24, seed: int = 0, size: int = 48) -> Path:
    """Write `per_class` faces of each class into `root` laid out as the adapter's published
    dataset (Face Mask 12K's Train/Validation/Test x WithMask/WithoutMask PNGs, Yonsei's
    training_real / training_fake with easy_/mid_/hard_ fakes, Mask Dataset V1's Train/Validation
    x Mask/No_mask, or plain class folders); returns `root`. Deterministic like `generate`."""
    if adapter not in LAYOUTS:
        raise ValueError(f"no synthetic layout for adapter {adapter!r}; known: {', '.join(LAYOUTS)}")
    task, folders, splits, suffix = LAYOUTS[adapter]
    _check_size(size)
    root = Path(root)
    # Draw enough of the task's faces that every wanted class has per_class of them.
    drawn, count = [], per_class * len(TASKS[task])
    while True:
        drawn = [(i, label, attrs) for i, (label, attrs) in enumerate(plan(task, count, seed)) if label in folders]
        if all(sum(label == c for _, label, _ in drawn) >= per_class for c in folders):
            break
        count *= 2
    for label, folder in folders.items():
        mine = [(i, attrs) for i, lab, attrs in drawn if lab == label][:per_class]
        parts = list(splits) or [""]
        cut = [0, *np.cumsum([round(share * len(mine)) for share in splits.values()] or [len(mine)])]
        cut[-1] = len(mine)  # rounding never loses an image
        for part, start, stop in zip(parts, cut[:-1], cut[1:]):
            target = root / folder.format(split=part)
            target.mkdir(parents=True, exist_ok=True)
            for index, attrs in mine[start:stop]:
                image = render_face(seed, index, attrs, size)
                name = Path(file_name(index, attrs)).with_suffix(suffix).name
                params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality(seed, index)] if suffix == ".jpg" else []
                ok, buf = cv2.imencode(suffix, image, params)
                if not ok:
                    raise RuntimeError(f"OpenCV could not encode image {index} as {suffix}")
                (target / name).write_bytes(buf.tobytes())
    return root
