"""The Ray executor against a real local Ray cluster (one per module, as Ray's testing guide advises: starting one
takes seconds): progress while a run trains, cancel, a job whose process is killed then resumed, a two-trial
search running both trials at once, and the jobs CLI on Ray. The runs report through their run dir; the store is
written by this process only."""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
from job_polling import finished as _done
from job_polling import wait_status as _wait

from classifier import rundir
from classifier.cli import main
from classifier.jobs.executor import job_path
from classifier.jobs.ray import RayExecutor
from classifier.store import RunStore
from classifier.training import TrainConfig
from classifier.workspace import workspace_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster with its dashboard (the Jobs API) on a free port, 2 CPUs, a small object store."""
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    ctx = ray.init(
        address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
        _temp_dir=temp, object_store_memory=100 * 2**20, log_to_driver=False,
    )  # fmt: skip
    yield f"http://{ctx.dashboard_url}"
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("raydata") / "data", n_per_class=8, size=32, seed=2)


def _cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=6, batch_size=4,
                num_workers=0, device="cpu", seed=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_a_run_on_ray_shows_progress_while_training_and_never_writes_sqlite(ray_address, data, tmp_path):
    store = RunStore(tmp_path / "app-side.sqlite")  # the app's store, outside the workspace the job sees
    ex = RayExecutor(ray_address, store=store)
    rid = ex.submit(_cfg(data, epochs=20), name="on ray")
    assert ex.status(rid).status in ("queued", "running") and ex.status(rid).name == "on ray"
    seen_running = _wait(ex, rid, lambda s: _done(s) or (s.status == "running" and (s.progress.get("step") or 0) > 0))
    assert seen_running.status == "running", "finished before any progress was seen"
    assert 0 < seen_running.progress["fraction"] < 1 and seen_running.progress["epochs"] == 20
    grew = _wait(ex, rid, lambda s: _done(s) or len(ex.history(rid)) >= 1)
    assert grew.status == "running" or len(ex.history(rid)) >= 1
    s = _wait(ex, rid, _done)
    assert s.status == "completed", ex.logs(rid)
    assert s.progress["fraction"] == 1.0 and s.started_at and s.ended_at >= s.started_at and s.error is None
    assert {"accuracy", "macro_f1", "best_epoch"} <= set(s.metrics)
    assert [h["epoch"] for h in ex.history(rid)] == list(range(1, 21)) and "val_acc" in ex.history(rid)[0]
    assert rundir.has_weights(s.run_dir) and rundir.read_progress(s.run_dir)["status"] == "completed"
    assert not (workspace_dir() / "runs.sqlite").exists(), "the Ray job opened the SQLite store"
    assert "Running entrypoint" in ex.logs(rid) and f"--run-id {rid}" in ex.logs(rid)
    assert [j.run_id for j in ex.list()] == [rid]
    ex.delete(rid)
    assert not s.run_dir.exists() and store.get(rid) is None and not job_path(rid).exists()


def test_cancel_on_ray_stops_the_run_within_a_batch(ray_address, data):
    ex = RayExecutor(ray_address)
    rid = ex.submit(_cfg(data, epochs=500))
    _wait(ex, rid, lambda s: _done(s) or (s.progress.get("step") or 0) >= 2)
    t0 = time.time()
    ex.cancel(rid)
    s = _wait(ex, rid, _done, timeout=60)
    assert s.status == "cancelled" and time.time() - t0 < 30, s
    assert rundir.resume_path(s.run_dir).is_file()  # the checkpoint where it stopped
    deadline = time.time() + 30  # the process exits right after its final report
    while not (job := ex.client.get_job_info(rid)).status.is_terminal():
        assert time.time() < deadline
        time.sleep(0.2)
    assert str(job.status).rsplit(".", 1)[-1] == "SUCCEEDED"  # it ended itself, not stopped by Ray


def test_a_killed_ray_job_is_interrupted_and_resumes_from_its_checkpoint(ray_address, data):
    ex = RayExecutor(ray_address)
    rid = ex.submit(_cfg(data, epochs=15, checkpoint_every_steps=1))
    _wait(ex, rid, lambda s: _done(s) or (s.progress.get("step") or 0) >= 4)
    report = rundir.read_progress(ex.status(rid).run_dir)
    os.kill(int(report["pid"]), signal.SIGKILL)  # the job's process, as if its node were lost
    s = _wait(ex, rid, _done, timeout=60)
    assert s.status == "interrupted" and "Ray job" in s.error, s
    step = rundir.checkpoint_state(rundir.resume_path(s.run_dir))["step"]
    assert step >= 4
    ex.resume(rid)
    assert ex.status(rid).status in ("queued", "running")
    s = _wait(ex, rid, _done)
    assert s.status == "completed", ex.logs(rid)
    assert s.progress["resumed_from"]["step"] >= step  # continued, not started over
    assert [h["epoch"] for h in ex.history(rid)] == list(range(1, 16))
    logs = ex.logs(rid)
    assert f"--- Ray job {rid} ---" in logs and f"--- Ray job {rid}-resume1 ---" in logs


def test_a_two_trial_search_on_ray_runs_both_trials_at_once(ray_address, data):
    from classifier.search import create_search, run_search

    ex = RayExecutor(ray_address)
    # 40 epochs (about 6 s each here): long enough that a trial starting a process later still overlaps the other
    spec = create_search(_cfg(data, epochs=40), {"lr": [1e-3, 3e-3]}, sampler="grid", parallel=2, prune=False)
    spec = run_search(spec["id"], executor=ex, poll=0.3)
    assert spec["status"] == "completed" and [t["state"] for t in spec["trials"]] == ["completed", "completed"]
    a, b = (ex.status(t["run_id"]) for t in spec["trials"])
    assert a.started_at < b.ended_at and b.started_at < a.ended_at, "the two trials did not overlap"


def test_jobs_cli_on_ray(ray_address, data, tmp_path, capsys):
    request = tmp_path / "cfg.json"
    request.write_text(json.dumps(_cfg(data, epochs=2).to_dict()))
    on_ray = ["--executor", "ray", "--ray-address", ray_address]
    assert main(["jobs", "submit", "--config-json", str(request), "--name", "cli on ray", *on_ray]) == 0
    rid = json.loads(capsys.readouterr().out)["run_id"]
    deadline = time.time() + 180
    while True:
        assert main(["jobs", "status", rid, "--json", *on_ray]) == 0
        status = json.loads(capsys.readouterr().out)
        if status["status"] not in ("queued", "running") or time.time() > deadline:
            break
        time.sleep(0.3)
    assert status["status"] == "completed" and status["name"] == "cli on ray" and status["run_id"] == rid
    assert main(["jobs", "list", *on_ray]) == 0 and rid in capsys.readouterr().out
    assert main(["jobs", "logs", rid, "--tail", "5", *on_ray]) == 0
    assert "completed" in capsys.readouterr().out  # the train command's last line, from Ray's job log
    assert main(["jobs", "delete", rid, "--json", *on_ray]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": rid, "deleted": True}


def test_the_train_page_starts_and_shows_a_ray_run_like_a_local_one(ray_address, monkeypatch):
    """With CLASSIFIER_EXECUTOR=ray the Train page submits to the cluster and shows the run's status, metrics and
    its log (from Ray) the way it shows a local run."""
    from streamlit.testing.v1 import AppTest

    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir

    monkeypatch.setenv("CLASSIFIER_EXECUTOR", "ray")
    monkeypatch.setenv("CLASSIFIER_RAY_ADDRESS", ray_address)
    shapes = make_demo_dataset(datasets_dir() / "shapes", n_per_class=12, size=32, seed=3,
                               classes=("circle", "square", "cross"))  # fmt: skip
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py").run()
    at.selectbox(key="w_data").set_value(str(shapes)).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_epochs_finetune").set_value(2)
    at.number_input(key="w_img").set_value(32)
    at.text_input(key="w_run_name").set_value("ray-ui")
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    deadline = time.time() + 180
    while "completed" not in (text := "\n".join(m.value for m in at.markdown)):
        assert time.time() < deadline and "failed" not in text, text
        time.sleep(1.0)
        at.run()
    assert "ray-ui" in text and {m.label for m in at.metric} >= {"Accuracy", "Macro F1"}
    rid = RayExecutor(ray_address).list()[0].run_id
    at.toggle(key=f"log_{rid}").set_value(True).run()
    assert any("Running entrypoint" in c.value for c in at.code), "the Ray job's log is not shown"
