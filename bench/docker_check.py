"""Build the image and check that it runs as a shared server should, with buildah (no Docker engine needed).

    python bench/docker_check.py --static                  # the Dockerfile, .dockerignore and compose files only
    python bench/docker_check.py --build                   # + a Debian base (debootstrap), the image, then run it
    python bench/docker_check.py --image localhost/classifier:check   # run checks on an image built before

Building: `debootstrap` makes a minimal Debian bookworm root from Debian's packages, `buildah import`s it as the
base image, and `buildah bud --storage-driver vfs --isolation chroot` builds the Dockerfile on it with
`BASE_IMAGE` pointing there. The PyTorch CPU index may be unreachable (it is from the development machines): then
`--torch-index pypi --torch-spec "torch==X torchvision==Y"` installs from the ordinary index, and `--wheels DIR`
(mounted for the build only) lets pip take a local wheel first (torch and torchvision must come from the same
index: PyPI's torchvision does not load next to a `+cpu` torch). `--ca FILE` hands pip the CA bundle of a
TLS-inspecting proxy, also for the build only.

Running (each check prints ok/FAIL; exit 1 on any failure): the server answers `/_stcore/health`; its processes run
as the unprivileged user (uid 1000), never root; the code under /app belongs to root and that user cannot write it;
a demo-data run submitted through the job system completes inside and its files (model, metrics) land in the host
folder mounted as the workspace. A `FIGURES` line gives the seconds each step took and the image size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from live_app import free_port, healthy  # noqa: E402  (the browser tests' server helpers, as cloud_memory.py uses)

BUILDAH = ["buildah", "--storage-driver", "vfs"]
APP_UID = 1000


def static_problems(root: Path = ROOT) -> list[str]:
    """What the Dockerfile, .dockerignore and the compose files lack for a shared server ([] when nothing)."""
    problems = []
    docker = (root / "Dockerfile").read_text(encoding="utf-8")
    need = {
        r"^ARG BASE_IMAGE=": "a BASE_IMAGE argument",
        r"@sha256:": "digest pinning documented (BASE_IMAGE=...@sha256:...)",
        r'^ENTRYPOINT \["/usr/bin/tini", "--"\]': "tini as the entry point (an init that reaps run processes)",
        r"^USER 1000$": "the server as the unprivileged user",
        r"^COPY --chown=root:root \. \.": "the code owned by root",
        r"chmod -R go-w /app": "the code not writable by the server's user",
        r"^HEALTHCHECK [\s\S]*?_stcore/health": "a health check",
    }
    problems += [f"Dockerfile: {what}" for pattern, what in need.items() if not re.search(pattern, docker, re.M)]
    ignored = set((root / ".dockerignore").read_text(encoding="utf-8").split())
    for entry in (".venv", "venv", ".env", ".env.*", ".streamlit/secrets.toml", ".git", "workspace"):
        if entry not in ignored:
            problems.append(f".dockerignore: {entry}")
    import yaml

    for name in ("compose.yaml", "compose.server.yaml"):
        compose = yaml.safe_load((root / name).read_text(encoding="utf-8"))
        for service, spec in compose["services"].items():
            limits = spec.get("deploy", {}).get("resources", {}).get("limits", {})
            for key in ("memory", "pids"):
                if key not in limits:
                    problems.append(f"{name}: {service} has no {key} limit")
            if spec.get("init") is not True:
                problems.append(f"{name}: {service} without init: true")
    server = yaml.safe_load((root / "compose.server.yaml").read_text(encoding="utf-8"))["services"]["app"]
    if server.get("read_only") is not True:
        problems.append("compose.server.yaml: the app's root file system is not read-only")
    return problems


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def build_base(work: Path, tag: str = "localhost/debian-bookworm-debootstrap:latest") -> str:
    """A minimal Debian bookworm image from Debian's packages: debootstrap, then buildah from scratch (an image of
    that tag made before is reused: debootstrap downloads and unpacks about 130 MB)."""
    if subprocess.run([*BUILDAH, "inspect", "--type", "image", tag], capture_output=True).returncode == 0:
        return tag
    rootfs = work / "rootfs"
    if not (rootfs / "bin").exists():
        sh(["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", str(rootfs),
            "http://deb.debian.org/debian"])  # fmt: skip
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    tar = work / "base.tar"
    sh(["tar", "-C", str(rootfs), "-cf", str(tar), "."])
    ctr = sh([*BUILDAH, "from", "scratch"]).stdout.strip()
    try:
        sh([*BUILDAH, "add", ctr, str(tar), "/"])
        path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        sh([*BUILDAH, "config", "--cmd", "/bin/bash", "--env", path, ctr])
        sh([*BUILDAH, "commit", ctr, tag])
    finally:
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)
    return tag


def build_image(base: str, tag: str, a: argparse.Namespace) -> None:
    cmd = [*BUILDAH, "bud", "--isolation", "chroot", "--layers=false", "--format", "docker", "--build-arg",
           f"BASE_IMAGE={base}", "--build-arg", f"TORCH_INDEX={a.torch_index}", "--build-arg",
           f"TORCH_SPEC={a.torch_spec}", "-t", tag]  # fmt: skip
    if a.wheels:
        cmd += ["-v", f"{a.wheels}:/wheels:ro", "--build-arg", "WHEELS=/wheels"]
    if a.ca:
        cmd += ["-v", f"{a.ca}:/etc/pip-ca.crt:ro", "--build-arg", "PIP_CA=/etc/pip-ca.crt"]
    subprocess.run([*cmd, str(ROOT)], check=True)


def _pids_with(marker: str) -> list[int]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return -1


def run_checks(image: str) -> dict:
    """Run the image's server and a demo-data run; returns {"checks": {name: ok}, "figures": {...}}."""
    checks, figures = {}, {}
    ws = Path(tempfile.mkdtemp(prefix="classifier-docker-ws-"))
    os.chown(ws, APP_UID, APP_UID)
    ctr = sh([*BUILDAH, "from", image]).stdout.strip()
    # buildah mounts an image's VOLUME over a -v bind of the same path; docker run -v replaces it. Drop it here so
    # the bind mount (the host folder) is what the container sees, as with docker.
    sh([*BUILDAH, "config", "--volume", "/workspace-", ctr])
    run = [*BUILDAH, "run", "--isolation", "chroot", "-v", f"{ws}:/workspace", ctr, "--"]
    port = free_port()
    config = json.loads(sh([*BUILDAH, "inspect", "--type", "image", image]).stdout)["Docker"]["config"]
    command = [*config["Entrypoint"], *config["Cmd"]]
    command = [c.replace("--server.port=8501", f"--server.port={port}") for c in command]
    server = subprocess.Popen([*run, *command], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    marker = f"--server.port={port}"
    try:
        t0 = time.monotonic()
        checks["health endpoint answers ok"] = _wait_healthy(f"http://127.0.0.1:{port}", 180)
        figures["health_s"] = round(time.monotonic() - t0, 1)
        pids = [p for p in _pids_with(marker) if b"buildah" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        uids = {_uid(p) for p in pids}
        name = f"server processes run as uid {APP_UID} ({len(pids)} found, uids {sorted(uids)})"
        checks[name] = bool(pids) and uids == {APP_UID}
        probe = "id -u; stat -c %U /app /app/app.py; touch /app/x 2>/dev/null && echo writable || echo read-only"
        lines = subprocess.run([*run, "sh", "-c", probe], capture_output=True, text=True).stdout.split()
        name = f"code owned by root and read-only for the server's user ({' '.join(lines)})"
        checks[name] = lines == [str(APP_UID), "root", "root", "read-only"]
        t0 = time.monotonic()
        job = subprocess.run([*run, "python", "-c", _RUN_SCRIPT], capture_output=True, text=True, timeout=1200)
        figures["demo_run_s"] = round(time.monotonic() - t0, 1)
        result = json.loads(job.stdout.strip().splitlines()[-1]) if job.stdout.strip() else {}
        checks[f"a demo-data run completes inside ({result.get('status')})"] = result.get("status") == "completed"
        run_dir = ws / "runs" / str(result.get("run_id"))
        landed = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
        owned = {_owner_uid(p) for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        checks[f"its files land in the mounted workspace ({len(landed)} files, uid {sorted(owned)})"] = {
            "model.safetensors",
            "metrics.json",
            "config.json",
        } <= set(landed) and owned == {APP_UID}
        if job.returncode != 0 or not result:
            print(job.stdout[-2000:], job.stderr[-2000:], file=sys.stderr)
    finally:
        for pid in _pids_with(marker):  # the server and tini inside; buildah's own process last
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in _pids_with(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            server.wait(timeout=20)
        subprocess.run([*BUILDAH, "rm", ctr], capture_output=True)
        shutil.rmtree(ws, ignore_errors=True)
    return {"checks": checks, "figures": figures}


def _owner_uid(p: Path) -> int:
    return p.stat().st_uid


def _wait_healthy(url: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not healthy(url):
        if time.monotonic() > end:
            return False
        time.sleep(1)
    return True


# Inside the container, as the server's user: the demo data, a linear probe submitted through the job system (the
# run's process starts when the device is free), polled until it ends; prints {"run_id", "status"}.
_RUN_SCRIPT = """
import json, time
from classifier.data.demo import ensure_demo_dataset
from classifier.jobs import default_executor
from classifier.training import TrainConfig
ensure_demo_dataset()
ex = default_executor()
rid = ex.submit(TrainConfig(data="demo", backbone="efficientnet_lite0", mode="linear", epochs=2), name="docker-check")
while ex.status(rid).status in ("queued", "running"):
    time.sleep(1)
print(json.dumps({"run_id": rid, "status": ex.status(rid).status, "error": ex.status(rid).error}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--static", action="store_true", help="only the static checks of the files")
    p.add_argument("--build", action="store_true", help="build a debootstrap base and the image, then run checks")
    p.add_argument("--image", default="localhost/classifier:check", help="the image to build and/or run")
    p.add_argument("--work", default="/var/tmp/classifier-docker", help="where debootstrap's root goes")
    p.add_argument("--torch-index", default="cpu", help="the Dockerfile's TORCH_INDEX (cpu, cu126, pypi)")
    p.add_argument("--torch-spec", default="torch torchvision", help="the Dockerfile's TORCH_SPEC")
    p.add_argument("--wheels", default=None, help="a folder of wheels pip looks in first (build only)")
    p.add_argument("--ca", default=None, help="a CA bundle for pip behind a TLS-inspecting proxy (build only)")
    a = p.parse_args()
    problems = static_problems()
    for problem in problems:
        print(f"FAIL static: {problem}")
    print(f"{'ok' if not problems else 'FAIL'} static checks ({len(problems)} problems)")
    if a.static:
        return 1 if problems else 0
    figures: dict = {}
    if a.build:
        work = Path(a.work)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        base = build_base(work)
        figures["base_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        build_image(base, a.image, a)
        figures["build_s"] = round(time.monotonic() - t0, 1)
    size = json.loads(sh([*BUILDAH, "images", "--json", a.image]).stdout)[0]["size"]
    out = run_checks(a.image)
    for name, ok in out["checks"].items():
        print(f"{'ok' if ok else 'FAIL'} {name}")
    figures.update(out["figures"], image_size=size)
    print("FIGURES", json.dumps(figures))
    return 0 if not problems and all(out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
