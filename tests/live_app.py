"""Helpers for tests against a real `streamlit run app.py` (tests/test_browser.py, test_load.py, test_server.py).

Not a test module: the test files import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
HEALTHY_WITHIN_S = 120


def require_chromium() -> None:
    """Skip the calling test module without Debian's Chromium; fail instead where CI promises one."""
    if CHROMIUM.is_file():
        return
    if os.environ.get("CLASSIFIER_REQUIRE_BROWSER"):  # CI installs chromium: a missing one is a failure there
        raise RuntimeError(f"CLASSIFIER_REQUIRE_BROWSER is set but {CHROMIUM} is missing")
    pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt install chromium)", allow_module_level=True)


@dataclass
class Server:
    url: str
    port: int
    pid: int
    workspace: Path
    log: Path
    healthy_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def kill_training_processes(workspace: Path) -> None:
    """Training runs live in their own sessions (they outlive the server): end the ones of this workspace only."""
    marks = {str(workspace).encode(), str(workspace.resolve()).encode()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"classifier" in cmdline and any(m in cmdline for m in marks):
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except OSError:
                pass


@contextmanager
def streamlit_app(
    base: Path, extra_args: Sequence[str] = (), entry: str = "app.py", port: int | None = None, env: dict | None = None
) -> Iterator[Server]:
    """`streamlit run app.py` (or `entry`) on a free loopback port (or `port`) with the workspace `base/workspace`,
    healthy before it is yielded; at the end the server's process group and any training processes of that workspace
    are ended. `env`: more environment variables for the server."""
    workspace, log_path, port = base / "workspace", base / "streamlit.log", port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", entry, "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", *extra_args]  # fmt: skip
    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() - start > HEALTHY_WITHIN_S:
                pytest.fail(f"streamlit did not become healthy (exit code {proc.poll()}):\n{log_path.read_text()}")
            time.sleep(0.25)
        yield Server(url, port, proc.pid, workspace, log_path, time.monotonic() - start)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        kill_training_processes(workspace)


def run_in_fresh_thread(coro):
    """`asyncio.run(coro)` on a thread of its own: in a full test run the session-scoped sync Playwright of
    tests/test_browser.py keeps an event loop running on the main thread, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
