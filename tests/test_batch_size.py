"""Speed options for accelerators: the automatic batch-size finder (classifier.training.batch_size), with
simulated out-of-memory errors, and `compile=True` (torch.compile) on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from classifier.device import Precision, is_oom
from classifier.errors import RunError
from classifier.training.batch_size import find_batch_size, probe_step


def fits_up_to(limit: int, tried: list[int]):
    def step(bs: int) -> None:
        tried.append(bs)
        if bs > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {bs} MiB (simulated)")

    return step


@pytest.mark.parametrize(
    ("start", "maximum", "limit", "expected", "tries"),
    [
        (32, 512, 100, 64, [32, 64, 128]),  # doubles while it fits, keeps the last size that fitted
        (256, 512, 48, 32, [256, 128, 64, 32, 64]),  # backs off by halving, then checks the next size up once
        (32, 512, 10_000, 512, [32, 64, 128, 256, 512]),  # stops at the ceiling
        (600, 512, 10_000, 512, [512]),  # a start above the ceiling starts at the ceiling
        (8, 8, 8, 8, [8]),
    ],
)
def test_finder_backs_off_on_out_of_memory(start, maximum, limit, expected, tries):
    tried: list[int] = []
    assert find_batch_size(fits_up_to(limit, tried), start, maximum) == expected
    assert tried == tries


def test_finder_fails_clearly_when_nothing_fits_and_passes_other_errors_on():
    with pytest.raises(RunError, match="out of memory even at batch size 1"):
        find_batch_size(fits_up_to(0, []), 16, 64)

    def broken(bs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        find_batch_size(broken, 16, 64)
    assert is_oom(RuntimeError("MPS backend out of memory")) and not is_oom(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError):
        find_batch_size(broken, 0, 64)


def test_probe_step_runs_a_training_step_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real_forward = model.forward
    model.forward = lambda x: calls.append(tuple(x.shape)) or real_forward(x)
    step = probe_step(model, (3, 16, 16), 3, torch.device("cpu"), Precision(torch.device("cpu")))
    assert find_batch_size(step, 4, 16) == 16
    assert calls == [(4, 3, 16, 16), (8, 3, 16, 16), (16, 3, 16, 16)]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats and weights untouched
    assert all(p.grad is None for p in model.parameters()) and not model.training


@pytest.mark.slow  # compiling takes ~45 s on 2 CPU cores: why compile is off by default for short runs
def test_compiled_run_saves_plain_weights(tmp_path):
    import json

    from safetensors.torch import load_file

    from classifier.data.demo import make_demo_dataset
    from classifier.predict import load_run, predict_items
    from classifier.training import TrainConfig, fit

    data = make_demo_dataset(tmp_path / "data", n_per_class=4, size=32, seed=2, classes=("circle", "square"))
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=1, batch_size=4,
                      num_workers=0, device="cpu", compile=True)  # fmt: skip
    result = fit(cfg, tmp_path / "run")
    assert result.status == "completed"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["runtime"]["compile"] is True
    assert not any(k.startswith("_orig_mod") for k in load_file(tmp_path / "run" / "model.safetensors"))
    run = load_run(tmp_path / "run")
    assert predict_items(run, sorted(str(p) for p in data.rglob("*.png"))[:3]).shape == (3, 2)
