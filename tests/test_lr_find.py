"""Learning-rate finder: exponential schedule, suggestion inside the range, early stop on divergence, the caller's
model untouched, the suggestion rule on known curves, bad input, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from classifier.cli import main
from classifier.errors import ClassifierError
from classifier.figures import lr_find_figure
from classifier.training import TrainConfig
from classifier.training.lr_find import lr_find, lr_schedule, suggest_lr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("lr") / "data", n_per_class=8, size=32, seed=2)


def _cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), backbone="simple_cnn", weights="none", img_size=32, batch_size=8, num_workers=0,
                device="cpu", seed=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_schedule_is_exponential_from_start_to_end():
    lrs = lr_schedule(1e-4, 1.0, 5)
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log10(lrs)), 1.0)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = lr_schedule(1e-5, 1.0, 6)  # 1e-5 ... 1
    losses = [2.0, 1.9, 1.0, 0.8, 0.7, 3.0]  # steepest fall around 1e-3, minimum at 1e-1
    assert suggest_lr(lrs, losses, 1e-5, 1.0) == pytest.approx(1e-3)
    # Minimum at the second point: too few points for a slope, so lr at the minimum / 10, clamped to the range.
    assert suggest_lr(lrs, [2.0, 1.0, 5.0], 1e-5, 1.0) == pytest.approx(1e-5)
    assert suggest_lr([], [], 1e-5, 1.0) == 1e-5


def test_linear_probe_curve_and_suggestion_inside_the_range(data):
    """resnet18 linear probe (the cached-feature path): the whole range is walked and the suggestion is inside."""
    seen = []
    result = lr_find(_cfg(data, backbone="resnet18", mode="linear"), start_lr=1e-5, end_lr=1e-1, steps=20,
                     progress=lambda phase, done, total: seen.append(phase))  # fmt: skip
    assert not result.stopped_early and result.reason is None
    assert len(result.lrs) == len(result.losses) == 20 == result.steps
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1e-1)
    assert 1e-5 <= result.suggestion <= 1e-1
    assert all(math.isfinite(v) for v in result.losses)
    assert "features" in seen and "steps" in seen
    fig = lr_find_figure(result)
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 2


def test_divergence_stops_early(data):
    result = lr_find(_cfg(data, grad_clip=0.0), start_lr=1e-2, end_lr=1e8, steps=40)
    assert result.stopped_early and result.reason
    assert len(result.lrs) < 40
    assert result.start_lr <= result.suggestion <= result.end_lr


def test_callers_model_and_rng_are_untouched(data):
    from classifier.models import build_model

    model = build_model("simple_cnn", 5, "none", img_size=32).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    result = lr_find(_cfg(data), model=model, start_lr=1e-3, end_lr=1.0, steps=8)
    assert len(result.lrs) >= 2
    assert torch.equal(torch.rand(3), expected)  # the global RNG continues as if nothing had run
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == grads
    assert model.training  # not switched to eval or anything else


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(start_lr=1.0, end_lr=1e-3), "0 < start"),
        (dict(start_lr=0.0, end_lr=1.0), "0 < start"),
        (dict(start_lr=1e-3, end_lr=1.0, steps=1), "at least 2 steps"),
    ],
)
def test_bad_ranges_are_refused(data, kw, message):
    with pytest.raises(ClassifierError, match=message):
        lr_find(_cfg(data), **kw)


def test_cli_prints_json_and_writes_the_plot(data, tmp_path, capsys):
    plot = tmp_path / "lr.html"
    code = main(["lr-find", "--data", str(data), "--backbone", "simple_cnn", "--weights", "none", "--img-size", "32",
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--start-lr", "1e-4", "--end-lr", "1",
                 "--steps", "6", "--plot", str(plot), "--quiet"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert 1e-4 <= out["suggestion"] <= 1 and out["steps"] == 6 and len(out["lrs"]) == len(out["losses"])
    assert plot.is_file() and "plotly" in plot.read_text()[:5000].lower()


def test_cli_user_errors_exit_2(data, capsys):
    assert main(["lr-find", "--backbone", "simple_cnn"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["lr-find", "--data", str(data), "--backbone", "simple_cnn", "--weights", "none", "--start-lr", "1",
                 "--end-lr", "0.1"]) == 2  # fmt: skip
    assert "start" in capsys.readouterr().err
