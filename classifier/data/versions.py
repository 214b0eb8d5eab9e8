"""Dataset versions: relabels, exclusions and "reviewed" marks kept beside the data, never in it.

Version 0 is the dataset's files as they are. Version N (1, 2, ...) is an overlay: a JSON file holding every
relabel (path -> class name), every excluded path and every path marked reviewed, cumulative, so one file says
all of what a version changes. `classifier.data.dataset.load_dataset(data, version)` applies it to the index;
the image files and the folder they sit in are never written to.

The overlays live in the workspace, in `versions/<folder name>-<hash of the dataset's absolute path>/`:
`v1.json`, `v2.json`, ... (written once, atomically, under an exclusive lock so two sessions saving at the same
moment get two versions rather than one lost), and `draft.json`, the edits not saved as a version yet (a delta
on top of whatever version is the latest when it is saved). The workspace rather than the dataset folder,
because a server folder or a shared data set is often read-only, and the workspace is this tool's to write.

    >>> versions = DatasetVersions("data/flowers")  # doctest: +SKIP
    >>> versions.edit(Edits(relabel={"train/roses/1.jpg": "tulips"}, exclude={"train/roses/2.jpg"}))  # doctest: +SKIP
    >>> versions.commit(note="label fixes from the scan")  # doctest: +SKIP
    1
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classifier.errors import DatasetError
from classifier.io import atomic_write_json
from classifier.workspace import workspace_dir

FORMAT = 1
DRAFT = "draft.json"


@dataclass
class Edits:
    """Changes to a version: relabel (path -> class name), exclude, restore (undo an exclusion), reviewed."""

    relabel: dict[str, str] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    restore: set[str] = field(default_factory=set)
    reviewed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.relabel or self.exclude or self.restore or self.reviewed)

    def merged(self, later: Edits) -> Edits:
        """These edits followed by `later` (a later relabel of the same path wins; restore undoes exclude)."""
        return Edits(
            {**self.relabel, **later.relabel},
            (self.exclude - later.restore) | later.exclude,
            (self.restore - later.exclude) | later.restore,
            self.reviewed | later.reviewed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"relabel": dict(sorted(self.relabel.items())), "exclude": sorted(self.exclude),
                "restore": sorted(self.restore), "reviewed": sorted(self.reviewed)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edits:
        return cls(dict(d.get("relabel", {})), set(d.get("exclude", ())), set(d.get("restore", ())),
                   set(d.get("reviewed", ())))  # fmt: skip


@dataclass
class Overlay:
    """What version `version` changes against the files (cumulative), and where it came from."""

    version: int
    relabel: dict[str, str] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    reviewed: set[str] = field(default_factory=set)
    parent: int | None = None
    note: str = ""
    created_at: str = ""
    changes: dict[str, int] = field(default_factory=dict)  # what this version added to its parent, counted

    def applied(self, edits: Edits, version: int, note: str = "") -> Overlay:
        """The overlay of a new version: this one with `edits` on top."""
        exclude = (self.exclude - edits.restore) | edits.exclude
        return Overlay(
            version,
            {**self.relabel, **edits.relabel},
            exclude,
            self.reviewed | edits.reviewed,
            parent=self.version,
            note=note,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            changes={
                "relabelled": len(edits.relabel),
                "excluded": len(edits.exclude),
                "restored": len(edits.restore),
                "reviewed": len(edits.reviewed),
            },  # fmt: skip
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "parent": self.parent,
            "note": self.note,
            "created_at": self.created_at,
            "changes": self.changes,
            "relabel": dict(sorted(self.relabel.items())),
            "exclude": sorted(self.exclude),
            "reviewed": sorted(self.reviewed),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Overlay:
        return cls(int(d["version"]), dict(d.get("relabel", {})), set(d.get("exclude", ())),
                   set(d.get("reviewed", ())), d.get("parent"), d.get("note", ""), d.get("created_at", ""),
                   dict(d.get("changes", {})))  # fmt: skip


def dataset_key(data: str | Path) -> str:
    """The name of a dataset's versions folder: its folder (or file) name and a hash of its absolute path."""
    path = Path(data).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"{path.stem or 'dataset'}-{digest}"


