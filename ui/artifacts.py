"""Run downloads for the Runs page: a run's files zipped in memory. No streamlit here (it could live in classifier)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

RUN_FILES = ("config.json", "model.safetensors", "metrics.json", "history.csv", "split.csv", "val_predictions.csv")


def run_zip(run_dir: str | Path, folder: str | None = None) -> bytes:
    """The run's files (model, config, metrics, history, split, predictions) as one zip under `folder/`."""
    run_dir = Path(run_dir)
    folder = folder or run_dir.name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                zf.write(run_dir / name, f"{folder}/{name}")
    return buf.getvalue()
