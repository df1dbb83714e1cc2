"""Reproducible installs: the lock holds every dependency pyproject.toml declares, pinned with
hashes; the suite runs on exactly the locked versions (what `make install` and CI install); and
`make upgrade`'s report of what moved says each change once."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version

import tomllib
from conftest import REPO

sys.path.insert(0, str(REPO / "requirements"))
import changes  # noqa: E402

LOCK = REPO / "requirements" / "lock.txt"


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"],
              *project["optional-dependencies"]["dashboard"]]
    return {re.split(r"[<>=!\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in wanted}


def test_the_lock_pins_every_declared_dependency_with_hashes():
    text = LOCK.read_text()
    pins = changes.pins(str(LOCK))
    assert declared() <= set(pins), declared() - set(pins)
    # Every pin carries its hashes, so pip --require-hashes installs exactly these files.
    hashed = re.findall(r"^[A-Za-z0-9_.-]+==\S+ \\\n\s+--hash=sha256:[0-9a-f]{64}", text, re.MULTILINE)
    assert len(hashed) == len(pins) > 100
    assert "--index-url" not in text and "--find-links" not in text   # nothing of this machine's setup


def test_the_suite_runs_on_the_locked_versions():
    pins = changes.pins(str(LOCK))
    for package in ("tensorflow", "keras", "mlflow", "optuna", "cleanlab", "numpy", "scikit-learn"):
        assert version(package) == pins[package], (package, version(package), pins[package],
                                                   "installed unlocked? `make install` installs the lock")


def test_upgrade_says_what_moved_appeared_and_went():
    before = {"mlflow": "3.17.2", "numpy": "2.4.6", "gone": "1.0"}
    after = {"mlflow": "3.18.0", "numpy": "2.4.6", "fresh": "0.1"}
    assert changes.changes(before, after) == ["fresh: (new) -> 0.1", "gone: 1.0 -> (gone)", "mlflow: 3.17.2 -> 3.18.0"]
    assert changes.changes(before, before) == []
