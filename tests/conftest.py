"""Shared fixtures: a temporary workspace for every test, and small generated datasets."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _session_workspace(tmp_path_factory):
    """A workspace for session- and module-scoped fixtures that train (they run before the per-test one is set),
    so no test writes into the checkout's ./workspace."""
    old = os.environ.get("CLASSIFIER_WORKSPACE")
    os.environ["CLASSIFIER_WORKSPACE"] = str(tmp_path_factory.mktemp("session-workspace"))
    yield
    if old is None:
        os.environ.pop("CLASSIFIER_WORKSPACE", None)
    else:
        os.environ["CLASSIFIER_WORKSPACE"] = old


@pytest.fixture(autouse=True)
def _no_orphans():
    """After each test, kill any training or search process it started and left behind (a failing test must not
    leave one running into the next)."""
    yield
    launcher = sys.modules.get("classifier.jobs.launcher")
    if launcher is None:
        return
    for proc in launcher.children():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    launcher.forget_all()


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_WORKSPACE", str(tmp_path / "workspace"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset (5 classes x 16 images, 64 px) with masks, made once per test session."""
    from classifier.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "data", n_per_class=16, size=64, seed=1, masks_out=root / "masks")
    return root / "data"


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished simple_cnn runs on the same 3-class data and split: 32 px lr 1e-3 (1 epoch) and 40 px lr 3e-3
    (2 epochs), so they differ in settings and in their evaluation transforms. Copy them before changing them."""
    from classifier.data.demo import make_demo_dataset
    from classifier.training import TrainConfig, fit

    root = tmp_path_factory.mktemp("two_runs")
    data = make_demo_dataset(root / "data", n_per_class=10, size=32, seed=3, classes=("circle", "square", "cross"))
    runs = []
    settings = {"run_a": {"img_size": 32, "lr": 1e-3, "epochs": 1}, "run_b": {"img_size": 40, "lr": 3e-3, "epochs": 2}}
    for name, kw in settings.items():
        cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", batch_size=8, num_workers=0, **kw)
        runs.append(fit(cfg, root / name).run_dir)
    return runs[0], runs[1]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test file: a sync Playwright keeps an event loop running on the main
    thread for as long as it is open, so a second one in the same session could not start."""
    from live_app import CHROMIUM, CHROMIUM_ARGS, require_chromium

    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright for Python")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
