"""Hostile input, case by case: what was tried and what workbench does with it, as records the
tests assert and from which README.md's "Hostile input" table is generated, so the table can
only say what a test checks.

Each area (bad data here; spec, command or fault cases later) registers its list of `Case`s with
`register(area, cases)` in this module; `table()` renders every registered list in one Markdown
table, and `tests/test_hostile_data.py` fails when the README's block between the markers differs
from it. To add cases from another test module, define the list here (so the README test sees it
without importing that module), register it, assert each case by its `key` in your tests, then
regenerate the README block:

    PYTHONPATH=. python -m tests.hostile --write README.md

(`python -m tests.hostile` alone prints the table.)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

START, END = "<!-- hostile-input:start -->", "<!-- hostile-input:end -->"


@dataclass(frozen=True)
class Case:
    what: str           # the input, as a user would describe it
    happens: str        # what workbench does with it, as the asserting test checks it
    key: str = ""       # how the asserting test finds this case
    area: str = "data"  # the table's first column: data, spec, command, fault...


REGISTRY: dict[str, list[Case]] = {}


def register(area: str, cases: list[Case]) -> list[Case]:
    """Add one area's cases to the README table (in registration order)."""
    if area in REGISTRY:
        raise ValueError(f"hostile-input area {area!r} registered twice")
    if any(c.area != area for c in cases):
        raise ValueError(f"hostile-input area {area!r}: a case says another area")
    keys = [c.key for c in cases if c.key]
    if len(keys) != len(set(keys)):
        raise ValueError(f"hostile-input area {area!r}: duplicate keys")
    REGISTRY[area] = cases
    return cases


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(cases: list[Case]) -> str:
    """The cases as one Markdown table (a line per case, pipes escaped)."""
    lines = ["| area | what was tried | what happens |", "| --- | --- | --- |"]
    lines += [f"| {_cell(c.area)} | {_cell(c.what)} | {_cell(c.happens)} |" for c in cases]
    return "\n".join(lines) + "\n"


def table() -> str:
    return render_table([case for cases in REGISTRY.values() for case in cases])


def readme_block(readme: str) -> str | None:
    """The table as README.md holds it between the markers, or None without markers."""
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), readme, re.S)
    return match.group(1) if match else None


