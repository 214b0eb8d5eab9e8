"""Hyperparameter search with Optuna: grid, random and TPE samplers; every trial is a queued run of the job system.

    >>> from classifier.search import create_search, run_search, ranked_trials
    >>> from classifier.training import TrainConfig
    >>> base = TrainConfig(data="demo", backbone="resnet18", weights="none", mode="linear", img_size=64)
    >>> space = {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "batch_size": [16, 32]}
    >>> spec = create_search(base, space, sampler="tpe", n_trials=8)  # doctest: +SKIP
    >>> run_search(spec["id"])  # doctest: +SKIP  (blocks until every trial has finished)

A search space maps TrainConfig fields to either a list of choices or a range `{"low", "high", "log"}`
(integers for `batch_size`, `epochs`, `img_size`). Grid search needs choices for every parameter and runs
the product (capped at `n_trials` when given).

The driver (`run_search`, also `python -m classifier search`) asks Optuna for parameters, submits each trial's
`TrainConfig` to an `Executor` (`classifier.jobs`; the runs queue one per device like any other run), reads each
run's per-epoch validation rows for pruning (Optuna's median pruner; a pruned trial's run is cancelled through
the executor) and tells Optuna the final metric. Everything is kept in `workspace/searches/<id>/search.json`,
rewritten atomically after every change, so a search survives page reloads and restarts: `run_search` on an
existing search replays its finished trials into a fresh study and keeps watching the runs still going. One
driver per search at a time (an flock on `driver.lock`); `cancel_search` asks it to stop through a flag file.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from classifier.access import User
from classifier.errors import ClassifierError, RunError
from classifier.io import atomic_write_json
from classifier.jobs.launcher import launch, reap
from classifier.training.config import TrainConfig
from classifier.workspace import workspace_dir

SAMPLERS = ("grid", "random", "tpe")
# Fields a search may vary, and their type. Strings are always choices.
PARAMS: dict[str, type] = {
    "lr": float,
    "batch_size": int,
    "weight_decay": float,
    "augment": str,
    "backbone": str,
    "epochs": int,
    "mode": str,
    "optimizer": str,
    "drop_rate": float,
    "label_smoothing": float,
    "img_size": int,
}
# metric -> (direction, per-epoch history column reported to the pruner)
METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("maximize", "val_acc"),
    "macro_f1": ("maximize", "val_acc"),
    "roc_auc_macro": ("maximize", "val_acc"),
    "map": ("maximize", "val_map"),  # a multi-label run's mean average precision (its best-epoch score)
    "val_loss": ("minimize", "val_loss"),
}
ACTIVE_TRIAL = ("queued", "running")
DONE_SEARCH = ("completed", "cancelled", "failed")
LAUNCH_GRACE_S = 60.0  # a launched search whose driver has not taken its lock yet counts as starting
POLL_S = 1.0


def searches_dir() -> Path:
    path = workspace_dir() / "searches"
    path.mkdir(parents=True, exist_ok=True)
    return path


def search_dir(search_id: str) -> Path:
    if not isinstance(search_id, str) or not search_id or "/" in search_id or search_id.startswith("."):
        raise RunError(f"invalid search id {search_id!r}")
    return searches_dir() / search_id


def _json_path(search_id: str) -> Path:
    return search_dir(search_id) / "search.json"


def cancel_flag(search_id: str) -> Path:
    return search_dir(search_id) / "cancel"


def log_path(search_id: str) -> Path:
    return search_dir(search_id) / "driver.log"


# --- the search space ----------------------------------------------------------------------------------------------


def parse_space(raw: dict[str, Any] | str | Path, sampler: str = "tpe") -> dict[str, dict[str, Any]]:
    """Normalise a space (a dict, JSON text or a JSON file) to {param: {"choices": [...]} | {"low", "high", "log"}}.

    >>> parse_space({"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "backbone": ["resnet18", "simple_cnn"]})
    {'lr': {'low': 0.0001, 'high': 0.01, 'log': True}, 'backbone': {'choices': ['resnet18', 'simple_cnn']}}
    """
    where = "the search space"
    if isinstance(raw, Path) or (isinstance(raw, str) and not raw.lstrip().startswith("{")):
        where = str(raw)
        try:
            raw = json.loads(Path(raw).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClassifierError(f"cannot read the search space {where}: {e}") from e
    elif isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ClassifierError(f"the search space is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise ClassifierError(f"{where}: expected a JSON object mapping parameters to choices or ranges")
    if sampler not in SAMPLERS:
        raise ClassifierError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    space: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in PARAMS:
            raise ClassifierError(f"{where}: cannot search over {name!r}; searchable: {', '.join(PARAMS)}")
        kind = PARAMS[name]
        if isinstance(value, dict) and "choices" in value:
            value = value["choices"]
        if isinstance(value, list):
            if not value:
                raise ClassifierError(f"{where}: {name} has an empty list of choices")
            try:
                choices = [kind(v) if kind is not str else str(v) for v in value]
            except (TypeError, ValueError) as e:
                raise ClassifierError(f"{where}: {name} choices must be {kind.__name__} values ({e})") from e
            space[name] = {"choices": list(dict.fromkeys(choices))}
        elif isinstance(value, dict) and {"low", "high"} <= set(value):
            if kind is str:
                raise ClassifierError(f"{where}: {name} takes a list of choices, not a range")
            if sampler == "grid":
                raise ClassifierError(f"{where}: grid search needs a list of choices for {name}, not a range")
            try:
                low, high = kind(value["low"]), kind(value["high"])
            except (TypeError, ValueError) as e:
                raise ClassifierError(f"{where}: {name} range must be {kind.__name__} numbers ({e})") from e
            log = bool(value.get("log", False))
            if not low < high:
                raise ClassifierError(f"{where}: {name} range needs low < high, got [{low}, {high}]")
            if log and low <= 0:
                raise ClassifierError(f"{where}: {name} log range needs low > 0, got {low}")
            space[name] = {"low": low, "high": high, "log": log}
        else:
            raise ClassifierError(
                f'{where}: {name} must be a list of choices or {{"low": ..., "high": ..., "log": true|false}}'
            )
    return space


def grid_size(space: dict[str, dict[str, Any]]) -> int:
    return math.prod(len(p["choices"]) for p in space.values())


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions for a normalised space."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, p in space.items():
        if "choices" in p:
            out[name] = CategoricalDistribution(p["choices"])
        elif PARAMS[name] is int:
            out[name] = IntDistribution(p["low"], p["high"], log=p["log"])
        else:
            out[name] = FloatDistribution(p["low"], p["high"], log=p["log"])
    return out


def trial_config(base: TrainConfig | dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The base config with a trial's parameters applied."""
    d = base.to_dict() if isinstance(base, TrainConfig) else dict(base)
    return TrainConfig.from_dict({**d, **params})


def _check_choices(base: TrainConfig, space: dict[str, dict[str, Any]]) -> None:
    """Every choice must make a valid config (augment names, backbones, modes...)."""
    from classifier.models import resolve_backbone

    for name, p in space.items():
        values = p.get("choices", [p.get("low"), p.get("high")])
        for v in values:
            try:
                trial_config(base, {name: v}).resolved()
            except ValueError as e:
                raise ClassifierError(f"search space {name}={v!r}: {e}") from e
            if name == "backbone":
                resolve_backbone(str(v))  # unknown names fail here with close matches


# --- persisted searches --------------------------------------------------------------------------------------------


def create_search(
    base: TrainConfig,
    space: dict[str, Any] | str | Path,
    *,
    sampler: str = "tpe",
    n_trials: int | None = None,
    metric: str = "accuracy",
    name: str | None = None,
    parallel: int = 1,
    seed: int = 0,
    prune: bool = True,
    n_startup_trials: int = 2,
    n_warmup_steps: int = 0,
    owner: str | None = None,
) -> dict[str, Any]:
    """Validate and write a new search (status "queued"); returns its spec. Nothing is submitted yet. `owner`
    (who started it) also owns its trials' runs."""
    if metric not in METRICS:
        raise ClassifierError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    space = parse_space(space, sampler)
    if sampler == "grid":
        size = grid_size(space)
        n_trials = size if n_trials is None else min(n_trials, size)
    if n_trials is None or n_trials < 1:
        raise ClassifierError(f"give the number of trials (at least 1) for a {sampler} search")
    if parallel < 1:
        raise ClassifierError(f"parallel must be at least 1, got {parallel}")
    try:
        base.resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e
    _check_choices(base, space)
    search_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    spec = {
        "id": search_id,
        "name": name or f"{sampler} search over {', '.join(space)}",
        "created_at": time.time(),
        "updated_at": time.time(),
        "status": "queued",
        "sampler": sampler,
        "n_trials": int(n_trials),
        "parallel": int(parallel),
        "metric": metric,
        "direction": METRICS[metric][0],
        "seed": int(seed),
        "pruner": {
            "kind": "median" if prune else "none",
            "n_startup_trials": n_startup_trials,
            "n_warmup_steps": n_warmup_steps,
        },  # fmt: skip
        "space": space,
        "base_config": asdict(base),
        "trials": [],
        "error": None,
        "launched_at": None,
        "owner": owner,
    }
    search_dir(search_id).mkdir(parents=True)
    save_search(spec)
    return spec


def save_search(spec: dict[str, Any]) -> None:
    spec["updated_at"] = time.time()
    atomic_write_json(_json_path(spec["id"]), spec)


def load_search(search_id: str) -> dict[str, Any]:
    """The search as last written, with `status` "interrupted" when it is unfinished and no driver holds it."""
    path = _json_path(search_id)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"unknown search {search_id!r} (no {path})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read search {search_id}: {path}: {e}") from e
    if spec["status"] not in DONE_SEARCH and not driver_alive(search_id):
        starting = spec["status"] == "queued" and time.time() - (spec.get("launched_at") or 0) < LAUNCH_GRACE_S
        if not starting:
            spec["status"] = "interrupted"
    return spec


def list_searches() -> list[dict[str, Any]]:
    """Every search in the workspace, newest first (driver processes this process started and that have exited
    are reaped first)."""
    reap()
    out = []
    for p in searches_dir().glob("*/search.json"):
        try:
            out.append(load_search(p.parent.name))
        except RunError:
            continue
    return sorted(out, key=lambda s: s["created_at"], reverse=True)


@contextmanager
def _driver_lock(search_id: str) -> Iterator[bool]:
    """Hold the search's driver lock; yields False when another process holds it."""
    with open(search_dir(search_id) / "driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def driver_alive(search_id: str) -> bool:
    """Whether a driver process holds this search (the kernel drops the lock when it dies)."""
    if not (search_dir(search_id) / "driver.lock").exists():
        return False
    with _driver_lock(search_id) as got:
        return not got


# --- ranking, tables, figures --------------------------------------------------------------------------------------

_STATE_ORDER = {"completed": 0, "pruned": 1, "running": 2, "queued": 3, "failed": 4, "cancelled": 5}


def ranked_trials(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials best first: completed by metric (direction-aware), then pruned, running, queued, failed, cancelled."""
    sign = -1.0 if spec["direction"] == "maximize" else 1.0

    def key(t: dict[str, Any]) -> tuple:
        v = t.get("value")
        return (_STATE_ORDER.get(t["state"], 9), sign * v if v is not None else math.inf, t["number"])

    return sorted(spec["trials"], key=key)


def best_trial(spec: dict[str, Any]) -> dict[str, Any] | None:
    done = [t for t in ranked_trials(spec) if t["state"] == "completed" and t.get("value") is not None]
    return done[0] if done else None


def finished_trials(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Trials with a value to plot: completed, and pruned ones (their last reported epoch)."""
    return [t for t in spec["trials"] if t["state"] in ("completed", "pruned") and t.get("value") is not None]


def live_trials(spec: dict[str, Any], executor: Any) -> dict[int, dict[str, Any]]:
    """{trial number: {"epoch", "epochs", "fraction", "val"}} for trials still queued or running, read from their
    runs now (the driver writes search.json only when an epoch ends): the epoch under way and the latest validation
    value of the pruner's column. A run the executor no longer knows is left out."""
    key = METRICS[spec["metric"]][1]
    out: dict[int, dict[str, Any]] = {}
    for t in spec["trials"]:
        if t["state"] not in ACTIVE_TRIAL or not t.get("run_id"):
            continue
        try:
            job = executor.status(t["run_id"])
            rows = list(executor.history(t["run_id"]))
        except ClassifierError:
            continue
        progress = job.progress or {}
        seen = [r[key] for r in rows if r.get(key) is not None]
        out[t["number"]] = {
            "epoch": progress.get("epoch"),
            "epochs": progress.get("epochs"),
            "fraction": progress.get("fraction"),
            "val": float(seen[-1]) if seen else None,
        }
    return out


def trials_table(spec: dict[str, Any], live: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per trial, ranked: rank, trial number, state, each parameter, the metric, the epoch ("2/5" while
    its run trains, from `live_trials`; else the epochs it reported), the latest validation value the pruner saw
    (`latest val_acc` or `latest val_loss`), the run id."""
    key = METRICS[spec["metric"]][1]
    live = live or {}
    rows = []
    for rank, t in enumerate(ranked_trials(spec), 1):
        row = {"rank": rank, "trial": t["number"], "state": t["state"]}
        row.update({k: t["params"].get(k) for k in spec["space"]})
        row[spec["metric"]] = t.get("value")
        inter = t.get("intermediate") or {}
        now = live.get(t["number"], {})
        if now.get("epoch") and now.get("epochs"):
            row["epoch"] = f"{min(int(now['epoch']), int(now['epochs']))}/{int(now['epochs'])}"
        else:
            row["epoch"] = str(len(inter)) if inter or t["state"] not in ACTIVE_TRIAL else None
        last = inter[max(inter, key=int)] if inter else None
        row[f"latest {key}"] = now["val"] if now.get("val") is not None else last
        row["run"] = t.get("run_id")
        rows.append(row)
    return rows


def format_table(spec: dict[str, Any]) -> str:
    """The ranked trials as a plain-text table (the CLI prints it)."""
    rows = trials_table(spec)
    if not rows:
        return "(no trials)"
    cols = [c for c in rows[0] if c != "run"] + ["run"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    widths = {c: max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


# Metrics that are shares: their axis and colour scale are pinned to 0-1, so a chart of three trials between 0.41
# and 0.43 does not look like a spread from worst to best.
UNIT_METRICS = ("accuracy", "macro_f1", "roc_auc_macro")


def trials_figure(spec: dict[str, Any]):
    """Parallel coordinates of the finished trials: one axis per parameter (log10 for log ranges) and the metric
    (0-1 with its colour scale for shares). Nothing finished: a figure without axes that says so (the app shows
    no chart then)."""
    import plotly.graph_objects as go

    from classifier.figures import _style

    done = finished_trials(spec)
    metric = spec["metric"]
    if not done:
        fig = go.Figure()
        fig.add_annotation(text="no finished trials yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return _style(fig, "Trials")
    dims = []
    for name, p in spec["space"].items():
        values = [t["params"].get(name) for t in done]
        if "choices" in p:
            labels = [str(c) for c in p["choices"]]
            idx = [labels.index(str(v)) if str(v) in labels else -1 for v in values]
            dims.append({"label": name, "values": idx, "tickvals": list(range(len(labels))), "ticktext": labels,
                         "range": [-0.5, len(labels) - 0.5]})  # fmt: skip
        elif p["log"]:
            dims.append({"label": f"log10 {name}", "values": [math.log10(v) for v in values],
                         "range": [math.log10(p["low"]), math.log10(p["high"])]})  # fmt: skip
        else:
            dims.append({"label": name, "values": values, "range": [p["low"], p["high"]]})
    scores = [t["value"] for t in done]
    unit = metric in UNIT_METRICS
    dims.append({"label": metric + " (pruned: last epoch)", "values": scores, **({"range": [0, 1]} if unit else {})})
    line = {"color": scores, "colorscale": "Viridis", "reversescale": spec["direction"] == "minimize",
            "showscale": True, "colorbar": {"title": {"text": metric}}}  # fmt: skip
    if unit:
        line |= {"cmin": 0, "cmax": 1}
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims))
    fig = _style(fig, f"Trials ({len(done)} finished)")
    # Parallel-coordinate labels sit above the axes, inside the top margin: leave them room below the title.
    fig.update_layout(margin={"t": 130})
    return fig


# --- the driver ----------------------------------------------------------------------------------------------------


def _study(spec: dict[str, Any]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = spec["seed"]
    if spec["sampler"] in ("grid", "random"):  # grid: every point is enqueued (see `_enqueue_grid`)
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, spec["n_trials"] // 3)))
    pr = spec["pruner"]
    if pr["kind"] == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=pr["n_startup_trials"], n_warmup_steps=pr["n_warmup_steps"]
        )
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(sampler=sampler, pruner=pruner, direction=spec["direction"])


def _final_value(spec: dict[str, Any], job: Any, history: list[dict[str, Any]]) -> float | None:
    metric = spec["metric"]
    if metric == "val_loss":
        losses = [r.get("val_loss") for r in history if r.get("val_loss") is not None]
        return float(min(losses)) if losses else None
    v = (job.metrics or {}).get(metric)
    return float(v) if v is not None and math.isfinite(float(v)) else None


def run_search(
    search_id: str,
    executor: Any = None,
    *,
    poll: float = POLL_S,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Drive search `search_id` until every trial has finished (or it is cancelled); returns the final spec.

    Resumes a search that was interrupted: finished trials are replayed into the study, runs still queued or
    running are watched again. Raises `RunError` if another driver holds the search.
    """
    if executor is None:
        from classifier.jobs import default_executor

        executor = default_executor()
    with _driver_lock(search_id) as got:
        if not got:
            raise RunError(f"search {search_id} is already being driven by another process")
        spec = load_search(search_id)
        if spec["status"] in DONE_SEARCH:
            return spec
        try:
            return _drive(spec, executor, poll, on_update)
        except BaseException as e:
            spec["status"] = "failed" if isinstance(e, Exception) else "interrupted"
            spec["error"] = f"{type(e).__name__}: {e}"
            save_search(spec)
            raise


def _drive(spec: dict[str, Any], executor: Any, poll: float, on_update: Callable | None) -> dict[str, Any]:
    """The driver's loop: watch active trials, submit new ones up to `parallel`, until done or cancelled."""
    study = _study(spec)
    dists = distributions(spec["space"])
    live = _replay(study, spec, dists)
    if spec["sampler"] == "grid":
        _enqueue_grid(study, spec)
    spec["status"], spec["error"], spec["pid"] = "running", None, os.getpid()
    save_search(spec)
    flag = cancel_flag(spec["id"])

    def publish() -> None:
        save_search(spec)
        if on_update:
            on_update(spec)

    while True:
        if flag.exists():
            for t in spec["trials"]:
                if t["state"] in ACTIVE_TRIAL:
                    executor.cancel(t["run_id"])
                    t["state"] = "cancelled"
            spec["status"] = "cancelled"
            publish()
            return spec
        changed = False
        for t in [t for t in spec["trials"] if t["state"] in ACTIVE_TRIAL]:
            changed |= _watch(spec, t, live, study, executor)
        active = sum(t["state"] in ACTIVE_TRIAL for t in spec["trials"])
        while active < spec["parallel"] and len(spec["trials"]) < spec["n_trials"]:
            active += _submit(spec, study.ask(dists), live, study, executor)
            changed = True
        if changed:
            best = best_trial(spec)
            spec["best"] = None if best is None else {k: best[k] for k in ("number", "run_id", "value", "params")}
            publish()
        if not active and len(spec["trials"]) >= spec["n_trials"]:
            spec["status"] = "completed"
            publish()
            return spec
        time.sleep(poll)


def _replay(study: Any, spec: dict[str, Any], dists: dict[str, Any]) -> dict[int, Any]:
    """Put what an earlier driver recorded back into a fresh study; the Optuna trials of runs still going."""
    from optuna.trial import TrialState, create_trial

    live: dict[int, Any] = {}  # our trial number -> its Optuna trial
    for t in spec["trials"]:
        inter = {int(k): v for k, v in (t.get("intermediate") or {}).items()}
        if t["state"] in ACTIVE_TRIAL and t.get("run_id"):
            study.enqueue_trial(t["params"])
            live[t["number"]] = trial = study.ask(dists)
            for step, v in sorted(inter.items()):
                trial.report(v, step)
            continue
        state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(t["state"], TrialState.FAIL)
        value = t.get("value") if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study.add_trial(create_trial(params=t["params"], distributions=dists, value=value,
                                     intermediate_values=inter, state=state))  # fmt: skip
    return live


def _watch(spec: dict[str, Any], t: dict[str, Any], live: dict[int, Any], study: Any, executor: Any) -> bool:
    """Report a trial's new epochs to Optuna, prune or finish it as its run says; True if anything changed."""
    from optuna.trial import TrialState

    trial = live[t["number"]]
    try:
        job = executor.status(t["run_id"])
        history = list(executor.history(t["run_id"]))
    except ClassifierError as e:  # e.g. the run was deleted on the Runs page
        job, history = SimpleNamespace(status="failed", error=str(e), metrics=None), []
    key = METRICS[spec["metric"]][1]
    inter = t.setdefault("intermediate", {})
    changed = pruned = False
    for row in history:
        epoch, v = int(row["epoch"]), row.get(key)
        if str(epoch) in inter or v is None or not math.isfinite(float(v)):
            continue
        inter[str(epoch)] = float(v)
        trial.report(float(v), epoch)
        changed = True
        if job.status != "completed" and trial.should_prune():
            pruned = True
            break
    if job.status != t["state"] and job.status in ACTIVE_TRIAL:
        t["state"], changed = job.status, True
    if pruned:
        executor.cancel(t["run_id"])
        t["state"], t["value"] = "pruned", inter[str(epoch)]
        study.tell(trial, state=TrialState.PRUNED)
    elif job.status == "completed":
        t["value"] = _final_value(spec, job, history)
        if t["value"] is None:
            t["state"], t["error"] = "failed", f"the run reported no {spec['metric']}"
            study.tell(trial, state=TrialState.FAIL)
        else:
            t["state"] = "completed"
            study.tell(trial, t["value"])
    elif job.status in ("failed", "cancelled", "interrupted"):
        t["state"] = "failed" if job.status != "cancelled" else "cancelled"
        t["error"] = job.error or f"the run was {job.status}"
        study.tell(trial, state=TrialState.FAIL)
    else:
        return changed
    t["ended_at"] = time.time()
    del live[t["number"]]
    return True


def _submit(spec: dict[str, Any], trial: Any, live: dict[int, Any], study: Any, executor: Any) -> int:
    """Record a new trial and submit its run; 1 if it is now active, 0 if its settings failed at once."""
    from optuna.trial import TrialState

    params = {k: trial.params[k] for k in spec["space"]}
    number = len(spec["trials"]) + 1
    record = {"number": number, "params": params, "run_id": None, "state": "queued", "value": None,
              "intermediate": {}, "error": None, "started_at": time.time(), "ended_at": None}  # fmt: skip
    spec["trials"].append(record)
    try:
        owner = {"owner": spec["owner"]} if spec.get("owner") else {}  # (executors from before owners take none)
        record["run_id"] = executor.submit(trial_config(spec["base_config"], params), name=f"{spec['name']} #{number}",
                                           **owner)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a bad combination fails this trial, not the search
        record["state"], record["error"] = "failed", f"{type(e).__name__}: {e}"
        record["ended_at"] = time.time()
        study.tell(trial, state=TrialState.FAIL)
        return 0
    live[number] = trial
    return 1


def _enqueue_grid(study: Any, spec: dict[str, Any]) -> None:
    """Queue every grid point no trial has taken yet, in an order shuffled by the search's seed.

    Optuna's GridSampler is not used: it ends a grid with `Study.stop()`, which only works inside
    `study.optimize()` (this driver asks and tells), and it does not count trials replayed after a restart.
    Enqueued trials are still Optuna trials, so the pruner sees them like any other.
    """
    import random

    taken = {json.dumps(t["params"], sort_keys=True) for t in spec["trials"]}
    points = [p for p in grid_points(spec["space"]) if json.dumps(p, sort_keys=True) not in taken]
    random.Random(spec["seed"]).shuffle(points)
    for p in points:
        study.enqueue_trial(p)


def launch_search(search_id: str, python: str = sys.executable) -> int:
    """Start `python -m classifier search --id ID --quiet` in its own session (it outlives the app); its pid."""
    spec = load_search(search_id)
    if spec["status"] in DONE_SEARCH:
        raise RunError(f"search {search_id} is {spec['status']}; nothing to run")
    if driver_alive(search_id):
        raise RunError(f"search {search_id} is already running")
    cancel_flag(search_id).unlink(missing_ok=True)
    raw = json.loads(_json_path(search_id).read_text(encoding="utf-8"))
    raw["launched_at"], raw["status"] = time.time(), "queued"
    save_search(raw)
    proc = launch(["search", "--id", search_id, "--quiet"], log_path(search_id), f"search:{search_id}", python)
    return proc.pid


def cancel_search(search_id: str, executor: Any = None, user: User | None = None) -> None:
    """Ask the driver to stop and cancel its queued/running trials; without a live driver, do it here. Only the
    search's owner or an admin may (`user`; None: the local operator)."""
    from classifier.access import LOCAL_USER, check_owner

    spec = load_search(search_id)
    check_owner(user or LOCAL_USER, spec.get("owner"), "cancel", f"search {spec.get('name') or search_id!r}")
    if spec["status"] in DONE_SEARCH:
        return
    cancel_flag(search_id).touch()
    with _driver_lock(search_id) as got:
        if not got:
            return  # the driver sees the flag within a poll
        if executor is None:
            from classifier.jobs import default_executor

            executor = default_executor()
        raw = json.loads(_json_path(search_id).read_text(encoding="utf-8"))
        for t in raw["trials"]:
            if t["state"] in ACTIVE_TRIAL and t.get("run_id"):
                executor.cancel(t["run_id"])
                t["state"] = "cancelled"
        raw["status"] = "cancelled"
        save_search(raw)


def grid_points(space: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of a choices-only space (what a full grid search runs)."""
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[n]["choices"] for n in names))]
