"""Permission faults, for real, whoever runs the suite. Root reads a mode-000 file and writes into a
read-only folder, so when the suite runs as root (as CI does) the workbench command under test runs
as an unprivileged user instead (`nobody`, through `setpriv`); as anyone else it runs as the
current user, for whom the modes bind already. Either way the same test makes the same fault.

That user cannot reach pytest's temporary folders (/tmp/pytest-of-root/... is 0700), so a test
gives it a `workspace()` of its own: a folder in the system temp dir that the user owns, with a
HOME (Keras, Matplotlib and MLflow caches) and a TMPDIR inside it. The user also needs to reach the
interpreter and the installed package: as root, `reachable()` adds search permission (o+x: pass
through, not list) to the folders on those paths that lack it, such as a pyenv under /root."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

AS_ROOT = os.geteuid() == 0
USER = "nobody"
REPO = Path(__file__).resolve().parents[1]
WORKBENCH = Path(sys.executable).with_name("workbench")


def ids() -> tuple[int, int]:
    """The uid and gid commands run as: the unprivileged user's as root, ours otherwise."""
    if not AS_ROOT:
        return os.geteuid(), os.getegid()
    user = pwd.getpwnam(USER)
    return user.pw_uid, user.pw_gid


def command(*cmd: str) -> list[str]:
    """`cmd` to run as the unprivileged user when we are root; unchanged otherwise."""
    if not AS_ROOT:
        return list(cmd)
    uid, gid = ids()
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]


def reachable(*paths: Path | str) -> None:
    """As root, let the unprivileged user pass through every folder leading to `paths` (o+x)."""
    if not AS_ROOT:
        return
    for path in paths:
        for folder in Path(os.path.realpath(path)).parents:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _own(path: Path) -> None:
    if AS_ROOT:
        os.chown(path, *ids())


@contextlib.contextmanager
def workspace(prefix: str = "workbench-"):
    """A folder the command's user owns and can reach, with `home/` and `home/tmp/` in it; removed
    afterwards (whatever modes the test left inside)."""
    reachable(os.path.realpath(sys.executable), sys.prefix, sys.base_prefix, REPO / "workbench")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    _own(root)
    for folder in (root / "home", root / "home" / "tmp"):
        folder.mkdir()
        _own(folder)
    try:
        yield root
    finally:
        for top, dirs, _ in os.walk(root):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(top, name), 0o755)
        shutil.rmtree(root, ignore_errors=True)


def user_env(root: Path) -> dict[str, str]:
    """Environment for a command in workspace `root`: its caches and temp files stay there."""
    home = root / "home"
    return {"HOME": str(home), "TMPDIR": str(home / "tmp"), "KERAS_HOME": str(home / ".keras"),
            "MPLCONFIGDIR": str(home / ".matplotlib"), "XDG_CACHE_HOME": str(home / ".cache"),
            **({"USER": USER, "LOGNAME": USER} if AS_ROOT else {})}


def workbench(*args: str, cwd: Path, env: dict | None = None, root: Path | None = None):
    """The installed console script run as the unprivileged user (see `command`), capturing its
    output, like conftest's `workbench_cli`. `root`: the workspace whose HOME and TMPDIR it uses
    (default: `cwd`)."""
    return subprocess.run(command(str(WORKBENCH), *args), cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **user_env(root or cwd), **(env or {})})


def popen(*args: str, cwd: Path, env: dict | None = None, root: Path | None = None, **options) -> subprocess.Popen:
    """`workbench` started without waiting for it."""
    return subprocess.Popen(command(str(WORKBENCH), *args), cwd=cwd,
                            env={**os.environ, **user_env(root or cwd), **(env or {})}, **options)
