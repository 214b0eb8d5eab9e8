"""Where and how a model runs: device choice, seeding, DataLoader settings, mixed precision, out-of-memory handling.

    >>> dev = pick_device("auto")  # cuda, then mps, then cpu
    >>> prec = Precision.for_device(dev, amp=True)
    >>> with prec.autocast():  # doctest: +SKIP
    ...     logits = model(x)

One module so that training, the LR finder, the batch-size finder, prediction and export agree on these
choices; nothing here knows about runs or datasets.
"""

from __future__ import annotations

import gc
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classifier.errors import ClassifierError, RunError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; asking for CUDA without a GPU is a user error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device cuda was asked for but no CUDA GPU is available; use device auto or cpu")
    return torch.device(name)


def lock_name(device: torch.device) -> str:
    """The queue a run waits in: one run at a time per accelerator kind, all CPU runs in another."""
    return "cuda" if device.type == "cuda" else "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes when the user gives none.

    On a small CPU host decode workers steal the cores the model needs; with a GPU they keep it fed.
    """
    cpus = os.cpu_count() or 1
    return min(8, cpus - 1) if device.type == "cuda" else (0 if cpus <= 2 else min(4, cpus // 2))


def loader_kwargs(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader settings for decoding image files on `workers` processes feeding `device`."""
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


@dataclass(frozen=True)
class Precision:
    """Mixed precision and memory layout for one device: bf16 (or fp16 with a grad scaler) autocast and
    channels_last on CUDA, plain float32 elsewhere."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, amp: bool = True) -> Precision:
        if device.type != "cuda":
            return cls(device)
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
        return cls(device, dtype, channels_last=True)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the memory layout the model was put in (channels_last for 4-D image batches on CUDA)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` to the device in this layout (and let cuDNN pick its kernels: input shapes are fixed)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        return model

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that only does something for float16 (bf16 has float32's range)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @property
    def amp_name(self) -> str | None:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error (MPS, and CUDA before torch 2.5, report it as a plain RuntimeError)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def free_memory(device: torch.device) -> None:
    """Return cached accelerator memory after an out-of-memory error (the caller drops its references first)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def available_memory(device: torch.device) -> int | None:
    """Bytes a new training process can still use on `device`: free GPU memory, or the kernel's MemAvailable for
    the CPU; None where it cannot be told (no /proc, MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


WORKERS_ENV = "CLASSIFIER_SERVER_WORKERS"
_HEAVY_LOCK = threading.Lock()
_HEAVY: dict[str, Any] = {}  # "slots": the process's BoundedSemaphore, made on first use


@contextmanager
def heavy_work(what: str, wait_s: float = 300.0, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """A slot of this process's bounded worker for model work done inside the app's server process (the LR finder,
    export, building an ensemble, attribution maps): at most `CLASSIFIER_SERVER_WORKERS` (default 1) at once, so
    two sessions cannot load and run models together and run the server out of memory. Training runs are separate
    processes that queue for the device; this is the same rule for what the server does itself. Waits up to
    `wait_s` (calling `waiting()` once if it has to wait), then ServerBusy."""
    import time

    with _HEAVY_LOCK:
        if "slots" not in _HEAVY:
            _HEAVY["slots"] = threading.BoundedSemaphore(max(1, int(os.environ.get(WORKERS_ENV, "1") or 1)))
        slots = _HEAVY["slots"]
    if not slots.acquire(blocking=False):
        if waiting is not None:
            waiting()
        end = time.monotonic() + wait_s
        while not slots.acquire(timeout=0.5):  # short waits: a stopped script run gets out within half a second
            if time.monotonic() > end:
                raise ServerBusy(f"the server is busy with another session's model work; {what} was not started. "
                                 "Try again in a minute")  # fmt: skip
    try:
        yield
    finally:
        slots.release()


class ServerBusy(ClassifierError):
    """The server's bounded worker stayed busy past the wait."""
