"""Tests for classifier.data.archive: unsafe names, collisions, nested archives, size/ratio limits, cleanup."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

from classifier.data.archive import (
    ArchiveLimits,
    ExtractReport,
    check_upload_size,
    extract_zip,
    format_bytes,
)
from classifier.errors import ArchiveError, DatasetError

MiB = 1024 * 1024


def make_zip(path: Path, entries: dict[str, bytes] | list, *, method: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write a zip; entries are name -> bytes, or (ZipInfo, bytes) pairs for special headers."""
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return path


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def partials(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def assert_failed_cleanly(dest: Path) -> None:
    """No destination and no leftover temporary folder next to it."""
    assert not dest.exists()
    assert partials(dest.parent) == []


def random_bytes(n: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_happy_path_with_class_folders(tmp_path):
    archive = make_zip(
        tmp_path / "data.zip",
        {
            "cats/": b"",
            "cats/a.png": b"cat-a",
            "cats/sub/b.jpg": b"cat-b",
            "dogs/c.png": b"dog-c" * 100,
        },
    )
    dest = tmp_path / "out"
    report = extract_zip(archive, dest)
    assert isinstance(report, ExtractReport)
    assert report.root == dest and report.files == 3 and report.bytes == 5 + 5 + 500
    assert report.refused == []
    assert tree(dest) == {"cats", "cats/a.png", "cats/sub", "cats/sub/b.jpg", "dogs", "dogs/c.png"}
    assert (dest / "dogs" / "c.png").read_bytes() == b"dog-c" * 100
    assert set(os.listdir(tmp_path)) == {"data.zip", "out"}


def test_wrapping_folder_kept_and_empty_dest_dir_accepted(tmp_path):
    archive = make_zip(tmp_path / "data.zip", {"dataset/cats/a.png": b"1", "dataset/dogs/b.png": b"2"})
    dest = tmp_path / "out"
    dest.mkdir()
    extract_zip(archive, str(dest))
    assert tree(dest) == {"dataset", "dataset/cats", "dataset/cats/a.png", "dataset/dogs", "dataset/dogs/b.png"}


def test_non_empty_dest_refused(tmp_path):
    archive = make_zip(tmp_path / "data.zip", {"a/x.png": b"1"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty"):
        extract_zip(archive, dest)
    assert tree(dest) == {"keep.txt"}


def test_unsafe_entries_refused_and_nothing_written_outside(tmp_path):
    symlink = zipfile.ZipInfo("cats/link.png")
    symlink.create_system = 3
    symlink.external_attr = 0o120777 << 16
    fifo = zipfile.ZipInfo("cats/pipe.png")
    fifo.create_system = 3
    fifo.external_attr = 0o010644 << 16
    entries = [
        ("cats/ok.png", b"ok"),
        ("../evil.png", b"evil"),
        ("cats/../../evil2.png", b"evil"),
        ("..\\evil3.png", b"evil"),
        ("/abs.png", b"evil"),
        ("C:/x.png", b"evil"),
        ("C:\\y.png", b"evil"),
        ("d:z.png", b"evil"),
        (symlink, "../../../etc/passwd"),
        (fifo, b""),
    ]
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(tmp_path / "evil.zip", entries)
    dest = work / "out"
    report = extract_zip(archive, dest)
    assert tree(dest) == {"cats", "cats/ok.png"}
    assert os.listdir(work) == ["out"]
    assert set(os.listdir(tmp_path)) == {"evil.zip", "work"}
    reasons = dict(report.refused)
    assert set(reasons) == {name if isinstance(name, str) else name.filename for name, _ in entries[1:]}
    assert "traversal" in reasons["../evil.png"] and "traversal" in reasons["cats/../../evil2.png"]
    assert "traversal" in reasons["..\\evil3.png"]
    assert reasons["/abs.png"] == "absolute path"
    assert "drive letter" in reasons["C:/x.png"] and "drive letter" in reasons["C:\\y.png"]
    assert reasons["cats/link.png"] == "symbolic link"
    assert "special file" in reasons["cats/pipe.png"]


def test_backslashes_and_dot_parts_are_normalised(tmp_path):
    archive = make_zip(tmp_path / "win.zip", {"cats\\a.png": b"1", "./dogs//b.png": b"2"})
    dest = tmp_path / "out"
    report = extract_zip(archive, dest)
    assert report.files == 2
    assert tree(dest) == {"cats", "cats/a.png", "dogs", "dogs/b.png"}


def test_junk_and_directories_skipped(tmp_path):
    archive = make_zip(
        tmp_path / "mac.zip",
        {
            "cats/": b"",
            "cats/a.png": b"1",
            "__MACOSX/": b"",
            "__MACOSX/cats/._a.png": b"fork",
            "cats/._b.png": b"fork",
            "cats/.DS_Store": b"x",
            "dogs/Thumbs.db": b"x",
            "dogs/c.png": b"2",
        },
    )
    dest = tmp_path / "out"
    report = extract_zip(archive, dest)
    assert report.files == 2 and report.refused == []
    assert tree(dest) == {"cats", "cats/a.png", "dogs", "dogs/c.png"}


@pytest.mark.parametrize(
    ("first", "second"),
    [("a/x.png", "a\\x.png"), ("a/./x.png", "a/x.png"), ("A/x.png", "a/X.png"), ("a/x.png", "a//x.png")],
)
def test_colliding_names_refused(tmp_path, first, second):
    archive = make_zip(tmp_path / "dup.zip", [(first, b"1"), (second, b"2")])
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as e:
        extract_zip(archive, dest)
    assert repr(first) in str(e.value) and repr(second) in str(e.value)
    assert "dup.zip" in str(e.value)
    assert_failed_cleanly(dest)


def test_file_and_folder_with_same_name_refused(tmp_path):
    archive = make_zip(tmp_path / "clash.zip", {"cats": b"file", "Cats/a.png": b"1"})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="both a file and a folder"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


@pytest.mark.parametrize("name", ["cats/inner.zip", "cats/more.tar.gz", "x.7z", "y.RAR"])
def test_nested_archive_by_extension(tmp_path, name):
    archive = make_zip(tmp_path / "outer.zip", {"cats/a.png": b"1", name: b"whatever"})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=f"nested archives are not supported: {name}; extract it"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


def test_nested_archive_by_magic_bytes(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.png", b"1")
    archive = make_zip(tmp_path / "outer.zip", {"cats/a.png": b"1", "cats/photo.jpg": inner.getvalue()})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="nested archives are not supported: cats/photo.jpg"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


def test_not_a_zip_and_missing_file(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_bytes(random_bytes(2048))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"data.zip is not a valid \.zip archive"):
        extract_zip(bogus, dest)
    assert_failed_cleanly(dest)
    with pytest.raises(ArchiveError, match="not found"):
        extract_zip(tmp_path / "missing.zip", dest)
    assert issubclass(ArchiveError, DatasetError)


def test_total_size_limit(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 * MiB)})
    assert archive.stat().st_size < 200_000
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"archive expands beyond the 5\.0 MB limit"):
        extract_zip(archive, dest, ArchiveLimits(max_total_bytes=5 * MiB, max_ratio=1e9))
    assert_failed_cleanly(dest)


def test_total_size_limit_across_members(tmp_path):
    archive = make_zip(
        tmp_path / "many.zip", {f"c/{i}.bin": random_bytes(2 * MiB, i) for i in range(3)}, method=zipfile.ZIP_STORED
    )
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="5.0 MB limit"):
        extract_zip(archive, dest, ArchiveLimits(max_total_bytes=5 * MiB))
    assert_failed_cleanly(dest)


def test_compression_ratio_limit(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"ok/small.txt": bytes(512 * 1024), "a/zeros.bmp": bytes(3 * MiB)})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"compression ratio of member 'a/zeros.bmp' exceeds 200:1 \(possible zip"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)
    # The same small, very compressible member alone is fine: the ratio only applies above 1 MiB.
    ok = make_zip(tmp_path / "ok.zip", {"ok/small.txt": bytes(512 * 1024)})
    assert extract_zip(ok, dest).bytes == 512 * 1024


