"""One list of everything a user has made: training runs, saved ensembles and hyperparameter searches.

Each is a `JobStatus` with its `kind` ("run", "ensemble" or "search"), so pickers, tables and labels treat them
alike: `run_id` (an ensemble's is "ens-<folder>", a search's "search-<id>", so they never collide with run ids),
`name`, `status`, `run_dir` (the folder), `created_at`, `metrics` and `config`.

    >>> [(e.kind, e.name, e.status) for e in entries()]  # doctest: +SKIP
    [('run', 'resnet18 linear on demo', 'completed'), ('ensemble', 'a + b (ensemble of 2)', 'completed'), ...]
"""

from __future__ import annotations

from collections.abc import Iterable

from classifier import rundir
from classifier.access import User, visible
from classifier.errors import RunError
from classifier.jobs.executor import Executor, JobStatus

KINDS = ("run", "ensemble", "search")
ENSEMBLE_PREFIX = "ens-"
SEARCH_PREFIX = "search-"


def entries(
    kinds: Iterable[str] = KINDS, executor: Executor | None = None, user: User | None = None
) -> list[JobStatus]:
    """The workspace's runs, then saved ensembles, then searches (each group newest first); with `user`, only what
    that user may see (`classifier.access.visible`)."""
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown catalogue kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    out: list[JobStatus] = []
    if "run" in kinds:
        if executor is None:
            from classifier.jobs import default_executor

            executor = default_executor()
        out += executor.list()
    if "ensemble" in kinds:
        out += ensemble_entries()
    if "search" in kinds:
        out += search_entries()
    return out if user is None else visible(user, out)


def ensemble_entries() -> list[JobStatus]:
    """Saved ensembles in the workspace, newest first."""
    from classifier.ensemble import list_ensembles

    out = []
    for d, info in list_ensembles():
        try:
            metrics = rundir.read_metrics(d)
        except RunError:
            metrics = None
        created = rundir.path(d, rundir.ENSEMBLE).stat().st_mtime
        out.append(
            JobStatus(
                run_id=ENSEMBLE_PREFIX + d.name,
                name=f"{info.get('name') or d.name} (ensemble of {len(info['members'])})",
                status="completed",
                progress={},
                error=None,
                run_dir=d,
                created_at=created,
                started_at=None,
                ended_at=created,
                metrics=metrics,
                config={"backbone": "ensemble"},
                kind="ensemble",
                members=list(info["members"]),
                owner=info.get("owner"),
            )
        )
    return out


def search_entries() -> list[JobStatus]:
    """Searches in the workspace, newest first; `metrics` holds the search's metric and its best value so far."""
    from classifier.search import list_searches, search_dir

    out = []
    for spec in list_searches():
        best = spec.get("best") or {}
        done = sum(t["state"] not in ("queued", "running") for t in spec["trials"])
        out.append(
            JobStatus(
                run_id=SEARCH_PREFIX + spec["id"],
                name=spec.get("name") or spec["id"],
                status=spec["status"],
                progress={"fraction": done / max(1, spec["n_trials"]), "trials_done": done},
                error=spec.get("error"),
                run_dir=search_dir(spec["id"]),
                created_at=spec.get("created_at"),
                started_at=spec.get("launched_at"),
                ended_at=None,
                metrics={"metric": spec["metric"], "best": best.get("value"), "best_run": best.get("run_id")},
                config={"sampler": spec["sampler"], "n_trials": spec["n_trials"], **spec.get("base_config", {})},
                kind="search",
                owner=spec.get("owner"),
            )
        )
    return out
