"""Shared fixtures: a temporary workspace for every test, and small generated datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


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
