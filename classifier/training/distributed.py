"""Several processes on one machine: PyTorch DistributedDataParallel (DDP), launched through torchrun.

`python -m classifier train --nproc N ...` re-launches itself with the same arguments through
`torch.distributed.run` (`launch`): N processes ("ranks"), NCCL with one GPU each on CUDA, gloo on the CPU. In each
rank `fit` joins the process group (`join`) and trains the same learner, with these differences:

- data: each epoch's order still comes from (seed, epoch) alone; it is cut into global batches of N x batch size
  and rank r trains on the r-th slice of each (`classifier.training.resume.shard`), so N ranks with batch B/N see
  the batches one process with batch B sees, and a resumed epoch skips exactly what was trained. Each rank decodes
  its share of the images into the one decode cache, and computes its share of a linear probe's features;
- gradients: DDP averages them during backward; the learning-rate schedule counts global steps;
- per step: one all-reduce carries the step's loss sum, hits and images, rank 0's cancel flag and rank 0's
  "checkpoint now" (`RankSync`): every rank stops at the same batch and the history's figures are global;
- validation: each rank scores a contiguous slice and the probabilities are gathered in order, so the metrics are
  those of one process scoring the same weights (`TrainingSetup.gather_val`);
- files: rank 0 alone writes the run dir, checkpoints (holding every rank's RNG states), progress and logs.

A rank that fails writes its one-line error to torchrun's error file (`record_error`); `launch` turns the first
failure into `RankFailure` (an error: the run failed) or `RankInterrupted` (a rank was killed: resume it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.device import seed_everything
from classifier.environ import environ
from classifier.errors import ClassifierError, RunError
from classifier.training.events import Callback, CancelFit, FitState

RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")  # what torchrun sets in every rank
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # where torchrun wants a failing rank's error (JSON)
USER_ERROR_EXIT = 2  # a rank's exit code for a user error (the CLI's), so the launcher can re-raise it as one
MONITOR_INTERVAL_S = 0.1  # how often torchrun looks at its ranks: a dead rank stops the others within this


class RankFailure(ClassifierError):
    """A rank failed with an error: the run failed. `user_error`: the rank's error was the user's (exit code 2)."""

    def __init__(self, message: str, rank: int, user_error: bool = False):
        super().__init__(message)
        self.rank, self.user_error = rank, user_error


class RankInterrupted(RunError):
    """A rank was killed (a signal, not an error of its own): the run is interrupted and can be resumed."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


def in_rank() -> bool:
    """Whether this process is a rank started by torchrun."""
    return all(k in os.environ for k in RANK_ENV)


def env_rank() -> int:
    """This process's rank (0 outside torchrun): decides who writes before the process group exists."""
    return int(os.environ.get("RANK", "0")) if in_rank() else 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random stream (augmentation, dropout); rank 0 keeps the run's seed."""
    return seed if rank == 0 else (int(seed) * 7_368_787 + rank * 2_654_435_761) & 0x7FFF_FFFF


@dataclass
class Ranks:
    """This process's place in a DDP run and the collectives the rest of training uses."""

    rank: int
    world: int
    local_rank: int
    backend: str  # gloo | nccl
    agreed: dict[str, bool] = field(default_factory=dict)  # RankSync's last agreement: cancel, checkpoint

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: its own GPU on CUDA (local rank r uses GPU r)."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64."""
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (pickled between our own processes)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, n: int) -> range:
        """This rank's contiguous slice of `n` items (the first ranks take one more when n does not divide)."""
        per, extra = divmod(n, self.world)
        lo = self.rank * per + min(self.rank, extra)
        return range(lo, lo + per + (self.rank < extra))

    def wrap(self, module: nn.Module, find_unused: bool = False) -> nn.Module:
        """`module` in DistributedDataParallel (gradients averaged over the ranks during backward).

        `find_unused`: parameters may stop (or start) receiving gradients during the run, as with a head warm-up;
        DDP then looks for them every step instead of waiting for gradients that never come.
        """
        ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def join(nproc: int | None, device: torch.device) -> Ranks | None:
    """Join torchrun's process group in a rank (None outside torchrun); checks the world is `nproc` ranks."""
    if not in_rank():
        return None
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    if nproc != world:
        raise RunError(f"torchrun started {world} processes but the run asks for nproc {nproc}")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), world, local_rank, backend)