def write_readme(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if readme_block(text) is None:
        raise SystemExit(f"{path}: no {START} ... {END} markers")
    new = re.sub(re.escape(START) + r"\n.*?" + re.escape(END), lambda _: f"{START}\n{table()}{END}", text,
                 flags=re.S)
    path.write_text(new, encoding="utf-8")


# --- data: files in a class folder ------------------------------------------------------------------

KEPT, COPIED = "kept", "copied"   # trained on as it is / through ingest's decoded RGB copy


@dataclass(frozen=True)
class FileCase:
    """One file of the generated corpus (`tests/test_hostile_data.py` builds it) and what every
    stage must do with it: kept as is, kept through a decoded copy, or left out with a report
    reason starting `outcome`; and whether `workbench predict FILE` classifies it or refuses it
    with the same reason (None: not a file one can name to predict)."""
    key: str
    what: str
    file: str                    # its path under the dataset root, as the manifest and report write it
    outcome: str                 # KEPT, COPIED, or the report's reason (its start when it ends in ": ")
    predicts: bool | None = True

    @property
    def kept(self) -> bool:
        return self.outcome in (KEPT, COPIED)

    def case(self) -> Case:
        if self.outcome == KEPT:
            first = "kept and trained on as it is"
        elif self.outcome == COPIED:
            first = "kept; trained on through a decoded, upright 8-bit RGB copy"
        else:
            reason = f"{self.outcome}…" if self.outcome.endswith(": ") else self.outcome
            first = f"left out: listed in `NAME.report.csv` as `{reason}`"
        if self.predicts is None:
            then = ""
        elif self.predicts:
            then = ("; `predict` classifies it as training saw it" if self.kept else
                    "; `predict FILE` classifies it (a file named on the command line is read where it is)")
        else:
            then = "; `predict` exits 1 with one line naming the file and the same reason"
        return Case(self.what, first + then, key=self.key)


FILE_CASES = [
    FileCase("zero_bytes", "zero-byte file `zero-bytes.jpg`", "bare/zero-bytes.jpg", "empty file", False),
    FileCase("truncated_jpeg", "JPEG cut in half", "bare/truncated.jpg", "truncated: ", False),
    FileCase("truncated_png", "PNG cut in half", "masked/truncated.png", "truncated: ", False),
    FileCase("text_as_jpg", "text file named `notes.jpg`", "bare/notes.jpg", "not an image: text", False),
    FileCase("html_as_png", "HTML page named `download.png` (a failed scrape)", "masked/download.png",
             "not an image: an HTML page (a saved web page or a failed download?)", False),
    FileCase("binary_non_image", "binary non-image `Thumbs.db`", "bare/Thumbs.db",
             "not an image: unrecognised format", False),
    FileCase("text_suffix", "`README.txt` in a class folder", "masked/README.txt", "not an image: text", False),
    FileCase("sixteen_bit", "16-bit PNG (48-bit colour)", "masked/face-16bit.png", COPIED),
    FileCase("grayscale", "grayscale PNG", "bare/face-gray.png", KEPT),
    FileCase("rgba", "RGBA PNG with a transparent band", "masked/face-rgba.png", COPIED),
    FileCase("palette", "palette (P mode) PNG", "bare/face-palette.png", COPIED),
    FileCase("cmyk", "CMYK JPEG", "masked/face-cmyk.jpg", COPIED),
    FileCase("exif_rotated", "JPEG stored sideways with EXIF orientation 6", "bare/face-exif6.jpg", COPIED),
    FileCase("one_pixel", "1×1 px PNG", "bare/pixel.png", "too small: 1x1", False),
    FileCase("bomb", "PNG header claiming 20,000 × 20,000 px (decompression bomb)", "masked/bomb.png",
             "too large: 400000000 pixels, over Pillow's decompression-bomb limit of 178956970", False),
    FileCase("symlink_outside", "symlink to an image outside the dataset root", "masked/outside.jpg",
             "symlink outside the dataset root: not followed", True),
    FileCase("symlink_inside", "symlink to another image of the dataset", "bare/alias.jpg", KEPT),
    FileCase("linked_folder", "symlinked folder inside a class folder", "bare/linked-folder",
             "symlinked folder: not followed", None),
    FileCase("unreadable", "unreadable file (mode 000; as root, where modes do not bind, a broken symlink)",
             "bare/unreadable.jpg", "unreadable: ", False),
    FileCase("fifo", "named pipe `pipe.jpg` (reading it would block forever)", "bare/pipe.jpg",
             "not a regular file: a named pipe", False),
    FileCase("non_utf8", "file name that is not UTF-8 (`caf\\xe9.png`, Latin-1)", "masked/caf\\xe9.png", COPIED),
    FileCase("newline_name", "file name with a newline in it", "bare/two\\nlines.png", COPIED),
    FileCase("long_name", "255-byte file name of an RGBA PNG (its copy's name would be too long)",
             f"masked/{'x' * 251}.png", COPIED),
    FileCase("spaces", "file name with spaces and brackets `my  photo (1) .jpg`", "bare/my  photo (1) .jpg", KEPT),
    FileCase("trailing_quote", "`face.png\"` (a trailing quote, issue 13)", "masked/face.png\"", KEPT),
    FileCase("odd_suffix", "`photo.jpg_1088Wx1632H` (issue 13)", "bare/photo.jpg_1088Wx1632H", KEPT),
    FileCase("no_suffix", "JPEG without a suffix `IMG_0001`", "masked/IMG_0001", KEPT),
    FileCase("wrong_suffix", "PNG named `really-a-png.jpg`", "bare/really-a-png.jpg", KEPT),
]

DATASET_CASES = [
    Case("hidden files (`.DS_Store`, `._face.png`) and a `__MACOSX` folder",
         "neither kept nor reported; counted in the sidecar's `ignored`", key="hidden_files"),
    Case("empty class folder", "listed in the report as `empty/`: `empty class folder: …`, and named in the "
         "sidecar's `notes`", key="empty_class_folder"),
    Case("class with a single image", "ingested; `data check SPEC` exits 1 with one line: `dataset hostile: "
         "split 'val' gets no image of class lonely (1 image); every class needs images in train, val and test: "
         "add images of it, map it to null in the spec's classes, or change the split ratios`; mapped to null, "
         "the sweep runs", key="single_image_class"),
    Case("dataset with a single class", "ingested, with a note in the sidecar; `data check NAME` passes; "
         "`run` exits 1 with one line: `dataset solo: only one class (only); a classifier needs at least two`",
         key="single_class_dataset"),
    Case("manifest edited to point outside its root (`../`, an absolute path, a decoded copy's `../`)",
         "`data check SPEC` exits 1 with one line naming the manifest and the row: `…/edited.csv: row "
         "'../outside/face.jpg' resolves outside …`; nothing outside the root is read", key="manifest_escape"),
    Case("all of the above in one tree", "ingest lists every file left out; `data check` passes; a 1-trial "
         "sweep finishes on the kept images; every byte and mtime under the raw folder is unchanged",
         key="whole_corpus"),
]

DATA_CASES = register("data", [c.case() for c in FILE_CASES] + DATASET_CASES)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        write_readme(Path(sys.argv[2]))
    else:
        sys.stdout.write(table())
