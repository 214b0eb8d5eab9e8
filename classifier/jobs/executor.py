"""What the app and the command line talk to: the `Executor` protocol, a run's `JobStatus`, and the files beside
each run dir that belong to the job system (request, log, cancel flag).

`default_executor()` (in `classifier.jobs`) is the local one unless `CLASSIFIER_EXECUTOR=ray` picks the Ray cluster's
(`classifier.jobs.ray`); pages, the search driver and the CLI use nothing but this protocol.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from classifier.errors import RunError
from classifier.store import RESUMABLE
from classifier.training.config import TrainConfig
from classifier.training.resume import can_resume, resume_point
from classifier.workspace import runs_dir

INTERRUPTED_ERROR = "the training process stopped unexpectedly (server restart or killed)"
_RUN_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")


@dataclass
class JobStatus:
    run_id: str
    name: str
    status: str  # queued | running | completed | failed | cancelled | interrupted
    progress: dict
    error: str | None
    run_dir: Path
    created_at: float
    started_at: float | None
    ended_at: float | None
    metrics: dict | None
    config: dict
    kind: str = "run"  # run | ensemble | search (classifier.jobs.catalogue lists all three)
    members: list[dict] = field(default_factory=list)  # an ensemble's member runs
    owner: str | None = None  # who made it (None: made before owners were kept, or without sign-in: "local")


class Executor(Protocol):
    """Where runs execute. Pages use only this, so a cluster executor can replace the local one."""

    def submit(self, config: TrainConfig, name: str | None = None, owner: str | None = None) -> str: ...
    def status(self, run_id: str) -> JobStatus: ...
    def cancel(self, run_id: str) -> None: ...
    def list(self, limit: int | None = None) -> list[JobStatus]: ...
    def delete(self, run_id: str) -> None: ...
    def resume(self, run_id: str) -> None: ...
    def history(self, run_id: str) -> Sequence[dict]: ...  # per-epoch rows reported so far
    def logs(self, run_id: str) -> str: ...  # the job's output so far (every attempt)


def cancel_flag_path(run_id: str) -> Path:
    return runs_dir() / f"{run_id}.cancel"


def request_path(run_id: str) -> Path:
    return runs_dir() / f"{run_id}.request.json"


def log_path(run_id: str) -> Path:
    # Next to the run dir, not in it: fit refuses a run dir that already has files.
    return runs_dir() / f"{run_id}.log"


def job_path(run_id: str) -> Path:
    """A cluster executor's record of the job(s) it submitted for the run (e.g. Ray submission ids)."""
    return runs_dir() / f"{run_id}.job.json"


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def resumable(job: JobStatus) -> bool:
    """Whether `Executor.resume` may restart this run: interrupted (from its checkpoint, or from the start if
    it stopped before the first one), or cancelled/failed with a checkpoint to continue from."""
    if job.status == "interrupted":
        return can_resume(job.run_dir)
    return job.status in RESUMABLE and resume_point(job.run_dir) is not None


def resume_info(job: JobStatus) -> dict | None:
    """Where a resumed run would continue: {"epoch", "batch", "step", "generation"}, or None."""
    return resume_point(job.run_dir)


def check_run_id(run_id: str) -> None:
    # Run ids become file names: no separators, no leading dot.
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise RunError(f"invalid run id {run_id!r}")
