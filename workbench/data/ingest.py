"""Dataset adapters: from a raw folder, as downloaded or scraped, to a manifest workbench can trust.

Each adapter knows one published layout (Face Mask 12K, Yonsei real/fake, Mask Dataset V1, or any
tree of class folders, pre-split or not) and lists every file under its class folders with the
label and original split the layout gives them; class folder names are kept as on disk, since
mapping them to a spec's classes happens later. The content decides what a file is, never its
name: `ingest` opens every candidate once and keeps what Pillow decodes as a photo format, and
lists everything else (empty, text or HTML, truncated or corrupt, absurdly small or large,
unreadable, a pipe, a link leading outside the dataset root, an empty class folder) with its
reason in a report; hidden files and `__MACOSX` forks are only counted. For what it keeps it
records what each file really is (size, bands, format, sha256, perceptual hash), writes a
normalised RGB PNG under the interim folder for the files TensorFlow would read wrongly or not at
all (EXIF rotation, alpha, palette, 16-bit, CMYK, WebP / TIFF, very large, a name that is not
UTF-8), and groups exact and near duplicates so that splits keep them together. `read_picture`
is the one way an image file becomes pixels, so prediction sees what training saw. Raw folders
are only ever read. The outputs are a pure function of the raw files and the arguments, apart
from the sidecar's timestamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from workbench.data.leakage import near_duplicate_groups
from workbench.errors import DataError

MANIFEST_COLUMNS = ["path", "sha256", "width", "height", "channels", "format", "label", "source",
                    "original_split", "group_id", "phash", "decoded"]

# Pillow guesses at dozens of formats, some from a few loose header bytes (TGA) and some by
# running other programs (EPS through Ghostscript); a photo folder needs only these.
PHOTO_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "AVIF", "JPEG2000", "PPM")
TF_FORMATS = frozenset({"jpeg", "png", "bmp", "gif"})   # what tf.io.decode_image reads natively
TF_MODES = frozenset({"RGB", "L"})
DECODED_MAX_SIDE = 1024       # larger images are stored downscaled: nothing trains above this
MIN_SIDE, MAX_SIDE = 16, 20000
MAX_FILE_BYTES = 512 * 2**20  # read whole into memory: a 20,000 px photo is far smaller
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_DIRS = frozenset({"__MACOSX"})  # resource forks left by macOS zip archives
NAME_MAX = 255                # bytes in one file name on Linux and macOS file systems
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_EMPTY_FOLDER = "empty class folder: no files, so no images of this class"
_LINKED_FOLDER = "symlinked folder: not followed"
_BREAKING = ("Cc", "Zl", "Zp")   # control characters and line / paragraph separators


class Item(NamedTuple):
    file: Path
    label: str
    original_split: str
    extra: dict[str, str]
    problem: str = ""       # why it is left out before it is even opened (an empty class folder)


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
    ignored: int = 0                    # hidden entries and __MACOSX folders, neither kept nor reported
    notes: tuple[str, ...] = ()         # what a user should know about the whole dataset


# --- names ------------------------------------------------------------------------------------------

def printable(name: str) -> str:
    """`name` as one line of valid UTF-8: bytes that are not UTF-8 (which Python carries as
    surrogate escapes, and no UTF-8 file can hold) become `\\xNN`, and control and line-breaking
    characters their backslash escape, so a manifest, a report and an error line can show it."""
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system decoding produces
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BREAKING else c
                   for c in text)


# --- walking the raw tree -------------------------------------------------------------------------

def _visible(entry: os.DirEntry | Path | str) -> bool:
    name = entry if isinstance(entry, str) else entry.name
    return not name.startswith(".") and name not in IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and _visible(e))


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder called `name`, ignoring case: archives re-zipped on Windows change it."""
    matches = [d for d in _subdirs(folder) if d.name.lower() == name.lower()]
    exact = [d for d in matches if d.name == name]
    return (exact or matches or [None])[0]


