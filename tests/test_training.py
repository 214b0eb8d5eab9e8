"""The fit loop: learning beats chance, callbacks fire, cancel, early stopping, outputs are complete and atomic."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from classifier.errors import RunError
from classifier.training import Callback, TrainConfig, fit, lr_at
from classifier.training.events import NonFiniteLoss


def _cfg(data, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        backbone="simple_cnn",
        weights="none",
        img_size=48,
        epochs=2,
        batch_size=16,
        num_workers=0,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, s):
        self.events.append("fit_start")

    def on_epoch_start(self, s):
        self.events.append("epoch_start")

    def on_batch_end(self, s):
        self.events.append("batch")
        assert s.images_per_sec > 0 and s.eta_seconds is not None and math.isfinite(s.loss)

    def on_epoch_end(self, s):
        self.events.append("epoch_end")

    def on_fit_end(self, s):
        self.events.append("fit_end")


@pytest.mark.slow
def test_linear_probe_on_bundled_features_beats_chance(demo_dir, tmp_path):
    result = fit(
        _cfg(
            demo_dir, backbone="efficientnet_lite0", weights=None, mode="linear", augment="none", img_size=96, epochs=30
        ),
        tmp_path / "run",
    )
    assert result.status == "completed"
    # 5 classes: chance is 0.2. Frozen ImageNet features separate these shapes far better than that.
    assert result.metrics["accuracy"] >= 0.5, result.metrics["accuracy"]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["timm_name"] == "tf_efficientnet_lite0" and cfg["weights"] == "bundled"
    assert cfg["data_config"]["mean"] == [0.5, 0.5, 0.5] and cfg["data_config"]["input_size"] == [3, 96, 96]


def test_full_loop_outputs_and_hooks(demo_dir, tmp_path):
    rec = Recorder()
    out = tmp_path / "run"
    result = fit(_cfg(demo_dir, epochs=2, val_split=0.25, test_split=0.15), out, [rec])
    assert result.status == "completed"
    steps = math.ceil(sum(1 for r in csv.DictReader(open(out / "split.csv")) if r["split"] == "train") / 16)
    assert rec.events[0] == "fit_start" and rec.events[-1] == "fit_end"
    assert rec.events.count("batch") == 2 * steps and rec.events.count("epoch_end") == 2
    for name in ["config.json", "model.safetensors", "metrics.json", "history.csv", "split.csv", "val_predictions.csv"]:
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))  # no temp files left behind by atomic writes
    m = json.loads((out / "metrics.json").read_text())
    for key in [
        "accuracy",
        "top_k_accuracy",
        "macro_f1",
        "weighted_f1",
        "roc_auc_macro",
        "average_precision_macro",
        "ece",
        "n_val",
        "class_names",
        "per_class",
        "confusion_matrix",
    ]:
        assert key in m, key
    assert m["n_val"] == sum(map(sum, m["confusion_matrix"])) and "test" in m
    rows = list(csv.DictReader(open(out / "split.csv")))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 80
    hist = list(csv.DictReader(open(out / "history.csv")))
    assert [int(h["epoch"]) for h in hist] == [1, 2]
    state = load_file(str(out / "model.safetensors"))
    assert state["fc.weight"].shape == (5, 128)


def test_refuses_existing_run_dir_and_changes_nothing(demo_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(RunError, match="already exists"):
        fit(_cfg(demo_dir), out)
    assert (out / "model.safetensors").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]


def test_cancel_stops_within_one_batch_and_keeps_best(demo_dir, tmp_path):
    seen = {"batches": 0}

    class Count(Callback):
        order = -20  # runs before the cancel check

        def on_batch_end(self, s):
            seen["batches"] += 1

    # cancel becomes true after the first batch of epoch 2: the best checkpoint of epoch 1 must survive
    def should_cancel():
        return seen["batches"] >= 5 + 1

    result = fit(
        _cfg(demo_dir, batch_size=16, epochs=5, val_split=0.2), tmp_path / "run", [Count()], should_cancel=should_cancel
    )
    assert result.status == "cancelled"
    assert seen["batches"] == 6  # 64 training images / 16 = 4 per epoch... stopped right after the flagged batch
    assert result.best_epoch == 1 and (tmp_path / "run" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "cancelled"


def test_early_stopping_ends_run_completed(demo_dir, tmp_path):
    # lr 0 means validation never improves after epoch 1
    result = fit(_cfg(demo_dir, epochs=6, early_stopping=2, lr=1e-12, warmup_epochs=0), tmp_path / "run")
    assert result.status == "completed" and len(result.history) == 3


def test_non_finite_loss_fails_with_epoch_and_step(demo_dir, tmp_path):
    result = fit(
        _cfg(demo_dir, epochs=3, lr=1e30, warmup_epochs=0, grad_clip=0, optimizer="sgd", label_smoothing=0.0),
        tmp_path / "run",
    )
    assert result.status == "failed" and "non-finite loss at epoch" in result.error
    assert NonFiniteLoss(2, 7, float("nan")).step == 7


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "constant"])
def test_lr_schedules(kind):
    lrs = [lr_at(s, 100, 1.0, 10, kind) for s in range(100)]
    assert max(lrs) == pytest.approx(1.0, rel=0.05) and min(lrs) > 0
    if kind == "cosine":
        assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.05 and np.all(np.diff(lrs[10:]) <= 1e-12)
    if kind == "constant":
        assert lrs[50] == 1.0


def test_imbalance_options_and_augmentation_run(demo_dir, tmp_path):
    for i, kw in enumerate(
        [
            dict(imbalance="weights", augment="strong"),
            dict(imbalance="sampler", mixup=0.2),
            dict(mode="finetune", head_warmup_epochs=1, grayscale=True, scheduler="onecycle"),
        ]
    ):
        r = fit(_cfg(demo_dir, epochs=2, **kw), tmp_path / f"run{i}")
        assert r.status == "completed" and r.metrics is not None, kw
