"""Environment variables set for a while: what child processes launched meanwhile (torchrun ranks, a job submitted
to another executor) inherit, restored afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environ(changes: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `changes` inside the block, exactly as before it afterwards (unset stays unset)."""
    old = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
