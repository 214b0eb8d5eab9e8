"""The CPU precision a run trains in: bf16 only where it measures fastest for the model, measured once and cached,
without changing the model or any random number generator; a resumed run keeps what it chose."""

from __future__ import annotations

import pytest
import timm
import torch

from classifier.device import Precision
from classifier.training import precision as P

CPU = torch.device("cpu")
BF16 = Precision(CPU, torch.bfloat16, channels_last=True)


def test_no_measurement_unless_bf16_on_a_cpu(monkeypatch):
    monkeypatch.setattr(P, "time_ways", lambda *a, **k: pytest.fail("measured"))
    model = torch.nn.Linear(4, 2)
    assert P.choose(model, Precision(CPU), (3, 8, 8), 2, training=True) == (Precision(CPU), None)


def test_the_fastest_way_is_chosen_once_and_then_read_from_the_cache(monkeypatch):
    calls = []

    def fake(model, ways, size, n_classes, training):
        calls.append(size)
        return {"float32": 0.5, "float32 + channels_last": 0.3, "bfloat16 + channels_last": 0.4}

    monkeypatch.setattr(P, "time_ways", fake)
    model = timm.create_model("resnet18", num_classes=3, pretrained=False)
    chosen, probe = P.choose(model, BF16, (3, 128, 128), 3, training=True)
    assert chosen == Precision(CPU, None, channels_last=True) and probe["chosen"] == "float32 + channels_last"
    assert probe["cached"] is False and probe["seconds_per_step"]["float32"] == 0.5
    again, probe2 = P.choose(model, BF16, (3, 128, 128), 3, training=True)
    assert again == chosen and probe2["cached"] is True and len(calls) == 1
    P.choose(model, BF16, (3, 160, 160), 3, training=True)  # another input size is measured on its own
    assert len(calls) == 2


def test_float32_unless_another_way_is_clearly_faster():
    assert P.pick({"float32": 1.0, "float32 + channels_last": 0.95, "bfloat16 + channels_last": 0.97}) == "float32"
    assert P.pick({"float32": 1.0, "float32 + channels_last": 0.8, "bfloat16 + channels_last": 0.6}) == (
        "bfloat16 + channels_last"
    )
    assert P.pick({"float32": 0.004}) == "float32"


def test_a_small_model_trains_in_float32_without_measuring(monkeypatch):
    from classifier.models.simple_cnn import SimpleCNN

    monkeypatch.setattr(P, "time_ways", lambda *a, **k: pytest.fail("measured"))
    chosen, probe = P.choose(SimpleCNN(num_classes=2), BF16, (3, 128, 128), 2, training=True)
    assert chosen == Precision(CPU) and probe["chosen"] == "float32" and "small model" in probe["why"]
    resnet = timm.create_model("resnet18", num_classes=2, pretrained=False)
    assert P.choose(resnet, BF16, (3, 64, 64), 2, training=True)[0] == Precision(CPU)


def test_measuring_leaves_the_model_and_the_random_state_alone():
    torch.manual_seed(5)
    model = timm.create_model("resnet18", num_classes=2, pretrained=False, drop_rate=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = P.time_ways(model, P.candidates(CPU), (3, 112, 112), 2, training=True)
    assert set(seconds) == set(P.candidates(CPU)) and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).is_contiguous()  # the run's own model keeps its layout


@pytest.mark.parametrize("way", list(P.candidates(CPU)))
def test_a_resumed_run_rebuilds_the_precision_it_recorded(way):
    p = P.candidates(CPU)[way]
    runtime = {"amp": p.amp_name, "channels_last": p.channels_last}
    assert P.from_runtime(CPU, runtime) == p
    assert P.from_runtime(CPU, {}) is None


def test_a_resumed_run_trains_in_the_precision_it_started_in(demo_dir, tmp_path, monkeypatch):
    """The measurement is not repeated on resume: the run's config.json says how it trained."""
    from classifier import rundir
    from classifier.training import TrainConfig, fit
    from classifier.training.events import Callback

    cfg = TrainConfig(data=str(demo_dir), backbone="simple_cnn", weights="none", img_size=32, epochs=2, batch_size=8,
                      num_workers=0, device="cpu", seed=0, checkpoint_every_steps=1)  # fmt: skip

    class Steps(Callback):
        seen = 0

        def on_batch_end(self, state):
            Steps.seen += 1

    stopped = fit(cfg, tmp_path / "run", [Steps()], should_cancel=lambda: Steps.seen >= 3)
    assert stopped.status == "cancelled" and (tmp_path / "run" / rundir.RESUME).is_file()
    monkeypatch.setattr(P, "choose", lambda *a, **k: pytest.fail("measured again on resume"))
    assert fit(None, tmp_path / "run", resume=True).status == "completed"
