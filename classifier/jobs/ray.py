"""Runs on a Ray cluster: `RayExecutor` implements the `Executor` protocol through Ray's Jobs API.

    CLASSIFIER_EXECUTOR=ray CLASSIFIER_RAY_ADDRESS=http://HOST:8265 streamlit run app.py

Each run is a Ray job (`JobSubmissionClient.submit_job`) whose entrypoint is this project's own train command,
`python -m classifier train ... --run-id ID --report files --attempt JOB_ID`, with its CPU request (one per process,
`CLASSIFIER_RAY_CPUS` each) and its GPU request (`device cuda`: one per process). The workspace lives on storage that
every node mounts at the same path (`CLASSIFIER_WORKSPACE` goes to the job), so the request, the run dir, the cancel
flag and the decode cache are shared.

The run store keeps one writer, this machine (the app's): the job never opens SQLite; it reports through
`progress.json` and `history.csv` in its run dir (`classifier.jobs.remote`). `status`/`list`/`history` read those
and the Ray job's state, and bring the store up to date:

- a final status in progress.json (completed, failed, cancelled) is the truth;
- Ray PENDING is "queued", RUNNING "running";
- a job that ended without reporting an end (its process killed, its node lost, the cluster restarted and forgot it)
  is "interrupted", and `resume` submits a new job (`<id>-resume<k>`) that continues from the last checkpoint;
  one whose process never started reporting is "failed" with Ray's message;
- `cancel` touches the shared cancel flag (the run stops within one batch and keeps its checkpoint) and stops a job
  that has not started yet; a job still running `CANCEL_GRACE_S` after the flag is stopped through Ray.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from classifier import rundir
from classifier.errors import ClassifierError, RunError
from classifier.io import atomic_write_json
from classifier.jobs.executor import (
    Executor,
    JobStatus,
    cancel_flag_path,
    check_run_id,
    job_path,
    log_path,
    new_run_id,
    request_path,
    resumable,
)
from classifier.jobs.local import LAUNCH_GRACE_S, default_name, job_status, resolve_config
from classifier.store import ACTIVE, RESUMABLE, RunStore
from classifier.training.config import TrainConfig
from classifier.workspace import ENV_VAR, runs_dir, workspace_dir

ADDRESS_ENV = "CLASSIFIER_RAY_ADDRESS"  # the cluster's dashboard (Jobs API), e.g. http://ray-head:8265
CPUS_ENV = "CLASSIFIER_RAY_CPUS"  # CPUs each process of a run asks for (default 1)
PYTHON_ENV = "CLASSIFIER_RAY_PYTHON"  # the Python on the nodes (default: python)
CANCEL_GRACE_S = 60.0  # a cancelled job still running this long after its flag is stopped through Ray
FINAL = ("completed", "failed", "cancelled", "interrupted")


class RayExecutor(Executor):
    """Runs each job as a Ray job on the cluster at `address` (default: `CLASSIFIER_RAY_ADDRESS`)."""

    def __init__(self, address: str | None = None, store: RunStore | None = None, client: Any = None):
        self.address = address or os.environ.get(ADDRESS_ENV, "")
        if not self.address:
            raise ClassifierError(f"the Ray executor needs the cluster's address: set {ADDRESS_ENV}=http://HOST:8265")
        self.store = store if store is not None else RunStore()
        self._client = client
        self.python = os.environ.get(PYTHON_ENV, "python")
        self.cpus = float(os.environ.get(CPUS_ENV, "1"))
        self._history_seen: dict[str, float] = {}  # run id -> mtime of the history.csv last copied into the store

    @property
    def client(self) -> Any:
        """The Jobs API client (connects on first use; an unreachable cluster is a clear error)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.address)
            except (ConnectionError, RuntimeError, OSError) as e:
                raise ClassifierError(f"cannot reach the Ray cluster at {self.address}: {e}") from e
        return self._client

    # --- submitting ----------------------------------------------------------------------------------------------

    def submit(self, config: TrainConfig, name: str | None = None, owner: str | None = None) -> str:
        """Queue `config` as a Ray job; returns the run id at once (the job's id is the run id). `owner`: who
        submitted it (None: the local user). Ray's own queue holds it until the cluster has room."""
        cfg = resolve_config(config)
        self.client  # noqa: B018 - an unreachable cluster fails here, before anything is recorded
        run_id = new_run_id()
        run_dir = runs_dir() / run_id
        request = atomic_write_json(request_path(run_id), cfg.to_dict())
        device = "cuda" if cfg.device == "cuda" else "cpu"
        self.store.create(run_id, name or default_name(cfg), cfg.to_dict(), str(run_dir), device=device, owner=owner)
        self._start(run_id, cfg, ["--config-json", str(request), "--out", str(run_dir)])
        return run_id

    def resume(self, run_id: str) -> None:
        """Submit a new job that continues an interrupted, cancelled or failed run from its last checkpoint."""
        row = self._row(run_id)
        if not resumable(job_status(row)):
            why = "it has no checkpoint to continue from" if row["status"] in RESUMABLE else f"it is {row['status']}"
            raise RunError(f"run {run_id} cannot be resumed: {why}")
        cancel_flag_path(run_id).unlink(missing_ok=True)
        if not self.store.transition(run_id, RESUMABLE, status="queued", error=None, ended_at=None, pid=None):
            raise RunError(f"run {run_id} changed state meanwhile; look again before resuming")
        args = ["--resume", row["run_dir"]]
        if request_path(run_id).is_file():  # lets a run that stopped before writing config.json start over
            args += ["--config-json", str(request_path(run_id))]
        self._start(run_id, TrainConfig.from_dict(row["config"] or {}), args)

    def _start(self, run_id: str, cfg: TrainConfig, args: list[str]) -> None:
        attempts = self._attempts(run_id)
        attempt = run_id if not attempts else f"{run_id}-resume{len(attempts)}"
        command = [self.python, "-m", "classifier", "train", *args, "--run-id", run_id, "--report", "files",
                   "--attempt", attempt, "--quiet"]  # fmt: skip
        processes = cfg.nproc or 1
        try:
            self.client.submit_job(
                entrypoint=shlex.join(command),
                submission_id=attempt,
                entrypoint_num_cpus=processes * self.cpus,
                entrypoint_num_gpus=processes if cfg.device == "cuda" else 0,
                runtime_env={"env_vars": self._job_env()},
                metadata={"run_id": run_id},
            )
        except Exception as e:  # noqa: BLE001 - whatever the client raised, the run must end up recorded
            msg = f"could not submit the Ray job: {' '.join(str(e).split())}"
            self.store.update(run_id, status="failed", error=msg, ended_at=time.time())
            raise RunError(msg) from e
        atomic_write_json(job_path(run_id), {"executor": "ray", "address": self.address,
                                             "attempts": [*attempts, attempt]})  # fmt: skip

    def _job_env(self) -> dict[str, str]:
        """What the job's process needs: the shared workspace (same path on every node) and this package."""
        package_root = str(Path(__file__).resolve().parents[2])
        return {ENV_VAR: str(workspace_dir().resolve()), "PYTHONPATH": package_root}

    def _attempts(self, run_id: str) -> list[str]:
        """The Ray submission ids of the run's jobs, oldest first ([] before the first was submitted)."""
        try:
            return [str(a) for a in json.loads(job_path(run_id).read_text(encoding="utf-8"))["attempts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    # --- reading -------------------------------------------------------------------------------------------------

    def status(self, run_id: str) -> JobStatus:
        return job_status(self._row(run_id))

    def list(self, limit: int | None = None) -> list[JobStatus]:
        return [job_status(self._reconcile(row)) for row in self.store.list(limit)]

    def history(self, run_id: str) -> list[dict]:
        """Per-epoch rows so far (copied from the run's history.csv into the store as it grows)."""
        self._row(run_id)
        row = self.store.get(run_id)
        return list(row["history"]) if row else []

    def logs(self, run_id: str) -> str:
        """The output of every job of the run (Ray keeps it), oldest first."""
        check_run_id(run_id)
        parts = []
        for attempt in self._attempts(run_id):
            try:
                text = self.client.get_job_logs(attempt)
            except Exception as e:  # noqa: BLE001 - a lost job's logs are gone; say so and go on
                text = f"(no logs: {' '.join(str(e).split())})\n"
            parts.append(f"--- Ray job {attempt} ---\n{text}")
        return "".join(parts)

    def _row(self, run_id: str) -> dict:
        check_run_id(run_id)
        row = self.store.get(run_id)
        if row is None:
            raise RunError(f"unknown run {run_id!r}")
        return self._reconcile(row)

    def _job(self, attempt: str) -> Any | None:
        """The Ray job's details, or None when the cluster does not know it (any more)."""
        try:
            return self.client.get_job_info(attempt)
        except RuntimeError as e:
            if "404" in str(e) or "does not exist" in str(e):
                return None
            raise ClassifierError(f"cannot read Ray job {attempt}: {e}") from e
        except OSError as e:
            raise ClassifierError(f"cannot reach the Ray cluster at {self.address}: {e}") from e

    def _reconcile(self, row: dict) -> dict:
        """Bring an active row up to date from the run's files and its Ray job (this process writes the store)."""
        if row["status"] not in ACTIVE:
            return row
        run_id, attempts = row["id"], self._attempts(row["id"])
        if not attempts:  # submit is between writing the row and submitting the job
            if row.get("pid") is not None:
                return row  # a local process's run in the same workspace: the local executor keeps it
            if time.time() - max(row["created_at"], row.get("updated_at") or 0) < LAUNCH_GRACE_S:
                return row
            update = {"status": "interrupted", "error": "the run was never submitted to Ray", "ended_at": time.time()}
        else:
            report = rundir.read_progress(row["run_dir"])
            if report is not None and report.get("attempt") != attempts[-1]:
                report = None  # an earlier attempt's report: this job has not written yet
            update = self._update(run_id, report, self._job(attempts[-1]), attempts[-1])
        self._copy_history(run_id, row["run_dir"])
        if update and not self.store.transition(run_id, ACTIVE, **update):
            return self.store.get(run_id) or row  # changed meanwhile (a cancel, another reader)
        fresh = self.store.get(run_id) or row
        return fresh if "history" in row else {k: v for k, v in fresh.items() if k != "history"}

    def _update(self, run_id: str, report: dict | None, job: Any, attempt: str) -> dict[str, Any]:
        """The store fields the run's report and Ray job state call for."""
        out: dict[str, Any] = {}
        if report is not None:
            out.update(progress=report.get("progress") or {}, started_at=report.get("started_at"))
            if report.get("status") in FINAL:
                ended = report.get("ended_at") or time.time()
                return {**out, "status": report["status"], "error": report.get("error"), "ended_at": ended,
                        "metrics": report.get("metrics")}  # fmt: skip
        state = str(getattr(job, "status", "")).rsplit(".", 1)[-1].upper() if job is not None else "GONE"
        if state == "PENDING":
            return {**out, "status": "queued"}
        if state == "RUNNING":
            self._stop_if_cancel_ignored(run_id, attempt)
            return {**out, "status": "running"}
        message = " ".join(str(getattr(job, "message", "") or "").split())
        if state == "STOPPED":
            why = "cancelled" if cancel_flag_path(run_id).exists() else "interrupted"
            return {**out, "status": why, "error": None if why == "cancelled" else "the Ray job was stopped",
                    "ended_at": time.time()}  # fmt: skip
        if report is None and state == "FAILED":  # never got as far as reporting: a broken entrypoint or node
            return {**out, "status": "failed", "error": f"the Ray job failed before training: {message}",
                    "ended_at": time.time()}  # fmt: skip
        error = "the Ray job is gone (was the cluster restarted?)" if job is None else (
            f"the Ray job ended without reporting an end ({state.lower()}: {message})")  # fmt: skip
        return {**out, "status": "interrupted", "error": error, "ended_at": time.time()}

    def _stop_if_cancel_ignored(self, run_id: str, attempt: str) -> None:
        flag = cancel_flag_path(run_id)
        try:
            late = time.time() - flag.stat().st_mtime > CANCEL_GRACE_S
        except FileNotFoundError:
            return
        if late:
            self.client.stop_job(attempt)

    def _copy_history(self, run_id: str, run_dir: str) -> None:
        """history.csv -> the store's epoch rows, when the file changed since the last copy."""
        file = rundir.path(run_dir, rundir.HISTORY)
        try:
            mtime = file.stat().st_mtime
        except FileNotFoundError:
            return
        if self._history_seen.get(run_id) == mtime:
            return
        try:
            table = rundir.read_history(run_dir)
        except RunError:
            return  # being replaced right now: the next poll reads it
        rows = [] if table is None else table.to_dict("records")
        self.store.trim_epochs(run_id, len(rows))
        for r in rows:
            self.store.add_epoch(run_id, r)
        self._history_seen[run_id] = mtime

    # --- acting --------------------------------------------------------------------------------------------------

    def cancel(self, run_id: str) -> None:
        """Ask a queued or running job to stop (the flag, seen within one batch); a job not started yet is
        stopped through Ray at once."""
        row = self._row(run_id)
        if row["status"] not in ACTIVE:
            return
        cancel_flag_path(run_id).touch()
        attempts = self._attempts(run_id)
        job = self._job(attempts[-1]) if attempts else None
        if row["status"] == "queued" and (job is None or str(job.status).upper().endswith("PENDING")):
            if job is not None:
                self.client.stop_job(attempts[-1])
            self.store.transition(run_id, ("queued",), status="cancelled", ended_at=time.time())

    def delete(self, run_id: str) -> None:
        """Remove a finished run: run dir, job files, store row, and Ray's records of its jobs."""
        check_run_id(run_id)
        row = self.store.get(run_id)
        if row is not None:
            row = self._reconcile(row)
            if row["status"] in ACTIVE:
                raise RunError(f"run {run_id} is {row['status']}; cancel it and wait until it stops before deleting")
            if row.get("run_dir") and Path(row["run_dir"]).is_dir():
                shutil.rmtree(row["run_dir"])
        for attempt in self._attempts(run_id):
            try:
                self.client.delete_job(attempt)
            except Exception:  # noqa: BLE001 - already gone from the cluster: nothing to delete there
                pass
        for path in (log_path(run_id), request_path(run_id), cancel_flag_path(run_id), job_path(run_id)):
            path.unlink(missing_ok=True)
        self.store.delete(run_id)
