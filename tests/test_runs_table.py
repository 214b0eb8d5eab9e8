"""The Runs page's table (`classifier.jobs.catalogue.table`): the image size a run was built with instead of None, a
column per setting that differs between the listed runs, and a running run's latest accuracy and progress."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from classifier import rundir
from classifier.jobs.catalogue import table
from classifier.jobs.executor import JobStatus
from classifier.training import TrainConfig


def _entry(tmp_path: Path, run_id: str, status: str, built_side: int | None = None, **settings) -> JobStatus:
    """A catalogue entry for a run requested with `settings`; `built_side`: its config.json says the model was
    built for that input side (None: no config.json yet, as for a queued run)."""
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    cfg = TrainConfig(data="demo", backbone="resnet18", **settings).to_dict()
    if built_side:
        rundir.write_config(run_dir, {"data_config": {"input_size": [3, built_side, built_side]}, "train": cfg})
    progress = {"fraction": 0.4, "epoch": 2, "epochs": 5} if status == "running" else {}
    metrics = {"accuracy": 0.9, "macro_f1": 0.88} if status == "completed" else None
    return JobStatus(run_id, run_id, status, progress, None, run_dir, time.time(), None, None, metrics, cfg)


class History:
    def __init__(self, rows: dict[str, list[dict]]):
        self.rows = rows

    def history(self, run_id: str) -> list[dict]:
        return self.rows.get(run_id, [])


def test_image_size_is_what_the_model_was_built_with(tmp_path) -> None:
    listing = [
        _entry(tmp_path, "done", "completed", built_side=224),  # requested None: the backbone's default
        _entry(tmp_path, "asked", "queued", img_size=96),  # not started: the requested size
        _entry(tmp_path, "unknown", "queued"),  # not started, backbone default: not known yet
    ]
    df = table(listing).set_index("run")
    assert df.loc["done", "img size"] == 224 and df.loc["asked", "img size"] == 96
    assert pd.isna(df.loc["unknown", "img size"])  # the page shows "—"


def test_settings_that_differ_become_columns(tmp_path) -> None:
    listing = [
        _entry(tmp_path, "a", "completed", built_side=64, lr=0.00031622776601683794, augment="light", num_workers=0),
        _entry(tmp_path, "b", "completed", built_side=64, lr=0.003, augment="strong", num_workers=2),
        _entry(tmp_path, "c", "completed", built_side=64, lr=0.003, augment="light", num_workers=0),
    ]
    df = table(listing)
    assert df.attrs["settings"] == ["augmentation", "learning rate"]  # workers never change a result
    by_run = df.set_index("run")
    assert by_run["learning rate"].tolist() == [0.00031622776601683794, 0.003, 0.003]  # numbers stay sortable
    assert by_run["augmentation"].tolist() == ["light", "strong", "light"]
    assert table(listing[:1]).attrs["settings"] == []  # one run: nothing differs


def test_a_running_run_shows_its_latest_accuracy_and_progress(tmp_path) -> None:
    listing = [_entry(tmp_path, "live", "running", built_side=32), _entry(tmp_path, "done", "completed")]
    rows = {"live": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.625}]}
    df = table(listing, executor=History(rows)).set_index("run")
    assert df.loc["live", "accuracy"] == 0.625 and df.loc["live", "progress"] == 0.4
    assert df.loc["done", "accuracy"] == 0.9 and df.loc["done", "progress"] == 1.0
    assert table(listing).set_index("run")["accuracy"].isna()["live"]  # without an executor: not guessed


def test_a_run_that_lacks_a_setting_adds_no_column(tmp_path) -> None:
    """A partial config (a row from an older version, or one that failed before it was resolved) lacks most keys:
    only values that really differ make columns."""
    listing = [_entry(tmp_path, "a", "completed", lr=1e-3), _entry(tmp_path, "b", "completed", lr=1e-2)]
    partial = _entry(tmp_path, "old", "failed")
    partial.config = {"backbone": "resnet18", "lr": 0.1}
    assert table([*listing, partial]).attrs["settings"] == ["learning rate"]
