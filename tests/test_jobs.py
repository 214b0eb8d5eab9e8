"""Background jobs: the run store, and real training processes that queue, finish, cancel, fail and die."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
from job_polling import finished as _done
from job_polling import wait_status

from classifier import jobs
from classifier.cli import main
from classifier.errors import ClassifierError
from classifier.jobs import INTERRUPTED_ERROR, LocalProcessExecutor, StoreCallback, default_executor
from classifier.store import RunStore
from classifier.training import TrainConfig
from classifier.training.events import FitState
from classifier.workspace import runs_dir, workspace_dir

_wait = partial(wait_status, every=0.05)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(tmp_path) -> Path:
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path / "data", n_per_class=8, size=48)


def _cfg(data, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        backbone="simple_cnn",
        weights="none",
        img_size=32,
        epochs=2,
        batch_size=8,
        num_workers=0,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


# --- the store ---------------------------------------------------------------------------------------------------


def test_store_create_update_get_list_delete(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    store.create("a", "first", {"epochs": 2}, "runs/a")
    time.sleep(0.01)
    store.create("b", "second", {"epochs": 3}, "runs/b", device="cuda", status="running")
    store.update("a", status="running", pid=123, metrics={"accuracy": 0.5}, error=None)
    store.set_progress("a", {"fraction": 0.5, "loss": math.nan})
    store.add_epoch("a", {"epoch": 2, "val_acc": 0.6})
    store.add_epoch("a", {"epoch": 1, "val_acc": 0.4})
    store.add_epoch("a", {"epoch": 2, "val_acc": 0.7})  # the same epoch again replaces the row
    a = store.get("a")
    assert a["status"] == "running" and a["pid"] == 123 and a["name"] == "first" and a["device"] == "cpu"
    assert a["config"] == {"epochs": 2} and a["metrics"] == {"accuracy": 0.5}
    assert a["progress"] == {"fraction": 0.5, "loss": None}  # NaN is stored as null
    assert a["history"] == [{"epoch": 1, "val_acc": 0.4}, {"epoch": 2, "val_acc": 0.7}]
    assert a["updated_at"] >= a["created_at"]
    listed = store.list()
    assert [r["id"] for r in listed] == ["b", "a"] and "history" not in listed[0]  # newest first
    assert [r["id"] for r in store.list(limit=1)] == ["b"]
    assert not store.transition("b", ["queued"], status="cancelled") and store.get("b")["status"] == "running"
    assert store.transition("b", ["running"], status="completed") and store.get("b")["status"] == "completed"
    with pytest.raises(ValueError):
        store.update("a", nonsense=1)
    with pytest.raises(ValueError):
        store.update("a", status="exploded")
    store.delete("a")
    assert store.get("a") is None and [r["id"] for r in store.list()] == ["b"]
    assert RunStore().path == workspace_dir() / "runs.sqlite"


def test_store_two_processes_write_at_once(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    for rid in ("p0", "p1"):
        store.create(rid, rid, {}, "x")
    script = textwrap.dedent(
        """
        import sys
        from classifier.store import RunStore
        s = RunStore(sys.argv[1])
        for i in range(50):
            s.update(sys.argv[2], status="running", progress={"step": i})
            s.add_epoch(sys.argv[2], {"epoch": i})
            s.update("p0" if sys.argv[2] == "p1" else "p1", error=str(i))  # both write the same rows too
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), rid], cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for rid in ("p0", "p1")]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for rid in ("p0", "p1"):
        row = store.get(rid)
        assert row["progress"] == {"step": 49} and len(row["history"]) == 50


def test_store_callback_throttles_progress(tmp_path):
    class Counting(RunStore):
        writes: list = []

        def set_progress(self, run_id, progress):
            self.writes.append(progress)

    store = Counting(tmp_path / "runs.sqlite")
    state = FitState(TrainConfig(), tmp_path, None, epochs=2, steps_per_epoch=1000, n_train=8000, n_val=10)
    cb = StoreCallback(store, "r")
    state.phase = "train"
    cb.on_epoch_start(state)
    for _ in range(1000):
        state.step += 1
        cb.on_batch_end(state)
    assert 1 <= len(store.writes) <= 3  # a burst of batches: one write, not a thousand
    state.phase = "val"
    cb.on_batch_end(state)  # a phase change always writes
    assert store.writes[-1]["phase"] == "val" and store.writes[-1]["step"] == 1000
    assert set(store.writes[-1]) >= {"phase", "epoch", "epochs", "batch", "steps_per_epoch", "step", "total_steps",
                                     "fraction", "loss", "lr", "images_per_sec", "eta_seconds", "phase_done",
                                     "phase_total"}  # fmt: skip


