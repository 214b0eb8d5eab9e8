"""Atomic file writes: write a temp file in the same directory, fsync, then `os.replace`.

A reader (or a process killed mid-write) sees either the old file or the new one, never half of one. `csv_text` is
the one CSV writer.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # what open() gives a new file: run files, reports, exports


def atomic_write_via(path: str | Path, write: Callable[[str], None]) -> Path:
    """`write(tmp)` writes the content to the temp file path it is given; then fsync and `os.replace`. For writers
    that need a path (numpy, safetensors, image encoders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # shareable like any new file, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_via(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_via(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False, default=_jsonable) + "\n")


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_via(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with a header row, "\n" line ends, and quotes only where a field needs them. The one CSV writer for
    files the package writes (run files, exports), so quoting is the same everywhere."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets treat as the start of a formula


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text instead of running it: text starting with = + - @ (or a tab or
    carriage return) gets a leading apostrophe, as OWASP advises for CSV injection; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf turned into None (they are not JSON) and numpy/torch scalars into plain numbers,
    recursively through dicts, lists and tuples: for files and rows any JSON reader can read."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return json_safe(value.item())
    return value


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
