"""Packages whose public names load on first use (PEP 562), so importing the package stays cheap.

`classifier.training` and `classifier.explain` use it: the CLI builds its parser from their light modules (the
config's field metadata, the attribution registry) and must not import torch for that. Each such package also
imports the same names under `TYPE_CHECKING`, so type checkers and the import-graph test see its dependencies;
tests/test_layers.py checks that the two lists agree.

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"fit": "run"})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, owners: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public name N lives in submodule `owners[N]`."""

    def __getattr__(name: str) -> Any:
        owner = owners.get(name)
        if owner is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{owner}"), name)
        setattr(sys.modules[package], name, value)  # found directly next time
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(owners))

    return __getattr__, __dir__
