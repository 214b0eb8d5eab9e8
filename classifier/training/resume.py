"""What makes a run resumable: one checkpoint file with the whole training state, and a replayable batch order.

`last.safetensors` in the run dir holds the model weights (`model.*`), the optimizer's tensors
(`optim.<param index>.<name>`), the torch RNG states (`rng.*`) and the best epoch's validation probabilities
(`best.val_probs`). Everything else is JSON in the file's metadata under "state": where training stands
(the epoch to continue, samples and batches done in it, optimizer steps in total), the batch size, the
learning-rate schedule, the history so far, the best score, the optimizer's hyperparameters, the Python
and NumPy RNG states and a `generation` counter. One file means there is no pair of files that a kill
could leave half-updated; it is written atomically (temp file, fsync, `os.replace`), so a reader sees the
previous complete checkpoint or the new one. Nothing is pickled.

`EpochSampler` draws each epoch's order from (seed, epoch) alone, so a resumed epoch can start at the
first sample it had not trained on and see the same batches as an uninterrupted run.

The file itself is read and written by `classifier.rundir` (`write_checkpoint`, `read_checkpoint`), which also
holds the fault injection the tests use to kill a run mid-write.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from classifier import rundir
from classifier.errors import RunError

FORMAT = "classifier-resume"
VERSION = 1
HOOK_ENV = rundir.CHECKPOINT_HOOK_ENV  # fault injection for tests (see classifier.rundir)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s sample order: a function of (seed, epoch) only."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) & 0x7FFF_FFFF_FFFF_FFFF


class EpochSampler(Sampler[int]):
    """A shuffled (or class-balanced, with replacement) order per epoch that can start part-way through.

    With `world` > 1 (a DDP run) it yields rank `rank`'s share of that same order (`shard`): the order is cut into
    global batches of `per_rank x world` samples and this rank takes its slice of each, so N ranks with batch B/N
    train on exactly the batches one process with batch B would. `start` always counts samples of the whole order.

    >>> s = EpochSampler([0, 1, 0, 1], seed=0)
    >>> s.set_epoch(1, start=2)
    >>> len(list(s))
    2
    """

    def __init__(self, labels: Sequence[int], seed: int, balanced: bool = False, rank: int = 0, world: int = 1):
        self.n = len(labels)
        self.seed = seed
        self.weights = None
        if balanced:
            counts = np.bincount(np.asarray(labels, dtype=np.int64)).astype(np.float64)
            self.weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.float64)
        self.epoch, self.start = 1, 0
        self.rank, self.world = rank, world
        self.per_rank = 1  # the loader's batch size (setup.loaders sets it); only used when world > 1

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        return torch.randperm(self.n, generator=g).tolist()

    def _indices(self) -> list[int]:
        order = self.order(self.epoch)
        if self.world == 1:
            return order[self.start :]
        return shard(order, self.start, self.per_rank, self.world, self.rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, self.n - self.start) if self.world == 1 else len(self._indices())


def shard(order: Sequence[int], start: int, per_rank: int, world: int, rank: int) -> list[int]:
    """Rank `rank`'s samples of `order[start:]`: every global batch of `per_rank x world` samples is split into
    `world` equal slices in rank order. The last, short batch is split into equal slices too, padded with samples
    from the start of the order (as torch's DistributedSampler pads), so every rank takes the same number of steps.

    >>> shard(list(range(10)), 0, 2, 2, 1)  # batches [0 1 | 2 3], [4 5 | 6 7], [8 | 9]
    [2, 3, 6, 7, 9]
    """
    out: list[int] = []
    step = per_rank * world
    for g in range(start, len(order), step):
        chunk = list(order[g : g + step])
        size = -(-len(chunk) // world)
        chunk += [order[i % len(order)] for i in range(size * world - len(chunk))]
        out += chunk[rank * size : (rank + 1) * size]
    return out


@dataclass
class ResumeState:
    """A loaded checkpoint: `meta` is the JSON state, `model` the weights, `tensors` the rest by name."""

    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]

    def optimizer_state(self) -> dict[str, Any]:
        """A state dict for `optimizer.load_state_dict`."""
        return _optimizer_from_flat(self.meta["optimizer"], self.tensors)


def save_resume(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the training state atomically to `path`; `meta` must be JSON (it gets the RNG states added)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_meta, optim_tensors = _optimizer_to_flat(optimizer)
    rng_meta, rng_tensors = capture_rng()
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    tensors.update(extra or {})
    meta = {**meta, "format": FORMAT, "version": VERSION, "optimizer": optim_meta, "rng": rng_meta}
    return rundir.write_checkpoint(path, tensors, meta, FORMAT)


def load_resume(path: str | Path) -> ResumeState:
    """Read a checkpoint written by `save_resume`; a clear `RunError` for anything else."""
    fmt, meta, tensors = rundir.read_checkpoint(path)
    if fmt != FORMAT or not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise RunError(f"{path} is not a resume checkpoint of this version (format {fmt!r})")
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    return ResumeState(meta, model, {k: v for k, v in tensors.items() if not k.startswith("model.")})


def can_resume(run_dir: str | Path) -> bool:
    """True if `fit(..., resume=True)` can continue the run: it has a checkpoint, or it stopped before its first
    one and has no results yet (then it starts over in place). A completed run has neither."""
    if rundir.resume_path(run_dir).is_file():
        return True
    return not rundir.has_results(run_dir)


def resume_point(run_dir: str | Path) -> dict[str, Any] | None:
    """Where a run would resume: {"epoch", "batch", "step", "generation"} from its checkpoint, or None."""
    meta = rundir.checkpoint_state(rundir.resume_path(run_dir))
    if not isinstance(meta, dict):
        return None
    return {k: meta.get(k) for k in ("epoch", "batch", "step", "generation")}


def capture_rng(prefix: str = "rng.") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and NumPy RNG states as JSON lists; torch CPU (and CUDA) states as uint8 tensors named `prefix`..."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "cuda_devices": 0,
    }
    tensors = {f"{prefix}torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        meta["cuda_devices"] = len(states)
        tensors.update({f"{prefix}cuda.{i}": s for i, s in enumerate(states)})
    return meta, tensors


def rank_prefix(rank: int) -> str:
    """The tensor-name prefix of a DDP rank's RNG states in a checkpoint (rank 0 keeps the plain `rng.`)."""
    return "rng." if rank == 0 else f"rng.rank{rank}."


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str = "rng.") -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors[f"{prefix}torch"])
    n = int(meta.get("cuda_devices", 0))
    if n and torch.cuda.is_available() and torch.cuda.device_count() == n:
        torch.cuda.set_rng_state_all([tensors[f"{prefix}cuda.{i}"] for i in range(n)])


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        entry = {}
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
                entry[key] = "__tensor__"
            else:
                entry[key] = value
        scalars[str(idx)] = entry
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": scalars, "param_groups": groups}, tensors


def _optimizer_from_flat(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {k: tensors[f"optim.{idx}.{k}"] if v == "__tensor__" else v for k, v in entry.items()}
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]  # fmt: skip
    return {"state": state, "param_groups": groups}
