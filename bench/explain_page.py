"""Explain page in a real browser: seconds until the first attribution map is on screen and until all of them are.

    python bench/explain_page.py --workspace WS --run RUN_ID [--baseline-root DIR] [--repeats 3] [--split-cpus]

Starts `streamlit run app.py` from this checkout (`--app-root`) on the workspace `WS` (which holds the run), opens
/explain?run=RUN_ID in headless Chromium (Debian's /usr/bin/chromium, Playwright) and polls the page every 50 ms;
with `--baseline-root` (another checkout, e.g. a `git archive` of an earlier commit) it serves that one too on the
next port and alternates the visits, so both see the same load, then prints the ratios. Each visit is a fresh
browser session, so the per-session map cache is empty and the default maps (Grad-CAM, integrated gradients,
saliency) of the first validation image are computed. Times are from the
navigation; "original" is when the image and its prediction are shown.

`--script-only`: no server and no browser; the page script's own seconds in AppTest (a fresh session per repeat,
pinned to CPU 0), the server-side work alone.

`--split-cpus`: the server on CPU 0 and the browser on CPU 1. On a 2-core machine the headless browser otherwise
renders the first maps on the cores that compute the slow ones, which a user's own browser would not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# A map's caption reads "<label> · 1.23 s ..."; the original's "Original · W×H px".
PROBE = """() => {
  const caps = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')].map(e => e.innerText);
  return {original: caps.some(t => t.startsWith('Original ·')),
          maps: caps.filter(t => /^[A-Za-z][^·]* · \\d+\\.\\d+ s/.test(t))
                    .map(t => t.split(' · ').slice(0, 2).join(' '))};
}"""


def serve(app_root: Path, workspace: Path, port: int, cpus: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]  # fmt: skip
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(workspace), "PYTHONPATH": str(app_root)}
    proc = subprocess.Popen(cmd, cwd=app_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("streamlit did not start")


def one_visit(browser, url: str, n_maps: int, timeout_s: float = 300) -> dict[str, float]:
    """Open the page in a new context (a new session) and note when the original and each map appear."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    start = time.monotonic()
    page.goto(url)
    seen: dict[str, float] = {}
    computed: dict[str, float] = {}
    while time.monotonic() - start < timeout_s:
        state = page.evaluate(PROBE)
        now = time.monotonic() - start
        if state["original"]:
            seen.setdefault("original", now)
        for caption in state["maps"]:  # "Grad-CAM 0.12 s": the method and the seconds its map took
            name, took = caption.rsplit(" ", 2)[0], caption.split(" ")[-2]
            seen.setdefault(name, now)
            computed[name] = float(took)
        if len(seen) > n_maps:
            break
        time.sleep(0.05)
    context.close()
    order = [k for k in seen if k != "original"]
    times = sorted(seen[k] for k in order)
    nan = float("nan")
    return {"original": seen.get("original", nan), "first": times[0] if times else nan,
            "all": times[-1] if len(times) == n_maps else nan, "order": order, "computed": computed}  # fmt: skip


def measure(roots: list[Path], a: argparse.Namespace) -> list[dict[str, float]]:
    """Serve every checkout in `roots` (one port each), warm each up, then visit them in turn `a.repeats` times
    (interleaved, so they share the machine's load alike); the medians per checkout."""
    from playwright.sync_api import sync_playwright

    procs = [serve(r.resolve(), a.workspace.resolve(), a.port + i, "0" if a.split_cpus else None)
             for i, r in enumerate(roots)]  # fmt: skip
    mask = os.sched_getaffinity(0)
    if a.split_cpus:
        os.sched_setaffinity(0, {1})  # the browser Playwright starts inherits it
    rows: list[list[dict]] = [[] for _ in roots]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
            urls = [f"http://127.0.0.1:{a.port + i}/explain?run={a.run}" for i in range(len(roots))]
            for url in urls:
                one_visit(browser, url, 3)  # warm-up: imports, model load, caches
            for i in range(a.repeats):
                for root, url, out in zip(roots, urls, rows):
                    r = one_visit(browser, url, 3)
                    out.append(r)
                    shown = ", ".join(f"{k} ({r['computed'][k]:.2f} s)" for k in r["order"])
                    print(f"{root.name} repeat {i + 1}: original {r['original']:.1f} s, first map {r['first']:.1f} s, "
                          f"all three {r['all']:.1f} s; {shown}; load {os.getloadavg()[0]:.1f}")  # fmt: skip
            browser.close()
    finally:
        os.sched_setaffinity(0, mask)
        for proc in procs:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    meds = []
    for root, out in zip(roots, rows):
        med = {k: statistics.median(r[k] for r in out) for k in ("original", "first", "all")}
        print(f"{root}: median original {med['original']:.1f} s, first map {med['first']:.1f} s, all three "
              f"{med['all']:.1f} s")  # fmt: skip
        meds.append(med)
    return meds


SCRIPT_TIMING = """
import os, sys, time
from streamlit.testing.v1 import AppTest
os.sched_setaffinity(0, {0})
root, run, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(repeats + 1):  # the first is the warm-up
    at = AppTest.from_file(os.path.join(root, "app.py"), default_timeout=600)
    at.query_params["run"] = run
    at.run()
    start = time.perf_counter()
    at.switch_page("app_pages/explain.py").run()
    assert not at.exception, at.exception
    if i:
        print(f"{time.perf_counter() - start:.2f}")
"""


def script_seconds(app_root: Path, a: argparse.Namespace) -> float:
    """Median seconds of the Explain page script in AppTest (map cache empty), in a process of that checkout."""
    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(a.workspace.resolve()), "PYTHONPATH": str(app_root.resolve())}
    out = subprocess.run([sys.executable, "-c", SCRIPT_TIMING, str(app_root.resolve()), a.run, str(a.repeats)],
                         cwd=app_root, env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    seconds = [float(line) for line in out.split()]
    print(f"app {app_root}: page script {', '.join(f'{x:.2f}' for x in seconds)} s; load {os.getloadavg()[0]:.1f}")
    return statistics.median(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True, type=Path)
    ap.add_argument("--run", required=True, help="run id in the workspace's run store")
    ap.add_argument("--app-root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--baseline-root", type=Path, help="another checkout (e.g. a `git archive` of main) to measure "
                    "right after this one; prints the ratios")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--split-cpus", action="store_true", help="server on CPU 0, browser on CPU 1")
    ap.add_argument("--script-only", action="store_true", help="time the page script in AppTest, no browser")
    a = ap.parse_args()
    if a.script_only:
        this = script_seconds(a.app_root, a)
        if a.baseline_root:
            print(f"page script: {this / script_seconds(a.baseline_root, a):.2f}x the baseline's time")
        return
    print(f"load average {os.getloadavg()[0]:.1f}")
    meds = measure([a.app_root, *([a.baseline_root] if a.baseline_root else [])], a)
    if a.baseline_root:
        this, base = meds
        print(f"first map on screen: {base['first'] / this['first']:.2f}x sooner than the baseline; all three maps: "
              f"{this['all'] / base['all']:.2f}x the baseline's time")  # fmt: skip


if __name__ == "__main__":
    main()
