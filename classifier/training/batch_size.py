"""Automatic batch size: the largest one whose training step fits in accelerator memory.

    >>> find_batch_size(lambda bs: None, start=32, maximum=128)
    128

`find_batch_size` doubles the batch size from `start` while a trial step succeeds (up to `maximum`) and halves it
on an out-of-memory error; the first size that fits after a failure, or the last that fitted, is the answer.
`probe_step` builds the trial step for a model: one forward and backward pass on random inputs of the run's
shape, under the run's autocast, with gradients cleared afterwards (the optimizer never steps).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from classifier.device import Precision, free_memory, is_oom
from classifier.errors import RunError

log = logging.getLogger(__name__)


def find_batch_size(
    try_step: Callable[[int], None],
    start: int,
    maximum: int,
    minimum: int = 1,
    *,
    device: torch.device | None = None,
) -> int:
    """The largest batch size in `start`·2^k (k may be negative), at most `maximum`, for which `try_step` runs."""
    if start < 1 or maximum < 1:
        raise ValueError(f"batch sizes must be positive (start={start}, maximum={maximum})")
    bs, best = min(start, maximum), None
    while True:
        try:
            try_step(bs)
        except RuntimeError as e:
            if not is_oom(e):
                raise
            free_memory(device or torch.device("cpu"))
            log.info("batch size %d does not fit in memory", bs)
            if best is not None:
                return best
            if bs // 2 < minimum:
                raise RunError(
                    f"out of memory even at batch size {bs} on {device or 'the device'} while finding the batch "
                    "size; try a smaller image size or backbone"
                ) from e
            bs //= 2
            continue
        best = bs
        if bs * 2 > maximum:
            return best
        bs *= 2


def probe_step(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    precision: Precision,
) -> Callable[[int], None]:
    """A trial training step at a given batch size (forward + backward on random data, gradients dropped)."""

    def step(bs: int) -> None:
        x = precision.layout(torch.randn(bs, *input_shape, device=device))
        y = torch.randint(0, num_classes, (bs,), device=device)
        was_training = model.training
        buffers = {k: v.detach().clone() for k, v in model.named_buffers()}  # BN statistics stay untouched
        model.train(True)
        try:
            with precision.autocast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
            del x, y
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step
