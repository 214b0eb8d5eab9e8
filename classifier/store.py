"""The run store: one SQLite file (`workspace/runs.sqlite`) that records every background training run.

Training processes write status, progress and per-epoch rows; the app and the CLI read them. WAL mode lets
readers and one writer work at the same time, a new connection per operation keeps it safe across threads
and processes, and `timeout=30` makes a writer wait for the lock instead of failing with "database is locked".

    >>> store = RunStore(tmp_path / "runs.sqlite")  # doctest: +SKIP
    >>> store.create("r1", "demo", {"epochs": 2}, "runs/r1")  # doctest: +SKIP
    >>> store.update("r1", status="running", started_at=time.time())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from classifier.io import json_safe

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
RESUMABLE = ("interrupted", "cancelled", "failed")  # may go back to "queued" (classifier.jobs resume)
JSON_COLUMNS = ("config", "progress", "metrics", "launch_args")
COLUMNS = (
    "id", "name", "status", "created_at", "started_at", "ended_at", "pid", "run_dir", "config", "progress",
    "metrics", "error", "device", "updated_at", "owner", "launch_args",
)  # fmt: skip
ADDED_COLUMNS = {"owner": "TEXT", "launch_args": "TEXT"}  # added to stores made before them (owner NULL: "local")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT, created_at REAL, started_at REAL, ended_at REAL, pid INTEGER,
    run_dir TEXT, config TEXT, progress TEXT, metrics TEXT, error TEXT, device TEXT, updated_at REAL
);
CREATE TABLE IF NOT EXISTS epochs (run_id TEXT, epoch INTEGER, row TEXT, PRIMARY KEY (run_id, epoch));
CREATE INDEX IF NOT EXISTS runs_created ON runs (created_at);
"""


def default_store_path() -> Path:
    from classifier.workspace import workspace_dir

    return workspace_dir() / "runs.sqlite"


class RunStore:
    """Read and write run rows; every method opens (and closes) its own connection."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            # journal_mode is stored in the file, so this only has an effect the first time.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            have = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    try:
                        con.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError:  # another process added it a moment ago
                        pass

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit; multi-statement writes open `BEGIN IMMEDIATE` themselves, which takes
        # the write lock up front (a deferred read-then-write transaction can fail with SQLITE_BUSY in WAL mode
        # without waiting for the timeout).
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as con:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode, and much cheaper per write
            yield con

    def create(
        self,
        run_id: str,
        name: str,
        config: dict,
        run_dir: str,
        device: str = "cpu",
        status: str = "queued",
        owner: str | None = None,
        launch_args: list[str] | None = None,
    ) -> None:
        """Insert a new run row (fails if `run_id` exists). `launch_args`: the train command's arguments a
        dispatcher starts the run with once its device is free (None: the caller starts it)."""
        _check_status(status)
        now = time.time()
        args = None if launch_args is None else _dumps(launch_args)
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs (id, name, status, created_at, run_dir, config, progress, device, updated_at, "
                "owner, launch_args) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, status, now, str(run_dir), _dumps(config), _dumps({}), device, now, owner, args),
            )

    def update(self, run_id: str, **fields: Any) -> None:
        """Set any columns of a run; dict and list values are stored as JSON. Also sets `updated_at`."""
        self._update(run_id, fields, None)

    def transition(self, run_id: str, from_statuses: Iterable[str], **fields: Any) -> bool:
        """Like `update`, but only if the run's status is one of `from_statuses`; True if it changed the row.

        A compare-and-set: reconciling "interrupted" must not overwrite a "completed" that a training process
        wrote a moment after the reader looked.
        """
        return self._update(run_id, fields, tuple(from_statuses))

    def _update(self, run_id: str, fields: dict[str, Any], from_statuses: tuple[str, ...] | None) -> bool:
        unknown = set(fields) - set(COLUMNS[1:])
        if unknown:
            raise ValueError(f"unknown run columns: {', '.join(sorted(unknown))}")
        if "status" in fields:
            _check_status(fields["status"])
        fields = {**fields, "updated_at": time.time()}
        values = [_dumps(v) if isinstance(v, (dict, list)) else v for v in fields.values()]
        sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        params = [*values, run_id]
        if from_statuses is not None:
            sql += f" AND status IN ({', '.join('?' * len(from_statuses))})"
            params += list(from_statuses)
        with self._connect() as con:
            return con.execute(sql, params).rowcount > 0

    def set_progress(self, run_id: str, progress: dict) -> None:
        self.update(run_id, progress=progress)

    def add_epoch(self, run_id: str, row: dict) -> None:
        """Record one finished epoch (`row["epoch"]` is the key; writing the same epoch again replaces it)."""
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO epochs (run_id, epoch, row) VALUES (?, ?, ?)",
                (run_id, int(row["epoch"]), _dumps(row)),
            )

    def trim_epochs(self, run_id: str, last_epoch: int) -> None:
        """Forget the epoch rows after `last_epoch` (a resumed run redoes them from its checkpoint)."""
        with self._connect() as con:
            con.execute("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", (run_id, int(last_epoch)))

    def get(self, run_id: str) -> dict | None:
        """One run with its JSON fields decoded and `history` (one dict per epoch, in order); None if unknown."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            epochs = con.execute("SELECT row FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)).fetchall()
        out = _decode(row)
        out["history"] = [json.loads(r["row"]) for r in epochs]
        return out

    def list(self, limit: int | None = None) -> list[dict]:
        """Runs, newest first, without history."""
        sql = "SELECT * FROM runs ORDER BY created_at DESC, id DESC"
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        with self._connect() as con:
            return [_decode(r) for r in con.execute(sql, params).fetchall()]

    def delete(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            con.execute("COMMIT")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")


def _dumps(value: Any) -> str:
    # NaN/inf are not JSON; store them as null so any JSON reader (not only Python's) can read the row.
    return json.dumps(json_safe(value), allow_nan=False, default=_plain)


def _plain(o: Any) -> Any:
    # numpy scalars and arrays (metrics, history rows) become plain numbers and lists.
    return json_safe(o.tolist()) if hasattr(o, "tolist") else str(o)


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for k in JSON_COLUMNS:
        out[k] = json.loads(out[k]) if out[k] is not None else None
    return out
