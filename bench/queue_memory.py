"""Memory held by queued runs: a queue that waits in the store against one process per queued run.

    python bench/queue_memory.py            # 30 runs queued behind a busy device; 3 processes for the old way

A run "trains" elsewhere: this script holds the CPU's device lock, so nothing queued can start. Then, side by side:

- the dispatcher (what `LocalProcessExecutor.submit` does now): 30 runs submitted; every queued run is a row in the run
  store and only the run next in line has a process (waiting for the device lock). Measured: processes started and
  their resident memory (VmRSS), and this process's growth.
- one process per queued run (what submit did before): `python -m classifier train ... --run-id` started for 3 runs
  the way the old submit started every run; each imports torch and waits for the lock. Measured per process; 30 of
  them are 30 times that (not started here: about 26 GB would not fit next to the other engineers' work).

Prints one FIGURES line and the load average.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_memory import rss_mb  # noqa: E402  (bench/ is on the path: the script's own folder)

QUEUED = 30
OLD_WAY = 3
SETTLE_S = 40.0  # long enough for a started process to import torch and reach the lock


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="queue-memory-")
    os.environ["CLASSIFIER_WORKSPACE"] = str(Path(tmp) / "workspace")
    from classifier.data.demo import make_demo_dataset
    from classifier.io import atomic_write_json
    from classifier.jobs import LocalProcessExecutor, launcher, log_path, new_run_id, request_path
    from classifier.store import RunStore
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir, workspace_dir

    data = make_demo_dataset(Path(tmp) / "data", n_per_class=4, size=32)
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=1, num_workers=0,
                      device="cpu")  # fmt: skip
    lock_path = workspace_dir() / "locks" / "cpu.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    held = open(lock_path, "a+")  # noqa: SIM115 - held for the whole measurement
    fcntl.flock(held, fcntl.LOCK_EX)
    load = os.getloadavg()
    own_before = rss_mb(os.getpid())

    ex = LocalProcessExecutor()
    t0 = time.monotonic()
    ids = [ex.submit(cfg, name=f"queued {i}") for i in range(QUEUED)]
    submit_s = time.monotonic() - t0
    time.sleep(SETTLE_S)
    ex.list()  # a page's poll: nothing else may start
    new_procs = [p for p in launcher.children() if p.poll() is None]
    new_mb = sum(rss_mb(p.pid) for p in new_procs)
    rows = [RunStore().get(i) for i in ids]
    queued = sum(r["status"] == "queued" for r in rows)
    own_after = rss_mb(os.getpid())

    old = []
    for _ in range(OLD_WAY):  # the old submit: a row and a process for every run, whatever the queue
        run_id = new_run_id()
        request = atomic_write_json(request_path(run_id), cfg.resolved().to_dict())
        RunStore().create(run_id, "old way", cfg.to_dict(), str(runs_dir() / run_id))
        out = str(runs_dir() / run_id)
        args = ["train", "--config-json", str(request), "--out", out, "--run-id", run_id, "--quiet"]
        old.append((run_id, launcher.launch(args, log_path(run_id), run_id)))
    time.sleep(SETTLE_S)
    old_each = [rss_mb(p.pid) for _, p in old]
    for run_id in ids + [r for r, _ in old]:
        ex.cancel(run_id)
    held.close()
    for p in launcher.children():
        try:
            p.wait(timeout=60)
        except Exception:  # noqa: BLE001
            p.kill()
    figures = {
        "queued_runs": QUEUED,
        "queued_rows": queued,
        "processes_started": len(new_procs),
        "their_rss_mb": round(new_mb),
        "submit_s_for_30": round(submit_s, 2),
        "this_process_growth_mb": round(own_after - own_before, 1),
        "old_way_rss_per_process_mb": [round(x) for x in old_each],
        "old_way_30_runs_mb": round(QUEUED * sum(old_each) / len(old_each)),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print("FIGURES", json.dumps(figures))
    return 0 if len(new_procs) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