def _images(folder: Path) -> list[tuple[Path, str]]:
    """Every candidate file under a class folder, at any depth and whatever its name, in a stable
    order, each with the reason it is left out unopened ("" when it is to be opened). Linked
    folders are listed, never entered: they may lead outside the root or round in a loop."""
    found: list[tuple[Path, str]] = []

    def unreadable(err: OSError) -> None:  # os.walk would otherwise skip such a folder silently
        found.append((Path(err.filename), f"unreadable folder: {err.strerror or _one_line(err)}"))

    for top, dirs, files in os.walk(folder, onerror=unreadable):
        base = Path(top)
        linked = {d for d in dirs if _visible(d) and (base / d).is_symlink()}
        found += [(base / d, _LINKED_FOLDER) for d in linked]
        dirs[:] = sorted(d for d in dirs if _visible(d) and d not in linked)
        found += [(base / f, "") for f in files if _visible(f)]
    return sorted(found) or [(folder, _EMPTY_FOLDER)]


def _class_items(folder: Path, label: str, split: str, extra: Callable[[Path], dict[str, str]] | None = None
                 ) -> list[Item]:
    return [Item(f, label, split, extra(f) if extra else {}, problem) for f, problem in _images(folder)]


def _ignored(raw_root: Path) -> int:
    """Hidden entries and __MACOSX folders under the root (each counted once, not entered)."""
    count = 0
    for _, dirs, files in os.walk(raw_root):
        count += sum(not _visible(name) for name in [*dirs, *files])
        dirs[:] = [d for d in dirs if _visible(d)]
    return count


def _locate(raw_root: Path, wrappers: tuple[str, ...], required: tuple[str, ...],
            adapter: str, layout: str) -> Path:
    """The folder holding the layout: raw_root itself or the archive's wrapper folder inside it."""
    for candidate in (raw_root, *(raw_root / w for w in wrappers)):
        if candidate.is_dir() and all(_child(candidate, r) for r in required):
            return candidate
    raise DataError(f"{raw_root}: not a {adapter} folder; expected {layout}", exit_code=2)


def _split_class_items(root: Path, splits: dict[str, str], layout: str) -> list[Item]:
    items = []
    for folder_name, split in splits.items():
        split_dir = _child(root, folder_name)
        if split_dir is None:
            continue
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            raise DataError(f"{split_dir}: no class folders; expected {layout}", exit_code=2)
        for class_dir in class_dirs:
            items += _class_items(class_dir, class_dir.name, split)
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
    real = _class_items(_child(root, "training_real"), "real", "", lambda f: {"difficulty": ""})
    fake = _class_items(_child(root, "training_fake"), "fake", "", lambda f: {"difficulty": difficulty_of(f.name)})
    return real + fake


def _scan_folders(raw_root: Path) -> list[Item]:
    top = _subdirs(raw_root)
    if not top:
        raise DataError(f"{raw_root}: no class folders; expected {_FOLDERS_LAYOUT}", exit_code=2)
    splits = [d.name for d in top if d.name.lower() in SPLIT_NAMES]
    if splits and len(splits) == len(top):
        return _split_class_items(raw_root, {d.name: SPLIT_NAMES[d.name.lower()] for d in top},
                                  _FOLDERS_LAYOUT)
    if splits:
        # Read as classes, `train/` would become a class of every image under it.
        others = sorted(d.name for d in top if d.name.lower() not in SPLIT_NAMES)
        raise DataError(f"{raw_root}: split folders ({', '.join(sorted(splits))}) beside other folders "
                        f"({', '.join(printable(o) for o in others)}); expected {_FOLDERS_LAYOUT}", exit_code=2)
    return [item for d in top for item in _class_items(d, d.name, "")]


ADAPTERS: dict[str, Adapter] = {
    "facemask12k": Adapter("facemask12k", _FACEMASK_LAYOUT, _scan_facemask12k),
    "yonsei_realfake": Adapter("yonsei_realfake", _YONSEI_LAYOUT, _scan_yonsei, ("difficulty",)),
    "maskdataset_v1": Adapter("maskdataset_v1", _MASKV1_LAYOUT, _scan_maskdataset_v1),
    "folders": Adapter("folders", _FOLDERS_LAYOUT, _scan_folders),
}


