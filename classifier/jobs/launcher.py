"""The one process launcher: `python -m classifier ARGS` in its own session, for training runs and search drivers.

A started process gets its own session (it outlives the app, its reruns and its Ctrl-C), stdout and stderr appended
to a log file, an absolute workspace path (so it finds the same store whatever its working directory) and this
package's parent on PYTHONPATH (so `-m classifier` imports this very package even when it is not installed).
Children are remembered by key and `poll()`ed, so finished ones are reaped (no zombies) and a dead child is noticed
before its pid can be reused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from classifier.workspace import ENV_VAR, workspace_dir

_CHILDREN: dict[str, subprocess.Popen] = {}  # key (run id, "search:<id>") -> the process this process started
_LOCK = threading.Lock()


def launch(args: list[str], log: Path, key: str, python: str = sys.executable) -> subprocess.Popen:
    """Start `python -m classifier ARGS`, output appended to `log`; raises OSError when it cannot start."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        ENV_VAR: str(workspace_dir().resolve()),
        "PYTHONPATH": os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [python, "-m", "classifier", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=os.getcwd(), env=env, start_new_session=True,
        )  # fmt: skip
    with _LOCK:
        _CHILDREN[key] = proc
    return proc


def reap() -> None:
    """poll() every child this process started; exited ones are reaped and forgotten."""
    with _LOCK:
        for key, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[key]


def children() -> list[subprocess.Popen]:
    """The children not yet reaped (tests kill leftovers)."""
    with _LOCK:
        return list(_CHILDREN.values())


def forget_all() -> None:
    with _LOCK:
        _CHILDREN.clear()
