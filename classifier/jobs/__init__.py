"""Background training jobs: each run trains in its own OS process and reports through the run store.

    executor.py   the `Executor` protocol pages and the CLI use, `JobStatus`, the job files beside a run dir
    local.py      `LocalProcessExecutor` (one OS process per run, one run per device at a time), `run_job` (the
                  child's side), `StoreCallback` (progress into the run store)
    ray.py        `RayExecutor`: each run a Ray job (Jobs API) on a cluster; the store kept from the run's files
    remote.py     the child's side of a remote run: progress.json in its run dir instead of the store
    launcher.py   the one process launcher, for runs and search drivers
    catalogue.py  runs, saved ensembles and searches listed as one kind of entry

The app (or any caller) talks to an `Executor`: `submit` returns a run id at once, `status`/`list` read the
store, `cancel` asks the run to stop, `delete` removes a finished run, `resume` continues one from its checkpoint.
`default_executor()` picks the executor from `CLASSIFIER_EXECUTOR` (local, the default, or ray with
`CLASSIFIER_RAY_ADDRESS`).
"""

import os

from classifier.errors import ClassifierError
from classifier.jobs.executor import (
    INTERRUPTED_ERROR,
    Executor,
    JobStatus,
    cancel_flag_path,
    log_path,
    new_run_id,
    request_path,
    resumable,
    resume_info,
)
from classifier.jobs.local import LocalProcessExecutor, StoreCallback, load_config_json, progress_dict, run_job

EXECUTOR_ENV = "CLASSIFIER_EXECUTOR"
EXECUTORS = ("local", "ray")


def default_executor() -> Executor:
    """The executor of this installation: local processes, or a Ray cluster with `CLASSIFIER_EXECUTOR=ray`."""
    kind = os.environ.get(EXECUTOR_ENV, "local").strip().lower() or "local"
    if kind == "local":
        return LocalProcessExecutor()
    if kind == "ray":
        from classifier.jobs.ray import RayExecutor

        return RayExecutor()
    raise ClassifierError(f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTORS)}, not {kind!r}")


__all__ = [
    "EXECUTORS",
    "EXECUTOR_ENV",
    "INTERRUPTED_ERROR",
    "Executor",
    "JobStatus",
    "LocalProcessExecutor",
    "StoreCallback",
    "cancel_flag_path",
    "default_executor",
    "load_config_json",
    "log_path",
    "new_run_id",
    "progress_dict",
    "request_path",
    "resumable",
    "resume_info",
    "run_job",
]
