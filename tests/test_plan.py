"""The time budget: which plan fits, that only unset fields are chosen, that a run keeps to it, and the partial
fine-tune after a probe of the head; CPU bf16 and thread settings of classifier.device."""

from __future__ import annotations

import json
import time

import pytest
import timm
import torch

from classifier.device import Precision, configure_threads, cpu_has_bf16, usable_cpus
from classifier.models import set_trainable_mode
from classifier.training import TrainConfig, fit
from classifier.training import plan as P
from classifier.training.events import FitState, StopFit


def _tp(forward: float, partial: float, full: float, side: int = 224) -> P.Throughput:
    return P.Throughput(side, forward, partial, full, decode=0.0, amp=None, seconds=0.0)


# A CPU like the issue's: forward 40 images/s, partial step 20 images/s, full step 10 images/s at 224 px.
CPU = _tp(1 / 40, 1 / 20, 1 / 10)
N_TRAIN, N_VAL = 2936, 734


def test_plan_prefers_full_then_partial_then_linear():
    roomy = P.choose_plan(TrainConfig(), 4 * 3600, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert (roomy.mode, roomy.epochs, roomy.img_size, roomy.fits) == ("finetune", P.MAX_FULL_EPOCHS, 224, True)
    assert roomy.head_epochs == P.HEAD_EPOCHS and "full fine-tune after a linear probe of the head" in roomy.summary()
    # 12 minutes: a full fine-tune of 5 epochs takes ~27 min; a partial one of 3 epochs at 224 px ~10 min
    default = P.choose_plan(TrainConfig(), 12 * 60, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert default.mode == "partial" and default.head_epochs == P.HEAD_EPOCHS and default.fits
    est = P.estimate_seconds("partial", default.epochs, default.img_size, N_TRAIN, N_VAL, CPU)
    assert est <= (12 * 60 - P.START_SECONDS) * P.SAFETY
    assert any("full fine-tune" in r and "would take" in r for r in default.reasons)
    tight = P.choose_plan(TrainConfig(), 3.5 * 60, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert tight.mode == "linear" and tight.img_size == 224
    hopeless = P.choose_plan(TrainConfig(), 10, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert not hopeless.fits and "nothing fits" in " ".join(hopeless.reasons)


def test_plan_only_chooses_what_the_user_left_unset():
    p = P.choose_plan(TrainConfig(mode="finetune"), 12 * 60, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert p.mode == "finetune" and p.chosen == ["epochs", "img_size"]
    p = P.choose_plan(TrainConfig(epochs=2, img_size=192), 12 * 60, N_TRAIN, N_VAL, CPU, pretrained=True)
    assert (p.epochs, p.img_size) == (2, 192) and p.chosen == ["mode"]
    planned = P.apply_plan(TrainConfig(data="x", epochs=2, img_size=192, lr=0.01), p).resolved()
    assert planned.mode == p.mode and planned.epochs == 2 and planned.lr == 0.01
    scratch = P.choose_plan(TrainConfig(), 12 * 60, N_TRAIN, N_VAL, CPU, pretrained=False)
    assert scratch.mode == "finetune" and scratch.head_epochs == 0  # no probe or partial fine-tune of random weights
    assert scratch.summary().startswith("plan for 12.0 min: full fine-tune, ")


def test_budget_applies_only_to_unset_cpu_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert P.budget_seconds(TrainConfig(), cpu, pretrained=True) == P.DEFAULT_CPU_BUDGET_MINUTES * 60
    assert P.budget_seconds(TrainConfig(), cuda, pretrained=True) is None  # CUDA: a full fine-tune as before
    assert P.budget_seconds(TrainConfig(epochs=3), cpu, pretrained=True) is None
    assert P.budget_seconds(TrainConfig(mode="linear"), cpu, pretrained=True) is None
    assert P.budget_seconds(TrainConfig(), cpu, pretrained=False) is None
    assert P.budget_seconds(TrainConfig(epochs=3, time_budget=2), cuda, pretrained=True) == 120
    assert P.budget_seconds(TrainConfig(time_budget=0), cpu, pretrained=True) is None
    # resolved() stays a pure function of the config: the plan is made in fit
    assert TrainConfig().resolved() == TrainConfig().resolved()
    assert TrainConfig().resolved().mode == "finetune" and TrainConfig().resolved().epochs == 8
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=-1).resolved()


def _state(epochs: int = 3) -> FitState:
    return FitState(TrainConfig(), None, torch.nn.Linear(1, 1), epochs, 1, 1, 1)


def test_deadline_stops_when_the_next_epoch_would_not_fit():
    s = _state()
    s.epoch, s.history = 1, [{"seconds": 30.0}]
    P.Deadline(100, time.time()).on_epoch_end(s)  # 100 s left, an epoch takes 30 s: go on
    with pytest.raises(StopFit):
        P.Deadline(100, time.time() - 80).on_epoch_end(s)  # 20 s left
    s.epoch = 3
    P.Deadline(100, time.time() - 80).on_epoch_end(s)  # the last epoch: nothing to stop
    late = P.Deadline(10, time.time() - 20)
    late.on_batch_end(s)  # before the first validation there is no best epoch to keep: the epoch finishes
    s.best_val = {"acc": 0.5, "loss": 1.0}
    with pytest.raises(StopFit):
        late.on_batch_end(s)


def test_partial_trains_the_last_stages_and_the_head():
    m = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    set_trainable_mode(m, "partial")
    trains = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trains and "conv_head.weight" in trains and "blocks.6.0.conv_pw.weight" in trains
    assert "blocks.5.0.conv_pw.weight" in trains and "blocks.4.0.conv_pw.weight" not in trains
    assert "conv_stem.weight" not in trains
    set_trainable_mode(m, "partial", train_backbone=False)  # head warm-up
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("mode, full_step", [("partial", 1.0), ("finetune", 1 / 200)])
def test_fit_with_a_budget_plans_probes_the_head_and_records_why(demo_dir, tmp_path, monkeypatch, mode, full_step):
    """A real fit: the measured throughput is replaced so that a partial (or a full) fine-tune is the plan; the
    head is trained on frozen features first, and config.json records the plan and the probe's accuracy."""
    calls = []

    def fake_measure(model, side, precision, n_classes, sample_paths=(), draft=None):
        calls.append(side)
        return _tp(1 / 400, 1 / 200, full_step, side=side)

    monkeypatch.setattr("classifier.training.run.measure_throughput", fake_measure)
    # 4 minutes: the planned epochs are quick here, and a loaded machine still finishes one before the deadline
    cfg = TrainConfig(data=str(demo_dir), backbone="efficientnet_lite0", img_size=64, time_budget=4,
                      batch_size=16, seed=0)  # fmt: skip
    result = fit(cfg, tmp_path / "run")
    assert result.status == "completed" and calls == [64]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    plan = saved["plan"]
    assert plan["mode"] == mode and saved["train"]["mode"] == mode and plan["head_epochs"] == P.HEAD_EPOCHS
    assert saved["train"]["epochs"] == plan["epochs"] and 1 <= len(result.history) <= plan["epochs"]  # on time
    assert saved["train"]["img_size"] == 64 and plan["chosen"] == ["mode", "epochs"]
    assert plan["head_probe_val_acc"] > 0.4  # 5 classes: chance is 0.2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["accuracy"] >= plan["head_probe_val_acc"]  # the probe (epoch 0) is kept unless an epoch beats it
    what = {"partial": "fine-tune of the last blocks", "finetune": "full fine-tune"}[mode]
    assert result.plan["summary"].startswith(f"plan for 4.0 min: {what} after a linear probe of the head")


def test_a_run_that_cannot_fit_stops_on_time_with_its_best_epoch(demo_dir, tmp_path):
    cfg = TrainConfig(data=str(demo_dir), backbone="simple_cnn", weights="none", img_size=32, epochs=50,
                      time_budget=0.05, batch_size=8)  # fmt: skip
    t = time.time()
    result = fit(cfg, tmp_path / "run")
    assert result.status == "completed" and 1 <= len(result.history) < 50
    assert time.time() - t < 60
    assert (tmp_path / "run" / "model.safetensors").is_file() and result.metrics is not None


def test_precision_bf16_on_cpus_that_have_it_and_the_off_switch():
    cpu = torch.device("cpu")
    p = Precision.for_device(cpu, amp=True, cpu_bf16=True)
    assert p.amp_dtype == torch.bfloat16 and p.channels_last and p.amp_name == "bfloat16"
    assert Precision.for_device(cpu, amp=False, cpu_bf16=True).amp_dtype is None  # the off switch
    assert Precision.for_device(cpu, amp=True, cpu_bf16=False).amp_dtype is None  # no native bf16: float32
    assert Precision.for_device(cpu, amp=True).amp_dtype == (torch.bfloat16 if cpu_has_bf16() else None)
    with p.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_threads_follow_the_usable_cores():
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads() == 1  # capped, never raised: a lower number chosen on purpose stays
        torch.set_num_threads(64)
        assert configure_threads() == usable_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_queued_run_keeps_what_the_user_left_unset_for_its_budget(demo_dir, monkeypatch):
    """The job system checks a config at submit but hands it on as given, so the time budget still chooses the
    mode and epochs the user left unset; the store row shows it resolved until the plan replaces it."""
    from classifier.errors import ClassifierError
    from classifier.jobs.executor import request_path
    from classifier.jobs.local import LocalProcessExecutor, job_config

    ex = LocalProcessExecutor()
    monkeypatch.setattr(ex, "_launch", lambda run_id, args: None)  # no process: only what submit records
    rid = ex.submit(TrainConfig(data=str(demo_dir), backbone="simple_cnn", weights="none", time_budget=3))
    raw = job_config(request_path(rid), demo_dir)
    assert raw.mode is None and raw.epochs is None and raw.time_budget == 3
    assert ex.status(rid).config["mode"] == "finetune" and ex.status(rid).config["epochs"] == 8
    with pytest.raises(ClassifierError, match="time_budget"):
        job_config(TrainConfig(data=str(demo_dir), time_budget=-1), demo_dir)


def test_the_head_probe_keeps_its_best_epoch_not_its_last():
    """The fine-tune starts from the probe epoch a standalone linear probe would report (best validation score,
    ties to the lower loss), with only the trainable weights (the head) put back."""
    from types import SimpleNamespace

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # the frozen backbone
    frozen = model[0].weight.detach().clone()
    best = P._BestHead()
    seen = {}
    for epoch, (acc, loss) in enumerate([(0.8, 0.5), (0.9, 0.4), (0.9, 0.3), (0.85, 0.2)], 1):
        with torch.no_grad():
            model[1].weight.fill_(epoch)
        best.on_epoch_end(SimpleNamespace(model=model, val={"acc": acc, "loss": loss}))
        seen[epoch] = best.val
    with torch.no_grad():
        model[0].weight.add_(1.0)  # a frozen weight that changed is not the probe's to restore
    best.restore(model)
    assert torch.all(model[1].weight == 3) and best.val == {"acc": 0.9, "loss": 0.3}  # epoch 3: 0.9 at lower loss
    assert torch.equal(model[0].weight, frozen + 1.0) and set(best.weights) == {"1.weight", "1.bias"}
    nan = P._BestHead()
    nan.on_epoch_end(SimpleNamespace(model=model, val={"acc": 1.0, "loss": float("nan")}))
    assert nan.val is None and nan.weights == {}
