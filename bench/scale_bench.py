"""Scaling figures measured side by side in one run: DDP step time against one process, and how long a run takes
from submit to its first progress on a Ray cluster against local processes.

    python bench/scale_bench.py            # CPU: 2 gloo ranks vs 1 process; Ray vs local latency; GPU rows if any
    python bench/scale_bench.py --quick    # fewer epochs and submissions
    python bench/scale_bench.py --skip-ray

Rows:
- DDP on the CPU: seconds per optimizer step of the same global batch, one process with batch B (torch's threads:
  every core) against 2 gloo ranks with batch B/2 (each rank cores/2 threads), from each run's history (images/s
  of the training passes, validation excluded), median over the epochs after the first; the runs alternate (1, 2,
  1, 2, ...) so a busy machine slows both alike. A third column, one process with one thread, shows how much of the
  difference is torch's intra-op threads (which suffer most on a machine with more runnable processes than cores).
  Two models: simple_cnn at 32 px (tiny: communication dominates) and resnet18 at 96 px (compute dominates).
- GPU (only when CUDA is available; otherwise the script says so): one process on one GPU against `--nproc 1`
  (DDP with one rank through torchrun: the wrapper's overhead), resnet50 at 224 px.
- Ray: seconds from `submit` returning to the first status showing the run "running", and to the first optimizer
  step in its progress, for `RayExecutor` on a local Ray cluster (started here, 2 CPUs) against
  `LocalProcessExecutor`, submissions alternating between the two.
The images are hymenoptera's training images when ../shared/data/hymenoptera exists, else generated demo shapes.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def dataset(workdir: Path) -> str:
    if HYMENOPTERA.is_dir():
        return str(HYMENOPTERA)
    from classifier.data.demo import make_demo_dataset

    return str(make_demo_dataset(workdir / "demo", n_per_class=40, size=96, seed=0))


def step_seconds(result, global_batch: int) -> float:
    """Median seconds per optimizer step over the epochs after the first (images/s of the training passes)."""
    rates = [h["images_per_sec"] for h in result.history[1:]] or [result.history[0]["images_per_sec"]]
    return global_batch / statistics.median(rates)


def ddp_rows(data: str, workdir: Path, epochs: int, repeats: int, gpu: bool) -> list[tuple[str, list[float]]]:
    """(label, median seconds per step of each way) for each DDP comparison, the ways run in turn per repeat.

    CPU: 1 process with torch's threads (every core), 2 gloo ranks with batch B/2 (cores/2 threads each), and, to
    tell the threads' share apart, 1 process with 1 thread. GPU: 1 process, then `--nproc 1` (DDP with one rank).
    """
    import torch

    from classifier.training import TrainConfig, fit

    cases = [("simple_cnn", 32, 32), ("resnet18", 96, 32)] if not gpu else [("resnet50", 224, 64)]
    rows = []
    for backbone, size, batch in cases:
        device = "cuda" if gpu else "cpu"
        base = dict(data=data, backbone=backbone, weights="none", img_size=size, epochs=epochs, mode="finetune",
                    augment="light", num_workers=0, device=device, checkpoint_every_steps=0)  # fmt: skip
        if gpu:
            ways = [TrainConfig(**base, batch_size=batch), TrainConfig(**base, batch_size=batch, nproc=1)]
        else:
            ways = [TrainConfig(**base, batch_size=batch), TrainConfig(**base, batch_size=batch // 2, nproc=2),
                    TrainConfig(**base, batch_size=batch)]  # fmt: skip
        times: list[list[float]] = [[] for _ in ways]
        for i in range(repeats):
            for w, cfg in enumerate(ways):
                threads = torch.get_num_threads()
                if not gpu and w == 2:
                    torch.set_num_threads(1)
                try:
                    times[w].append(step_seconds(fit(cfg, workdir / f"{backbone}-{w}-{i}"), batch))
                finally:
                    torch.set_num_threads(threads)
            print(f"  {backbone}: " + " vs ".join(f"{t[-1]:.4f}" for t in times) + " s per step", file=sys.stderr)
        rows.append((f"{backbone} {size}px, global batch {batch}", [statistics.median(t) for t in times]))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_progress(ex, run_id: str, t0: float, timeout: float = 300.0) -> tuple[float, float]:
    """Seconds from t0 to the run showing "running", and to its first optimizer step."""
    running = None
    while time.time() - t0 < timeout:
        s = ex.status(run_id)
        if running is None and s.status == "running":
            running = time.time() - t0
        if (s.progress.get("step") or 0) > 0 or s.status not in ("queued", "running"):
            return running if running is not None else time.time() - t0, time.time() - t0
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} showed no progress in {timeout:.0f} s")


def ray_rows(data: str, submissions: int) -> list[tuple[str, float, float]]:
    """Submit-to-running and submit-to-first-step, local processes against Ray jobs, alternating."""
    import ray

    from classifier.jobs import LocalProcessExecutor
    from classifier.jobs.ray import RayExecutor
    from classifier.training import TrainConfig

    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                   dashboard_port=free_port(), _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
                   object_store_memory=100 * 2**20, log_to_driver=False)  # fmt: skip
    try:
        executors = {"local": LocalProcessExecutor(), "ray": RayExecutor(f"http://{ctx.dashboard_url}")}
        cfg = TrainConfig(data=data, backbone="simple_cnn", weights="none", img_size=32, epochs=1, batch_size=8,
                          num_workers=0, device="cpu")  # fmt: skip
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in executors}
        for i in range(submissions):
            for kind, ex in executors.items():
                t0 = time.time()
                rid = ex.submit(cfg)
                times[kind].append(first_progress(ex, rid, t0))
                while ex.status(rid).status in ("queued", "running"):  # one at a time: no queueing in the figure
                    time.sleep(0.1)
                print(f"  {kind} #{i}: running after {times[kind][-1][0]:.2f} s, first step after "
                      f"{times[kind][-1][1]:.2f} s", file=sys.stderr)  # fmt: skip
    finally:
        ray.shutdown()
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    return [("submit -> running", med["local"][0], med["ray"][0]),
            ("submit -> first step", med["local"][1], med["ray"][1])]  # fmt: skip


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    a = p.parse_args()
    epochs, repeats, submissions = (3, 1, 2) if a.quick else (3, 2, 4)
    work = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    os.environ["CLASSIFIER_WORKSPACE"] = str(work / "workspace")
    data = dataset(work)
    load = os.getloadavg()[0]
    print(f"# {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {load:.2f} at the start; data: {data}")  # fmt: skip
    threads, per_rank = torch.get_num_threads(), max(1, (os.cpu_count() or 1) // 2)
    print(f"| s per step | 1 process, {threads} threads | 2 gloo ranks, {per_rank} thread(s) each "
          "| ratio (2 ranks / 1) | 1 process, 1 thread |\n|---|---|---|---|---|")  # fmt: skip
    for label, (one, two, single_thread) in ddp_rows(data, work, epochs, repeats, gpu=False):
        print(f"| {label} | {one:.4f} | {two:.4f} | {two / one:.2f}x | {single_thread:.4f} |")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        print(f"\n| GPU: {name} | one process | --nproc 1 (DDP) | overhead |\n|---|---|---|---|")
        for label, (single, ddp) in ddp_rows(data, work, epochs, repeats, gpu=True):
            print(f"| {label}: s/step | {single:.4f} | {ddp:.4f} | {ddp / single - 1:+.1%} |")
    else:
        print("\nGPU rows: no CUDA GPU on this machine; single-GPU vs --nproc 1 not measured.")
    if not a.skip_ray:
        print("\n| latency (median) | local process | Ray job | ratio (Ray / local) |\n|---|---|---|---|")
        for label, local, on_ray in ray_rows(data, submissions):
            print(f"| {label} | {local:.2f} s | {on_ray:.2f} s | {on_ray / local:.2f}x |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
