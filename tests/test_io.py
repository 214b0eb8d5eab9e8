"""Atomic writes: all or nothing, and the finished file has a new file's permissions (not the temp file's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from classifier.io import FILE_MODE, atomic_write_json, atomic_write_text


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this process's umask
    for path in (atomic_write_text(tmp_path / "a.txt", "hello"), atomic_write_json(tmp_path / "b.json", {"a": 1})):
        assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode) == FILE_MODE


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    path = atomic_write_json(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"bad": float("nan")})  # allow_nan=False
    assert path.read_text() == '{\n  "ok": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
