"""compose.yaml, checked without a Docker engine: it is the real topology shrunk (the app, a Ray head, a Ray worker,
one shared workspace volume), the Ray commands and addresses fit together, every service has resource limits, and
what the app and the jobs need to find each other (executor, address, workspace path, auth token) is consistent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from classifier.jobs import EXECUTOR_ENV
from classifier.jobs.ray import ADDRESS_ENV
from classifier.workspace import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def _flags(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in command if a.startswith("--"))


def _mount(service: dict, volume: str) -> str | None:
    return next((v.split(":")[1] for v in service.get("volumes", []) if v.split(":")[0] == volume), None)


def test_three_services_one_image_one_shared_workspace(compose):
    services = compose["services"]
    assert set(services) == {"app", "ray-head", "ray-worker"}
    assert "workspace" in compose["volumes"]
    for name, s in services.items():
        assert s["build"] == "." and s["image"] == "classifier:latest", name  # the same code on every node
        path = _mount(s, "workspace")
        assert path == "/workspace" and s["environment"][ENV_VAR] == path, name  # shared, at the path jobs get


def test_ray_head_and_worker_commands_fit_together(compose):
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert head["command"][:3] == ["ray", "start", "--head"] and "--block" in head["command"]
    assert worker["command"][:2] == ["ray", "start"] and "--block" in worker["command"]  # in the foreground
    hf, wf = _flags(head["command"]), _flags(worker["command"])
    assert hf["dashboard-host"] == "0.0.0.0" and wf["address"] == f"ray-head:{hf['port']}"
    assert int(hf["num-cpus"]) >= 1 and int(wf["num-cpus"]) >= 1
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "/api/gcs_healthz" in " ".join(head["healthcheck"]["test"])  # served without the auth token
    for s in (head, worker):
        assert int(re.match(r"(\d+)gb", s["shm_size"]).group(1)) >= 1  # the object store's /dev/shm


def test_the_app_submits_to_the_head_with_the_ray_executor(compose):
    app, head = compose["services"]["app"], compose["services"]["ray-head"]
    env = app["environment"]
    assert env[EXECUTOR_ENV] == "ray"
    assert env[ADDRESS_ENV] == f"http://ray-head:{_flags(head['command'])['dashboard-port']}"
    assert app["depends_on"]["ray-head"]["condition"] == "service_healthy"
    dockerfile_cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert app["command"] == yaml.safe_load(dockerfile_cmd)  # the image's own way of starting the app
    assert "8501:8501" in app["ports"]


def test_every_service_has_limits_and_the_same_auth(compose):
    tokens = set()
    for name, s in compose["services"].items():
        limits = s["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[mg]", limits["memory"]), name
        assert s["environment"]["RAY_AUTH_MODE"] == "token", name
        tokens.add(s["environment"]["RAY_AUTH_TOKEN"])
    assert len(tokens) == 1 and tokens.pop().startswith("${RAY_AUTH_TOKEN:?")  # required, never a default secret


def test_the_image_installs_what_the_ray_executor_needs():
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^ray\[default\]", requirements, re.M)  # the Jobs API client is in ray[default]
    assert "requirements.txt" in (ROOT / "Dockerfile").read_text()
