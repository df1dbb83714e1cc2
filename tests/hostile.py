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
    FileCase("unreadable", "unreadable file (mode 000; a suite run as root runs workbench as `nobody`)",
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
    Case("class with a single image", "ingested; `data check SPEC` exits 2 with one line: `dataset hostile: "
         "split 'val' gets no image of class lonely (1 image); every class needs images in train, val and test: "
         "add images of it, map it to null in the spec's classes, or change the split ratios`; mapped to null, "
         "the sweep runs", key="single_image_class"),
    Case("dataset with a single class", "ingested, with a note in the sidecar; `data check NAME` passes; "
         "`run` exits 2 with one line: `dataset solo: only one class (only); a classifier needs at least two`",
         key="single_class_dataset"),
    Case("manifest edited to point outside its root (`../`, an absolute path, a decoded copy's `../`)",
         "`data check SPEC` exits 2 with one line naming the manifest and the row: `…/edited.csv: row "
         "'../outside/face.jpg' resolves outside …`; nothing outside the root is read", key="manifest_escape"),
    Case("all of the above in one tree", "ingest lists every file left out; `data check` passes; a 1-trial "
         "sweep finishes on the kept images; every byte and mtime under the raw folder is unchanged",
         key="whole_corpus"),
]

DATA_CASES = register("data", [c.case() for c in FILE_CASES] + DATASET_CASES)


# --- specs and commands: one line, exit code 2 ---------------------------------------------------------

@dataclass(frozen=True)
class InputCase:
    """A bad spec or command (`tests/test_hostile_inputs.py` runs it through the CLI) and the
    one line it must answer with, exit code 2 and no traceback. `spec` is merged into the tiny
    spec (None: the command runs on the tiny spec as it is); `args` is the command, with SPEC
    standing for the spec's name."""
    key: str
    area: str
    what: str
    args: tuple[str, ...]
    says: str                    # a part of the one line
    spec: dict | None = None

    def case(self) -> Case:
        return Case(self.what, f"exit 2, one line: `error: …{self.says}…`", key=self.key, area=self.area)


SPEC_INPUTS = [
    InputCase("unknown_key", "spec", "a misspelt key `learning_rat`", ("specs", "validate", "SPEC"),
              "params.learning_rat: unknown key (did you mean 'learning_rate'?)", {"params": {"learning_rat": 0.1}}),
    InputCase("wrong_type", "spec", "a word where a number goes (`epochs: many`)", ("specs", "validate", "SPEC"),
              "params.epochs: Input should be a valid integer", {"params": {"epochs": "many"}}),
    InputCase("empty_choices", "spec", "an empty list of choices", ("specs", "validate", "SPEC"),
              "params.backbone: an empty list of choices", {"params": {"backbone": []}}),
    InputCase("inverted_range", "spec", "a range with low above high", ("specs", "validate", "SPEC"),
              "range low (0.1) must be below high (0.01)", {"params": {"learning_rate": {"low": 0.1, "high": 0.01}}}),
    InputCase("zero_learning_rate", "spec", "a learning rate of 0", ("specs", "validate", "SPEC"),
              "params.learning_rate: Input should be greater than 0", {"params": {"learning_rate": 0}}),
    InputCase("below_minimum_size", "spec", "an image size below the backbone's minimum (Xception at 64 px)",
              ("specs", "validate", "SPEC"), "params.image_size: 64 is below xception's minimum of 71 px",
              {"params": {"backbone": "xception", "image_size": 64}}),
    InputCase("wrong_direction", "spec", "an objective direction against its metric (maximise val_loss)",
              ("specs", "validate", "SPEC"), "val_loss is better when it goes min",
              {"objective": {"metric": "val_loss", "direction": "maximize"}}),
    InputCase("class_map_drops_all", "spec", "a class map that drops every class", ("data", "check", "SPEC"),
              "the class mapping leaves no images",
              {"dataset": {"source": "manifests", "manifests": [
                  {"name": "faces", "classes": {"with_mask": None, "without_mask": None}}]}}),
    InputCase("class_map_merges_all", "spec", "a class map that merges every class into one", ("data", "check", "SPEC"),
              "only one class (face)",
              {"dataset": {"source": "manifests", "manifests": [
                  {"name": "faces", "classes": {"with_mask": "face", "without_mask": "face"}}]}}),
    InputCase("missing_folder", "spec", "a dataset folder that is not there", ("data", "check", "SPEC"),
              "dataset gone: no folder", {"dataset": {"source": "manifests", "manifests": [
                  {"name": "gone", "adapter": "folders", "path": "nowhere"}]}}),
]