class DatasetVersions:
    """The versions of one dataset (a folder, .zip or CSV path): read them, collect edits, save a new one."""

    def __init__(self, data: str | Path):
        self.data = str(Path(data).expanduser().resolve())
        self.folder = workspace_dir() / "versions" / dataset_key(data)

    def _file(self, version: int) -> Path:
        return self.folder / f"v{version}.json"

    def numbers(self) -> list[int]:
        """The saved versions, ascending (0, the files as they are, is always there and not listed)."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.glob("v*.json"):
            if p.stem[1:].isdigit():
                out.append(int(p.stem[1:]))
        return sorted(out)

    def latest(self) -> int:
        numbers = self.numbers()
        return numbers[-1] if numbers else 0

    def get(self, version: int | None = None) -> Overlay:
        """Version `version`'s overlay (None: the latest; 0: no changes). DatasetError names a missing version."""
        version = self.latest() if version is None else int(version)
        if version == 0:
            return Overlay(0)
        path = self._file(version)
        try:
            return Overlay.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            have = ", ".join(str(n) for n in [0, *self.numbers()])
            raise DatasetError(f"{self.data}: there is no dataset version {version} (versions: {have})") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: unreadable dataset version file ({e})") from e

    def history(self) -> list[Overlay]:
        return [self.get(n) for n in self.numbers()]

    def draft(self) -> Edits:
        """The edits not saved as a version yet."""
        try:
            return Edits.from_dict(json.loads((self.folder / DRAFT).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Edits()
        except (OSError, ValueError, TypeError) as e:
            raise DatasetError(f"{self.folder / DRAFT}: unreadable draft of dataset edits ({e})") from e

    def edit(self, edits: Edits) -> Edits:
        """Add `edits` to the draft (kept in a file, so a reload or a restart loses nothing); the new draft."""
        with self._locked():
            draft = self.draft().merged(edits)
            atomic_write_json(self.folder / DRAFT, draft.to_dict())
        return draft

    def discard_draft(self) -> None:
        (self.folder / DRAFT).unlink(missing_ok=True)

    def commit(
        self,
        edits: Edits | None = None,
        note: str = "",
        use_draft: bool = True,
        check: Callable[[Overlay], object] | None = None,
    ) -> int:
        """Save the latest version plus the draft (unless `use_draft` is False) plus `edits` as a new version,
        and clear the draft it used; the new version's number. DatasetError when there is nothing to save;
        `check(overlay)` may raise to refuse the version before anything is written."""
        with self._locked():
            pending = (self.draft() if use_draft else Edits()).merged(edits or Edits())
            if not pending:
                raise DatasetError(f"{self.data}: no edits to save as a new version")
            base = self.get(None)
            overlay = base.applied(pending, base.version + 1, note)
            if check is not None:
                check(overlay)
            atomic_write_json(self._file(overlay.version), overlay.to_dict())
            if use_draft:
                self.discard_draft()
            atomic_write_json(self.folder / "dataset.json", {"data": self.data})  # which dataset this folder is
        return overlay.version

    def _locked(self) -> _Lock:
        self.folder.mkdir(parents=True, exist_ok=True)
        return _Lock(self.folder / "lock")


class _Lock:
    """An exclusive flock for the duration of a `with` block (released by the kernel if the process dies)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def parse_relabels(pairs: Iterable[str]) -> dict[str, str]:
    """`path=class` strings (the CLI's --relabel) as a dict; DatasetError names a malformed one."""
    out = {}
    for pair in pairs:
        path, sep, label = pair.rpartition("=")
        if not sep or not path or not label:
            raise DatasetError(f"--relabel {pair!r}: give PATH=CLASS (the path relative to the dataset root)")
        out[path] = label
    return out
