"""Cost as data grows: summary, cache build, linear probe and one fine-tune epoch at 1k, 5k and 20k generated images.

    python bench/growth.py                       # 1000, 5000, 20000 images (64 px PNG files)
    python bench/growth.py --sizes 500,2000      # quicker

Each step runs as its own process (`python -m classifier ...`, or a short script for the cache), so its peak
memory is that process's own (maximum resident set size from `wait4`), and in a fresh workspace, so nothing is
reused between sizes: `summary` (index, checks, duplicates), the decode-once cache over every image, a linear
probe of efficientnet_lite0 (bundled weights, 64 px, 5 epochs: cache, frozen features, head) and one fine-tune
epoch of simple_cnn at 32 px. Per step: seconds, milliseconds per image and peak MB; growth is linear when the
milliseconds per image stay flat from 1k to 20k (process start and imports, ~2-5 s, weigh most at 1k).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE_SCRIPT = """
import sys
from pathlib import Path
from classifier.data.cache import open_cache
from classifier.data.dataset import load_dataset
index = load_dataset(sys.argv[1])
cache = open_cache([index.root / s.path for s in index.samples], key=str(index.root), side=73,
                   interpolation="bicubic", mode="auto", num_workers=0)
print(cache.describe())
"""


def run_step(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak resident MB of one child process (its own rusage from wait4)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t
    out, err = p.stdout.read().decode(), p.stderr.read().decode()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed: {err.strip()[-400:] or out.strip()[-400:]}")
    return secs, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    a = ap.parse_args()
    from classifier.data.demo import DEMO_CLASSES, make_demo_dataset

    py = sys.executable
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        for n in [int(s) for s in a.sizes.split(",")]:
            data = make_demo_dataset(Path(tmp) / f"data-{n}", n_per_class=-(-n // len(DEMO_CLASSES)), size=64, seed=0)
            env = {**os.environ, "CLASSIFIER_WORKSPACE": str(Path(tmp) / f"ws-{n}"), "PYTHONPATH": str(ROOT)}
            steps = {
                "summary": [py, "-m", "classifier", "summary", "--data", str(data)],
                "cache build": [py, "-c", CACHE_SCRIPT, str(data)],
                "linear probe (5 epochs)": [py, "-m", "classifier", "train", "--data", str(data), "--backbone",
                                            "efficientnet_lite0", "--mode", "linear", "--img-size", "64", "--epochs",
                                            "5", "--out", str(Path(tmp) / f"lin-{n}"), "--quiet"],
                "fine-tune, 1 epoch": [py, "-m", "classifier", "train", "--data", str(data), "--backbone",
                                       "simple_cnn", "--weights", "none", "--mode", "finetune", "--img-size", "32",
                                       "--epochs", "1", "--out", str(Path(tmp) / f"ft-{n}"), "--quiet"],
            }  # fmt: skip
            for name, cmd in steps.items():
                secs, mb = run_step(cmd, env)
                rows.append((n, name, secs, mb))
                print(f"{n} images | {name} | {secs:.1f} s | {secs / n * 1000:.2f} ms/image | peak {mb:.0f} MB",
                      flush=True)  # fmt: skip
    print("\nstep | " + " | ".join(f"{n} images: s, ms/image, MB" for n in sorted({r[0] for r in rows})))
    for name in dict.fromkeys(r[1] for r in rows):
        cells = [f"{s:.1f}, {s / n * 1000:.2f}, {mb:.0f}" for n, nm, s, mb in rows if nm == name]
        print(f"{name} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
