"""Dataset adapters: from a raw folder, as downloaded, to a manifest workbench can trust.

Each adapter knows one published layout (Face Mask 12K, Yonsei real/fake, Mask Dataset V1, or any
tree of class folders, pre-split or not) and lists its files with the label and original split the
layout gives them; class folder names are kept exactly as on disk, since mapping them to a spec's
classes happens later. `ingest` then opens every image once, leaves out what cannot be used (empty,
not an image, truncated or corrupt, absurdly small or large) with the reason in a report, records
what each file really is (size, bands, format, sha256, perceptual hash), writes a normalised RGB
PNG under the interim folder for the files TensorFlow's decoder would read wrongly (EXIF rotation,
alpha, palette, 16-bit, CMYK, WebP / TIFF, very large), and groups exact and near duplicates so
that splits keep them together. Raw folders are only ever read. The outputs are a pure function
of the raw files and the arguments, apart from the sidecar's timestamp.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from workbench.errors import DataError
from workbench.leakage import near_duplicate_groups

MANIFEST_COLUMNS = ["path", "sha256", "width", "height", "channels", "format", "label", "source",
                    "original_split", "group_id", "phash", "decoded"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TF_FORMATS = frozenset({"jpeg", "png", "bmp", "gif"})   # what tf.io.decode_image reads natively
TF_MODES = frozenset({"RGB", "L"})
DECODED_MAX_SIDE = 1024       # larger images are stored downscaled: nothing trains above this
MIN_SIDE, MAX_SIDE = 16, 20000
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_DIRS = frozenset({"__MACOSX"})  # resource forks left by macOS zip archives
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class Item(NamedTuple):
    file: Path
    label: str
    original_split: str
    extra: dict[str, str]


@dataclass(frozen=True)
class Adapter:
    name: str
    layout: str                             # the expected layout, as error messages show it
    scan: Callable[[Path], list[Item]]      # raw_root -> files in the layout, or DataError
    extra_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    name: str
    manifest_path: Path
    report_path: Path
    kept: int
    skipped: int
    counts: dict[str, dict[str, int]]   # label -> original_split -> images


# --- walking the raw tree -------------------------------------------------------------------------

def _visible(entry: os.DirEntry | Path) -> bool:
    return not entry.name.startswith(".") and entry.name not in IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and _visible(e))


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder called `name`, ignoring case: archives re-zipped on Windows change it."""
    matches = [d for d in _subdirs(folder) if d.name.lower() == name.lower()]
    exact = [d for d in matches if d.name == name]
    return (exact or matches or [None])[0]


def _images(folder: Path) -> list[Path]:
    """Image files under `folder`, at any depth, in a stable order; hidden entries are skipped."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if _visible(Path(d))]
        found += [Path(top) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _locate(raw_root: Path, wrappers: tuple[str, ...], required: tuple[str, ...],
            adapter: str, layout: str) -> Path:
    """The folder holding the layout: raw_root itself or the archive's wrapper folder inside it."""
    for candidate in (raw_root, *(raw_root / w for w in wrappers)):
        if candidate.is_dir() and all(_child(candidate, r) for r in required):
            return candidate
    raise DataError(f"{raw_root}: not a {adapter} folder; expected {layout}")


def _split_class_items(root: Path, splits: dict[str, str], layout: str) -> list[Item]:
    items = []
    for folder_name, split in splits.items():
        split_dir = _child(root, folder_name)
        if split_dir is None:
            continue
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            raise DataError(f"{split_dir}: no class folders; expected {layout}")
        for class_dir in class_dirs:
            items += [Item(f, class_dir.name, split, {}) for f in _images(class_dir)]
    return items


# --- adapters -------------------------------------------------------------------------------------

_FACEMASK_LAYOUT = "[Face Mask Dataset/]{Train,Validation,Test}/{WithMask,WithoutMask}/*"
_YONSEI_LAYOUT = "[real_and_fake_face/]{training_real,training_fake}/*"
_MASKV1_LAYOUT = "[Mask_Datasets/]{Train,Validation}/{Mask,No_mask}/*"
_FOLDERS_LAYOUT = "<class>/* or {train,val,test}/<class>/*"


def _scan_facemask12k(raw_root: Path) -> list[Item]:
    root = _locate(raw_root, ("Face Mask Dataset",), ("Train",), "facemask12k", _FACEMASK_LAYOUT)
    return _split_class_items(root, {"Train": "train", "Validation": "val", "Test": "test"},
                              _FACEMASK_LAYOUT)


def _scan_maskdataset_v1(raw_root: Path) -> list[Item]:
    root = _locate(raw_root, ("Mask_Datasets",), ("Train",), "maskdataset_v1", _MASKV1_LAYOUT)
    return _split_class_items(root, {"Train": "train", "Validation": "val"}, _MASKV1_LAYOUT)