def test_member_size_limit(tmp_path):
    archive = make_zip(tmp_path / "big.zip", {"a/big.png": random_bytes(2 * MiB)}, method=zipfile.ZIP_STORED)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"'a/big.png' expands beyond the 1\.0 MB per-file limit"):
        extract_zip(archive, dest, ArchiveLimits(max_member_bytes=MiB))
    assert_failed_cleanly(dest)


def test_member_count_limit(tmp_path):
    limits = ArchiveLimits(max_members=10)
    too_many = make_zip(tmp_path / "many.zip", {f"c/{i}.png": b"x" for i in range(11)})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="11 files, more than the limit of 10"):
        extract_zip(too_many, dest, limits)
    assert_failed_cleanly(dest)
    # Folders and macOS junk don't count as files.
    entries = {f"c/{i}.png": b"x" for i in range(10)} | {"c/": b"", "__MACOSX/c/._0.png": b"", "c/.DS_Store": b""}
    assert extract_zip(make_zip(tmp_path / "ten.zip", entries), dest, limits).files == 10


def patch_central_sizes(path: Path, member: str, file_size: int) -> None:
    """Overwrite the uncompressed size a zip's central directory claims for `member`."""
    data = bytearray(path.read_bytes())
    start = 0
    while True:
        header = data.index(b"PK\x01\x02", start)
        name_len = struct.unpack_from("<H", data, header + 28)[0]
        if data[header + 46 : header + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, header + 24, file_size)
            break
        start = header + 4
    path.write_bytes(bytes(data))


