"""`python -m classifier jobs ...` on the local executor: submit returns a run id at once, status/list/logs follow the
run, cancel stops it, resume finishes it, delete removes it; --json everywhere; user errors exit 2."""

from __future__ import annotations

import json
import time

import pytest

from classifier.cli import main
from classifier.training import TrainConfig


@pytest.fixture
def data(tmp_path):
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path / "data", n_per_class=8, size=32, seed=4)


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _status(capsys, rid: str) -> dict:
    return _json(capsys, ["jobs", "status", rid, "--json"])


def _wait(capsys, rid: str, until, timeout: float = 300.0) -> dict:
    deadline = time.time() + timeout
    while not until(s := _status(capsys, rid)):
        assert time.time() < deadline, s
        time.sleep(0.1)
    return s


@pytest.mark.slow
def test_jobs_cli_submit_watch_cancel_resume_delete(data, capsys):
    flags = ["--data", str(data), "--backbone", "simple_cnn", "--weights", "none", "--img-size", "32", "--epochs",
             "6", "--batch-size", "4", "--workers", "0", "--device", "cpu"]  # fmt: skip
    t0 = time.time()
    rid = _json(capsys, ["jobs", "submit", *flags, "--name", "from the cli"])["run_id"]
    assert time.time() - t0 < 30  # returned without waiting for the run (torch import included)
    s = _status(capsys, rid)
    assert s["status"] in ("queued", "running") and s["name"] == "from the cli" and s["config"]["epochs"] == 6
    s = _wait(capsys, rid, lambda s: s["status"] != "queued" and (s["progress"].get("step") or 0) >= 2)
    assert s["status"] == "running", s
    assert main(["jobs", "status", rid]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{rid}  running") and "epoch" in line
    assert "step" in line or "Validating" in line  # the step count shows while training, not while validating
    listed = _json(capsys, ["jobs", "list", "--json"])["runs"]
    assert [r["run_id"] for r in listed] == [rid]
    assert _json(capsys, ["jobs", "cancel", rid, "--json"])["run_id"] == rid
    s = _wait(capsys, rid, lambda s: s["status"] not in ("queued", "running"), timeout=30)
    assert s["status"] == "cancelled"
    assert _json(capsys, ["jobs", "resume", rid, "--json"])["status"] in ("queued", "running")
    s = _wait(capsys, rid, lambda s: s["status"] not in ("queued", "running"))
    assert s["status"] == "completed" and s["progress"]["resumed_from"]["step"] >= 2, s
    assert main(["jobs", "logs", rid]) == 0
    assert "--- resumed at" in capsys.readouterr().out
    assert main(["jobs", "logs", rid, "--tail", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"  # the train command's result line
    assert _json(capsys, ["jobs", "delete", rid, "--json"]) == {"run_id": rid, "deleted": True}
    assert _json(capsys, ["jobs", "list", "--json"])["runs"] == []


def test_jobs_cli_user_errors_exit_2(tmp_path, capsys, monkeypatch):
    assert main(["jobs", "status", "no-such-run"]) == 2
    assert "unknown run 'no-such-run'" in capsys.readouterr().err
    assert main(["jobs", "submit", "--backbone", "simple_cnn"]) == 2
    assert "--data" in capsys.readouterr().err
    request = tmp_path / "bad.json"
    request.write_text(json.dumps({**TrainConfig(data="demo").to_dict(), "optimizer": "lion"}))
    assert main(["jobs", "submit", "--config-json", str(request)]) == 2
    assert "optimizer must be one of" in capsys.readouterr().err
    monkeypatch.setenv("CLASSIFIER_EXECUTOR", "slurm")
    assert main(["jobs", "list"]) == 2
    assert "CLASSIFIER_EXECUTOR must be one of local, ray" in capsys.readouterr().err
    monkeypatch.setenv("CLASSIFIER_EXECUTOR", "ray")
    monkeypatch.delenv("CLASSIFIER_RAY_ADDRESS", raising=False)
    assert main(["jobs", "list"]) == 2
    assert "CLASSIFIER_RAY_ADDRESS" in capsys.readouterr().err
    nowhere = ["--ray-address", "http://127.0.0.1:9"]  # nothing listens on port 9
    assert main(["jobs", "submit", "--data", "demo", *nowhere]) == 2
    assert "cannot reach the Ray cluster at http://127.0.0.1:9" in capsys.readouterr().err
    assert _json(capsys, ["jobs", "list", "--json", *nowhere]) == {"runs": []}  # nothing was recorded
