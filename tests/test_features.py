"""The frozen-feature cache: a second linear probe, the LR finder and a changed image reuse what they can; anything
the features depend on (weights, preprocessing) gives a new key; the head does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.data.features import cached_features, feature_identity, weights_digest
from classifier.training import TrainConfig, fit
from classifier.workspace import cache_dir

SETTINGS = dict(backbone="resnet18", weights="none", mode="linear", img_size=32, batch_size=8, epochs=2,
                num_workers=0, device="cpu", seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("feat") / "data", n_per_class=6, size=32, seed=4,
                             classes=("circle", "square", "cross"))  # fmt: skip


def _runtime(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["runtime"]


def test_second_linear_probe_reuses_every_feature_and_trains_the_same(data, tmp_path):
    first = fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "a")
    second = fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "b")
    n = 18  # 3 classes x 6 images, train and validation
    assert _runtime(tmp_path / "a")["features"] == {"computed": n, "reused": 0}
    assert _runtime(tmp_path / "b")["features"] == {"computed": 0, "reused": n}
    timing = ("seconds", "images_per_sec", "data_share")
    assert [{k: v for k, v in r.items() if k not in timing} for r in first.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in second.history
    ]
    assert (tmp_path / "a" / "val_predictions.csv").read_text() == (tmp_path / "b" / "val_predictions.csv").read_text()


def test_changed_image_is_recomputed_and_other_settings_get_their_own_features(data, tmp_path):
    fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "a")
    image = sorted(data.rglob("*.png"))[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "changed" since: computed again
    fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "b")
    assert _runtime(tmp_path / "b")["features"] == {"computed": 1, "reused": 17}
    fit(TrainConfig(data=str(data), **{**SETTINGS, "img_size": 40}), tmp_path / "c")  # another input size
    assert _runtime(tmp_path / "c")["features"] == {"computed": 18, "reused": 0}
    fit(TrainConfig(data=str(data), **{**SETTINGS, "seed": 1}), tmp_path / "d")  # other random weights
    assert _runtime(tmp_path / "d")["features"]["computed"] == 18


def test_lr_finder_starts_from_the_features_a_run_computed(data, tmp_path, monkeypatch):
    from classifier.training import setup as setup_mod
    from classifier.training.lr_find import lr_find

    fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "a")
    calls = []
    real = setup_mod.TrainingSetup._features
    monkeypatch.setattr(
        setup_mod.TrainingSetup, "_features", lambda self, ds, p: calls.append(len(ds)) or real(self, ds, p)
    )
    phases = []
    result = lr_find(TrainConfig(data=str(data), **SETTINGS), steps=5, progress=lambda ph, d, t: phases.append(ph))
    assert len(result.lrs) == 5 and calls == [] and "features" in phases


def test_weights_digest_ignores_the_head_but_not_the_backbone():
    import timm

    torch.manual_seed(0)
    a = timm.create_model("resnet18", num_classes=3)
    b = timm.create_model("resnet18", num_classes=3)
    b.load_state_dict(a.state_dict())
    torch.nn.init.normal_(b.get_classifier().weight)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.conv1.weight[0, 0, 0, 0] += 1e-3
    assert weights_digest(a) != weights_digest(b)
    cfg = {
        "input_size": (3, 32, 32),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    assert feature_identity(a, cfg, grayscale=False) != feature_identity(a, cfg, grayscale=True)


def test_a_torn_pair_is_ignored_and_rewritten(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(bytes([i]))
    computed = []

    def compute(idx):
        computed.append(list(idx))
        return torch.tensor([[float(i), 2.0 * i] for i in idx])

    first = cached_features(paths, {"k": 1}, compute)
    assert first.computed == 3 and torch.equal(first.features[:, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert cached_features(paths[1:], {"k": 1}, compute).reused == 2
    [npy] = (cache_dir() / "features").glob("*.npy")
    np.save(npy, np.zeros((1, 2), dtype=np.float32))  # the data no longer matches its index
    again = cached_features(paths, {"k": 1}, compute)
    assert again.computed == 3 and computed[-1] == [0, 1, 2]
    assert torch.equal(again.features, first.features)
