"""Who may do what on a shared server: roles, the access file, owners and quotas (no streamlit here).

Without sign-in the app is a single-user local tool and its one user, "local", is an admin. With sign-in (Streamlit's
OIDC, `[auth]` in `.streamlit/secrets.toml`) each signed-in e-mail address gets a role from the access file,
`workspace/access.toml` or the file `CLASSIFIER_ACCESS_FILE` names:

    default = "viewer"            # a signed-in address listed nowhere below ("none": no access at all)

    [users]                       # exact addresses win over domains
    "ana@example.com" = "admin"

    [domains]
    "example.com" = "trainer"

    [quotas]                      # every key optional; these are the defaults
    runs_per_user = 3             # queued + running runs of one user
    runs_total = 12               # queued + running runs of everybody
    disk_mb_per_user = 5000       # a user's datasets and runs together
    upload_mb_per_session = 1000  # everything one browser session uploads
    public_images_per_request = 10
    public_requests_per_session = 30

Roles nest: a viewer evaluates, compares, explains and predicts; a trainer also brings data, trains, searches and
exports; an admin also deletes anything, sees every run and the access list. Whatever a user makes records its
owner; only the owner or an admin cancels, deletes or publishes it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from classifier.errors import ClassifierError
from classifier.workspace import workspace_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ACCESS_FILE_ENV = "CLASSIFIER_ACCESS_FILE"
USER_ENV = "CLASSIFIER_USER"  # who the command line acts as (default: the local operator, "local")
LOCAL = "local"
ROLES = ("viewer", "trainer", "admin")  # each includes what the ones before it may do
NO_ACCESS = "none"
CAPABILITIES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"evaluate", "compare", "explain", "predict"}),
    "trainer": frozenset({"evaluate", "compare", "explain", "predict", "data", "train", "search", "export"}),
    "admin": frozenset(
        {"evaluate", "compare", "explain", "predict", "data", "train", "search", "export", "any_owner", "access_list"}
    ),
}


class AccessError(ClassifierError):
    """The user may not do this (role, owner) or is past a quota; the message says which and what to do."""


@dataclass(frozen=True)
class Quotas:
    """Limits per user, per server and per browser session (the access file's `[quotas]`)."""

    runs_per_user: int = 3
    runs_total: int = 12
    disk_mb_per_user: float = 5000.0
    upload_mb_per_session: float = 1000.0
    public_images_per_request: int = 10
    public_requests_per_session: int = 30


@dataclass(frozen=True)
class User:
    """Who acts: `name` is the signed-in e-mail address ("local" without sign-in, "" for a visitor)."""

    name: str
    role: str  # viewer | trainer | admin | none (signed in, no access) | visitor (not signed in)

    def can(self, capability: str) -> bool:
        return capability in CAPABILITIES.get(self.role, frozenset())

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL_USER = User(LOCAL, "admin")  # the single user of a local tool, and the operator at the command line
VISITOR = User("", "visitor")


@dataclass(frozen=True)
class AccessRules:
    """The access file, read and checked."""

    users: Mapping[str, str]
    domains: Mapping[str, str]
    default: str = "viewer"
    quotas: Quotas = Quotas()
    path: Path | None = None

    def role_for(self, email: str) -> str:
        """The role of a signed-in address: its own line, else its domain's, else the default."""
        email = (email or "").strip().lower()
        if not email:
            return NO_ACCESS
        if email in self.users:
            return self.users[email]
        domain = email.rpartition("@")[2]
        return self.domains.get(domain, self.default)

    def user(self, email: str) -> User:
        return User(email.strip().lower(), self.role_for(email))


def access_file() -> Path:
    """The access file's path: `CLASSIFIER_ACCESS_FILE`, else `workspace/access.toml`."""
    env = os.environ.get(ACCESS_FILE_ENV, "").strip()
    return Path(env).expanduser() if env else workspace_dir() / "access.toml"


def read_access(path: str | Path | None = None) -> AccessRules:
    """The access rules; no file means everyone signed in is a viewer and the default quotas apply. A file that
    cannot be read, or names an unknown role or quota, is an AccessError naming the file and the entry."""
    path = Path(path) if path is not None else access_file()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AccessRules({}, {}, path=None)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AccessError(f"cannot read the access file {path}: {e}") from e
    unknown = set(data) - {"default", "users", "domains", "quotas"}
    if unknown:
        raise AccessError(f"{path}: unknown entries {sorted(unknown)}; use default, [users], [domains], [quotas]")
    default = _role(data.get("default", "viewer"), path, "default")
    users = {str(k).strip().lower(): _role(v, path, f"users.{k}") for k, v in _table(data, "users", path).items()}
    domains = {str(k).strip().lower().lstrip("@"): _role(v, path, f"domains.{k}")
               for k, v in _table(data, "domains", path).items()}  # fmt: skip
    return AccessRules(users, domains, default, _quotas(_table(data, "quotas", path), path), path)


def _table(data: dict, key: str, path: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise AccessError(f"{path}: [{key}] must be a table of name = value lines")
    return value


def _role(value: Any, path: Path, where: str) -> str:
    if value not in (*ROLES, NO_ACCESS):
        raise AccessError(f"{path}: {where} = {value!r} is not a role; use one of {', '.join((*ROLES, NO_ACCESS))}")
    return str(value)


def _quotas(table: dict, path: Path) -> Quotas:
    known = {f.name: f.type for f in fields(Quotas)}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise AccessError(f"{path}: unknown quota {key!r}; known: {', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AccessError(f"{path}: quota {key} must be a number >= 0, not {value!r}")
        out[key] = int(value) if known[key] == "int" else float(value)
    return Quotas(**out)


def owner_of(entry: Any) -> str:
    """Who owns a run, ensemble, search or dataset record ("local" for things made before owners were kept)."""
    owner = entry.get("owner") if isinstance(entry, Mapping) else getattr(entry, "owner", None)
    return owner or LOCAL


def may_act(user: User, owner: str | None) -> bool:
    """Whether `user` may cancel, delete, resume or publish something `owner` made."""
    return user.is_admin or (bool(user.name) and user.name == (owner or LOCAL))


def check_owner(user: User, owner: str | None, verb: str, what: str) -> None:
    """AccessError unless `user` owns it or is an admin: "only its owner (ana@...) or an admin may delete run X"."""
    if not may_act(user, owner):
        raise AccessError(f"only its owner ({owner or LOCAL}) or an admin may {verb} {what}; nothing was changed")


def check_capability(user: User, capability: str) -> None:
    if not user.can(capability):
        raise AccessError(f"your role ({user.role}) may not {capability}; ask an admin for the trainer role")


def visible(user: User, entries: Iterable[Any]) -> list[Any]:
    """What `user` sees in lists: admins everything; others what they own, plus completed runs and ensembles (the
    team's results to evaluate, compare, explain and predict with). Queued, running or failed runs of others, their
    logs and errors stay with their owners."""
    if user.is_admin:
        return list(entries)

    def status(e: Any) -> Any:
        return e.get("status") if isinstance(e, Mapping) else getattr(e, "status", None)

    return [e for e in entries if owner_of(e) == user.name or status(e) == "completed"]


def check_active_quota(owner: str, active: Iterable[Any], quotas: Quotas, adding: int = 1) -> None:
    """AccessError when `adding` more queued runs would pass the per-user or the server's limit (`active`: every
    queued or running entry, whoever owns it)."""
    active = list(active)
    mine = sum(owner_of(e) == owner for e in active)
    if mine + adding > quotas.runs_per_user:
        raise AccessError(
            f"quota reached: {mine} of your runs are queued or running and the limit is {quotas.runs_per_user} per "
            "user; wait for one to finish or cancel one"
        )
    if len(active) + adding > quotas.runs_total:
        raise AccessError(
            f"quota reached: {len(active)} runs are queued or running on this server and the limit is "
            f"{quotas.runs_total}; try again when some have finished"
        )


def enforced(rules: AccessRules, user: User) -> bool:
    """Whether quotas apply: always on a server with an access file or sign-in; not for the plain local tool (no
    access file, the local user), which keeps no quotas, as before sign-in existed."""
    return rules.path is not None or user != LOCAL_USER


def check_disk_quota(owner: str, used_bytes: int, adding_bytes: int, quotas: Quotas) -> None:
    """AccessError when `adding_bytes` more would put the owner's datasets and runs past `disk_mb_per_user`."""
    limit = quotas.disk_mb_per_user * 1e6
    if used_bytes + adding_bytes > limit:
        raise AccessError(
            f"disk quota reached: your datasets and runs use {used_bytes / 1e6:.0f} MB"
            + (f" and this needs {adding_bytes / 1e6:.0f} MB more" if adding_bytes else "")
            + f"; the limit is {quotas.disk_mb_per_user:.0f} MB per user. Delete datasets or runs you no longer need"
        )


def check_upload_quota(session_bytes: int, adding_bytes: int, quotas: Quotas) -> None:
    """AccessError when this browser session's uploads would pass `upload_mb_per_session`."""
    limit = quotas.upload_mb_per_session * 1e6
    if session_bytes + adding_bytes > limit:
        raise AccessError(
            f"upload quota reached: this session has uploaded {session_bytes / 1e6:.0f} MB and this file is "
            f"{adding_bytes / 1e6:.0f} MB; the limit is {quotas.upload_mb_per_session:.0f} MB per session"
        )


def cli_user(name: str | None = None) -> User:
    """Who a command acts as: `--user EMAIL` (or `CLASSIFIER_USER`) with that address's role, else the local
    operator (an admin: whoever has a shell on the server can do everything anyway)."""
    name = (name or os.environ.get(USER_ENV, "")).strip()
    if not name or name == LOCAL:
        return LOCAL_USER
    return read_access().user(name)