# --- reconciling and deleting without training ----------------------------------------------------------------------


def test_dead_or_reused_pid_becomes_interrupted_and_delete_refuses_active():
    ex = default_executor()
    dead = subprocess.Popen(["true"])
    dead.wait()
    ex.store.create("dead", "dead", {}, str(runs_dir() / "dead"), status="running")
    ex.store.update("dead", pid=dead.pid)
    ex.store.create("reused", "reused", {}, str(runs_dir() / "reused"), status="queued")
    ex.store.update("reused", pid=os.getpid())  # alive, but not a process of this run (pid reuse)
    ex.store.create("fresh", "fresh", {}, str(runs_dir() / "fresh"))  # submit has not recorded the pid yet
    ex.store.create("done", "done", {}, str(runs_dir() / "done"), status="completed")
    ex.store.update("done", pid=dead.pid)
    # A live process whose command line names the run stands in for a training process.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "live"])
    try:
        ex.store.create("live", "live", {}, str(runs_dir() / "live"), status="running")
        ex.store.update("live", pid=live.pid)
        (runs_dir() / "live").mkdir()
        statuses = {s.run_id: s for s in ex.list()}
        assert statuses["dead"].status == "interrupted" and statuses["dead"].error == INTERRUPTED_ERROR
        assert statuses["dead"].ended_at is not None
        assert statuses["reused"].status == "interrupted"
        assert statuses["fresh"].status == "queued" and statuses["done"].status == "completed"
        assert statuses["live"].status == "running"
        with pytest.raises(ClassifierError, match="cancel"):
            ex.delete("live")
        assert (runs_dir() / "live").is_dir() and ex.store.get("live") is not None
    finally:
        live.kill()
        live.wait()
    assert ex.status("live").status == "interrupted"
    ex.delete("live")
    assert not (runs_dir() / "live").exists() and ex.store.get("live") is None
    with pytest.raises(ClassifierError):
        ex.status("live")
    with pytest.raises(ClassifierError):
        ex.status("../etc")


def test_cli_train_needs_data_or_config_json(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "--data" in capsys.readouterr().err
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"data": "demo"}))
    argv = ["train", "--config-json", str(request), "--out", str(tmp_path / "run"), "--run-id", "never-submitted"]
    assert main(argv) == 2  # a deleted run's process must not bring its row back
    assert "unknown run id" in capsys.readouterr().err and RunStore().get("never-submitted") is None


# --- real training processes -------------------------------------------------------------------------------------


