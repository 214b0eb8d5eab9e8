"""Local background runs: each run trains in its own OS process on this machine and reports through the run store.

`LocalProcessExecutor.submit` starts `python -m classifier train --run-id ...` in a new session (the launcher), so
the run outlives reruns, closed tabs and the server itself. That child calls `run_job`, which

- waits for the device lock (`workspace/locks/<cpu|cuda>.lock`, an `fcntl.flock`): one run per device at a
  time; the others stay "queued" until the lock is free;
- trains with a `StoreCallback` that writes throttled progress, one row per epoch and the final status;
- stops within one batch when the cancel flag file `runs/<id>.cancel` appears, keeping the best checkpoint.

A run whose process is gone while its row still says queued/running is marked "interrupted" by the next
`status`/`list` call. `resume` starts an interrupted (or cancelled, or failed) run's process again with
`train --resume RUN_DIR`: same run id, same run dir, continuing from its last checkpoint.

A DDP run (`nproc`) holds the device lock in the job's process, which launches the ranks through torchrun; rank 0
reports to the store, and the job's process records a failed rank's error (or "interrupted" for a killed one).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier import rundir
from classifier.device import lock_name, pick_device
from classifier.errors import ClassifierError, RunError
from classifier.io import atomic_write_json
from classifier.jobs.executor import (
    INTERRUPTED_ERROR,
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
from classifier.jobs.launcher import launch, reap
from classifier.store import ACTIVE, RESUMABLE, RunStore
from classifier.training.config import TrainConfig
from classifier.training.distributed import RankInterrupted
from classifier.training.events import Callback, FitState
from classifier.workspace import runs_dir, workspace_dir

if TYPE_CHECKING:
    from classifier.training.run import FitResult

LOCK_POLL_S = 0.5  # how often a queued run retries the device lock and looks for its cancel flag
PROGRESS_INTERVAL_S = 0.5  # at most ~2 progress writes per second per run
LAUNCH_GRACE_S = 60.0  # a queued row without a pid is only "interrupted" once it is this old
CANCEL_GRACE_S = 30.0  # a cancelled run that has not stopped by then is terminated, after twice that killed
log = logging.getLogger(__name__)
SUMMARY_KEYS = (
    "accuracy", "macro_f1", "roc_auc_macro", "ece", "best_epoch", "n_val", "n_train", "epochs_run", "train_seconds",
)  # fmt: skip
MULTILABEL_SUMMARY_KEYS = ("task", "map", "micro_f1", "subset_accuracy")  # added for a multi-label run


class LocalProcessExecutor(Executor):
    """Runs each job as `python -m classifier train --run-id ...` in its own session on this machine."""

    def __init__(self, store: RunStore | None = None, python: str = sys.executable):
        self.store = store if store is not None else RunStore()
        self.python = python

    def submit(self, config: TrainConfig, name: str | None = None, owner: str | None = None) -> str:
        """Queue `config` and return its run id at once. The run waits in the store, with no process, until its
        device is free (`dispatch`); `owner` is who submitted it (None: the local user)."""
        cfg = resolve_config(config)
        device = pick_device(cfg.device)  # an unavailable --device cuda fails here, not later in the log
        run_id = new_run_id()
        run_dir = runs_dir() / run_id
        # The request keeps what the user left unset, for the time budget to choose; the store row shows it resolved.
        request = atomic_write_json(request_path(run_id), config.to_dict())
        args = ["--config-json", str(request), "--out", str(run_dir)]
        self.store.create(run_id, name or default_name(cfg), cfg.to_dict(), str(run_dir), device=device.type,
                          owner=owner, launch_args=args)  # fmt: skip
        self.dispatch()
        return run_id

    def resume(self, run_id: str) -> None:
        """Queue an interrupted, cancelled or failed run again, to continue from its last checkpoint (same id, same
        run dir); like a new run it waits in the store until its device is free. Its process is
        `python -m classifier train --resume RUN_DIR --run-id ID`.
        """
        row = self._row(run_id)
        if not resumable(job_status(row)):
            why = "it has no checkpoint to continue from" if row["status"] in RESUMABLE else f"it is {row['status']}"
            raise RunError(f"run {run_id} cannot be resumed: {why}")
        cancel_flag_path(run_id).unlink(missing_ok=True)  # an old cancel request must not stop the new process
        args = ["--resume", row["run_dir"]]
        if request_path(run_id).is_file():  # lets a run that stopped before writing config.json start over
            args += ["--config-json", str(request_path(run_id))]
        if not self.store.transition(run_id, RESUMABLE, status="queued", error=None, ended_at=None, pid=None,
                                     launch_args=args):  # fmt: skip
            raise RunError(f"run {run_id} changed state meanwhile; look again before resuming")
        with open(log_path(run_id), "ab") as log:
            log.write(f"\n--- resumed at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        self.dispatch()

    def dispatch(self) -> list[str]:
        """Start the run that has waited longest on each device that is free; returns the ids started.

        A device is busy while one of its runs is running or has a process waiting for the device lock, so queued
        runs cost a store row each, not a Python process with torch imported (865 MB each, measured). Submit, resume,
        `list` and every run's own process when it ends call this; a dispatch lock (`locks/dispatch.lock`) makes
        them take turns, so a run is never started twice. The started process still takes the device lock before
        training, which keeps one run per device even next to work that holds the lock outside the store.
        """
        started = []
        with _file_lock(workspace_dir() / "locks" / "dispatch.lock"):
            rows = [self._reconcile(r) for r in self.store.list() if r["status"] in ACTIVE]
            rows = [r for r in rows if r["status"] in ACTIVE and not job_path(r["id"]).exists()]  # (not Ray's)
            for device in sorted({r["device"] or "cpu" for r in rows}):
                mine = [r for r in rows if (r["device"] or "cpu") == device]
                if any(r["status"] == "running" or r.get("pid") is not None for r in mine):
                    continue
                waiting = sorted((r for r in mine if r.get("launch_args")), key=lambda r: r["updated_at"] or 0)
                if waiting:
                    self._launch(waiting[0]["id"], list(waiting[0]["launch_args"]))
                    started.append(waiting[0]["id"])
        return started

    def _launch(self, run_id: str, args: list[str]) -> None:
        """Start `python -m classifier train ARGS --run-id ID --quiet` in its own session; record its pid."""
        try:
            proc = launch(["train", *args, "--run-id", run_id, "--quiet"], log_path(run_id), run_id, self.python)
        except OSError as e:
            msg = f"could not start the training process: {e}"
            self.store.update(run_id, status="failed", error=msg, ended_at=time.time())
            raise RunError(msg) from e
        self.store.update(run_id, pid=proc.pid)

    def status(self, run_id: str) -> JobStatus:
        return job_status(self._row(run_id))

    def list(self, limit: int | None = None) -> list[JobStatus]:
        reap()
        self.dispatch()
        return [job_status(self._reconcile(row)) for row in self.store.list(limit)]

    def cancel(self, run_id: str) -> None:
        """Ask a queued or running job to stop; a finished one is left as it is."""
        row = self._row(run_id)
        if row["status"] not in ACTIVE:
            return
        cancel_flag_path(run_id).touch()
        # A queued job has not trained yet: mark it now so the page updates at once. The child's own
        # queued -> running step is a compare-and-set too, so exactly one of the two wins.
        self.store.transition(run_id, ("queued",), status="cancelled", ended_at=time.time())

    def delete(self, run_id: str) -> None:
        """Remove a finished run: run dir (moved to the workspace's trash first, and only if it lies inside the
        workspace), log, request, cancel flag and store row."""
        check_run_id(run_id)
        row = self.store.get(run_id)
        if row is not None:
            row = self._reconcile(row)
            if row["status"] in ACTIVE:
                raise RunError(f"run {run_id} is {row['status']}; cancel it and wait until it stops before deleting")
            if row.get("run_dir") and Path(row["run_dir"]).is_dir():
                _to_trash(Path(row["run_dir"]), run_id)
        for path in (log_path(run_id), request_path(run_id), cancel_flag_path(run_id)):
            path.unlink(missing_ok=True)
        # The launcher keeps the Popen handle: a cancelled queued run may still be exiting, and reap() must still
        # collect it.
        self.store.delete(run_id)

    def history(self, run_id: str) -> list[dict]:
        """Per-epoch rows the run has reported so far (the store's copy of history.csv, there while it trains)."""
        row = self.store.get(run_id)
        return list(row["history"]) if row else []

    def log_path(self, run_id: str) -> Path:
        """The job's stdout/stderr (tracebacks end up here)."""
        return log_path(run_id)

    def logs(self, run_id: str) -> str:
        """The job's output so far (every process of the run, resumes included); "" before it wrote any."""
        check_run_id(run_id)
        try:
            return log_path(run_id).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _row(self, run_id: str) -> dict:
        check_run_id(run_id)
        reap()
        row = self.store.get(run_id)
        if row is None:
            raise RunError(f"unknown run {run_id!r}")
        return self._reconcile(row)

    def _reconcile(self, row: dict) -> dict:
        """Mark a queued/running row "interrupted" when its process is gone."""
        if row["status"] not in ACTIVE or job_path(row["id"]).exists():  # (a cluster executor's run: not ours)
            return row
        pid = row.get("pid")
        if pid is None and row.get("launch_args"):
            return row  # waiting in the store for its device: no process yet, nothing to lose
        if pid is None:
            # (rows queued before the dispatcher existed) updated_at: a resumed run's row is old, but it went back
            # to "queued" just now.
            if time.time() - max(row["created_at"], row.get("updated_at") or 0) < LAUNCH_GRACE_S:
                return row  # submit/resume is between writing the row and recording the pid
        elif _process_alive(int(pid), row["id"]):
            self._escalate_cancel(row)
            return row
        now = time.time()
        if cancel_flag_path(row["id"]).exists():  # it stopped (or was stopped) after a cancel: that is what it is
            if self.store.transition(row["id"], ACTIVE, status="cancelled", ended_at=now):
                return {**row, "status": "cancelled", "ended_at": now}
        if self.store.transition(row["id"], ACTIVE, status="interrupted", error=INTERRUPTED_ERROR, ended_at=now):
            return {**row, "status": "interrupted", "error": INTERRUPTED_ERROR, "ended_at": now}
        # The process wrote its final status after we read the row; that one is the truth.
        fresh = self.store.get(row["id"])
        if fresh is None:
            return row
        return fresh if "history" in row else {k: v for k, v in fresh.items() if k != "history"}

    def _escalate_cancel(self, row: dict) -> None:
        """A run asked to cancel stops within a batch; one that has not after `CANCEL_GRACE_S` (a hung step, a stuck
        data read) gets SIGTERM, after twice that SIGKILL, so it cannot hold the device lock forever (the kernel
        frees the lock when the process dies)."""
        flag = cancel_flag_path(row["id"])
        try:
            waited = time.time() - flag.stat().st_mtime
        except OSError:
            return
        if waited < CANCEL_GRACE_S:
            return
        sig = signal.SIGKILL if waited >= 2 * CANCEL_GRACE_S else signal.SIGTERM
        log.warning("run %s has not stopped %.0f s after cancel; sending %s", row["id"], waited, sig.name)
        try:
            os.killpg(int(row["pid"]), sig)  # its own session: the process and any loader workers
        except (ProcessLookupError, PermissionError):
            pass


def _to_trash(run_dir: Path, run_id: str) -> None:
    """Move a run dir into `workspace/trash/` (one rename: it leaves the runs folder whole or not at all), then
    remove it there. A stored path outside the workspace is refused: a tampered row must not delete other files."""
    workspace = workspace_dir().resolve()
    target = run_dir.resolve()
    if not target.is_relative_to(workspace) or target == workspace:
        raise RunError(f"run {run_id}: its folder {run_dir} is not inside the workspace; nothing was deleted")
    trash = workspace / "trash"
    trash.mkdir(exist_ok=True)
    moved = trash / f"{run_id}-{time.time_ns()}"
    os.replace(target, moved)
    shutil.rmtree(moved, ignore_errors=True)


def _process_alive(pid: int, run_id: str) -> bool:
    """True if `pid` runs and is the training process of `run_id` (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else: cannot look closer
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True  # no procfs (macOS): the signal check is all we have
    try:
        # A zombie's cmdline is empty, and a reused pid has some other command line.
        return run_id.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def job_status(row: dict) -> JobStatus:
    """A store row as the `JobStatus` pages and the CLI read (any executor's rows)."""
    return JobStatus(
        run_id=row["id"],
        name=row["name"] or row["id"],
        status=row["status"],
        progress=row["progress"] or {},
        error=row["error"],
        run_dir=Path(row["run_dir"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        metrics=row["metrics"],
        config=row["config"] or {},
        owner=row.get("owner"),
    )


def resolve_config(config: TrainConfig) -> TrainConfig:
    """`config.resolved()`, its bad settings as a user error (every executor checks before submitting)."""
    try:
        return config.resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e


def default_name(cfg: TrainConfig) -> str:
    """A run's name when the user gives none: backbone, mode and dataset."""
    data = "demo" if cfg.data == "demo" else (Path(cfg.data).name or cfg.data)
    return f"{cfg.backbone} {cfg.mode or 'auto'} on {data}"


def load_config_json(path: str | Path, resolve: bool = True) -> TrainConfig:
    """A resolved `TrainConfig` from a JSON dict file (as written by `submit`); with `resolve=False` checked but as
    written, so that `fit` can let the time budget choose what it leaves unset."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifierError(f"cannot read the training config {path}: {e}") from e
    if not isinstance(d, dict):
        raise ClassifierError(f"{path}: expected a JSON object with TrainConfig fields")
    try:
        config = TrainConfig.from_dict(d)
        resolved = resolve_config(config)
        return resolved if resolve else config
    except TypeError as e:  # wrong value types make the dataclass or resolved() fail
        raise ClassifierError(f"{path}: {e}") from e


def one_line(e: BaseException) -> str:
    """A failure as one line for the run's record: a user error's own message, else the exception type and text."""
    msg = " ".join(str(e).split())
    return msg if isinstance(e, ClassifierError) and msg else f"{type(e).__name__}: {msg}".rstrip(": ")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (waiting for it); the kernel frees it if the process dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dispatch_next(store: RunStore | None = None) -> None:
    """Start the next queued run if its device is free (a run's own process calls this when it lets the device go,
    so the queue moves on with no page open). Never raises: the run's own outcome is what its exit code tells."""
    try:
        LocalProcessExecutor(store).dispatch()
    except Exception:  # noqa: BLE001 - a full disk or a locked store must not turn a finished run into a failure
        log.exception("could not start the next queued run")


@contextmanager
def _device_lock(device: str, give_up: Callable[[], bool]) -> Iterator[bool]:
    """Hold `workspace/locks/<device>.lock`; yields False (without the lock) if `give_up()` turns true first.

    flock is released by the kernel when the process dies, so a killed run never blocks the queue.
    """
    import fcntl

    path = workspace_dir() / "locks" / f"{device}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if give_up():
                    yield False
                    return
                time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_job(
    run_id: str,
    config: TrainConfig | str | Path | None,
    out_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    store: RunStore | None = None,
    *,
    resume: bool = False,
    argv: Sequence[str] | None = None,
) -> FitResult | None:
    """Train run `run_id` in this process, recording everything in the store (the child side of `submit`).

    `config` is a TrainConfig (a missing row is then created, for direct calls) or the path of the JSON
    request that `submit` wrote (the row must exist). Waits for the device lock first. Returns the
    `FitResult`, or None when the run was cancelled (or deleted) before training started. Any exception is
    recorded as status "failed" with a one-line message, then re-raised so the exit code tells too.
    `resume=True` continues the run in `out_dir` from its checkpoint (`config` may then be None: the run
    dir's config.json is used). A DDP run (`nproc`) re-launches the train command's `argv` through torchrun once it
    holds the device; a rank killed by a signal leaves the run "interrupted".
    """
    check_run_id(run_id)
    store = store if store is not None else RunStore()
    flag = cancel_flag_path(run_id)
    if store.get(run_id) is None:
        if not isinstance(config, TrainConfig) or resume:
            # A submitted run (config given as its request file) deleted while its process was starting must
            # stay deleted, so only a direct call with a TrainConfig makes a new row.
            raise RunError(f"unknown run id {run_id!r}; --config-json with --run-id is for runs made by submit()")
        store.create(run_id, run_id, config.to_dict(), str(out_dir))
    store.update(run_id, pid=os.getpid())
    try:
        try:
            from classifier.training.run import fit

            raw = job_config(config, out_dir)
            cfg = resolve_config(raw)
            device = pick_device(cfg.device)
            store.update(run_id, config=cfg.to_dict(), device=device.type)

            def give_up() -> bool:
                row = store.get(run_id)
                return flag.exists() or row is None or row["status"] != "queued"

            with _device_lock(lock_name(device), give_up) as locked:
                now = time.time()
                if not locked or flag.exists():
                    store.transition(run_id, ("queued",), status="cancelled", ended_at=now)
                    return None
                if not store.transition(run_id, ("queued",), status="running", started_at=now, pid=os.getpid()):
                    return None  # cancelled or deleted while we waited
                if cfg.nproc is not None:
                    return launch_ranks(cfg, out_dir, argv)
                cb = StoreCallback(store, run_id)
                return fit(raw, out_dir, [cb, *callbacks], should_cancel=flag.exists, resume=resume)  # fit plans on raw
        except RankInterrupted as e:  # a rank was killed: resumable, like a killed single-process run
            store.transition(run_id, (*ACTIVE, "failed"), status="interrupted", error=str(e), ended_at=time.time())
            raise
        except Exception as e:
            # fit's own failure path already wrote "failed"; overwrite with the user-facing one-line message.
            store.transition(run_id, (*ACTIVE, "failed"), status="failed", error=one_line(e), ended_at=time.time())
            raise
        except BaseException as e:  # KeyboardInterrupt, SystemExit: not the run's fault
            store.transition(run_id, ACTIVE, status="interrupted", error=one_line(e) or INTERRUPTED_ERROR,
                             ended_at=time.time())  # fmt: skip
            raise
    finally:
        dispatch_next(store)  # the device is free again (or never taken): the next queued run starts


def launch_ranks(cfg: TrainConfig, out_dir: str | Path, argv: Sequence[str] | None) -> FitResult:
    """Train a DDP run: the train command's `argv` again in `cfg.nproc` processes through torchrun (rank 0
    reports); the result is read back from the run dir."""
    from classifier.training.distributed import launch
    from classifier.training.run import result_from_run_dir

    if argv is None:
        raise RunError("a DDP run (nproc) re-launches the train command: run it with python -m classifier train")
    launch(int(cfg.nproc), argv)
    return result_from_run_dir(Path(out_dir))


def job_config(config: TrainConfig | str | Path | None, out_dir: str | Path) -> TrainConfig:
    """A job's config, checked but as requested (fit resolves it after a time budget chose what is left unset):
    given, from its JSON request file, or (None: resuming) the run dir's own."""
    if config is None:
        config = TrainConfig.from_dict(rundir.read_config(out_dir)["train"])
    elif not isinstance(config, TrainConfig):
        return load_config_json(config, resolve=False)
    resolve_config(config)
    return config


class StoreCallback(Callback):
    """Writes progress (throttled), one row per epoch and the final status of a run to the store."""

    # Before EarlyStopping (20), whose StopFit would otherwise skip our on_epoch_end for the last epoch.
    order = 15

    def __init__(self, store: RunStore, run_id: str, min_interval: float = PROGRESS_INTERVAL_S):
        self.store, self.run_id, self.min_interval = store, run_id, min_interval
        self._last_write = 0.0
        self._last_phase: str | None = None

    def _progress(self, state: FitState, force: bool = False) -> None:
        now = time.monotonic()
        if not force and state.phase == self._last_phase and now - self._last_write < self.min_interval:
            return
        self._last_write, self._last_phase = now, state.phase
        self.store.set_progress(self.run_id, progress_dict(state))

    def on_fit_start(self, state: FitState) -> None:
        # A resumed run starts from its checkpoint's history: epochs it is about to redo are forgotten, and
        # epochs the killed process finished but never recorded are written now.
        self.store.trim_epochs(self.run_id, len(state.history))
        for row in state.history:
            self.store.add_epoch(self.run_id, row)
        if state.plan:  # a time budget chose mode, epochs or image size: the row shows what trains
            self.store.update(self.run_id, config=state.config.to_dict())
        self._progress(state, force=True)

    def on_phase(self, state: FitState) -> None:
        self._progress(state)

    def on_epoch_start(self, state: FitState) -> None:
        self._progress(state)

    def on_batch_end(self, state: FitState) -> None:
        self._progress(state)

    def on_epoch_end(self, state: FitState) -> None:
        self.store.add_epoch(self.run_id, state.history[-1])
        self._progress(state, force=True)

    def on_fit_end(self, state: FitState) -> None:
        progress = progress_dict(state)
        if state.status == "completed":
            progress["fraction"] = 1.0  # also after early stopping: the run is done
        self.store.update(
            self.run_id,
            status=state.status,
            ended_at=time.time(),
            error=state.error,
            metrics=metrics_summary(state.out_dir),
            progress=progress,
        )


def progress_dict(state: FitState) -> dict[str, Any]:
    return {
        "phase": state.phase,
        "epoch": state.epoch,
        "epochs": state.epochs,
        "batch": state.batch,
        "steps_per_epoch": state.steps_per_epoch,
        "step": state.step,
        "total_steps": state.total_steps,
        "fraction": state.fraction_done,
        "loss": state.loss,  # NaN before the first batch; the store writes it as null
        "lr": state.lr,
        "images_per_sec": state.images_per_sec,
        "eta_seconds": state.eta_seconds,
        "phase_done": state.phase_done,
        "phase_total": state.phase_total,
        "phase_seconds": round(time.time() - state.phase_started_at, 2),  # gives each phase its own ETA
        "batch_size": state.batch_size,
        "resumed_from": state.resumed_from,
    }


def metrics_summary(run_dir: Path) -> dict[str, Any] | None:
    """The headline metrics (`SUMMARY_KEYS`) a run list shows, from metrics.json; None before it exists."""
    # fit writes metrics.json just before on_fit_end; a run stopped before its first epoch has none.
    try:
        m = rundir.read_metrics(run_dir)
    except RunError:
        return None
    if m is None:
        return None
    keys = SUMMARY_KEYS + (MULTILABEL_SUMMARY_KEYS if m.get("task") == "multilabel" else ())
    return {k: m.get(k) for k in keys}
