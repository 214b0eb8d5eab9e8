"""The public prediction page's model: one completed run or saved ensemble a trainer published.

Visitors who are not signed in see Home and that model's Predict page only, with per-session limits
(`Quotas.public_images_per_request`, `public_requests_per_session`). What is published lives in
`workspace/public.json` ({"kind", "id", "name", "dir", "by", "at"}); the folder is never shown to visitors.

    publish(entry, user)      # AccessError unless `user` is a trainer who owns it, or an admin
    published()               # None, or the record (None too when its folder has gone)
    unpublish(user)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from classifier import rundir
from classifier.access import AccessError, Quotas, User, check_capability, check_owner
from classifier.errors import RunError
from classifier.io import atomic_write_json
from classifier.workspace import workspace_dir


def public_file() -> Path:
    return workspace_dir() / "public.json"


def publish(entry: Any, user: User) -> dict[str, Any]:
    """Publish a completed run or saved ensemble (a catalogue entry) on the public page, replacing what was there."""
    check_capability(user, "train")
    kind = getattr(entry, "kind", "run")
    if kind not in ("run", "ensemble"):
        raise AccessError(f"only a run or a saved ensemble can be published, not a {kind}")
    check_owner(user, entry.owner, "publish", f"{kind} {entry.name!r}")
    if entry.status != "completed" or (kind == "run" and not rundir.has_weights(entry.run_dir)):
        raise RunError(f"{entry.name!r} is {entry.status} and has no model to publish; publish a completed run")
    record = {"kind": kind, "id": entry.run_id, "name": entry.name, "dir": str(Path(entry.run_dir).resolve()),
              "by": user.name, "at": time.time()}  # fmt: skip
    atomic_write_json(public_file(), record)
    return record


def published() -> dict[str, Any] | None:
    """The published model's record, or None (nothing published, or its run or ensemble was deleted since)."""
    try:
        record = json.loads(public_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("dir"), str):
        return None
    folder = Path(record["dir"])
    present = rundir.is_ensemble_dir(folder) if record.get("kind") == "ensemble" else rundir.has_weights(folder)
    return record if present else None


def unpublish(user: User) -> None:
    """Take the public page's model down: whoever published it, or an admin."""
    record = published()
    if record is None:
        public_file().unlink(missing_ok=True)
        return
    check_owner(user, record.get("by"), "unpublish", f"{record.get('name')!r}")
    public_file().unlink(missing_ok=True)


def check_public_request(requests_so_far: int, images: int, quotas: Quotas) -> None:
    """AccessError when a visitor's session has used its requests, or sends more images at once than allowed."""
    if requests_so_far >= quotas.public_requests_per_session:
        raise AccessError(
            f"this session has made {requests_so_far} predictions, the most a visitor may make "
            f"({quotas.public_requests_per_session}); come back later"
        )
    if images > quotas.public_images_per_request:
        raise AccessError(
            f"{images} images at once; visitors may send up to {quotas.public_images_per_request} per prediction"
        )