# --- one image ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Picture:
    """One image file as workbench reads it: the file's bytes and what it really is, and the
    pixels a viewer shows (upright 8-bit RGB, longer side at most DECODED_MAX_SIDE)."""
    data: bytes
    width: int
    height: int
    channels: int
    format: str             # Pillow's name for the content, lower case ("jpeg", "png", ...)
    tf_misreads: bool       # TensorFlow's decoder would not show what `rgb` shows
    rgb: Image.Image = field(repr=False)


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


def _downscaled(img: Image.Image, max_side: int | None = DECODED_MAX_SIDE) -> Image.Image:
    width, height = img.size
    if max_side is None or max(width, height) <= max_side:
        return img
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_file(file: Path) -> bytes | str:
    """The bytes of a regular file, or the one-line reason they cannot be had. Pipes and devices
    are refused before opening: reading one would wait forever or never end."""
    try:
        info = os.stat(file)
    except FileNotFoundError:
        return "unreadable: broken symlink" if os.path.islink(file) else "no such file"
    except OSError as err:
        return f"unreadable: {err.strerror or _one_line(err)}"
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
        return f"not a regular file: {kind}"
    if info.st_size == 0:
        return "empty file"
    if info.st_size > MAX_FILE_BYTES:
        return f"too large: {info.st_size} bytes on disk (at most {MAX_FILE_BYTES})"
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return f"unreadable: {err.strerror or _one_line(err)}"
    return data or "empty file"


# Signatures of the formats Pillow reads, to tell a damaged image from something else entirely.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"))


def _what_else(data: bytes) -> str:
    """Why bytes Pillow cannot open are not an image, as precisely as their first bytes allow."""
    head = data[:4096]
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"truncated or corrupt: starts like a {name} file but its header cannot be read"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "truncated or corrupt: starts like a WebP file but its header cannot be read"
    if head.startswith(b"%PDF"):
        return "not an image: a PDF document"
    if b"\x00" in head:
        return "not an image: unrecognised format"
    text = head.decode("utf-8", "replace")  # latin-1 or cut multi-byte characters are still text
    if sum(ord(c) < 32 and c not in "\t\n\r\f" for c in text) > len(text) // 100:
        return "not an image: unrecognised format"
    lower = text.lstrip("\ufeff \t\r\n").lower()
    if lower.startswith(("<!doctype html", "<html")) or "<html" in lower[:1024]:
        return "not an image: an HTML page (a saved web page or a failed download?)"
    if "<svg" in lower[:1024]:
        return "not an image: an SVG drawing (vector graphics; export it as PNG)"
    return "not an image: text"


def _photo_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin, so what this Pillow build lacks (AVIF, say) is known
    return tuple(f for f in PHOTO_FORMATS if f in Image.OPEN)


def _bomb(err: Exception) -> str:
    sizes = re.findall(r"\d+", str(err))
    if len(sizes) >= 2:
        return f"too large: {sizes[0]} pixels, over Pillow's decompression-bomb limit of {sizes[1]}"
    return f"too large: {_one_line(err)}"


@contextlib.contextmanager
def _quiet():
    """PIL warns about odd palettes, EXIF and big images; the manifest records what matters.
    Warning filters are process-wide and `catch_warnings` is not thread-safe (two threads
    restoring each other's saved filters can leave everything silenced for good), so only the
    main thread changes them; `inspect_images` silences them around its worker threads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def decode(data: bytes, max_side: int | None = DECODED_MAX_SIDE) -> Picture | str:
    """Decode an image file's bytes as workbench reads every image, or return the one-line reason
    they are not a usable image. The content decides, never the file's name. `rgb` is cut down to
    `max_side` (None: full size, which face detection in a large group photo needs)."""
    with _quiet():
        try:
            img = Image.open(io.BytesIO(data), formats=_photo_formats())
        except UnidentifiedImageError:  # its message holds an object address: never show it
            return _what_else(data)
        except Image.DecompressionBombError as err:
            return _bomb(err)
        except Exception as err:  # a plugin's own complaint about a header it began to parse
            message = _one_line(err)
            kind = "truncated" if "truncat" in message.lower() or isinstance(err, EOFError) else "corrupt"
            return f"{kind}: {message}"
        width, height = img.size
        if min(width, height) < MIN_SIDE:
            return f"too small: {width}x{height}"
        if max(width, height) > MAX_SIDE:
            return f"too large: {width}x{height}"
        sixteen_bit = _is_sixteen_bit(img)  # before load(), which drops the tile that tells
        try:
            img.load()  # lazy PIL reads only the header; a full decode finds truncation
        except MemoryError:
            return f"too large: {width}x{height} does not fit in memory"
        except Exception as err:  # whatever a decoder raises on a damaged file is a fact about the file
            message = _one_line(err)
            kind = "truncated" if "truncat" in message.lower() or isinstance(err, EOFError) else "corrupt"
            return f"{kind}: {message}"
        orientation = _orientation(img)
        image_format = (img.format or "").lower()
        tf_misreads = (image_format not in TF_FORMATS or img.mode not in TF_MODES or sixteen_bit
                       or orientation != 1 or "transparency" in img.info
                       or max(width, height) > DECODED_MAX_SIDE)
        upright = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = _downscaled(to_rgb(upright), max_side)
    return Picture(data=data, width=width, height=height, channels=len(img.getbands()), format=image_format,
                   tf_misreads=tf_misreads, rgb=rgb)


def read_picture(file: Path, max_side: int | None = DECODED_MAX_SIDE) -> Picture | str:
    """`decode` of a file's bytes, or the reason the file cannot be read or used."""
    data = read_file(file)
    return data if isinstance(data, str) else decode(data, max_side)


