"""Peak memory of the Community Cloud setup: the server plus one linear-probe run on the demo data, together.

    python bench/cloud_memory.py                  # streamlit run cloud/streamlit_app.py, driven by Chromium
    python bench/cloud_memory.py --entry app.py   # the same with the root entry point

Starts the server from the repository root the way Community Cloud does (`streamlit run cloud/streamlit_app.py`), opens
Home in headless Chromium, clicks "Try it on the demo dataset" (which picks the linear probe on a CPU), then "Start
training", and waits for the run to complete. A sampler reads the memory of the server and of every process below it
(the run's process is the server's child) every 0.2 s. The bound is checked on the peak of their summed PSS
(proportional set size: a shared page, such as torch's libraries mapped by both processes, counted once between them,
as a container's memory limit counts it); the peak of the summed VmRSS, which counts those pages once per process,
is printed beside it. Cloud gives an app about 2.7 GB; the bound here is 2.5 GB.

The torch this machine has is the one from the ordinary index (a CUDA build, which loads its CUDA libraries at import
even on a CPU); Cloud installs the CPU-only build from cloud/requirements.txt, which loads less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BOUND_MB = 2500


def proc_mb(pid: int, file: str, field: str) -> float:
    """The kB figure `field` of /proc/PID/`file`, in MB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident set size (shared pages counted in every process that maps them)."""
    return proc_mb(pid, "status", "VmRSS:")


def pss_mb(pid: int) -> float:
    """Proportional set size (shared pages divided among the processes that map them)."""
    return proc_mb(pid, "smaps_rollup", "Pss:")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/*/stat parent links)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


class Sampler(threading.Thread):
    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root, self.stop = root_pid, False
        self.peak = {"pss": 0.0, "rss": 0.0, "server_rss": 0.0, "run_rss": 0.0, "server_pss": 0.0, "run_pss": 0.0}

    def run(self) -> None:
        while not self.stop:
            pids = descendants(self.root)
            for kind, read in (("rss", rss_mb), ("pss", pss_mb)):
                server, children = read(self.root), sum(read(p) for p in pids[1:])
                self.peak[kind] = max(self.peak[kind], server + children)
                self.peak[f"server_{kind}"] = max(self.peak[f"server_{kind}"], server)
                self.peak[f"run_{kind}"] = max(self.peak[f"run_{kind}"], children)
            time.sleep(0.2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entry", default="cloud/streamlit_app.py", help="the entry point Cloud runs")
    a = p.parse_args()
    from live_app import CHROMIUM, CHROMIUM_ARGS, streamlit_app
    from playwright.sync_api import expect, sync_playwright

    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, streamlit_app(Path(tmp), entry=a.entry) as server:
        sampler = Sampler(server.pid)
        sampler.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server.url}/")
            page.get_by_role("button", name="Try it on the demo dataset").click(timeout=180_000)
            page.get_by_role("heading", level=1, name="Train", exact=True).wait_for(timeout=180_000)
            page.wait_for_timeout(1500)
            t0 = time.monotonic()
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text("✅ completed").first).to_be_visible(timeout=900_000)
            run_s = time.monotonic() - t0
            page.goto(f"{server.url}/evaluate")  # the server loads the model and the results as well
            page.get_by_role("heading", level=1, name="Evaluate", exact=True).wait_for(timeout=180_000)
            page.wait_for_timeout(5000)
            browser.close()
        sampler.stop = True
        sampler.join()
    figures = {
        "entry": a.entry,
        **{f"peak_{k}_mb": round(v) for k, v in sampler.peak.items()},
        "run_s": round(run_s, 1),
        "bound_mb": BOUND_MB,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "torch": subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
    }
    print("FIGURES", json.dumps(figures))
    return 0 if sampler.peak["pss"] < BOUND_MB else 1


if __name__ == "__main__":
    sys.exit(main())
