"""Resume and training faults (BAD_INPUTS rows 15-18), each checked against an uninterrupted run.

Row 15: a training process killed mid-epoch (SIGKILL) resumes from its last checkpoint, by `train --resume`
and through the executor (interrupted → resume → completed), and ends with the same steps, learning rates,
weights and metrics as a run that was never stopped. Row 16: a process killed while writing a checkpoint
leaves the previous one loadable. Row 17: a non-finite loss fails the run naming epoch and step and keeps
the last good checkpoint. Row 18: out of memory halves the batch size and continues, or fails clearly.

Everything trains `simple_cnn` at 32 px on 60 generated images on the CPU with `num_workers=0`, where
training is deterministic, so "the same" means bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classifier import jobs
from classifier.cli import main
from classifier.errors import ClassifierError
from classifier.jobs import default_executor, resumable
from classifier.predict import load_run, predict_items
from classifier.rundir import RESUME as RESUME_FILE
from classifier.training import Callback, TrainConfig, fit
from classifier.training import run as training_run
from classifier.training.resume import HOOK_ENV, load_resume, resume_point

REPO = Path(__file__).resolve().parent.parent
# 60 images, 50 train: 7 steps per epoch (the last of 2 images), 21 in all. Checkpoint generations, every 5 steps
# and at epoch ends: 1 step 5 | 2 end of epoch 1 (step 7) | 3 step 10 | 4 end of epoch 2 (step 14) | 5 step 15 |
# 6 step 20 | 7 end of epoch 3.
SETTINGS = dict(backbone="simple_cnn", weights="none", img_size=32, epochs=3, batch_size=8, lr=3e-3, num_workers=0,
                device="cpu", seed=0, checkpoint_every_steps=5)  # fmt: skip
STEPS = 21


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("resume") / "data", n_per_class=12, size=40, seed=3)


class StepLog(Callback):
    """The learning rate of every optimizer step, by step number."""

    order = -20  # before the cancel check, so a run cancelled "after step N" has logged step N

    def __init__(self):
        self.lr: dict[int, float] = {}

    def on_batch_end(self, s):
        self.lr[s.step] = s.lr


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every resumed one is compared with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    log = StepLog()
    result = fit(_cfg(data), run, [log])
    assert result.status == "completed" and result.history[-1]["step"] == STEPS
    assert not (run / RESUME_FILE).exists()  # a finished run keeps no resume checkpoint
    return {"run": run, "lr": log.lr, "result": result}


def _cfg(data, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), **{**SETTINGS, **kw})


def _env(hook: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != HOOK_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    if hook:
        env[HOOK_ENV] = hook
    return env


def _start_cli(data, run: Path, hook: str) -> subprocess.Popen:
    args = ["--data", str(data), "--out", str(run), "--backbone", "simple_cnn", "--weights", "none", "--img-size",
            "32", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--device", "cpu",
            "--seed", "0", "--checkpoint-every-steps", "5", "--quiet"]  # fmt: skip
    cmd = [sys.executable, "-m", "classifier", "train", *args]
    out = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.Popen(cmd, env=_env(hook), cwd=REPO, start_new_session=True, **out)


def _wait_until(cond, proc: subprocess.Popen | None = None, timeout: float = 120.0):
    deadline = time.time() + timeout
    while not (got := cond()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the training process ended early:\n{proc.stdout.read()}")
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    return got


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()


def _history(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "history.csv")))
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_sec")} for r in rows]


def _assert_same_run(run: Path, ref: Path) -> None:
    """Same steps, per-epoch learning rates, losses, weights, metrics and predictions as the reference run."""
    hist, ref_hist = _history(run), _history(ref)
    assert [(h["epoch"], h["step"], h["lr"]) for h in hist] == [(h["epoch"], h["step"], h["lr"]) for h in ref_hist]
    assert hist == ref_hist  # train/val loss and accuracy to the last digit
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m, ref_m = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert {k: v for k, v in m.items() if k != "train_seconds"} == {
        k: v for k, v in ref_m.items() if k != "train_seconds"
    }
    assert (run / "val_predictions.csv").read_text() == (ref / "val_predictions.csv").read_text()
    assert not (run / RESUME_FILE).exists() and not list(run.glob(".*.tmp"))


# --- row 15: killed mid-epoch, or cancelled ------------------------------------------------------------------------


def test_sigkill_mid_epoch_then_executor_resume_matches_uninterrupted_run(data, reference, monkeypatch):
    # A real `python -m classifier train --run-id` process, killed mid-epoch; resumed in a new process.
    ex = default_executor()
    monkeypatch.setenv(HOOK_ENV, "after:3:120")  # the child pauses after checkpoint 3 (epoch 2 batch 3)
    rid = ex.submit(_cfg(data), name="to be killed")
    run = ex.status(rid).run_dir
    _wait_until(lambda: (resume_point(run) or {}).get("generation") == 3 and ex.status(rid).status == "running")
    os.killpg(ex.store.get(rid)["pid"], signal.SIGKILL)
    s = _wait_until(lambda: (st := ex.status(rid)).status not in ("queued", "running") and st, timeout=15)
    assert s.status == "interrupted" and resumable(s)
    monkeypatch.delenv(HOOK_ENV)

    ex.resume(rid)
    assert ex.status(rid).status in ("queued", "running") and ex.status(rid).error is None
    s = _wait_until(lambda: (st := ex.status(rid)).status not in ("queued", "running") and st)
    assert s.status == "completed", jobs.log_path(rid).read_text()
    assert s.run_id == rid and s.name == "to be killed" and s.progress["step"] == STEPS
    assert s.progress["resumed_from"] == {"epoch": 2, "batch": 3, "step": 10}
    assert [h["epoch"] for h in ex.store.get(rid)["history"]] == [1, 2, 3]
    assert "resumed at" in jobs.log_path(rid).read_text()
    _assert_same_run(run, reference["run"])
    assert not resumable(s)
    with pytest.raises(ClassifierError, match="cannot be resumed"):
        ex.resume(rid)


def test_cancelled_run_resumes_where_it_stopped(data, reference, tmp_path):
    log = StepLog()
    stopped = fit(_cfg(data), tmp_path / "run", [log], should_cancel=lambda: len(log.lr) >= 8)
    assert stopped.status == "cancelled" and resume_point(tmp_path / "run")["step"] == 8
    log = StepLog()
    result = fit(None, tmp_path / "run", [log], resume=True)
    assert result.status == "completed" and sorted(log.lr) == list(range(9, STEPS + 1))
    assert log.lr == {s: reference["lr"][s] for s in range(9, STEPS + 1)}  # the schedule continues step for step
    _assert_same_run(tmp_path / "run", reference["run"])


# --- row 16: killed while a checkpoint is being written ---------------------------------------------------------


def test_sigkill_mid_checkpoint_write_keeps_the_previous_one_and_cli_resume_finishes(data, reference, tmp_path, capsys):
    run = tmp_path / "run"
    # Checkpoint 6 (step 20): half of it goes to the temp file, then the process sleeps and is killed.
    proc = _start_cli(data, run, hook="before:6:120")
    _wait_until(lambda: "paused before" in proc.stdout.readline(), proc)  # the half is on disk now
    _kill(proc)
    [tmp] = run.glob(f".{RESUME_FILE}.*.tmp")
    previous = load_resume(run / RESUME_FILE)  # still loads: the torn write never replaced it
    assert previous.meta["generation"] == 5 and previous.meta["step"] == 15 and previous.meta["epoch"] == 3
    assert tmp.exists() and tmp.stat().st_size < (run / RESUME_FILE).stat().st_size
    assert all(torch.isfinite(v).all() for v in previous.model.values())

    # `python -m classifier train --resume RUN_DIR` (in this process); steps 16-20 died with the kill: done again.
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["status"] == "completed" and final["accuracy"] == reference["result"].metrics["accuracy"]
    _assert_same_run(run, reference["run"])


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_the_dir(data, tmp_path):
    log = StepLog()
    fit(_cfg(data), tmp_path / "run", [log], should_cancel=lambda: len(log.lr) >= 3)
    before = (tmp_path / "run" / RESUME_FILE).read_bytes()
    with pytest.raises(ClassifierError, match="other settings.*lr"):
        fit(_cfg(data, lr=1e-2), tmp_path / "run", resume=True)
    with pytest.raises(ClassifierError, match="already exists"):
        fit(_cfg(data), tmp_path / "run")  # without resume a run dir is never reused
    with pytest.raises(ClassifierError, match="nothing to resume"):
        fit(None, tmp_path / "empty", resume=True)
    assert (tmp_path / "run" / RESUME_FILE).read_bytes() == before


# --- row 17: non-finite loss ---------------------------------------------------------------------------------------


def _patch_forward(monkeypatch, patch):
    """Wrap the forward of every model `fit` builds: `patch(model, x, forward)` runs instead in training mode."""
    real = training_run.build_model

    def build(*args, **kw):
        built = real(*args, **kw)
        model, forward = built.model, built.model.forward
        model.forward = lambda x: patch(model, x, forward) if model.training else forward(x)
        return built

    monkeypatch.setattr(training_run, "build_model", build)


def test_non_finite_loss_fails_with_epoch_and_step_and_keeps_the_last_good_checkpoint(
    data, reference, tmp_path, monkeypatch
):
    calls = {"n": 0}

    def nan_at_step_9(model, x, forward):
        calls["n"] += 1
        out = forward(x)
        return out * float("nan") if calls["n"] == 9 else out

    real_build = training_run.build_model
    _patch_forward(monkeypatch, nan_at_step_9)
    run = tmp_path / "run"
    result = fit(_cfg(data), run)
    assert result.status == "failed"
    assert result.error.startswith("non-finite loss at epoch 2 step 9 (value nan)"), result.error
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    # The last good checkpoint: end of epoch 1 (step 7), finite, and the best model of epoch 1 still predicts.
    last = load_resume(run / RESUME_FILE)
    assert (last.meta["epoch"], last.meta["step"]) == (2, 7)
    assert all(torch.isfinite(v).all() for v in last.model.values())
    probs = predict_items(load_run(run), [next(Path(data).rglob("*.png"))])
    assert probs.shape == (1, 5) and abs(probs.sum() - 1) < 1e-5

    monkeypatch.setattr(training_run, "build_model", real_build)  # without the fault, resuming from that
    assert fit(None, run, resume=True).status == "completed"  # checkpoint gives the uninterrupted run
    _assert_same_run(run, reference["run"])


# --- row 18: out of memory -----------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_size_and_continues(data, reference, tmp_path, monkeypatch, caplog):
    seen = {"calls": 0, "images": 0}
    failed: list[weakref.ref] = []
    freed: list[bool] = []

    def oom_once(model, x, forward):
        seen["calls"] += 1
        if failed and not freed:
            freed.append(failed[0]() is None)  # the retry: the failed batch must be gone by now
        if seen["calls"] == 9:  # epoch 2, second batch, at batch size 8
            failed.append(weakref.ref(x))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        seen["images"] += x.shape[0]
        return forward(x)

    _patch_forward(monkeypatch, oom_once)
    result = fit(_cfg(data), tmp_path / "run")
    assert result.status == "completed", result.error
    assert freed == [True]
    assert seen["images"] == 3 * 50  # every training image once per epoch, the failed batch retried in halves
    assert [int(h["batch_size"]) for h in _history(tmp_path / "run")] == [8, 4, 4]
    # epoch 1: 7 steps; epoch 2: 1 step of 8, then 42 images in 11 steps of 4 or less; epoch 3: 13 steps
    assert [h["step"] for h in result.history] == [7, 19, 32]
    assert "out of memory at batch size 8 on cpu (epoch 2 step 9); continuing with batch size 4" in caplog.text
    # The schedule runs on images seen, not steps, so each epoch still ends at the reference's learning rate.
    assert [h["lr"] for h in result.history] == [h["lr"] for h in reference["result"].history]


def test_persistent_out_of_memory_fails_clearly(data, tmp_path, monkeypatch, capsys):
    sizes = []

    def always_oom(model, x, forward):
        sizes.append(x.shape[0])
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    _patch_forward(monkeypatch, always_oom)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "simple_cnn", "--weights",
            "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--quiet"]  # fmt: skip
    assert main(argv) == 1
    assert sizes == [8, 4, 2, 1]
    err = capsys.readouterr().err
    assert "error: training failed: out of memory at batch size 1 on cpu (epoch 1 step 1); " in err
    assert "try a smaller image size or backbone" in err and "Traceback" not in err
