"""Waiting for a job to reach a state, for the job tests (test_jobs.py, test_ray.py, test_distributed.py).

Not a test module: the test files import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_status(ex: Any, run_id: str, until: Callable[[Any], bool], timeout: float = 180.0, every: float = 0.1) -> Any:
    """Poll `ex.status(run_id)` every `every` seconds until `until(status)`; the status that satisfied it. Past
    `timeout` seconds, fail with the last status and the job's output so far."""
    deadline = time.time() + timeout
    while True:
        s = ex.status(run_id)
        if until(s):
            return s
        if time.time() > deadline:
            raise AssertionError(f"timed out in {s.status}: {s}\n{ex.logs(run_id)}")
        time.sleep(every)


def finished(s: Any) -> bool:
    """A status that is no longer queued or running."""
    return s.status not in ("queued", "running")
