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


def user_settings_path(user: str) -> Path:
    """`workspace/settings/<user>.json`: the settings a user last left in the app (their user name made file-safe)."""
    safe = "".join(c if c.isalnum() or c in "._@-" else "_" for c in user).lstrip(".") or "local"
    path = workspace_dir() / "settings"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{safe[:100]}.json"


def read_user_settings(user: str) -> dict:
    """The user's saved settings; {} when there are none or the file is unreadable (settings are a convenience)."""
    import json

    try:
        data = json.loads(user_settings_path(user).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_user_settings(user: str, settings: dict) -> None:
    from classifier.io import atomic_write_json

    atomic_write_json(user_settings_path(user), settings)