COMMAND_INPUTS = [
    InputCase("unknown_storage", "command", "an unknown storage URL (`--storage redis://…`)",
              ("serve", "dashboard", "--storage", "redis://cache:6379/0"), "--storage redis://cache:6379/0: use sqlite"),
    InputCase("unknown_tracking", "command", "an unknown tracking URL (`--tracking-uri ftp://…`)",
              ("leaderboard", "SPEC", "--tracking-uri", "ftp://files/mlflow"), "unknown scheme 'ftp'"),
    InputCase("file_store", "command", "MLflow's old file store as tracking URI", ("leaderboard", "SPEC", "--tracking-uri",
              "./mlruns"), "MLflow 3 no longer accepts a file store"),
    InputCase("password_in_url", "command", "a tracking URL with a password that does not answer",
              ("leaderboard", "SPEC", "--tracking-uri", "ftp://me:hunter2@files/x"), "ftp://me:***@files/x"),
    InputCase("missing_model", "command", "a model URI that does not exist", ("predict", "FACE", "--model",
              "models:/nobody@champion"), "--model models:/nobody@champion: cannot load it"),
    InputCase("external_model", "command", "a model from outside the tracking store (a path)",
              ("predict", "FACE", "--model", "/tmp/elsewhere/model"), "pass --allow-external-model"),
    InputCase("unknown_option", "command", "an option no command has", ("sweep", "SPEC", "--trails", "3"),
              "No such option: --trails"),
    InputCase("unknown_spec", "command", "a spec that does not exist", ("sweep", "nothing-here"),
              "nothing-here: no such spec file or name"),
]

INPUT_CASES = register("spec", [c.case() for c in SPEC_INPUTS]) + register("command", [c.case() for c in COMMAND_INPUTS])

# --- faults and safe defaults (asserted in tests/test_faults.py and tests/test_sweep_survive.py) -----

FAULT_CASES = register("fault", [
    Case("the artefact store turns read-only during a trial (its folder's write permission removed; a suite run "
         "as root runs workbench as `nobody`)", "that trial fails with the reason (`Permission denied`), its run "
         "ends FAILED; the sweep goes on; earlier runs keep their metrics and artefacts", key="read_only_store",
         area="fault"),
    Case("two sweeps of different specs at once against one store", "both finish; each experiment holds only its "
         "own trials (a new SQLite store's tables are created one process at a time)", key="concurrent_sweeps",
         area="fault"),
    Case("a corrupted `mlflow.db` or `optuna.db` (not SQLite, or a damaged SQLite file)", "exit 2, one line naming "
         "the file; the file is left as it was, never replaced by a fresh store", key="corrupted_db", area="fault"),
    Case("a worker killed with `kill -9` mid-trial", "on resume: its trial failed, its run KILLED, its configuration "
         "retried once, first; no run left RUNNING", key="killed_worker", area="fault"),
    Case("a trial whose loss becomes NaN", "that trial fails with the reason; the sweep completes its budget",
         key="diverging_trial", area="fault"),
])

DEFAULT_CASES = register("default", [
    Case("`workbench serve ui|model|dashboard` (and `make ui`, `serve`, `dashboard`)", "listens on 127.0.0.1 only; "
         "`--host 0.0.0.0` listens everywhere and warns that it is exposed", key="loopback", area="default"),
    Case("a logged model with a Lambda layer (code in a model file)", "refused by Keras' safe mode: exit 2, one line",
         key="safe_mode", area="default"),
    Case("secrets in the environment; a password in a storage URL", "never in params, tags, metrics, artefacts, "
         "output or worker logs; URLs appear with the password as `***`; workers get store URLs through the "
         "environment, not the command line", key="secrets", area="default"),
])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        write_readme(Path(sys.argv[2]))
    else:
        sys.stdout.write(table())
