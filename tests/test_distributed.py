"""DDP through torchrun: the rank-aware sampler and the launcher's root cause (fast), then real two-process gloo runs
on the CPU (slow): parity with one process, validation equal to one process scoring the same weights, resume after a
killed rank, cancel, and a failing rank's error reaching the launcher."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from job_polling import wait_status as _wait

from classifier import jobs, rundir
from classifier.cli import main
from classifier.jobs import LocalProcessExecutor
from classifier.training import TrainConfig
from classifier.training.distributed import RankFailure, RankInterrupted, first_failure, launch
from classifier.training.resume import EpochSampler, shard

# Per-step loss of 2 ranks x batch B/2 against 1 process x batch B: the same samples and the same mean gradient, so
# only float32 summation order differs (measured: at most 3e-7 on these runs).
LOSS_ATOL = 1e-5


def _cfg(data, **kw) -> TrainConfig:
    # float32 (amp off): under bf16 autocast, on CPUs that have it, half batches round differently
    base = dict(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=3, batch_size=4,
                num_workers=0, device="cpu", seed=0, drop_rate=0.0, augment="none", checkpoint_every_steps=1,
                nproc=2, amp=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """5 classes x 8 images, 32 px: 30 training images (batches of 8: 8, 8, 8, 6), 10 for validation."""
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("ddp") / "data", n_per_class=8, size=32, seed=1)


@pytest.fixture
def test_module(tmp_path, monkeypatch):
    """Write a module the ranks can import (`python -m NAME` through `launch(..., module=NAME)`)."""

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        return name

    return write


# --- the sampler and the launcher's bookkeeping (no processes) ------------------------------------------------------


@pytest.mark.parametrize("n,per_rank,world,start", [(30, 4, 2, 0), (30, 4, 2, 16), (31, 3, 3, 0), (5, 4, 2, 0)])
def test_ranks_share_out_each_global_batch_of_the_one_process_order(n, per_rank, world, start):
    order = EpochSampler(list(range(n)), seed=3).order(2)
    shards = [shard(order, start, per_rank, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
    step = per_rank * world
    for b, g in enumerate(range(start, n, step)):
        batch = order[g : g + step]
        size = -(-len(batch) // world)
        got = [x for s in shards for x in s[b * per_rank : b * per_rank + size]]  # earlier batches were full
        assert got[: len(batch)] == batch  # rank order = the single process's batch
        assert got[len(batch) :] == [order[i % n] for i in range(len(got) - len(batch))]  # padding: the order's start
    ranked = [EpochSampler(list(range(n)), seed=3, rank=r, world=world) for r in range(world)]
    for r, s in enumerate(ranked):
        s.per_rank = per_rank
        s.set_epoch(2, start=start)
        assert list(s) == shards[r] and len(s) == len(shards[r])


def test_first_failure_names_the_killed_rank_before_the_peers_it_broke():
    def failure(exitcode, message="", ts=10):
        data = {"message": message} if message else {"message": "<NONE>"}
        name = signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>"
        return SimpleNamespace(exitcode=exitcode, message=message, timestamp=ts, error_file_data=data,
                               signal_name=lambda: name)  # fmt: skip

    killed = first_failure({0: failure(1, "RuntimeError: Connection closed by peer", ts=9), 1: failure(-9)})
    assert isinstance(killed, RankInterrupted) and killed.rank == 1 and "SIGKILL" in str(killed)
    failed = first_failure({0: failure(1, "non-finite loss at epoch 1", ts=12), 1: failure(1, "boom", ts=11)})
    assert isinstance(failed, RankFailure) and failed.rank == 1 and str(failed) == "rank 1: boom"
    user = first_failure({0: failure(2, "dataset x: no images")})
    assert user.user_error and "no images" in str(user)
    silent = first_failure({1: failure(3)})
    assert "exited with code 3" in str(silent) and not silent.user_error
    # recorded its error, then aborted while the process group tore down (seen in a full test run): it failed
    aborted = first_failure({0: failure(-15), 1: failure(-6, "RuntimeError: boom", ts=9)})
    assert isinstance(aborted, RankFailure) and str(aborted) == "rank 1: RuntimeError: boom"


class ThreadGroup:
    """Ranks as threads: barrier and rank 0's broadcast, the two collectives the decode cache needs."""

    def __init__(self, world: int):
        import threading

        self.world, self.box = world, [None]
        self._barrier = threading.Barrier(world, timeout=60)

    def rank(self, r: int):
        group = self

        class Rank:
            rank, world = r, group.world

            def barrier(self):
                group._barrier.wait()

            def broadcast(self, obj):
                if r == 0:
                    group.box[0] = obj
                group._barrier.wait()
                out = group.box[0]
                group._barrier.wait()
                return out

        return Rank()


