"""One list of everything a user has made: training runs, saved ensembles and hyperparameter searches.

Each is a `JobStatus` with its `kind` ("run", "ensemble" or "search"), so pickers, tables and labels treat them
alike: `run_id` (an ensemble's is "ens-<folder>", a search's "search-<id>", so they never collide with run ids),
`name`, `status`, `run_dir` (the folder), `created_at`, `metrics` and `config`.

    >>> [(e.kind, e.name, e.status) for e in entries()]  # doctest: +SKIP
    [('run', 'resnet18 linear on demo', 'completed'), ('ensemble', 'a + b (ensemble of 2)', 'completed'), ...]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from numbers import Real
from typing import Any

import pandas as pd

from classifier import rundir
from classifier.access import User, visible
from classifier.compare import differing_settings, format_setting
from classifier.errors import RunError
from classifier.jobs.executor import Executor, JobStatus
from classifier.store import ACTIVE
from classifier.training.config import config_field

KINDS = ("run", "ensemble", "search")
ENSEMBLE_PREFIX = "ens-"
SEARCH_PREFIX = "search-"
# Settings the table shows in columns of their own, and ones that never change a result (how data is loaded, how
# often a checkpoint is written): neither becomes a "differs" column.
TABLE_SETTINGS = ("backbone", "mode", "epochs", "img_size")
NOT_RESULTS = ("num_workers", "cache", "checkpoint_every_steps")
METRIC_KEYS = (("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("ROC AUC", "roc_auc_macro"), ("ECE", "ece"))


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


def _image_size(entry: JobStatus) -> int | None:
    """The input side the model was built with (config.json's data_config), else the requested one (None: the
    backbone's default, not known until the run starts)."""
    try:
        info = rundir.read_info_if_any(entry.run_dir) if entry.kind == "run" else None
    except RunError:
        info = None
    size = ((info or {}).get("data_config") or {}).get("input_size")
    if size:
        return int(size[-1])
    requested = (entry.config or {}).get("img_size")
    return int(requested) if isinstance(requested, Real) else None


def _settings_columns(runs: Sequence[JobStatus]) -> dict[str, dict[str, Any]]:
    """{column: {run_id: value}} for the settings with two or more values among `runs` (besides TABLE_SETTINGS). A
    column of numbers stays numeric (sortable); any other is text with floats to 3 significant figures."""
    ignore = ("created_at", "runtime", *TABLE_SETTINGS, *NOT_RESULTS)
    out: dict[str, dict[str, Any]] = {}
    for key, values in differing_settings({j.run_id: j.config or {} for j in runs}, ignore=ignore).items():
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) < 2:
            continue  # the same wherever it is set: a run that lacks it (an older or partial config) is no difference
        try:
            column = str(config_field(key).metadata.get("label") or key).lower()
        except (KeyError, ValueError):
            column = key
        numeric = all(v is None or (isinstance(v, Real) and not isinstance(v, bool)) for v in values.values())
        out[column] = {r: (v if numeric else format_setting(v)) for r, v in values.items()}
    return out


def table(listing: Sequence[JobStatus], executor: Executor | None = None) -> pd.DataFrame:
    """The Runs page's table: one row per entry with name, status, progress and validation metrics first (what a
    narrow page shows without scrolling), then key settings and a column for each setting that differs between the
    listed runs (their names in `df.attrs["settings"]`), kind, creation time, id and error.

    Missing values are None (the page shows them as "—"). A run still training has its latest epoch's validation
    accuracy in "accuracy" (read from `executor.history`) and its progress in "progress"; finished runs 1.0.
    """
    runs = [j for j in listing if j.kind == "run"]
    settings = _settings_columns(runs) if len(runs) > 1 else {}
    rows = []
    for j in listing:
        cfg, m = j.config or {}, dict(j.metrics or {})
        if j.kind == "search" and m.get("metric"):  # a search's best value so far, in its metric's column
            m[m["metric"]] = m.get("best")
        if j.kind == "run" and j.status in ACTIVE and executor is not None:
            seen = [r.get("val_acc") for r in executor.history(j.run_id) if r.get("val_acc") is not None]
            m["accuracy"] = float(seen[-1]) if seen else None
        fraction = 1.0 if j.status == "completed" else (j.progress or {}).get("fraction")
        rows.append(
            {
                "name": j.name or "",
                "status": j.status,
                "progress": None if fraction is None else float(fraction),
                **{col: m.get(key) for col, key in METRIC_KEYS},
                "backbone": cfg.get("backbone"),
                "mode": cfg.get("mode"),
                "epochs": cfg.get("epochs"),
                "img size": _image_size(j),
                **{col: values.get(j.run_id) for col, values in settings.items()},
                "kind": j.kind,
                "created": datetime.fromtimestamp(j.created_at) if j.created_at else None,
                "run": j.run_id,
                "error": j.error,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["settings"] = list(settings)
    return df
