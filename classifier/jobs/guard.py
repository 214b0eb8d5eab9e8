"""An executor as one user may use it: role and owner checks, what they see, and quotas at submit.

    ex = GuardedExecutor(default_executor(), read_access().user("ana@example.com"))
    ex.submit(config)        # AccessError past the user's or the server's queued + running limit, or the disk quota
    ex.delete(run_id)        # AccessError unless ana owns the run or is an admin; the run is untouched

The app wraps its executor in one per session (`ui.access`); `python -m classifier jobs ... --user EMAIL` does the
same, so the command line and the pages refuse the same things with the same words.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from classifier.access import (
    AccessError,
    AccessRules,
    User,
    check_active_quota,
    check_capability,
    check_disk_quota,
    check_owner,
    enforced,
    owner_of,
    read_access,
    visible,
)
from classifier.jobs.executor import Executor, JobStatus
from classifier.store import ACTIVE
from classifier.training.config import TrainConfig
from classifier.workspace import workspace_dir


class GuardedExecutor:
    """Wraps any `Executor` for `user`; same protocol, so pages and the search driver use it unchanged."""

    def __init__(self, inner: Executor, user: User, rules: AccessRules | None = None):
        self.inner, self.user = inner, user
        self.rules = rules if rules is not None else read_access()
        # The plain local tool (no access file, the local user) keeps no quotas, as before sign-in existed.
        self.enforce = enforced(self.rules, user)

    def submit(self, config: TrainConfig, name: str | None = None, owner: str | None = None) -> str:
        """Submit as this user (their name is the run's owner) after the role, run and disk quota checks; the
        checks and the submit hold `locks/submit.lock`, so two quick clicks cannot both pass a limit of one."""
        check_capability(self.user, "train")
        from classifier.jobs.local import _file_lock

        with _file_lock(workspace_dir() / "locks" / "submit.lock"):
            self.check_quota()
            return self.inner.submit(config, name=name, owner=self.user.name)

    def check_quota(self, adding: int = 1) -> None:
        """AccessError when `adding` more runs of this user would pass a run quota, or their disk quota is used up
        (a search checks this before it starts: its trials are this user's runs)."""
        check_capability(self.user, "train")
        if self.enforce:
            active = [j for j in self.inner.list() if j.status in ACTIVE]
            check_active_quota(self.user.name, active, self.rules.quotas, adding)
            check_disk_quota(self.user.name, disk_used(self.user.name, self.inner), 0, self.rules.quotas)

    def status(self, run_id: str) -> JobStatus:
        job = self.inner.status(run_id)
        if not visible(self.user, [job]):
            raise AccessError(f"run {run_id} belongs to someone else and is not finished; only they or an admin see it")
        return job

    def list(self, limit: int | None = None) -> list[JobStatus]:
        return visible(self.user, self.inner.list(limit))

    def _own(self, run_id: str, verb: str) -> None:
        job = self.inner.status(run_id)
        check_owner(self.user, job.owner, verb, f"run {job.name!r} ({run_id})")

    def cancel(self, run_id: str) -> None:
        self._own(run_id, "cancel")
        self.inner.cancel(run_id)

    def delete(self, run_id: str) -> None:
        self._own(run_id, "delete")
        self.inner.delete(run_id)

    def resume(self, run_id: str) -> None:
        check_capability(self.user, "train")
        self._own(run_id, "resume")
        if self.enforce:
            check_active_quota(self.user.name, [j for j in self.inner.list() if j.status in ACTIVE], self.rules.quotas)
        self.inner.resume(run_id)

    def history(self, run_id: str) -> Sequence[dict]:
        self.status(run_id)
        return self.inner.history(run_id)

    def logs(self, run_id: str) -> str:
        """The run's output: its owner's and the admins' only (a log can hold paths and other people's data)."""
        self._own(run_id, "read the log of")
        return self.inner.logs(run_id)

    def log_path(self, run_id: str) -> Path:
        self._own(run_id, "read the log of")
        return self.inner.log_path(run_id)  # type: ignore[attr-defined]

    @property
    def store(self):  # noqa: ANN201 - the inner executor's RunStore, for code that reads rows directly
        return self.inner.store  # type: ignore[attr-defined]


def disk_used(owner: str, executor: Executor) -> int:
    """Bytes of `owner`'s runs (run dir and log) and workspace datasets: what the per-user disk quota counts."""
    from classifier.data.ingest import dataset_owner, folder_bytes, workspace_datasets
    from classifier.jobs.executor import log_path

    total = 0
    for job in executor.list():
        if owner_of(job) == owner:
            total += folder_bytes(job.run_dir)
            try:
                total += os.path.getsize(log_path(job.run_id))
            except OSError:
                pass
    for d in workspace_datasets():
        if (dataset_owner(d) or "local") == owner:
            total += folder_bytes(d)
    return total
