"""The image's hardening, checked from the files (bench/docker_check.py's static checks) on every machine, and by
building and running it where buildah is installed and an image was built (`CLASSIFIER_DOCKER_IMAGE`, e.g.
localhost/classifier:check after `python bench/docker_check.py --build`).

The static checks: tini as PID 1, the unprivileged user, code owned by root and not writable, a health check, a
BASE_IMAGE argument with digest pinning documented, `.dockerignore` leaving out virtual environments, env files and
secrets, every compose service with init, memory and process limits, and the shared server's read-only root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ("Dockerfile", ".dockerignore", "compose.yaml", "compose.server.yaml")


@pytest.fixture(scope="module")
def docker_check():
    spec = importlib.util.spec_from_file_location("docker_check", ROOT / "bench" / "docker_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repositorys_image_files_pass_the_static_checks(docker_check) -> None:
    assert docker_check.static_problems() == []


def test_the_static_checks_name_what_is_missing(docker_check, tmp_path: Path) -> None:
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    docker = tmp_path / "Dockerfile"
    docker.write_text(docker.read_text().replace("USER 1000\n", "").replace("chmod -R go-w /app", "true"))
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("\n".join(x for x in ignore.read_text().split() if x not in (".venv", ".env")))
    server = tmp_path / "compose.server.yaml"
    server.write_text(server.read_text().replace("read_only: true", "read_only: false"))
    problems = docker_check.static_problems(tmp_path)
    assert sorted(problems) == sorted([
        "Dockerfile: the server as the unprivileged user",
        "Dockerfile: the code not writable by the server's user",
        ".dockerignore: .venv",
        ".dockerignore: .env",
        "compose.server.yaml: the app's root file system is not read-only",
    ])  # fmt: skip


@pytest.mark.slow
def test_the_built_image_runs_as_a_shared_server_should(docker_check) -> None:
    image = os.environ.get("CLASSIFIER_DOCKER_IMAGE")
    if not image or shutil.which("buildah") is None:
        pytest.skip("set CLASSIFIER_DOCKER_IMAGE to an image built by bench/docker_check.py --build (needs buildah)")
    out = docker_check.run_checks(image)
    failed = [name for name, ok in out["checks"].items() if not ok]
    assert not failed and len(out["checks"]) == 5, out