def inspect_image(file: Path, decoded_to: Path, copy: bool = False) -> dict[str, str] | str:
    """Describe one image file (writing its normalised PNG to `decoded_to` when TensorFlow would
    misread the original, or when `copy` says training cannot reach it by its name), or return
    the one-line reason it cannot be used."""
    picture = read_picture(file)
    if isinstance(picture, str):
        return picture
    info = {"width": str(picture.width), "height": str(picture.height), "channels": str(picture.channels),
            "format": picture.format, "sha256": hashlib.sha256(picture.data).hexdigest(),
            "phash": str(imagehash.phash(picture.rgb)), "decoded": ""}
    if picture.tf_misreads or copy:
        try:
            decoded_to.parent.mkdir(parents=True, exist_ok=True)
            # Light compression: a lossless copy either way, written in a sixth of the time.
            picture.rgb.save(decoded_to, format="PNG", compress_level=1)
        except OSError as err:  # the output side failing is no fact about this file: stop
            raise DataError(f"{decoded_to}: cannot write the decoded copy ({_one_line(err)})") from None
        info["decoded"] = "1"
    return info


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --- a whole dataset ------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def contained(path: Path | str, root: Path | str) -> bool:
    """Whether `path`, with every `..` and symlink resolved, lies inside `root` (also resolved)."""
    return _inside(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


def _copy_name(path: str) -> str:
    """Where a file's decoded copy goes under the dataset's interim folder: its own path plus
    `.png` or, where a part of that would be too long a name for the file system, a digest of the
    path at the top (never a raw file's place: files always sit in a class folder)."""
    candidate = f"{path}.png"
    if all(len(part.encode("utf-8")) <= NAME_MAX for part in candidate.split("/")):
        return candidate
    return f"{hashlib.sha256(path.encode('utf-8')).hexdigest()[:32]}.png"


def ingest(source: str, raw_root: Path, name: str, out_dir: Path, interim_dir: Path,
           near_duplicate_distance: int = 4, extra: dict | None = None,
           progress: Progress | None = None) -> IngestResult:
    """Turn the raw folder into `out_dir/<name>.csv` (+ `.json` sidecar, `.report.csv` of every
    file left out and why) and normalised copies under `interim_dir/<name>/`. `extra` is recorded
    in the sidecar (the synthetic set's generator options, say). The files are opened on every
    core (`workers`); `progress(done, total)` hears of each one, and without it a terminal
    shows a progress bar."""
    adapter, raw_root, out_dir, interim_dir = _checked_arguments(source, raw_root, name, out_dir, interim_dir)
    items = _scanned(adapter, source, raw_root)

    interim_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Copies go to a staging folder that replaces interim_dir/<name> only once all are written,
    # so an interrupted ingest never leaves a manifest pointing at missing or stale copies.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=interim_dir))
    try:
        rows, skipped = _described(items, raw_root, name, staging, progress)
        report_path = report_of(name, out_dir)
        _write_csv(pd.DataFrame(skipped, columns=["path", "reason"]).sort_values("path"), report_path)
        if not rows:
            raise DataError(f"{printable(str(raw_root))}: none of the {len(skipped)} files could be used; "
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
    notes = _notes(counts, {printable(item.label) for item in items})
    ignored = _ignored(raw_root)
    sidecar = {"name": name, "adapter": source, "raw_root": str(raw_root),
               "interim_root": str(interim_dir / name),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "kept": len(frame), "skipped": len(skipped), "ignored": ignored, "notes": notes,
               "counts": counts, "near_duplicate_distance": near_duplicate_distance, **(extra or {})}
    _write_text(json.dumps(sidecar, indent=2) + "\n", out_dir / f"{name}.json")
    return IngestResult(name=name, manifest_path=manifest_path, report_path=report_path,
                        kept=len(frame), skipped=len(skipped), counts=counts, ignored=ignored,
                        notes=tuple(notes))


def _checked_arguments(source: str, raw_root: Path, name: str, out_dir: Path,
                       interim_dir: Path) -> tuple[Adapter, Path, Path, Path]:
    """Validate `ingest`'s source, name and folders; return the adapter and the resolved folders."""
    adapter = ADAPTERS.get(source)
    if adapter is None:
        raise DataError(f"unknown dataset source {source!r}; expected one of {', '.join(ADAPTERS)}", exit_code=2)
    if not _NAME.fullmatch(name):
        raise DataError(f"dataset name {name!r}: use letters, digits, '_', '-' or '.' only", exit_code=2)
    raw_root, out_dir, interim_dir = (Path(p).resolve() for p in (raw_root, out_dir, interim_dir))
    if not raw_root.is_dir():
        raise DataError(f"{printable(str(raw_root))}: raw dataset folder not found", exit_code=2)
    for folder in (out_dir, interim_dir):
        if _inside(folder, raw_root):
            raise DataError(f"{folder}: inside the raw folder {raw_root}; raw data is read-only, "
                            "write outputs elsewhere")
    if _inside(raw_root, interim_dir / name):
        # interim_dir/<name> is replaced wholesale, which must never take the raw folder with it.
        raise DataError(f"{interim_dir / name}: would replace the raw folder {raw_root}; "
                        "choose another interim folder or dataset name")
    return adapter, raw_root, out_dir, interim_dir


def _scanned(adapter: Adapter, source: str, raw_root: Path) -> list[Item]:
    """The adapter's items under `raw_root`, or a DataError when the layout cannot be read or is empty."""
    try:
        items = adapter.scan(raw_root)
    except OSError as err:  # a folder of the layout itself cannot be listed
        raise DataError(f"{printable(str(err.filename or raw_root))}: cannot read this folder "
                        f"({err.strerror or _one_line(err)})") from None
    if not items:
        raise DataError(f"{printable(str(raw_root))}: no class folders in the {source} layout ({adapter.layout})", exit_code=2)
    return items


def _described(items: list[Item], raw_root: Path, name: str, staging: Path,
               progress: Progress | None = None) -> tuple[list[dict], list[dict]]:
    """Manifest rows for the usable items (decoded copies under `staging`), and the skipped ones with reasons."""
    # Training reads a file by the manifest's path, which must be valid UTF-8: where the real
    # name is not, the file is read through a decoded copy instead.
    unreachable_root = printable(str(raw_root)) != str(raw_root)
    entries, jobs, seen = [], [], set()
    for item in items:
        real_path = item.file.relative_to(raw_root).as_posix()
        folder = item.problem == _EMPTY_FOLDER or item.problem.startswith("unreadable folder")
        path = printable(real_path) + ("/" if folder else "")
        copy_name = _copy_name(path)
        if not contained(item.file, raw_root):
            described = "symlink outside the dataset root: not followed"
        elif item.problem:
            described = item.problem
        elif path in seen:
            described = "name collides with another file's once written as valid UTF-8"
        else:
            described = len(jobs)   # opened below, with the others, on every core
            jobs.append((item.file, staging / copy_name, unreachable_root or path != real_path))
        seen.add(path)
        entries.append((item, path, copy_name, described))
    inspected = inspect_images(jobs, progress)
    rows, skipped = [], []
    for item, path, copy_name, described in entries:
        if isinstance(described, int):
            described = inspected[described]
        if isinstance(described, str):
            skipped.append({"path": path, "reason": described})
            continue
        if described["decoded"]:
            described["decoded"] = f"{name}/{copy_name}"
        rows.append({**described, "path": path, "label": printable(item.label), "source": name,
                     "original_split": item.original_split, **item.extra})
    return rows, skipped


# --- opening the files on every core --------------------------------------------------------------

Progress = Callable[[int, int], None]   # (files opened so far, files to open)
PARALLEL_FROM = 64   # fewer files than this are opened in this thread: a pool would cost more


def workers() -> int:
    """Threads that open files at once: one per core this process may use, or
    `WORKBENCH_INGEST_WORKERS`. Threads suffice: Pillow's decoders, its resampling and zlib,
    and hashlib let go of Python's lock while they work, which is nearly all of a file's time."""
    configured = os.environ.get("WORKBENCH_INGEST_WORKERS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise DataError(f"WORKBENCH_INGEST_WORKERS={configured!r}: expected a whole number", exit_code=2) from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def inspect_images(jobs: list[tuple[Path, Path, bool]], progress: Progress | None = None) -> list[dict | str]:
    """`inspect_image(file, decoded_to, copy)` for every job, in order, on `workers()` threads."""
    if not jobs:
        return []
    from concurrent.futures import ThreadPoolExecutor

    count = workers() if len(jobs) >= PARALLEL_FROM else 1
    results = []
    with _reporting(progress, len(jobs)) as opened, contextlib.ExitStack() as stack:
        if count == 1:
            opening = map(lambda job: inspect_image(*job), jobs)
        else:
            stack.enter_context(_quiet())
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=count, thread_name_prefix="ingest"))
            # map keeps the order; the pool works ahead of the one result being collected.
            opening = pool.map(lambda job: inspect_image(*job), jobs)
        for result in opening:
            results.append(result)
            opened(len(results))
    return results


@contextlib.contextmanager
def _reporting(progress: Progress | None, total: int):
    """A function to call with the count of files opened so far: `progress`, or a progress bar
    on a terminal (for enough files to be worth one), or nothing."""
    if progress is not None:
        yield lambda done: progress(done, total)
        return
    if total < PARALLEL_FROM or not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    with Bar(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
             console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("ingest", total=total)
        yield lambda done: bar.update(task, completed=done)


def _notes(counts: dict[str, dict[str, int]], labels: set[str]) -> list[str]:
    notes = []
    lost = sorted(labels - set(counts))
    if lost:
        notes.append(f"class folder(s) {', '.join(lost)} hold no usable image and are left out (see the report)")
    if len(counts) == 1:
        notes.append(f"only one class ({next(iter(counts))}): fine to ingest, but training needs at least "
                     "two: merge it with another dataset in a spec")
    return notes


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


def report_of(name: str, out_dir: Path) -> Path:
    """Where ingest lists every file of dataset `name` it left out, and why."""
    return Path(out_dir) / f"{name}.report.csv"


def read_sidecar(name: str, out_dir: Path) -> dict:
    """An ingested dataset's sidecar: where its raw and normalised files are, and how it was made."""
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; ingest the dataset '{name}' first", exit_code=2)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read manifest sidecar ({_one_line(err)})") from None
    if not isinstance(sidecar, dict) or not {"raw_root", "interim_root"} <= set(sidecar):
        raise DataError(f"{path}: not a manifest sidecar (no raw_root / interim_root); ingest '{name}' again", exit_code=2)
    return sidecar


def read_manifest(name: str, out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """An ingested manifest (every column a string, empty cells as "") and its sidecar."""
    csv_path = Path(out_dir) / f"{name}.csv"
    sidecar = read_sidecar(name, out_dir)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found; ingest the dataset '{name}' first", exit_code=2)
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path}: cannot read manifest ({_one_line(err)})") from None
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise DataError(f"{csv_path}: manifest lacks column(s) {', '.join(sorted(missing))}", exit_code=2)
    return frame, sidecar
