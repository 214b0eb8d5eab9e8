"""Cached loaders: models per run (`st.cache_resource`, shared by all sessions) and tables (`st.cache_data`).

Table caches are keyed on a path plus a modification stamp, so a changed dataset or run is re-read, and the
executor is keyed on the workspace directory, so tests pointing `CLASSIFIER_WORKSPACE` elsewhere get their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from classifier import rundir
from classifier.data.dataset import DatasetIndex, index_dataset
from classifier.data.versions import DatasetVersions
from classifier.predict import LoadedRun, load_run
from classifier.rundir import ValPredictions, read_val_predictions
from classifier.workspace import workspace_dir


def stamp(path: str | Path) -> float:
    """Latest modification time of `path` and the folders directly inside it (class folders get new images)."""
    p = Path(path)
    try:
        times = [p.stat().st_mtime]
        if p.is_dir():
            times += [c.stat().st_mtime for c in p.iterdir() if c.is_dir()]
        return max(times)
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False)
def _executor(workspace: str) -> Any:
    from classifier.jobs import default_executor

    return default_executor()


def executor() -> Any:
    """The job executor of the current workspace as this session's user may use it (`GuardedExecutor`: their role,
    owners and quotas; the executor underneath is one per process and workspace)."""
    from classifier.jobs.guard import GuardedExecutor
    from ui.access import current_user

    return GuardedExecutor(_executor(str(workspace_dir().resolve())), current_user())


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _run(run_dir: str, mtime: float) -> LoadedRun:
    return load_run(run_dir)


def loaded_run(run_dir: str | Path) -> LoadedRun:
    """The run's model and evaluation transform, loaded once per run dir (and reloaded if the weights change)."""
    return _run(str(run_dir), file_mtime(rundir.weights_path(run_dir)))


@st.cache_data(show_spinner="Reading the dataset…", max_entries=8)
def _index(path: str, mtime: float) -> DatasetIndex:
    return index_dataset(path)


@st.cache_data(show_spinner=False, max_entries=16)
def _version(path: str, mtime: float, version: int) -> DatasetIndex:
    from classifier.data.dataset import apply_overlay

    overlay = DatasetVersions(path).get(version)
    return apply_overlay(_index(path, mtime), version, overlay.relabel, overlay.exclude, path)


def dataset_index(path: str | Path, version: int | None = None) -> DatasetIndex:
    """The dataset's index at `version` (None: the latest saved; 0: the files), every image decoded once, cached
    until the folder changes (a version's file never changes once saved)."""
    number = DatasetVersions(path).latest() if version is None else int(version)
    if number == 0:
        return _index(str(path), stamp(path))
    return _version(str(path), stamp(path), number)


@st.cache_data(show_spinner=False, max_entries=16)
def _val_predictions(run_dir: str, mtime: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], str]:
    from classifier.rundir import read_val_predictions

    vp = read_val_predictions(run_dir)
    return vp.table, vp.y_true, vp.probs, vp.class_names, vp.root


def val_predictions(run_dir: str | Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], str]:
    """(table, y_true indices, probabilities, class names, dataset root) from a run's (or a saved ensemble's)
    val_predictions.csv."""
    return _val_predictions(str(run_dir), file_mtime(rundir.path(run_dir, rundir.VAL_PREDICTIONS)))


@st.cache_data(show_spinner=False, max_entries=16)
def _run_predictions(run_dir: str, mtime: float, metrics_mtime: float) -> ValPredictions:
    return read_val_predictions(run_dir)


def run_predictions(run_dir: str | Path) -> ValPredictions:
    """A run's (or ensemble's) val_predictions.csv with its task and thresholds (metrics.json), re-read when either
    file changes."""
    stamps = (file_mtime(rundir.path(run_dir, name)) for name in (rundir.VAL_PREDICTIONS, rundir.METRICS))
    return _run_predictions(str(run_dir), *stamps)


def file_mtime(path: str | Path) -> float:
    """Modification time, 0 when the file is missing (a cache key that changes when the file appears)."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail(path: str, mtime: float, size: int) -> np.ndarray:
    from classifier.data.images import load_image

    image = load_image(path, draft_size=(size, size))
    image.thumbnail((size, size))
    return np.asarray(image)


def thumbnail(path: str | Path, size: int = 160) -> np.ndarray:
    """A small RGB array of the image at `path`, decoded with the workbench's safe loader (raises ImageError)."""
    return _thumbnail(str(path), file_mtime(path), size)


@st.cache_data(show_spinner=False, ttl=60)
def weights_offline(backbone: str) -> bool | None:
    """`classifier.models.pretrained_offline`, cached for a minute: it looks into the Hugging Face cache."""
    from classifier.models import pretrained_offline

    return pretrained_offline(backbone)
