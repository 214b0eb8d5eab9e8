"""Which precision a model trains fastest in on this CPU: measured once per model and batch shape, then cached.

bf16 autocast with channels_last is not faster for every model on a CPU that has native bf16. Measured side by
side on this 2-core AVX-512 BF16 machine (bench/cpu_bf16.py, docs/benchmarks.md): EfficientNet-Lite0 trained
1.04-1.44x faster, ResNet-18 0.53-1.02x, i.e. slower, and float32 + channels_last alone helped Lite0's depthwise
convolutions (1.45x) while hurting ResNet-18 (0.8x). So where `Precision.for_device` would pick bf16 on a CPU, a
new run times a few training steps of a copy of its model in each of the three ways and keeps the fastest.

The choice is cached in `workspace/cache/precision.json`, keyed by the model's class and size, the batch shape,
the torch version and the thread count, so a second run of the same model trains the same way (and the same
numbers, seed for seed) without measuring again; a resumed run reuses the choice recorded in its config.json.
Measuring leaves the model, its BatchNorm statistics, its gradients and every random number generator as they
were, so a run is the same whether it measured or read the cache.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from typing import Any

import torch
from torch import nn

from classifier.device import Precision
from classifier.io import atomic_write_json
from classifier.workspace import cache_dir

PROBE_BATCH = 8  # images per timed step: enough for a stable ratio, cheap enough to do at the start of every run
PROBE_ROUNDS = 2  # timed steps per way, alternating, after one warm-up step each; the median counts
MIN_GAIN = 1.1  # another way must take at most 1/1.1 of float32's time per step to be chosen
# Parameters x input pixels under which a model is not measured but trains in float32: a crude size proxy that,
# unlike a timed step, does not depend on the machine's load. EfficientNet-Lite0 at 128 px (5.6e10) is measured
# (channels_last made its step 1.3x faster here), ResNet-18 at 64 px (4.8e10) not; simple_cnn (0.1 M parameters)
# never.
SMALL_MODEL = 5e10
CACHE_FILE = "precision.json"


def candidates(device: torch.device) -> dict[str, Precision]:
    """The ways a CPU with native bf16 can train, by the name recorded in config.json's runtime."""
    return {
        "float32": Precision(device),
        "float32 + channels_last": Precision(device, None, channels_last=True),
        "bfloat16 + channels_last": Precision(device, torch.bfloat16, channels_last=True),
    }


def from_runtime(device: torch.device, runtime: dict[str, Any] | None) -> Precision | None:
    """The precision a run recorded in its config.json's runtime (None when it recorded none)."""
    if not runtime or "amp" not in runtime:
        return None
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(runtime.get("amp") or "")
    return Precision(device, dtype, channels_last=bool(runtime.get("channels_last")))


def choose(
    model: nn.Module, default: Precision, input_size: tuple[int, int, int], n_classes: int, training: bool
) -> tuple[Precision, dict[str, Any] | None]:
    """`default` unless it is bf16 on a CPU; then the fastest of `candidates` for `model` (cached), with what was
    measured (seconds per step per way, and whether it came from the cache) for config.json's runtime."""
    if default.device.type != "cpu" or default.amp_dtype is None:
        return default, None
    ways = candidates(default.device)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params * input_size[1] * input_size[2] < SMALL_MODEL:
        return ways["float32"], {"chosen": "float32", "why": "small model: nothing to gain, float32 is exact"}
    key = (
        f"{type(model).__name__}-{n_params}-{'x'.join(map(str, input_size))}-{'train' if training else 'infer'}-"
        f"{torch.__version__}-{torch.get_num_threads()}"
    )
    path = cache_dir() / CACHE_FILE
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = None  # none yet, or unreadable: measure again and rewrite it
    seen = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(seen, dict) and seen.get("chosen") in ways:
        return ways[seen["chosen"]], {**seen, "cached": True}
    seconds = time_ways(model, ways, input_size, n_classes, training)
    chosen = pick(seconds)
    record = {"chosen": chosen, "seconds_per_step": {k: round(v, 4) for k, v in seconds.items()}}
    table = cached if isinstance(cached, dict) else {}
    atomic_write_json(path, {**table, key: record})
    return ways[chosen], {**record, "cached": False}


def pick(seconds: dict[str, float]) -> str:
    """float32 unless another way is at least `MIN_GAIN` faster: float32 is exact, and a choice between near
    equals would only follow the machine's noise (runs of the same seed should not differ for nothing)."""
    fastest = min(seconds, key=seconds.get)
    return fastest if seconds[fastest] * MIN_GAIN <= seconds["float32"] else "float32"


def time_ways(
    model: nn.Module, ways: dict[str, Precision], input_size: tuple[int, int, int], n_classes: int, training: bool
) -> dict[str, float]:
    """Median seconds per step (forward and backward when `training`, else a forward pass without gradients) of a
    copy of `model` on a random batch in each way, the ways alternating round by round."""
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(PROBE_BATCH, *input_size, generator=gen)
        y = torch.randint(0, n_classes, (PROBE_BATCH,), generator=gen)
        probe = copy.deepcopy(model).train(training)  # one copy (memory), put in each way's layout in turn
        times: dict[str, list[float]] = {name: [] for name in ways}
        for r in range(PROBE_ROUNDS + 1):
            for name in list(ways)[:: 1 if r % 2 == 0 else -1]:
                ways[name].prepare(probe.to(memory_format=torch.contiguous_format))
                t0 = time.perf_counter()
                _step(probe, ways[name], x, y, training)
                if r:  # round 0 warms up (oneDNN builds its kernels for each layout on the first call)
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _step(model: nn.Module, precision: Precision, x: torch.Tensor, y: torch.Tensor, training: bool) -> None:
    xl = precision.layout(x)
    if not training:
        with torch.no_grad(), precision.autocast():
            model(xl)
        return
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(xl).float(), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