def test_lying_central_directory_size_cannot_expand_unnoticed(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"a/ok.png": b"1", "a/zeros.png": bytes(20 * MiB)})
    patch_central_sizes(archive, "a/zeros.png", 1000)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("a/zeros.png").file_size == 1000  # the lie is what zipfile reports
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="liar.zip"):
        extract_zip(archive, dest, ArchiveLimits(max_total_bytes=5 * MiB, max_ratio=1e9))
    assert_failed_cleanly(dest)


def test_sizes_are_counted_from_produced_bytes(tmp_path, monkeypatch):
    # The headers say 10 bytes; the stream yields 3 MiB. Only counting while streaming can notice.
    archive = make_zip(tmp_path / "liar.zip", {"a/x.png": b"0123456789"}, method=zipfile.ZIP_STORED)
    real_open = zipfile.ZipFile.open

    def open_more(self, info, *args, **kwargs):
        if getattr(info, "filename", info) == "a/x.png":
            return io.BytesIO(random_bytes(3 * MiB))
        return real_open(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_more)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="per-file limit"):
        extract_zip(archive, dest, ArchiveLimits(max_member_bytes=MiB, max_ratio=1e9))
    assert_failed_cleanly(dest)
    with pytest.raises(ArchiveError, match=r"2\.0 MB limit"):
        extract_zip(archive, dest, ArchiveLimits(max_total_bytes=2 * MiB, max_ratio=1e9))
    assert_failed_cleanly(dest)
    with pytest.raises(ArchiveError, match="possible zip bomb"):  # 3 MiB out of a 10-byte member
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


def test_corrupt_member_data_cleans_up(tmp_path):
    payload = random_bytes(64 * 1024)
    archive = make_zip(tmp_path / "bad.zip", {"a/first.png": b"fine", "a/x.png": payload}, method=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = data.index(payload[:32])
    data[at + 1000 : at + 1010] = b"\x00" * 10  # CRC no longer matches
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="bad.zip: extraction failed"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


def test_encrypted_member_refused(tmp_path):
    archive = make_zip(tmp_path / "secret.zip", {"a/x.png": b"data"})
    data = bytearray(archive.read_bytes())
    # zipfile cannot write encrypted entries; set the "encrypted" flag bit in the local and central headers.
    data[data.index(b"PK\x03\x04") + 6] |= 0x1
    data[data.index(b"PK\x01\x02") + 8] |= 0x1
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("a/x.png").flag_bits & 0x1
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="password"):
        extract_zip(archive, dest)
    assert_failed_cleanly(dest)


def test_format_bytes_and_upload_size(tmp_path):
    assert format_bytes(0) == "0 B"
    assert format_bytes(512 * 1024) == "512 KB"
    assert format_bytes(1024**3) == "1.0 GB"
    assert format_bytes(3.2 * 1024**3) == "3.2 GB"
    assert format_bytes(200 * MiB) == "200.0 MB"
    with pytest.raises(ArchiveError, match=r"^upload is 3\.2 GB; the limit is 1\.0 GB"):
        check_upload_size(int(3.2 * 1024**3), 1024**3)
    check_upload_size(1024**3, 1024**3)
    upload = tmp_path / "up.zip"
    upload.write_bytes(b"x" * 2048)
    check_upload_size(upload, 4096)
    with pytest.raises(ArchiveError, match="upload is 2 KB; the limit is 1 KB"):
        check_upload_size(str(upload), 1024)
