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
