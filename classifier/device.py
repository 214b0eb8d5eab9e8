"""Where and how a model runs: device choice, seeding, threads, DataLoader settings, mixed precision, out-of-memory
handling.

    >>> dev = pick_device("auto")  # cuda, then mps, then cpu
    >>> prec = Precision.for_device(dev, amp=True)  # bf16 on CUDA, and on CPUs with AVX-512 BF16 / AMX
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


def usable_cpus() -> int:
    """The cores this process may really use: its CPU affinity and the container's CPU quota (cgroup v2 `cpu.max`,
    v1 `cfs_quota_us`), not the host's count. A 2-CPU container on a 16-core host otherwise runs 16 threads on 2
    cores, and oversubscribed intra-op threads wait on each other."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for path, split in (("/sys/fs/cgroup/cpu.max", None), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "period")):
        try:
            text = open(path).read().split()  # noqa: SIM115 - a one-line pseudo-file
            if split is None:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read().split()[0]
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and float(period) > 0:
            cpus = min(cpus, max(1, int(float(quota) / float(period) + 0.5)))
        break
    return max(1, cpus)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, or (None) cap them at the usable cores (`usable_cpus`); return
    the number in use.

    torch's own default is the machine's physical core count, which uses a 16-core host fully but ignores a
    container's quota; capping keeps a lower number someone chose on purpose. ONNX Runtime sessions
    (`model_io.onnx_session`) take the same number, so both use a many-core host fully and a 2-core one without
    oversubscribed threads waiting on each other.
    """
    n = max(1, int(threads)) if threads else min(torch.get_num_threads(), usable_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes when the user gives none.

    On a small CPU host decode workers steal the cores the model needs; with a GPU they keep it fed.
    """
    cpus = usable_cpus()
    return min(8, cpus - 1) if device.type == "cuda" else (0 if cpus <= 2 else min(4, cpus // 2))


def loader_kwargs(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader settings for decoding image files on `workers` processes feeding `device`."""
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 dot products


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo on Linux, else torch's own CPU probe (`torch.cpu.get_capabilities`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    caps = getattr(torch.cpu, "get_capabilities", None)
    try:
        return frozenset(k for k, v in (caps() if caps else {}).items() if v is True)
    except Exception:  # noqa: BLE001 - an unknown CPU just means no flags
        return frozenset()


def cpu_has_bf16() -> bool:
    """True on CPUs that compute bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated and slower."""
    return bool(set(CPU_BF16_FLAGS) & cpu_flags())


@dataclass(frozen=True)
class Precision:
    """Mixed precision and memory layout for one device: bf16 (or fp16 with a grad scaler) autocast and
    channels_last on CUDA; bf16 autocast and channels_last on CPUs with native bf16 (AVX-512 BF16 / AMX), where
    oneDNN's bf16 convolutions are faster (bench/run.py measures it); plain float32 elsewhere or with `amp` off."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, amp: bool = True, cpu_bf16: bool | None = None) -> Precision:
        """`amp=False` is the off switch (float32 everywhere); `cpu_bf16` overrides the CPU flag check (tests)."""
        if device.type == "cpu":
            use = amp and (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16)
            return cls(device, torch.bfloat16, channels_last=True) if use else cls(device)
        if device.type != "cuda":
            return cls(device)
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
        return cls(device, dtype, channels_last=True)

    def autocast(self, training: bool = True) -> AbstractContextManager:
        """Autocast for a training step (or, `training=False`, an evaluation pass). On a CPU evaluation stays
        float32, so metrics.json and val_predictions.csv are exactly what `evaluate` and `predict` (float32
        PyTorch or ONNX Runtime) give again: bf16 validation flipped 1 of 12 demo validation images."""
        if self.active_name(training) is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def active_name(self, training: bool = True) -> str | None:
        """The dtype `autocast(training)` computes in ('bfloat16', 'float16'), None for float32."""
        return None if not training and self.device.type == "cpu" else self.amp_name

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the memory layout the model was put in (channels_last for 4-D image batches with amp)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` to the device in this layout (and let cuDNN pick its kernels: input shapes are fixed)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            if self.device.type == "cuda":
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
