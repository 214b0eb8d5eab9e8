"""The child's side of a remote run (one a cluster executor such as `RayExecutor` started on another node): it
reports through files in its run dir, on the storage every node mounts, and never opens the SQLite run store, whose
one writer is the app's machine (SQLite over a network file system is not safe).

    run dir/progress.json   status, progress, error, metrics summary, pid and host, the attempt (remote job id)
    run dir/history.csv     one row per finished epoch (written by training itself)

`python -m classifier train --run-id ID --report files --attempt JOB_ID ...` calls `run_remote_job`; the executor
reads the files (`classifier.rundir.read_progress`, `read_history`) together with its job's state and keeps the
store. Cancel is the same flag file as for local runs (`runs/<id>.cancel`), seen within one batch.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier import rundir
from classifier.jobs.executor import INTERRUPTED_ERROR, cancel_flag_path, check_run_id
from classifier.jobs.local import (
    PROGRESS_INTERVAL_S,
    StoreCallback,
    job_config,
    launch_ranks,
    metrics_summary,
    one_line,
    progress_dict,
    resolve_config,
)
from classifier.store import RunStore
from classifier.training.config import TrainConfig
from classifier.training.distributed import RankInterrupted
from classifier.training.events import Callback, FitState

if TYPE_CHECKING:
    from classifier.training.run import FitResult

FINAL = ("completed", "failed", "cancelled", "interrupted")


class ProgressReport:
    """A run's progress.json for one attempt: what its writers (the job's process, then rank 0 in a DDP run) add to
    it is merged with what is there, so the job's pid, host and start time stay."""

    def __init__(self, run_dir: str | Path, run_id: str, attempt: str):
        self.run_dir, self.attempt = Path(run_dir), attempt
        old = rundir.read_progress(self.run_dir)
        self.data: dict[str, Any] = dict(old) if old and old.get("attempt") == attempt else {}
        self.data.update(run_id=run_id, attempt=attempt)

    def write(self, **fields: Any) -> None:
        self.data.update(fields, updated_at=time.time())
        rundir.write_progress(self.run_dir, self.data)

    def start(self) -> None:
        self.write(status="running", started_at=time.time(), ended_at=None, error=None, pid=os.getpid(),
                   host=socket.gethostname(), progress={"phase": "setup"})  # fmt: skip

    def final(self, status: str, error: str | None = None) -> None:
        self.write(status=status, error=error, ended_at=time.time(), metrics=metrics_summary(self.run_dir))


class ProgressFileCallback(Callback):
    """`StoreCallback`'s twin for remote runs: throttled progress, then the final status, into progress.json."""

    order = StoreCallback.order

    def __init__(self, report: ProgressReport, min_interval: float = PROGRESS_INTERVAL_S):
        self.report, self.min_interval = report, min_interval
        self._last_write, self._last_phase = 0.0, None

    def _progress(self, state: FitState, force: bool = False) -> None:
        now = time.monotonic()
        if not force and state.phase == self._last_phase and now - self._last_write < self.min_interval:
            return
        self._last_write, self._last_phase = now, state.phase
        self.report.write(status="running", progress=progress_dict(state))

    def on_fit_start(self, state: FitState) -> None:
        self._progress(state, force=True)

    def on_phase(self, state: FitState) -> None:
        self._progress(state)

    on_epoch_start = on_batch_end = on_phase

    def on_epoch_end(self, state: FitState) -> None:
        self._progress(state, force=True)

    def on_fit_end(self, state: FitState) -> None:
        progress = progress_dict(state)
        if state.status == "completed":
            progress["fraction"] = 1.0
        self.report.write(progress=progress)
        self.report.final(state.status, state.error)


def reporter(run_id: str, run_dir: str | Path, report: str, attempt: str | None) -> Callback:
    """The callback through which rank 0 of a job's DDP run reports: the store, or progress.json (`report`)."""
    if report == "files":
        return ProgressFileCallback(ProgressReport(run_dir, run_id, attempt or run_id))
    return StoreCallback(RunStore(), run_id)


def run_remote_job(
    run_id: str,
    config: TrainConfig | str | Path | None,
    out_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    *,
    resume: bool = False,
    attempt: str | None = None,
    argv: Sequence[str] | None = None,
) -> FitResult | None:
    """Train run `run_id` in this process on a cluster node, reporting into `out_dir/progress.json`.

    No device lock (the cluster scheduler placed the job with its CPU/GPU request) and no store. Returns None when
    the run was cancelled before training started. Failures are reported as "failed" with a one-line message and
    re-raised; a killed DDP rank, a SIGTERM or Ctrl-C as "interrupted".
    """
    check_run_id(run_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ProgressReport(out_dir, run_id, attempt or run_id)
    report.start()
    flag = cancel_flag_path(run_id)
    try:
        from classifier.training.run import fit

        raw = job_config(config, out_dir)
        cfg = resolve_config(raw)
        if flag.exists():
            report.final("cancelled")
            return None
        if cfg.nproc is not None:
            return launch_ranks(cfg, out_dir, argv)
        cb = ProgressFileCallback(report)
        return fit(raw, out_dir, [cb, *callbacks], should_cancel=flag.exists, resume=resume)  # fit plans on raw
    except RankInterrupted as e:
        report.final("interrupted", str(e))
        raise
    except Exception as e:
        report.final("failed", one_line(e))
        raise
    except BaseException as e:
        report.final("interrupted", one_line(e) or INTERRUPTED_ERROR)
        raise