def difficulty_of(file_name: str) -> str:
    """Yonsei fakes are named `easy_…`, `mid_…` or `hard_…` after how visible the edit is."""
    prefix = file_name.split("_", 1)[0].lower()
    return prefix if prefix in ("easy", "mid", "hard") else ""


def _scan_yonsei(raw_root: Path) -> list[Item]:
    # Kaggle's archive nests a second copy one level deeper; either wrapper is accepted.
    root = _locate(raw_root, ("real_and_fake_face", "real_and_fake_face_detection/real_and_fake_face"),
                   ("training_real", "training_fake"), "yonsei_realfake", _YONSEI_LAYOUT)
    real = [Item(f, "real", "", {"difficulty": ""}) for f in _images(_child(root, "training_real"))]
    fake = [Item(f, "fake", "", {"difficulty": difficulty_of(f.name)})
            for f in _images(_child(root, "training_fake"))]
    return real + fake


def _scan_folders(raw_root: Path) -> list[Item]:
    top = _subdirs(raw_root)
    if not top:
        raise DataError(f"{raw_root}: no class folders; expected {_FOLDERS_LAYOUT}")
    if all(d.name.lower() in SPLIT_NAMES for d in top):
        return _split_class_items(raw_root, {d.name: SPLIT_NAMES[d.name.lower()] for d in top},
                                  _FOLDERS_LAYOUT)
    return [Item(f, d.name, "", {}) for d in top for f in _images(d)]


ADAPTERS: dict[str, Adapter] = {
    "facemask12k": Adapter("facemask12k", _FACEMASK_LAYOUT, _scan_facemask12k),
    "yonsei_realfake": Adapter("yonsei_realfake", _YONSEI_LAYOUT, _scan_yonsei, ("difficulty",)),
    "maskdataset_v1": Adapter("maskdataset_v1", _MASKV1_LAYOUT, _scan_maskdataset_v1),
    "folders": Adapter("folders", _FOLDERS_LAYOUT, _scan_folders),
}


# --- one image ------------------------------------------------------------------------------------

def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # unreadable EXIF is common in the wild and must not cost the image
        return 1
    return value if 2 <= value <= 8 else 1


