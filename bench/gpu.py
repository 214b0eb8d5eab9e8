"""GPU throughput: our fit against a bare AMP + channels_last loop on the same data, per backbone.

    python bench/gpu.py                      # resnet18, resnet50, efficientnet_b0, vit_small_patch16_224 at 224 px
    python bench/gpu.py --models resnet50 --batch-size 256 --images 8192
    python bench/gpu.py --dry-run            # a tiny CPU run of the whole script (argument parsing, both loops)

For each backbone, side by side in one process on generated images (`classifier.data.demo`, PNG files):
- ours: `classifier.training.fit` with the defaults a GPU run gets (bf16/fp16 autocast, channels_last, the decoded
  images in the decode-once cache and augmented on the GPU, `TensorPipeline`), random initial weights, preset
  `light`, AdamW; images/s of the training steps from the run's history (epochs after the first, so cache
  building and cuDNN's kernel search are not counted), and its data share (waiting for and augmenting batches).
- bare: the same timm model, optimizer, loss and batch size under the same autocast and memory layout, fed with
  batches already on the GPU (no data path at all): the ceiling for our loop. Target: ours >= 0.95x bare.
- GPU busy share while our epochs run: `torch.cuda.utilization()` (NVML) sampled every 0.2 s; "n/a" without NVML.
Targets on an H100/H200-class GPU: resnet50 >= 3,000 images/s (timm's RTX 3090 table: 1,218; NVIDIA's A100
figure: 2,470). Results go to stdout as a table and, with --json PATH, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("resnet18", "resnet50", "efficientnet_b0", "vit_small_patch16_224")
TARGETS = {"resnet50": 3000.0}  # images/s on an H100/H200-class GPU


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated backbones")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=6144, help="generated training images")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of our fit (the first is not timed)")
    ap.add_argument("--bare-steps", type=int, default=60, help="timed steps of the bare loop")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--dry-run", action="store_true", help="CPU, resnet18, 32 px, 24 images: checks the script runs")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.models, a.img_size, a.batch_size, a.images, a.epochs, a.bare_steps = "resnet18", 32, 8, 24, 2, 3
    return a


class BusySampler:
    """The GPU's busy share (NVML utilization, percent of time a kernel ran) sampled in a thread."""

    def __init__(self, device) -> None:
        self.device, self.samples, self.stop = device, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self.stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # noqa: BLE001 - no NVML (pynvml) or no GPU: no figure
                return

    def __enter__(self) -> BusySampler:
        if self.device.type == "cuda":
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()

    @property
    def share(self) -> float | None:
        return statistics.mean(self.samples) / 100 if self.samples else None


def bare_loop(name: str, n_classes: int, a: argparse.Namespace, device) -> float:
    """Images/s of the training step alone: timm model, AMP and channels_last as ours, batches already on the GPU."""
    import timm
    import torch

    from classifier.device import Precision

    prec = Precision.for_device(device, amp=True)
    model = prec.prepare(timm.create_model(name, num_classes=n_classes, drop_rate=0.2)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    scaler = prec.grad_scaler()
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    g = torch.Generator(device="cpu").manual_seed(0)
    batches = [(prec.layout(torch.randn(a.batch_size, 3, a.img_size, a.img_size, generator=g).to(device)),
                torch.randint(0, n_classes, (a.batch_size,), generator=g).to(device)) for _ in range(4)]  # fmt: skip

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with prec.autocast():
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for i in range(5):  # warm-up: cuDNN picks its kernels
        step(i)
    _sync(device)
    t = time.perf_counter()
    for i in range(a.bare_steps):
        step(i)
    _sync(device)
    return a.bare_steps * a.batch_size / (time.perf_counter() - t)


def our_fit(name: str, data: Path, a: argparse.Namespace, out: Path, device) -> dict:
    """Our fit's images/s (epochs after the first), data share and GPU busy share."""
    from classifier.training import TrainConfig, fit

    cfg = TrainConfig(data=str(data), backbone=name, weights="none", img_size=a.img_size, mode="finetune",
                      augment="light", epochs=a.epochs, batch_size=a.batch_size, lr=5e-4, val_split=0.05,
                      device=device.type, cache="memory", checkpoint_every_steps=0, seed=0)  # fmt: skip
    with BusySampler(device) as busy:
        result = fit(cfg, out)
    if result.status != "completed":
        raise SystemExit(f"{name}: our fit ended {result.status}: {result.error}")
    later = result.history[1:] or result.history
    runtime = json.loads((out / "config.json").read_text()).get("runtime", {})
    return {
        "images_per_s": statistics.mean(h["images_per_sec"] for h in later),
        "data_share": statistics.mean(h["data_share"] for h in later),
        "gpu_busy": busy.share,
        "amp": runtime.get("amp"),
        "channels_last": runtime.get("channels_last"),
        "cache": runtime.get("cache"),
    }


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_args(argv)
    import torch

    from classifier.data.demo import DEMO_CLASSES, make_demo_dataset

    device = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "no GPU (CPU run)"
    print(f"{gpu}; torch {torch.__version__}; {os.cpu_count()} CPU cores; {a.img_size} px, batch {a.batch_size}, "
          f"{a.images} generated images, {a.epochs} epochs of ours, {a.bare_steps} bare steps")  # fmt: skip
    if device.type != "cuda" and not a.dry_run:
        print("no CUDA GPU here: the figures below are CPU figures, not the GPU benchmark")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        os.environ["CLASSIFIER_WORKSPACE"] = str(Path(tmp) / "ws")
        classes = DEMO_CLASSES
        per_class = max(2, -(-a.images // len(classes)))
        data = make_demo_dataset(Path(tmp) / "data", n_per_class=per_class, size=max(64, a.img_size + 32), seed=0)
        for name in a.models.split(","):
            ours = our_fit(name, data, a, Path(tmp) / f"run-{name}", device)
            bare = bare_loop(name, len(classes), a, device)
            target = TARGETS.get(name)
            rows.append({"model": name, "ours": round(ours["images_per_s"], 1), "bare": round(bare, 1),
                         "ratio": round(ours["images_per_s"] / bare, 3), "data_share": round(ours["data_share"], 4),
                         "gpu_busy": ours["gpu_busy"], "amp": ours["amp"], "channels_last": ours["channels_last"],
                         "cache": ours["cache"], "target": target, "device": gpu})  # fmt: skip
            r = rows[-1]
            busy = "n/a" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
            print(f"{name}: ours {r['ours']} img/s, bare {r['bare']} img/s, ratio {r['ratio']:.2f}x (target 0.95x), "
                  f"data share {r['data_share']:.1%}, GPU busy {busy}, amp {r['amp']}, channels_last "
                  f"{r['channels_last']}" + (f", target {target:.0f} img/s" if target else ""), flush=True)  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