def test_two_submits_queue_then_both_complete(data):
    ex = LocalProcessExecutor()
    ids = [ex.submit(_cfg(data, epochs=3), name=f"run {i}") for i in range(2)]
    assert ex.status(ids[0]).name == "run 0" and ex.status(ids[0]).status in ("queued", "running")
    seen_queue = False
    deadline = time.time() + 120
    while not all(_done(ex.status(r)) for r in ids):
        a, b = (ex.status(r).status for r in ids)
        assert (a, b) != ("running", "running"), "two runs trained at once on one device"
        seen_queue |= {a, b} == {"running", "queued"}
        assert time.time() < deadline, (a, b)
        time.sleep(0.05)
    assert seen_queue, "never saw one run running while the other waited"
    for rid in ids:
        s = ex.status(rid)
        assert s.status == "completed", (s, jobs.log_path(rid).read_text())
        assert s.progress["fraction"] == 1.0 and s.progress["phase"] == "done"
        assert s.started_at >= s.created_at and s.ended_at >= s.started_at and s.error is None
        assert {"accuracy", "macro_f1", "roc_auc_macro", "ece", "best_epoch", "n_val"} <= set(s.metrics)
        history = ex.store.get(rid)["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3] and "val_acc" in history[0]
        assert (s.run_dir / "model.safetensors").is_file() and s.run_dir == runs_dir() / rid
    # The two runs did not overlap: the second took the device lock after the first had ended.
    first, second = sorted((ex.status(r) for r in ids), key=lambda s: s.started_at)
    assert second.started_at >= first.ended_at
    assert [s.run_id for s in ex.list()] == list(reversed(ids))


def test_cancel_while_running_stops_within_a_batch_and_keeps_the_checkpoint(data):
    ex = default_executor()
    rid = ex.submit(_cfg(data, epochs=500, batch_size=4))
    _wait(ex, rid, lambda s: s.status == "running" and len(ex.store.get(rid)["history"]) >= 1)
    with pytest.raises(ClassifierError):
        ex.delete(rid)  # refuses while running
    t0 = time.time()
    ex.cancel(rid)
    s = _wait(ex, rid, _done, timeout=30)
    assert s.status == "cancelled" and time.time() - t0 < 10, s
    assert 1 <= len(ex.store.get(rid)["history"]) < 500
    assert (s.run_dir / "model.safetensors").is_file() and s.metrics["best_epoch"] >= 1
    ex.delete(rid)
    assert not s.run_dir.exists() and not jobs.log_path(rid).exists() and ex.store.get(rid) is None
    assert not jobs.cancel_flag_path(rid).exists() and not jobs.request_path(rid).exists()


def test_killed_process_becomes_interrupted(data):
    ex = default_executor()
    rid = ex.submit(_cfg(data, epochs=500, batch_size=4))
    s = _wait(ex, rid, lambda s: s.status == "running" and s.progress.get("step", 0) > 0)
    os.killpg(ex.store.get(rid)["pid"], signal.SIGKILL)  # the child leads its own session and process group
    s = _wait(ex, rid, _done, timeout=15)
    assert s.status == "interrupted" and s.error == INTERRUPTED_ERROR and s.ended_at is not None


def test_bad_dataset_path_fails_with_the_path_in_the_error(tmp_path, capsys):
    # The child's side in this process (`python -m classifier train --run-id`), to spare a torch import.
    store = RunStore()
    missing = tmp_path / "no-such-dataset"
    request = tmp_path / "request.json"
    request.write_text(json.dumps(_cfg(missing).to_dict()))
    store.create("bad", "bad", {}, str(runs_dir() / "bad"))
    argv = ["train", "--config-json", str(request), "--out", str(runs_dir() / "bad"), "--run-id", "bad"]
    assert main(argv) == 2  # recorded, then re-raised: the CLI's user-error exit code
    s = default_executor().status("bad")
    assert s.status == "failed" and str(missing) in s.error and "\n" not in s.error and s.ended_at, s
    assert str(missing) in capsys.readouterr().err


def test_queued_run_sees_its_cancel_flag_while_waiting_for_the_device(data):
    # The child's side in a thread of this process: the test holds the cpu lock, so the run has to wait.
    import fcntl
    import threading

    store = RunStore()
    store.create("waiting", "waiting", {}, str(runs_dir() / "waiting"))
    result: dict = {}
    lock_path = workspace_dir() / "locks" / "cpu.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = lambda: result.update(r=jobs.run_job("waiting", _cfg(data), runs_dir() / "waiting"))
        t = threading.Thread(target=run)
        t.start()
        time.sleep(1.5)
        assert store.get("waiting")["status"] == "queued" and t.is_alive()
        jobs.cancel_flag_path("waiting").touch()  # only the flag: the child itself must end the run
        t.join(timeout=10)
        assert not t.is_alive()
    assert result["r"] is None and store.get("waiting")["status"] == "cancelled"
    assert store.get("waiting")["ended_at"] and not (runs_dir() / "waiting").exists()


def test_catalogue_lists_runs_ensembles_and_searches_as_one_kind_of_entry(two_runs):
    """Runs (from the executor's store), saved ensembles and searches come back as JobStatus entries with their
    kind, distinct ids, names, statuses and metrics; `kinds` filters."""
    import shutil

    from classifier.ensemble import build_ensemble, ensembles_dir
    from classifier.jobs.catalogue import ENSEMBLE_PREFIX, SEARCH_PREFIX, entries
    from classifier.search import create_search

    store = RunStore()
    for i, src in enumerate(two_runs):
        dst = runs_dir() / f"r{i}"
        shutil.copytree(src, dst)
        store.create(f"r{i}", f"run {i}", {"backbone": "simple_cnn"}, str(dst), status="completed")
        store.update(f"r{i}", metrics={"accuracy": 0.5 + i / 10})
    build_ensemble([runs_dir() / "r0", runs_dir() / "r1"], ensembles_dir() / "e1", name="pair")
    spec = create_search(TrainConfig(data="demo", backbone="simple_cnn", weights="none"), {"lr": [0.1, 0.01]},
                         sampler="grid", name="lr grid")  # fmt: skip

    listed = entries(executor=default_executor())
    assert [e.kind for e in listed] == ["run", "run", "ensemble", "search"]
    assert len({e.run_id for e in listed}) == 4
    runs, ens, search = listed[:2], listed[2], listed[3]
    assert {e.run_id for e in runs} == {"r0", "r1"} and {e.metrics["accuracy"] for e in runs} == {0.5, 0.6}
    assert ens.run_id == ENSEMBLE_PREFIX + "e1" and ens.name.startswith("pair") and ens.status == "completed"
    assert ens.metrics["accuracy"] is not None and [m["run_id"] for m in ens.members] == ["r0", "r1"]
    assert search.run_id == SEARCH_PREFIX + spec["id"] and search.name == "lr grid"
    assert search.status in ("queued", "interrupted") and search.metrics["metric"] == "accuracy"
    assert [e.kind for e in entries(("ensemble", "search"))] == ["ensemble", "search"]
    with pytest.raises(ValueError, match="unknown catalogue kinds"):
        entries(("runs",))


HUNG = textwrap.dedent("""
    import fcntl, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a process that ignores the polite stop as well
    lock = open(sys.argv[1], "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("holding", flush=True)
    time.sleep(600)  # run id in argv: {run_id}
""")


def test_cancel_escalates_to_terminate_then_kill_and_frees_the_device_lock(monkeypatch, tmp_path):
    import fcntl

    from classifier.jobs import local

    monkeypatch.setattr(local, "CANCEL_GRACE_S", 0.5)
    ex = LocalProcessExecutor()
    lock = workspace_dir() / "locks" / "cpu.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "hung.py"
    script.write_text(HUNG.format(run_id="r-hung"))
    proc = subprocess.Popen([sys.executable, str(script), str(lock), "r-hung"], stdout=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout.readline().strip() == b"holding"
    ex.store.create("r-hung", "hung", {}, str(runs_dir() / "r-hung"), status="running")
    ex.store.update("r-hung", pid=proc.pid)
    ex.cancel("r-hung")
    assert ex.status("r-hung").status == "running"  # within the grace period: asked, not forced
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        ex.status("r-hung")  # each look escalates as time passes: SIGTERM (ignored), then SIGKILL
        time.sleep(0.2)
    assert proc.returncode == -signal.SIGKILL
    assert ex.status("r-hung").status == "cancelled"
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the device lock is free again


def test_delete_moves_into_the_trash_and_refuses_folders_outside_the_workspace(tmp_path):
    ex = LocalProcessExecutor()
    inside = runs_dir() / "r-done"
    (inside / "sub").mkdir(parents=True)
    (inside / "model.safetensors").write_bytes(b"x")
    ex.store.create("r-done", "done", {}, str(inside), status="completed")
    ex.delete("r-done")
    assert not inside.exists() and ex.store.get("r-done") is None
    assert list((workspace_dir() / "trash").iterdir()) == []  # moved there, then removed
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    ex.store.create("r-evil", "tampered", {}, str(outside), status="completed")
    with pytest.raises(ClassifierError, match="not inside the workspace; nothing was deleted"):
        ex.delete("r-evil")
    assert (outside / "keep.txt").read_text() == "mine" and ex.store.get("r-evil") is not None
