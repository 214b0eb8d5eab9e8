"""`access`: the shared server's rules from the command line, the twin of the Access page and the Runs page's
Publish button.

    python -m classifier access show                          # roles, quotas, each user's queued runs and disk
    python -m classifier access role ana@example.com          # the role an address gets
    python -m classifier access publish RUN_ID --user EMAIL   # a run (or ens-<folder>) on the public page
    python -m classifier access unpublish --user EMAIL
    python -m classifier access delete-dataset NAME --user EMAIL

`--user` (or `CLASSIFIER_USER`) is who acts, with that address's role; without it, the local operator (an admin).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from classifier.errors import ClassifierError

NAME = "access"
ACTIONS = {
    "show": "roles from the access file, the quotas, and each user's queued or running runs and disk use",
    "role": "the role an e-mail address gets",
    "publish": "put a completed run or saved ensemble (ens-<folder>) on the public prediction page",
    "unpublish": "take the public page's model down",
    "delete-dataset": "delete a workspace dataset (its owner or an admin)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="roles, quotas, the public page and dataset deletion on a shared server",
                       description=__doc__.split("\n\n")[0])  # fmt: skip
    actions = p.add_subparsers(dest="action", required=True)
    for action, help_text in ACTIONS.items():
        a = actions.add_parser(action, help=help_text)
        if action == "role":
            a.add_argument("email")
        elif action == "publish":
            a.add_argument("entry", metavar="ID", help="a run id, or ens-<folder> for a saved ensemble")
        elif action == "delete-dataset":
            a.add_argument("dataset", metavar="NAME", help="the dataset's folder name in the workspace")
        a.add_argument("--user", default=None, metavar="EMAIL", help="who acts (default: the local operator)")


def run(a: argparse.Namespace) -> int:
    from classifier.access import cli_user, read_access

    user = cli_user(a.user)
    if a.action == "show":
        out = _show(read_access())
    elif a.action == "role":
        out = {"email": a.email, "role": read_access().role_for(a.email)}
    elif a.action == "publish":
        from classifier.public import publish

        out = publish(_entry(a.entry, user), user)
    elif a.action == "unpublish":
        from classifier.public import unpublish

        unpublish(user)
        out = {"unpublished": True}
    else:
        from classifier.data.ingest import delete_dataset
        from classifier.workspace import datasets_dir

        if "/" in a.dataset or a.dataset.startswith("."):
            raise ClassifierError(f"{a.dataset!r}: give the dataset's folder name in the workspace")
        delete_dataset(datasets_dir() / a.dataset, user)
        out = {"deleted": a.dataset}
    print(json.dumps(out, default=str))
    return 0


def _entry(entry_id: str, user):
    from classifier.jobs import default_executor
    from classifier.jobs.catalogue import entries

    for e in entries(("run", "ensemble"), executor=default_executor()):
        if e.run_id == entry_id:
            return e
    raise ClassifierError(f"no run or saved ensemble {entry_id!r} (python -m classifier jobs list)")


def _show(rules) -> dict:
    from classifier.access import owner_of
    from classifier.jobs import default_executor
    from classifier.jobs.guard import disk_used
    from classifier.public import published
    from classifier.store import ACTIVE

    ex = default_executor()
    jobs = ex.list()
    active = Counter(owner_of(j) for j in jobs if j.status in ACTIVE)
    owners = sorted({owner_of(j) for j in jobs} | set(rules.users))
    return {
        "access_file": str(rules.path) if rules.path else None,
        "default": rules.default,
        "users": dict(rules.users),
        "domains": dict(rules.domains),
        "quotas": vars(rules.quotas),
        "usage": {o: {"active_runs": active.get(o, 0), "disk_mb": round(disk_used(o, ex) / 1e6, 1)} for o in owners},
        "published": published(),
    }
