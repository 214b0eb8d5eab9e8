"""`jobs`: the job system from the command line, the twin of the Train and Runs pages.

    python -m classifier jobs submit --data demo --backbone simple_cnn --weights none   # {"run_id": "..."}, at once
    python -m classifier jobs list | status ID | logs ID | cancel ID | resume ID | delete ID   (--json for scripts)

Every subcommand talks to `classifier.jobs.default_executor()`: local processes, or the Ray cluster with
`CLASSIFIER_EXECUTOR=ray` and `CLASSIFIER_RAY_ADDRESS` (or `--executor ray --ray-address URL`), as `--user EMAIL` (or
`CLASSIFIER_USER`) with that address's role, owners and quotas from the access file; without it, as the local
operator (an admin).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from classifier.cli.config_flags import add_config_flags, add_settings, config_from_args
from classifier.environ import environ
from classifier.errors import ClassifierError

NAME = "jobs"
ACTIONS = ("submit", "list", "status", "logs", "cancel", "resume", "delete")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="submit, list, watch, cancel, resume and delete background runs (local processes or a Ray cluster)",
        description=__doc__.split("\n\n")[0] + " Each subcommand prints JSON with --json.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    for action in ACTIONS:
        a = actions.add_parser(action, help=_HELP[action])
        if action == "submit":
            add_settings(a)
            add_config_flags(a.add_argument_group("runtime and output"), "runtime", "output")
            a.add_argument("--name", default=None, help="a display name for the run")
            a.add_argument("--config-json", default=None, metavar="PATH", help="a JSON TrainConfig instead of flags")
        elif action == "list":
            a.add_argument("--limit", type=int, default=None, help="newest N runs only")
        else:
            a.add_argument("run_id", metavar="ID")
        if action == "logs":
            a.add_argument("--tail", type=int, default=None, metavar="LINES", help="only the last LINES lines")
        g = a.add_argument_group("executor")
        g.add_argument("--json", action="store_true", help="print JSON (one object) for scripts")
        g.add_argument("--user", default=None, metavar="EMAIL",
                       help="act as this signed-in user: their role, their runs, their quotas (default: "
                       "CLASSIFIER_USER, else the local operator)")  # fmt: skip
        g.add_argument("--executor", choices=["local", "ray"], default=None,
                       help="where runs execute (default: CLASSIFIER_EXECUTOR, else local)")  # fmt: skip
        g.add_argument(
            "--ray-address",
            default=None,
            metavar="URL",
            help="the Ray cluster's Jobs API, http://HOST:8265 (default: CLASSIFIER_RAY_ADDRESS)",
        )


_HELP = {
    "submit": 'queue a training run (the train flags) and print {"run_id": ...} at once',
    "list": "every run with its state",
    "status": "a run's state (queued, running, completed, failed, cancelled, interrupted) and progress",
    "logs": "a run's output so far",
    "cancel": "stop a queued or running run (within one batch; the checkpoint is kept)",
    "resume": "continue an interrupted, cancelled or failed run from its last checkpoint",
    "delete": "remove a finished run (run dir, log, record)",
}


@contextmanager
def _executor_env(a: argparse.Namespace):
    """--executor / --ray-address for this command only (default_executor reads the environment)."""
    from classifier.jobs import EXECUTOR_ENV
    from classifier.jobs.ray import ADDRESS_ENV

    changes = {k: v for k, v in ((EXECUTOR_ENV, a.executor), (ADDRESS_ENV, a.ray_address)) if v}
    with environ(changes):
        yield


def run(a: argparse.Namespace) -> int:
    from classifier.access import cli_user
    from classifier.jobs import default_executor
    from classifier.jobs.guard import GuardedExecutor

    with _executor_env(a):
        ex = GuardedExecutor(default_executor(), cli_user(a.user))
        out = _ACTIONS[a.action](ex, a)
    text = out.pop("text", None)
    if a.action == "logs" and not a.json:
        sys.stdout.write(out["logs"])
    elif a.json or text is None:
        print(json.dumps(out, default=str))
    else:
        print(text)
    return 0


def _submit(ex, a: argparse.Namespace) -> dict:
    if a.config_json is not None:
        from classifier.jobs import load_config_json

        cfg = load_config_json(a.config_json, resolve=False)  # submit checks; fit plans on what is unset
    elif a.data is None:
        raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json")
    else:
        cfg = config_from_args(a)
    return {"run_id": ex.submit(cfg, name=a.name)}


def _list(ex, a: argparse.Namespace) -> dict:
    from classifier.jobs.progress import describe

    jobs = ex.list(a.limit)
    lines = [f"{j.run_id}  {j.status:<11}  {j.name}" + (f"  {describe(j.progress)}" if j.status in ACTIVE else "")
             for j in jobs]  # fmt: skip
    return {"runs": [job_dict(j) for j in jobs], "text": "\n".join(lines) or "no runs"}


def _status(ex, a: argparse.Namespace) -> dict:
    from classifier.jobs.progress import describe

    job = ex.status(a.run_id)
    text = f"{job.run_id}  {job.status}  {describe(job.progress)}"
    if job.error:
        text += f"\nerror: {job.error}"
    return {**job_dict(job), "text": text}


def _logs(ex, a: argparse.Namespace) -> dict:
    text = ex.logs(a.run_id)
    if a.tail is not None:
        text = "".join(text.splitlines(keepends=True)[-a.tail :]) if a.tail > 0 else ""
    return {"run_id": a.run_id, "logs": text}


def _act(verb: str):
    def act(ex, a: argparse.Namespace) -> dict:
        getattr(ex, verb)(a.run_id)
        if verb == "delete":
            return {"run_id": a.run_id, "deleted": True, "text": f"{a.run_id} deleted"}
        job = ex.status(a.run_id)
        return {"run_id": a.run_id, "status": job.status, "text": f"{a.run_id}  {job.status}"}

    return act


_ACTIONS = {"submit": _submit, "list": _list, "status": _status, "logs": _logs, "cancel": _act("cancel"),
            "resume": _act("resume"), "delete": _act("delete")}  # fmt: skip
ACTIVE = ("queued", "running")


def job_dict(job: Any) -> dict:
    """A JobStatus as plain JSON (paths as strings)."""
    d = asdict(job)
    d["run_dir"] = str(d["run_dir"])
    return d
