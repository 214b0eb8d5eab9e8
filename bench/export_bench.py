"""Export parity and CPU throughput, ONNX Runtime vs PyTorch, for a few backbones trained briefly on demo data.

    python bench/export_bench.py                                   # simple_cnn, efficientnet_lite0, mobilenetv3
    python bench/export_bench.py --backbones resnet18 --seconds 5

Each backbone gets a short run on the built-in demo shapes (offline: efficientnet_lite0 as a linear probe on its
bundled ImageNet weights, the others fine-tuned from random weights), then `classifier.export.export_run` makes
an ONNX file (float32 and int8) and a TorchScript file and checks each against the PyTorch model on the run's
validation images. Throughput is images/s on one batch, PyTorch and the export timed side by side in the same
process with the same number of threads, so the ratio holds even when the machine is busy; absolute numbers
depend on the machine (the script prints its CPU count, thread count and load).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = {
    "simple_cnn": dict(weights="none", mode="finetune", img_size=64, epochs=12),
    "efficientnet_lite0": dict(weights="bundled", mode="linear", epochs=20),
    "mobilenetv3_large_100": dict(weights="none", mode="finetune", epochs=2),
    "resnet18": dict(weights="none", mode="finetune", epochs=2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["simple_cnn", "efficientnet_lite0", "mobilenetv3_large_100"])
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per export (after one warm-up call)")
    ap.add_argument("--per-class", type=int, default=30, help="demo images per class (20%% go to validation)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    a = ap.parse_args()
    unknown = sorted(set(a.backbones) - set(RECIPES))
    if unknown:
        ap.error(f"no recipe for {', '.join(unknown)}; choose from {', '.join(RECIPES)}")

    import onnxruntime
    import torch

    from classifier.data.demo import make_demo_dataset
    from classifier.export import SPEED_BATCH, export_run
    from classifier.training import TrainConfig, fit

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, same "
          f"thread count); timed batch {SPEED_BATCH} images")  # fmt: skip
    header = (
        f"{'backbone':22s} {'export':13s} {'n':>3s} {'top-1 agree':>11s} {'max |dp|':>9s} {'acc torch':>9s} "
        f"{'acc export':>10s} {'torch img/s':>11s} {'export img/s':>12s} {'ratio':>6s} {'MB':>6s}  check"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLASSIFIER_WORKSPACE"] = str(Path(tmp) / "workspace")
        data = make_demo_dataset(Path(tmp) / "demo", n_per_class=a.per_class, size=128, seed=0)
        for name in a.backbones:
            t0 = time.perf_counter()
            run_dir = Path(tmp) / name
            cfg = TrainConfig(data=str(data), backbone=name, batch_size=16, num_workers=0, seed=0, **RECIPES[name])
            result = fit(cfg, run_dir)
            print(f"{name}: trained in {time.perf_counter() - t0:.0f} s, val accuracy {result.metrics['accuracy']:.3f}",
                  flush=True)  # fmt: skip
            for fmt, quantize in (("onnx", "int8"), ("torchscript", None)):
                report = export_run(run_dir, fmt, None, quantize=quantize, bench_seconds=a.seconds)
                for c in report.checks:
                    rows.append(
                        f"{name:22s} {c.name:13s} {report.n_images:3d} {c.top1_agreement:11.1%} "
                        f"{c.max_prob_diff:9.2g} {_pct(report.pytorch_accuracy):>9s} {_pct(c.accuracy):>10s} "
                        f"{report.pytorch_images_per_s:11.1f} {c.images_per_s:12.1f} "
                        f"{c.images_per_s / report.pytorch_images_per_s:6.2f} {c.size_mb:6.1f}  "
                        f"{c.status}{': ' + c.reason if c.reason else ''}"
                    )
                print(f"  {fmt}{' + ' + quantize if quantize else ''}: {report.seconds:.0f} s", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print(header)
    print("\n".join(rows))
    print("\nratio = export images/s / PyTorch images/s, measured side by side in one process; "
          "top-1 agree and max |dp| (largest probability difference) against the PyTorch model")  # fmt: skip


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"


if __name__ == "__main__":
    main()
