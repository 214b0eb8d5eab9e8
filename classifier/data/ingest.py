"""Bring data into the workspace: an uploaded zip (extracted once per content), images dropped per class, or a
folder on the server under the allowed root (`CLASSIFIER_DATA_ROOT`). The Data page calls these.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.data.archive import ExtractReport, check_upload_size, extract_zip
from classifier.data.images import IMAGE_EXTENSIONS, load_image
from classifier.errors import DatasetError, ImageError

if TYPE_CHECKING:
    from classifier.access import User
from classifier.workspace import datasets_dir, workspace_dir

DATA_ROOT_ENV = "CLASSIFIER_DATA_ROOT"
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, fallback: str = "dataset") -> str:
    """A file/folder name that is safe on every OS: ASCII letters, digits, `._- `, no leading dots, <= 64 chars.

    >>> safe_name("../My cats/ 2024!")
    'My cats_ 2024'
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_name.replace("/", "_").replace("\\", "_")).strip(" ._-")
    return cleaned[:64].strip(" ._-") or fallback


def workspace_datasets() -> list[Path]:
    """Dataset folders in the workspace (uploaded, built or the demo), newest first."""
    dirs = [d for d in datasets_dir().iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True)


def visible_datasets(user: User) -> list[Path]:
    """The workspace datasets `user` may pick: an admin every one; others their own and the demo."""
    from classifier.data.demo import demo_dataset_path

    demo = demo_dataset_path().resolve()
    return [d for d in workspace_datasets()
            if user.is_admin or dataset_owner(d) == user.name or d.resolve() == demo]  # fmt: skip


def ingest_zip(
    data: bytes, filename: str, max_bytes: int, owner: str | None = None
) -> tuple[Path, ExtractReport | None]:
    """Extract an uploaded zip into `datasets_dir()/<name>-<hash>`; the same bytes uploaded again reuse it.

    Returns the dataset folder and the extraction report (None when an earlier extraction was reused). `owner`
    (who uploaded it) is recorded beside the datasets, never inside the dataset folder.
    """
    check_upload_size(len(data), max_bytes)
    digest = hashlib.sha1(data).hexdigest()[:10]
    dest = datasets_dir() / f"{safe_name(Path(filename).stem)}-{digest}"
    if dest.is_dir() and any(dest.iterdir()):
        return dest, None
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=workspace_dir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        report = extract_zip(tmp, dest, name=Path(filename).name)
    finally:
        os.unlink(tmp)
    record_owner(dest, owner)
    return dest, report


def build_dataset(
    name: str, classes: Iterable[tuple[str, Iterable[tuple[str, bytes]]]], owner: str | None = None
) -> tuple[Path, int, list]:
    """Write `(class name, [(file name, bytes), ...])` groups to `datasets_dir()/<name>/<class>/`.

    Every file is decoded first; files that are not usable images are left out and returned as
    `(class, file name, reason)`. Returns (dataset folder, images saved, bad files).
    """
    root = datasets_dir() / safe_name(name)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"a dataset named {root.name!r} already exists in the workspace; choose another name")
    saved, bad = 0, []
    for cls, files in classes:
        cdir = root / safe_name(cls, "class")
        for fname, data in files:
            try:
                load_image(data, name=fname)
            except ImageError as e:
                bad.append((cls, fname, e.reason))
                continue
            cdir.mkdir(parents=True, exist_ok=True)
            stem, suffix = Path(safe_name(Path(fname).stem, "image")), Path(fname).suffix.lower()
            suffix = suffix if suffix in IMAGE_EXTENSIONS else ".png"
            target, n = cdir / f"{stem}{suffix}", 1
            while target.exists():  # two uploads with the same name: keep both
                target, n = cdir / f"{stem}_{n}{suffix}", n + 1
            target.write_bytes(data)
            saved += 1
    if not saved:
        raise DatasetError("no usable images were given; drop images (JPEG, PNG, WebP, BMP, GIF, TIFF) per class")
    record_owner(root, owner)
    return root, saved, bad


def _owner_file(dataset: Path) -> Path:
    # Beside the datasets, in a hidden folder `workspace_datasets` skips: nothing is written into a dataset.
    return datasets_dir() / ".owners" / f"{dataset.name}.json"


def record_owner(dataset: str | Path, owner: str | None) -> None:
    """Remember who brought a workspace dataset in (kept if it already has an owner: a re-upload of the same
    bytes reuses the first uploader's folder)."""
    from classifier.io import atomic_write_json

    path = _owner_file(Path(dataset))
    if owner and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"owner": owner})


def dataset_owner(dataset: str | Path) -> str | None:
    """Who brought a workspace dataset in; None when unknown (made before owners were kept, or the demo)."""
    import json

    try:
        return json.loads(_owner_file(Path(dataset)).read_text(encoding="utf-8")).get("owner")
    except (OSError, ValueError, AttributeError):
        return None


def folder_bytes(path: str | Path) -> int:
    """Bytes of the regular files under `path` (links not followed), 0 when it is gone."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            total += st.st_size if not os.path.islink(os.path.join(dirpath, f)) else 0
    return total


def delete_dataset(dataset: str | Path, user: User) -> None:
    """Delete a workspace dataset: its owner or an admin only, and only a folder directly inside the workspace's
    datasets folder (never a server folder). It is moved into `workspace/trash/` first (one rename), then removed."""
    import shutil
    import time

    from classifier.access import check_owner

    root = datasets_dir().resolve()
    target = Path(dataset)
    if target.is_symlink() or target.resolve().parent != root or target.name.startswith("."):
        raise DatasetError(f"{dataset}: only datasets in the workspace can be deleted; nothing was deleted")
    if not target.is_dir():
        raise DatasetError(f"{dataset}: no such dataset in the workspace")
    check_owner(user, dataset_owner(target), "delete", f"dataset {target.name}")
    trash = workspace_dir() / "trash"
    trash.mkdir(exist_ok=True)
    moved = trash / f"dataset-{target.name}-{time.time_ns()}"
    os.replace(target.resolve(), moved)
    _owner_file(target).unlink(missing_ok=True)
    shutil.rmtree(moved, ignore_errors=True)


def allowed_data_root() -> Path | None:
    """The folder server-side datasets must live under (`CLASSIFIER_DATA_ROOT`), or None when not configured."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def resolve_server_folder(path: str) -> Path:
    """Resolve a user-typed server path; it must exist and lie inside the allowed root (symlinks resolved)."""
    root = allowed_data_root()
    if root is None:
        raise DatasetError(f"reading folders on the server is off; set {DATA_ROOT_ENV} to the folder that may be read")
    p = Path(path).expanduser()
    full = (p if p.is_absolute() else root / p).resolve()
    if not full.is_relative_to(root):
        raise DatasetError(f"{path}: not inside the allowed data folder {root}")
    if not full.exists():
        raise DatasetError(f"{path}: no such folder or file under {root}")
    return full