def test_ranks_decode_their_share_into_one_cache_file(data, tmp_path, monkeypatch):
    """Two ranks (threads here) build the cache together: each decodes half of the missing images into the one file,
    which then equals a single process's cache image for image, and opening it again decodes nothing."""
    import collections
    import threading

    from classifier.data import cache
    from classifier.data.cache import open_cache

    decode, by_thread = cache._Decode.__getitem__, collections.Counter()

    def counted(self, i):
        by_thread[threading.current_thread().name] += 1
        return decode(self, i)

    monkeypatch.setattr(cache._Decode, "__getitem__", counted)
    paths = sorted(data.rglob("*.png"))
    group, out, errors = ThreadGroup(2), {}, []

    def rank(r: int) -> None:
        try:
            out[r] = open_cache(paths, key=str(data), side=36, mode="disk", group=group.rank(r))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(2)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert not errors and len(out) == 2
    assert by_thread == {"rank0": len(paths) // 2, "rank1": len(paths) // 2}  # 40 images: 20 each
    assert out[0].decoded == out[1].decoded == len(paths)  # the images decoded between them
    alone = open_cache(paths, key=str(tmp_path / "elsewhere"), side=36, mode="memory")
    assert alone.decoded == len(paths)
    for r in (0, 1):
        assert all(np.array_equal(out[r].tensor(i).numpy(), alone.tensor(i).numpy()) for i in range(len(paths)))
    again = open_cache(paths, key=str(data), side=36, mode="disk")
    assert again.decoded == 0 and not list(again.file.parent.glob(".*.tmp"))


# --- two gloo processes on the CPU ---------------------------------------------------------------------------------


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return rundir.load_weights(run_dir)


def _single_process_val(run_dir: Path, cfg: TrainConfig) -> dict:
    """The run's best weights scored by one process through the same data path as training."""
    from classifier.data.dataset import load_dataset
    from classifier.models.factory import model_from_run_config
    from classifier.training.events import FitState
    from classifier.training.learner import Learner
    from classifier.training.setup import TrainingSetup, split_data

    config = rundir.read_config(run_dir)
    model = model_from_run_config(config, _weights(run_dir))
    c = replace(cfg, nproc=None).resolved()
    setup = TrainingSetup(c, split_data(load_dataset(c.data), c), model, config["data_config"])
    setup.prepare(lambda *_: None)
    _, val_loader = setup.loaders(c.batch_size)
    state = FitState(c, None, model, 1, 1, len(setup.data.train), len(setup.data.val))
    return Learner(setup, state, []).evaluate(val_loader)


@pytest.mark.slow
def test_two_ranks_with_half_batches_follow_one_process_and_validate_like_it(data, tmp_path, test_module):
    """2 gloo ranks x batch 4 against 1 process x batch 8: loss per step within LOSS_ATOL, the same weights; the
    gathered validation equals one process scoring the DDP run's weights; config.json records nproc."""
    from classifier.training import Callback, fit

    class Steps(Callback):
        order = 40

        def __init__(self):
            self.losses = []

        def on_batch_end(self, state):
            self.losses.append(state.loss)

    one = Steps()
    fit(_cfg(data, nproc=None, batch_size=8), tmp_path / "one", [one])
    module = test_module("ddp_steps", """
        import json, os, sys
        from classifier.training import Callback, TrainConfig, fit

        class Steps(Callback):
            order = 40
            losses = []
            def on_batch_end(self, state):
                self.losses.append(state.loss)

        cfg = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
        fit(cfg, sys.argv[2], [Steps()])
        if os.environ["RANK"] == "0":
            open(sys.argv[3], "w").write(json.dumps(Steps.losses))
    """)  # fmt: skip
    cfg = _cfg(data)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    t0 = time.time()
    launch(2, [str(tmp_path / "cfg.json"), str(tmp_path / "two"), str(tmp_path / "steps.json")], module=module)
    print(f"2-rank run: {time.time() - t0:.1f} s")
    two = json.loads((tmp_path / "steps.json").read_text())
    assert len(two) == len(one.losses) == 3 * 4
    assert np.allclose(two, one.losses, rtol=0, atol=LOSS_ATOL), list(zip(one.losses, two))
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    config = rundir.read_config(tmp_path / "two")
    assert config["train"]["nproc"] == 2 and config["runtime"]["nproc"] == 2 and config["runtime"]["backend"] == "gloo"
    # Validation: every rank scored a slice; the run's metrics are those of one process on the same weights.
    single = _single_process_val(tmp_path / "two", cfg)
    stored = rundir.read_val_predictions(tmp_path / "two")
    assert np.allclose(stored.probs, single["probs"], atol=2e-6)
    metrics = rundir.read_metrics(tmp_path / "two")
    assert metrics["n_val"] == 10 and metrics["accuracy"] == pytest.approx(single["acc"])
    history = rundir.read_history(tmp_path / "two")
    assert history["val_loss"].iloc[-1] == pytest.approx(single["loss"], abs=1e-6) or metrics["best_epoch"] < 3


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _rank_pids(job_pid: int) -> dict[int, int]:
    """{rank: pid} of the torchrun ranks under a job's process (the job is torchrun's agent)."""
    ranks = {}
    for pid in _children(job_pid):
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def _wait_log(run_id: str, text: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while text not in (jobs.log_path(run_id).read_text() if jobs.log_path(run_id).exists() else ""):
        assert time.time() < deadline, jobs.log_path(run_id).read_text()
        time.sleep(0.1)


def _gone(pids) -> bool:
    return all(not Path(f"/proc/{p}").exists() or "Z" in Path(f"/proc/{p}/stat").read_text().split()[2] for p in pids)


@pytest.mark.slow
def test_a_killed_rank_interrupts_the_run_and_resume_finishes_it_exactly(data, tmp_path, monkeypatch):
    """Augmentation and dropout on (each rank its own random stream): a job whose rank 1 is killed mid-epoch shows
    as interrupted naming rank 1; resume ends with the weights and history of an uninterrupted run."""
    cfg = _cfg(data, augment="light", drop_rate=0.2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config-json", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    ex = LocalProcessExecutor()
    # Rank 0 pauses right after checkpoint 5 (step 5, inside epoch 2) is in place: rank 1 waits for it, and dies there.
    monkeypatch.setenv(rundir.CHECKPOINT_HOOK_ENV, "after:5:120")
    rid = ex.submit(cfg)
    _wait_log(rid, "checkpoint 5 paused after replace")
    ranks = _rank_pids(ex.store.get(rid)["pid"])
    assert set(ranks) == {0, 1}
    os.kill(ranks[1], signal.SIGKILL)
    s = _wait(ex, rid, lambda s: s.status not in ("queued", "running"), timeout=60)
    assert s.status == "interrupted" and "rank 1" in s.error and "SIGKILL" in s.error, s
    deadline = time.time() + 30
    while not _gone(ranks.values()):
        assert time.time() < deadline, "a rank outlived the run"
        time.sleep(0.1)
    assert jobs.resumable(s) and jobs.resume_info(s)["step"] == 5
    monkeypatch.delenv(rundir.CHECKPOINT_HOOK_ENV)
    ex.resume(rid)
    s = _wait(ex, rid, lambda s: s.status not in ("queued", "running"))
    assert s.status == "completed", jobs.log_path(rid).read_text()
    ref, got = _weights(tmp_path / "ref"), _weights(s.run_dir)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ from the uninterrupted run"
    a, b = rundir.read_history(tmp_path / "ref"), rundir.read_history(s.run_dir)
    cols = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert a[cols].equals(b[cols])
    assert [h["epoch"] for h in ex.history(rid)] == [1, 2, 3]
    assert not rundir.resume_path(s.run_dir).exists()


@pytest.mark.slow
def test_cancel_stops_every_rank_within_a_batch(data):
    ex = LocalProcessExecutor()
    rid = ex.submit(_cfg(data, epochs=400, checkpoint_every_steps=0))
    s = _wait(ex, rid, lambda s: s.status == "running" and (s.progress.get("step") or 0) >= 3)
    ranks = _rank_pids(ex.store.get(rid)["pid"])
    t0 = time.time()
    ex.cancel(rid)
    s = _wait(ex, rid, lambda s: s.status not in ("queued", "running"), timeout=30)
    assert s.status == "cancelled" and time.time() - t0 < 10, s
    deadline = time.time() + 15
    while not _gone(ranks.values()):
        assert time.time() < deadline, "a rank kept training after the cancel"
        time.sleep(0.1)
    point = jobs.resume_info(s)
    assert point is not None and 3 <= point["step"] < 400 * 4  # a checkpoint where every rank stopped
    assert "rank" not in (s.error or "")


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_run_with_its_error(data, tmp_path, test_module):
    module = test_module("ddp_fail", """
        import os, sys
        from classifier.cli import main
        from classifier.training.learner import Learner

        batch = Learner._batch

        def failing(self, drawn):
            if os.environ["RANK"] == "1" and self.state.step == 2:
                raise RuntimeError("boom in rank 1 at step 3")
            batch(self, drawn)

        Learner._batch = failing
        sys.exit(main(sys.argv[1:]))
    """)  # fmt: skip
    cfg = _cfg(data)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(RankFailure) as e:
        launch(2, ["train", "--config-json", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "r"), "--quiet"],
               module=module)  # fmt: skip
    assert e.value.rank == 1 and str(e.value) == "rank 1: RuntimeError: boom in rank 1 at step 3"


@pytest.mark.slow
def test_a_linear_probe_from_python_shares_out_the_features_and_matches_one_process(data, tmp_path):
    """fit() called with nproc outside torchrun launches the ranks itself; a linear probe's frozen features are
    computed a share per rank and gathered, so the head trains as one process's does."""
    from classifier.training import fit

    one = fit(_cfg(data, nproc=None, batch_size=8, mode="linear", epochs=4), tmp_path / "one")
    two = fit(_cfg(data, mode="linear", epochs=4), tmp_path / "two")
    assert two.status == "completed" and two.run_dir == tmp_path / "two" and len(two.history) == 4
    assert rundir.read_config(two.run_dir)["runtime"]["nproc"] == 2
    a, b = _weights(one.run_dir), _weights(two.run_dir)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert np.allclose([h["train_loss"] for h in one.history], [h["train_loss"] for h in two.history], atol=LOSS_ATOL)
    assert two.metrics["accuracy"] == pytest.approx(one.metrics["accuracy"])
