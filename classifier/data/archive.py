"""Safe extraction of uploaded `.zip` datasets.

An uploaded archive is hostile until proven otherwise. `extract_zip` therefore:

- checks every entry name first and never writes outside a private temporary folder next to `dest`: absolute
  paths, drive letters, `..` components, symlinks and device/FIFO entries are refused (listed in the report);
- skips directory entries and OS junk (`__MACOSX/`, `.DS_Store`, `Thumbs.db`, `._*`);
- refuses names that collide once cleaned (also case-insensitively), so nothing is silently overwritten, and
  nested archives, which would dodge these checks;
- counts the bytes actually produced while streaming each member (the sizes in the zip headers are claims, not
  facts) and stops at the per-member, total and compression-ratio limits;
- moves the result into place only when everything succeeded; on any failure the temporary folder is removed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from classifier.errors import ArchiveError

CHUNK = 1024 * 1024
# Below this many produced bytes a member's compression ratio is not checked: small text and flat images
# legitimately compress far better than 200:1.
RATIO_GRACE_BYTES = 1024 * 1024

JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".7z", ".rar", ".zst")
# Leading bytes of archive formats, so a renamed archive ("photo.jpg" that is a zip) is caught too.
ARCHIVE_MAGIC = (
    b"PK\x03\x04",  # zip
    b"PK\x05\x06",  # empty zip
    b"PK\x07\x08",  # spanned zip
    b"\x1f\x8b",  # gzip
    b"7z\xbc\xaf\x27\x1c",  # 7-Zip
    b"Rar!\x1a\x07",  # RAR
    b"\xfd7zXZ\x00",  # xz
    b"\x28\xb5\x2f\xfd",  # zstd
)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits for one archive; the ratio (uncompressed/compressed) applies to members larger than 1 MiB."""

    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = 200 * 1024**2
    max_ratio: float = 200.0


@dataclass
class ExtractReport:
    """What `extract_zip` did: where the files are, how many, and which entries it refused and why."""

    root: Path
    files: int = 0
    bytes: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


def format_bytes(n: int | float) -> str:
    """Human-readable size in binary units: "512 B", "512 KB", "3.2 MB", "1.0 GB"."""
    if n < 1024:
        return f"{int(n)} B"
    if n < 1024**2:
        return f"{n / 1024:.0f} KB"
    for unit, scale in (("MB", 1024**2), ("GB", 1024**3)):
        if n < 1024 * scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024**4:.1f} TB"


def check_upload_size(path_or_size: int | str | os.PathLike, max_bytes: int) -> None:
    """Raise `ArchiveError` when an upload (a file, or a size in bytes) is larger than `max_bytes`."""
    if isinstance(path_or_size, int):
        size = path_or_size
    else:
        try:
            size = Path(path_or_size).stat().st_size
        except OSError as e:
            raise ArchiveError(f"{path_or_size}: cannot read the upload ({e.strerror or e})") from None
    if size > max_bytes:
        raise ArchiveError(
            f"upload is {format_bytes(size)}; the limit is {format_bytes(max_bytes)}. "
            "Upload a smaller archive (e.g. fewer or downscaled images) or point to a local folder instead."
        )


@dataclass
class _Member:
    info: zipfile.ZipInfo
    target: str  # cleaned relative path, '/'-separated


def extract_zip(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    limits: ArchiveLimits = ArchiveLimits(),
    name: str | None = None,
) -> ExtractReport:
    """Extract `archive` into `dest` (which must not exist yet, or be an empty folder) within `limits`.

    Unsafe entries are skipped and listed in `ExtractReport.refused`; everything else that is wrong (not a zip,
    colliding names, nested archives, limits exceeded, corrupt data) raises `ArchiveError` and leaves no trace.
    Errors name the archive as `name` (an upload's own file name rather than the temp file it was saved to).
    """
    archive, dest = Path(archive), Path(dest)
    where = name or archive.name or str(archive)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(
            f"{where}: cannot extract into {dest}: it already exists and is not empty; choose a new folder"
        )
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise ArchiveError(f"{where}: file not found ({archive})") from None
    except Exception:  # noqa: BLE001 - zipfile reports a damaged central directory in many ways
        raise ArchiveError(
            f"{where} is not a valid .zip archive; re-create it as a standard .zip and upload again"
        ) from None
    with zf:
        members, refused = _plan(zf, where, limits)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            total = 0
            for m in members:
                total += _extract_member(zf, m, tmp, where, limits, total)
            os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the dataset folder should look like any other
            if dest.exists():
                dest.rmdir()  # empty (checked above); a directory cannot be renamed over another on every OS
            os.replace(tmp, dest)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, ArchiveError) or not isinstance(e, Exception):
                raise
            raise ArchiveError(f"{where}: extraction failed ({_describe(e)}); check the archive and try again") from e
    return ExtractReport(root=dest, files=len(members), bytes=total, refused=refused)