def _is_sixteen_bit(img: Image.Image) -> bool:
    # PIL reads 48-bit RGB PNGs as plain RGB; only the tile's raw mode still says 16.
    raw_modes = " ".join(str(tile[3]) for tile in (img.tile or []) if len(tile) > 3)
    return img.mode in _SIXTEEN_BIT_MODES or ";16" in raw_modes


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: transparency over white, 16-bit scaled, CMYK converted."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float64)
        # 16-bit PNG / TIFF data: full scale is 65535, whatever PIL's container mode.
        eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        low, high = np.nanmin(values), np.nanmax(values)
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")
    if "A" in img.getbands() or "a" in mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _downscaled(img: Image.Image) -> Image.Image:
    width, height = img.size
    if max(width, height) <= DECODED_MAX_SIDE:
        return img
    scale = DECODED_MAX_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def inspect_image(file: Path, decoded_to: Path) -> dict[str, str] | str:
    """Describe one image file (writing its normalised PNG to `decoded_to` when TensorFlow would
    misread the original), or return the one-line reason it cannot be used."""
    data = file.read_bytes()
    if not data:
        return "empty file"
    with warnings.catch_warnings():
        # PIL warns about odd palettes, EXIF and big images; the manifest records what matters.
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return "not an image: unrecognised format"
        except Image.DecompressionBombError:
            return "too large: over PIL's decompression-bomb pixel limit"
        except Exception as err:
            return f"not an image: {_one_line(err)}"
        width, height = img.size
        if min(width, height) < MIN_SIDE:
            return f"too small: {width}x{height}"
        if max(width, height) > MAX_SIDE:
            return f"too large: {width}x{height}"
        info = {"width": str(width), "height": str(height), "channels": str(len(img.getbands())),
                "format": (img.format or "").lower()}
        sixteen_bit = _is_sixteen_bit(img)
        try:
            img.load()  # lazy PIL reads only the header; a full decode finds truncation
        except Exception as err:
            message = _one_line(err)
            kind = "truncated" if "truncat" in message.lower() or isinstance(err, EOFError) else "corrupt"
            return f"{kind}: {message}"
        orientation = _orientation(img)
        needs_copy = (info["format"] not in TF_FORMATS or img.mode not in TF_MODES or sixteen_bit
                      or orientation != 1 or "transparency" in img.info
                      or max(width, height) > DECODED_MAX_SIDE)
        upright = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _downscaled(to_rgb(upright))
    info["sha256"] = hashlib.sha256(data).hexdigest()
    info["phash"] = str(imagehash.phash(rgb))
    info["decoded"] = ""
    if needs_copy:
        decoded_to.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(decoded_to, format="PNG")
        info["decoded"] = "1"
    return info


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --- a whole dataset ------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def ingest(source: str, raw_root: Path, name: str, out_dir: Path, interim_dir: Path,
           near_duplicate_distance: int = 4, extra: dict | None = None) -> IngestResult:
    """Turn the raw folder into `out_dir/<name>.csv` (+ `.json` sidecar, `.report.csv` of skipped
    files) and normalised copies under `interim_dir/<name>/`. `extra` is recorded in the sidecar
    (the synthetic set's generator options, say)."""
    adapter = ADAPTERS.get(source)
    if adapter is None:
        raise DataError(f"unknown dataset source {source!r}; expected one of {', '.join(ADAPTERS)}")
    if not _NAME.fullmatch(name):
        raise DataError(f"dataset name {name!r}: use letters, digits, '_', '-' or '.' only")
    raw_root, out_dir, interim_dir = (Path(p).resolve() for p in (raw_root, out_dir, interim_dir))
    if not raw_root.is_dir():
        raise DataError(f"{raw_root}: raw dataset folder not found")
    for folder in (out_dir, interim_dir):
        if _inside(folder, raw_root):
            raise DataError(f"{folder}: inside the raw folder {raw_root}; raw data is read-only, "
                            "write outputs elsewhere")
    if _inside(raw_root, interim_dir / name):
        # interim_dir/<name> is replaced wholesale, which must never take the raw folder with it.
        raise DataError(f"{interim_dir / name}: would replace the raw folder {raw_root}; "
                        "choose another interim folder or dataset name")
    items = adapter.scan(raw_root)
    if not items:
        raise DataError(f"{raw_root}: no image files in the {source} layout ({adapter.layout})")

    interim_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Copies go to a staging folder that replaces interim_dir/<name> only once all are written,
    # so an interrupted ingest never leaves a manifest pointing at missing or stale copies.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=interim_dir))
    rows, skipped = [], []
    try:
        for item in items:
            path = item.file.relative_to(raw_root).as_posix()
            described = inspect_image(item.file, staging / f"{path}.png")
            if isinstance(described, str):
                skipped.append({"path": path, "reason": described})
                continue
            if described["decoded"]:
                described["decoded"] = f"{name}/{path}.png"
            rows.append({**described, "path": path, "label": item.label, "source": name,
                         "original_split": item.original_split, **item.extra})
        report_path = out_dir / f"{name}.report.csv"
        _write_csv(pd.DataFrame(skipped, columns=["path", "reason"]).sort_values("path"), report_path)
        if not rows:
            raise DataError(f"{raw_root}: none of the {len(skipped)} image files could be used; "
                            f"reasons in {report_path}")
        _replace_folder(staging, interim_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    columns = MANIFEST_COLUMNS + list(adapter.extra_columns)
    frame = pd.DataFrame(rows).sort_values("path").reset_index(drop=True)
    frame["group_id"] = group_ids(frame, name, near_duplicate_distance)
    manifest_path = out_dir / f"{name}.csv"
    _write_csv(frame[columns], manifest_path)

    counts = {label: {split: int(n) for split, n in sorted(part["original_split"].value_counts().items())}
              for label, part in sorted(frame.groupby("label"), key=lambda kv: kv[0])}
    sidecar = {"name": name, "adapter": source, "raw_root": str(raw_root),
               "interim_root": str(interim_dir / name),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "kept": len(frame), "skipped": len(skipped), "counts": counts,
               "near_duplicate_distance": near_duplicate_distance, **(extra or {})}
    _write_text(json.dumps(sidecar, indent=2) + "\n", out_dir / f"{name}.json")
    return IngestResult(name=name, manifest_path=manifest_path, report_path=report_path,
                        kept=len(frame), skipped=len(skipped), counts=counts)


def group_ids(frame: pd.DataFrame, name: str, max_distance: int) -> list[str]:
    """`name:k` per row, k numbering duplicate groups in the order of their smallest path."""
    representative = near_duplicate_groups(list(frame["path"]), list(frame["sha256"]),
                                           list(frame["phash"]), max_distance)
    number = {rep: k for k, rep in enumerate(sorted(set(representative.values())))}
    return [f"{name}:{number[representative[p]]}" for p in frame["path"]]


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    _write_text(frame.to_csv(index=False, lineterminator="\n"), path)


def _replace_folder(staging: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        os.rename(final, old / final.name)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_sidecar(name: str, out_dir: Path) -> dict:
    """An ingested dataset's sidecar: where its raw and normalised files are, and how it was made."""
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; ingest the dataset '{name}' first")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read manifest sidecar ({_one_line(err)})") from None
    if not isinstance(sidecar, dict) or not {"raw_root", "interim_root"} <= set(sidecar):
        raise DataError(f"{path}: not a manifest sidecar (no raw_root / interim_root); ingest '{name}' again")
    return sidecar


def read_manifest(name: str, out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """An ingested manifest (every column a string, empty cells as "") and its sidecar."""
    csv_path = Path(out_dir) / f"{name}.csv"
    sidecar = read_sidecar(name, out_dir)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found; ingest the dataset '{name}' first")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: cannot read manifest ({_one_line(err)})") from None
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}")
    return frame, sidecar
