"""What an upgrade changed: the pinned versions of two lock files side by side, one line per
package that moved, appeared or went (`make upgrade` prints it before running the tests)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.MULTILINE)


def pins(path: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN.findall(Path(path).read_text())}


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old != new:
            lines.append(f"{name}: {old or '(new)'} -> {new or '(gone)'}")
    return lines


if __name__ == "__main__":
    moved = changes(pins(sys.argv[1]), pins(sys.argv[2]))
    print("\n".join(moved) if moved else "nothing changed: every pin is already the newest its range allows")