def _plan(zf: zipfile.ZipFile, where: str, limits: ArchiveLimits) -> tuple[list[_Member], list[tuple[str, str]]]:
    """Check every entry before anything is written: what to extract, and what was refused and why."""
    infos = zf.infolist()
    # Directory entries and junk don't count towards max_members, but a wildly larger raw count is refused
    # outright so the per-entry work below stays bounded.
    if len(infos) > 10 * limits.max_members:
        raise _too_many(where, len(infos), "entries", limits)
    members: list[_Member] = []
    refused: list[tuple[str, str]] = []
    seen: dict[str, str] = {}  # collision key -> original entry name
    declared = 0
    for info in infos:
        name = info.filename
        parts, problem = _clean(info)
        if problem:
            refused.append((name, problem))
            continue
        if not parts or _is_junk(parts):
            continue
        target = "/".join(parts)
        if target.lower().endswith(ARCHIVE_SUFFIXES):
            raise _nested(where, name)
        if info.flag_bits & 0x1:
            raise ArchiveError(
                f"{where}: {name} is password-protected; re-create the archive without a password and upload again"
            )
        key = _key(target)
        if key in seen:
            raise ArchiveError(
                f"{where}: entries {seen[key]!r} and {name!r} would be extracted to the same file "
                "(names differ only in case, slashes or '.' parts); rename one of them and re-create the archive"
            )
        seen[key] = name
        members.append(_Member(info, target))
        declared += info.file_size
        # Claimed sizes can only be lies in the "too small" direction that matters (streaming catches those);
        # claims that already exceed a limit fail fast, before anything is written.
        _check_member_size(where, name, info.file_size, info.compress_size, limits)
        if declared > limits.max_total_bytes:
            raise _too_big(where, limits)
    if len(members) > limits.max_members:
        raise _too_many(where, len(members), "files", limits)
    # A file and a folder with the same name ('a' and 'a/b.png') cannot both exist on disk.
    folders = {_key("/".join(m.target.split("/")[:i])) for m in members for i in range(1, m.target.count("/") + 1)}
    for m in members:
        if _key(m.target) in folders:
            raise ArchiveError(
                f"{where}: {m.info.filename!r} is both a file and a folder in this archive; rename one and re-create it"
            )
    return members, refused


def _clean(info: zipfile.ZipInfo) -> tuple[list[str], str | None]:
    """Split an entry name into safe path parts, or say why it is refused. Directories yield no parts."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        return [], "symbolic link"
    if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        return [], "special file (device, FIFO or socket)"
    if name.startswith("/"):
        return [], "absolute path"
    if _DRIVE.match(name):
        return [], "drive letter in path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return [], "path traversal ('..' in path)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return [], "control character in name"
    if name.endswith("/") or kind == stat.S_IFDIR:
        return [], None  # directory entry: folders are created as files need them
    return parts, None


def _is_junk(parts: list[str]) -> bool:
    """macOS resource forks and Finder/Explorer metadata, which are never dataset content."""
    base = parts[-1]
    return "__MACOSX" in parts or base.lower() in JUNK_NAMES or base.startswith("._")


def _key(path: str) -> str:
    """Collision key: case-insensitive and Unicode-normalised, as on macOS and Windows file systems."""
    return unicodedata.normalize("NFC", path).casefold()


def _extract_member(zf: zipfile.ZipFile, m: _Member, root: Path, where: str, limits: ArchiveLimits, total: int) -> int:
    """Stream one member to `root/m.target`, counting produced bytes against the limits; returns its size."""
    out = root.joinpath(*m.target.split("/"))
    out.parent.mkdir(parents=True, exist_ok=True)
    produced = 0
    with zf.open(m.info) as src, open(out, "xb") as dst:  # "x": never overwrite, whatever the file system
        while chunk := src.read(CHUNK):
            if produced == 0 and chunk.startswith(ARCHIVE_MAGIC):
                raise _nested(where, m.info.filename)
            produced += len(chunk)
            if total + produced > limits.max_total_bytes:
                raise _too_big(where, limits)
            _check_member_size(where, m.info.filename, produced, m.info.compress_size, limits)
            dst.write(chunk)
    return produced


def _check_member_size(where: str, name: str, size: int, compressed: int, limits: ArchiveLimits) -> None:
    if size > limits.max_member_bytes:
        raise ArchiveError(
            f"{where}: member {name!r} expands beyond the {format_bytes(limits.max_member_bytes)} per-file limit; "
            "remove or shrink it and re-create the archive"
        )
    if size > RATIO_GRACE_BYTES and size / max(compressed, 1) > limits.max_ratio:
        raise ArchiveError(
            f"{where}: compression ratio of member {name!r} exceeds {limits.max_ratio:g}:1 (possible zip bomb); "
            "the archive was not extracted"
        )


def _too_big(where: str, limits: ArchiveLimits) -> ArchiveError:
    return ArchiveError(
        f"{where}: archive expands beyond the {format_bytes(limits.max_total_bytes)} limit; "
        "upload a smaller dataset (fewer or downscaled images)"
    )


def _too_many(where: str, count: int, what: str, limits: ArchiveLimits) -> ArchiveError:
    return ArchiveError(
        f"{where}: archive has {count:,} {what}, more than the limit of {limits.max_members:,} files; "
        "upload a smaller dataset"
    )


def _nested(where: str, name: str) -> ArchiveError:
    return ArchiveError(f"{where}: nested archives are not supported: {name}; extract it and upload the inner archive")


def _describe(e: Exception) -> str:
    """Short words for the ways a member can fail to decompress or be written."""
    if isinstance(e, NotImplementedError):
        return "unsupported compression method"
    if isinstance(e, zipfile.BadZipFile):
        return f"corrupt archive data: {e}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}"
    return f"corrupt archive data: {type(e).__name__}: {e}"