class RankSync(Callback):
    """The per-step agreement of a DDP run: one all-reduce after each batch (and at the start of training and of each
    epoch) of the step's loss sum, hits and images, rank 0's `should_cancel()` and rank 0's `checkpoint_due(state)`.

    Every rank then holds the global figures of the step (the history and progress are the whole batch's), raises
    `CancelFit` at the same batch, and writes (rank 0) or gathers for (the others) a checkpoint at the same step.
    Ranks other than 0 start their own random stream (`rank_seed`) unless a checkpoint restored it.
    """

    order = -60  # after Resume (-100); before every callback that reads the step's figures or the agreement

    def __init__(
        self,
        ranks: Ranks,
        should_cancel: Callable[[], bool] | None = None,
        checkpoint_due: Callable[[FitState], bool] | None = None,
    ):
        self.ranks, self.should_cancel, self.checkpoint_due = ranks, should_cancel, checkpoint_due
        self.before: dict[str, Any] = {}

    def _agree(self, state: FitState, values: Sequence[float], checkpoint: bool = False) -> list[float]:
        flags = [0.0, 0.0]
        if self.ranks.main:
            flags = [float(bool(self.should_cancel and self.should_cancel())),
                     float(bool(checkpoint and self.checkpoint_due and self.checkpoint_due(state)))]  # fmt: skip
        out = self.ranks.all_sum([*values, *flags])
        self.ranks.agreed = {"cancel": out[-2] > 0, "checkpoint": out[-1] > 0}
        return out[:-2]

    def on_train_start(self, state: FitState) -> None:
        if state.resumed_from is None and not self.ranks.main:
            seed_everything(rank_seed(state.config.seed, self.ranks.rank))
        self._agree(state, [])
        if self.ranks.agreed["cancel"]:
            raise CancelFit()

    def on_epoch_start(self, state: FitState) -> None:
        self._agree(state, [])
        if self.ranks.agreed["cancel"]:
            raise CancelFit()

    def on_batch_start(self, state: FitState) -> None:
        self.before = dict(state.position)

    def on_batch_end(self, state: FitState) -> None:
        pos, b = state.position, self.before
        keys = ("seen", "loss_sum", "correct")
        totals = self._agree(state, [pos[k] - b[k] for k in keys], checkpoint=True)
        for k, v in zip(keys, totals):
            pos[k] = b[k] + (int(v) if k != "loss_sum" else v)
        global_batch = state.batch_size * self.ranks.world
        pos["samples"] = b["samples"] + min(global_batch, state.n_train - b["samples"])
        state.loss = totals[1] / max(1.0, totals[0])
        if self.ranks.agreed["cancel"]:
            raise CancelFit()


# --- the launcher's side -------------------------------------------------------------------------------------------


def launch(nproc: int, argv: Sequence[str], module: str = "classifier") -> None:
    """Run `python -m classifier ARGV` (or another `module`) as `nproc` ranks through torchrun
    (`torch.distributed.run`) on this machine and wait for them. Raises `RankFailure` or `RankInterrupted` for the
    rank that failed first."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args([
        "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", f"--monitor-interval={MONITOR_INTERVAL_S}",
        "-m", module,
    ])  # fmt: skip
    args.training_script_args = list(argv)  # set, not parsed: torchrun's parser would read our --nproc as its own
    with _rank_environment(nproc):
        try:
            run(args)
        except ChildFailedError as e:
            raise first_failure(e.failures) from None


@contextmanager
def _rank_environment(nproc: int) -> Iterator[None]:
    """What the ranks inherit: this package importable, and the CPU threads shared out between them (torchrun's
    default is one thread per rank, which leaves cores idle on a CPU run)."""
    package_root = str(Path(__file__).resolve().parents[2])
    changes = {
        "PYTHONPATH": os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc)),
    }
    with environ(changes):
        yield


def first_failure(failures: dict[int, Any]) -> RankFailure | RankInterrupted:
    """The root cause among torchrun's failed ranks ({rank: ProcessFailure}): a rank killed by a signal other than
    the SIGTERM torchrun itself sends (the others lose their peer because of it), else the earliest error. A rank
    that recorded its own error and then died of a signal while shutting down (seen: SIGABRT from the process group's
    teardown after an exception) failed with that error; it was not killed."""
    killed = {
        r: f for r, f in failures.items() if f.exitcode < 0 and f.exitcode != -signal.SIGTERM and not _recorded(f)
    }
    if killed:
        rank = min(killed)
        return RankInterrupted(f"rank {rank} of the DDP run was killed ({killed[rank].signal_name()})", rank)
    rank = min(failures, key=lambda r: (failures[r].timestamp, r))
    f = failures[rank]
    wrote = _recorded(f)
    if f.exitcode < 0 and not wrote:
        return RankInterrupted(f"rank {rank} of the DDP run was stopped ({f.signal_name()})", rank)
    message = (f.message if wrote and isinstance(f.message, str) else "") or (
        f"exited with code {f.exitcode} without an error message (see the log)"
    )
    return RankFailure(f"rank {rank}: {message}", rank, user_error=f.exitcode == USER_ERROR_EXIT)


def _recorded(failure: Any) -> bool:
    """Whether the rank left its own error message (torchrun's marker for "no error file" is "<NONE>")."""
    return (failure.error_file_data or {}).get("message") not in (None, "<NONE>")


# --- the rank's side -----------------------------------------------------------------------------------------------


def record_error(message: str) -> None:
    """Leave this rank's one-line error where torchrun reads it (its error file, in the JSON shape torchrun's own
    error handler writes), so the launcher can show it."""
    file = os.environ.get(ERROR_FILE_ENV)
    if not file:
        return
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    Path(file).write_text(json.dumps({"message": message, "timestamp": str(int(time.time()))}), encoding="utf-8")


def prepare_rank() -> None:
    """Make this rank stop with its launcher: SIGTERM (torchrun stopping the ranks after one failed) raises
    SystemExit so `finally` blocks run, and on Linux the kernel sends SIGTERM when the launcher dies, because
    torchrun starts every rank in a session of its own, out of reach of a signal to the launcher's group."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() == 1:  # the launcher died before prctl
            sys.exit(128 + signal.SIGTERM)
