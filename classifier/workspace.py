"""Where runs, extracted datasets and the run store live: one directory, `./workspace` by default.

Set `CLASSIFIER_WORKSPACE` to move it (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CLASSIFIER_WORKSPACE"


def workspace_dir() -> Path:
    path = Path(os.environ.get(ENV_VAR, "workspace")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    path = workspace_dir() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = workspace_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Derived files that can be rebuilt at any time: decoded images, frozen features, ONNX exports."""
    path = workspace_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
