"""Performance ratios measured side by side in one run: our fit loop against a bare timm loop, and more.

    python bench/run.py              # resnet18 at 128 px, 3 epochs of 96 images, then predict and linear probe
    python bench/run.py --quick      # 64 px, 2 epochs of 48 images, no linear probe (a minute on 2 cores)
    python bench/run.py --img-size 224 --images 160 --epochs 3 --skip-probe

Rows of the table (each ratio from measurements taken in this process, one right after the other):
- fit vs bare, per epoch: images/s of `classifier.training.fit` (with the precision `classifier.device.Precision`
  picks: bf16 autocast + channels_last on CPUs with AVX-512 BF16 / AMX) against a plain float32 bare loop
  (timm.create_model, a torchvision DataLoader decoding the files with PIL every epoch, the same augmentation
  preset, optimizer, loss, gradient clipping, batch size, images and number of steps). Epoch 1 of the fit
  includes building the decoded cache (setup before the first batch), epochs 2+ read it. Our validation passes
  and checkpoints are not in the images/s (they are extra work the bare loop does not do); the end-to-end row
  includes them.
- data share: seconds spent waiting for batches and augmenting them over the epoch's training seconds, ours
  (from the run's history) and the bare loop's.
- predict latency: one image through `predict_paths` (decode, eval transform, forward, formatting) against a bare
  PIL open + timm eval transform + forward of the same model, median of repeats; batched predict images/s, and
  the ONNX Runtime backend (`load_run(..., backend="onnx")`) against the PyTorch one on the same batch.
- linear probe on ../shared/data/hymenoptera (skipped with a message when absent): `python -m classifier train
  --mode linear` end to end in a fresh process and a fresh workspace (cold cache), then again (warm cache).
The data are generated demo shapes, or hymenoptera's training images when that folder exists (--data).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def machine() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, load average {load:.2f} at the start"
    )


def bare_loop(items, data_config, augment, cfg, epochs, device):
    """The reference: the same model and recipe with nothing but timm, torchvision and PIL; yields each epoch's
    figures (a generator, so the benchmark can run its epochs interleaved with ours)."""
    import timm
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from classifier.data.transforms import train_transform

    transform = train_transform(data_config, augment)  # torchvision v1 on PIL images: the same preset

    class Files(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            path, label = items[i]
            with Image.open(path) as im:
                return transform(im.convert("RGB")), label

    torch.manual_seed(0)
    model = timm.create_model(cfg["timm_name"], num_classes=cfg["num_classes"], drop_rate=0.2).to(device)
    model.train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    workers = cfg["workers"]
    loader = DataLoader(Files(), batch_size=cfg["batch_size"], shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")  # fmt: skip
    for _ in range(epochs):
        t0 = time.perf_counter()
        data_s, n = 0.0, 0
        tw = time.perf_counter()
        for x, y in loader:
            data_s += time.perf_counter() - tw
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            n += len(y)
            tw = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        yield {"images_per_sec": n / secs, "data_share": data_s / secs, "seconds": secs}


def our_fit(data: Path, args, workdir: Path, name: str, between=None) -> tuple[list[dict], float, float, object]:
    """fit() with the same recipe; returns history, setup seconds before epoch 1 (cache build), wall seconds
    (without the time `between(epoch)` took: it runs after each of our epochs, for the interleaved bare epoch)."""
    from classifier.training import Callback, TrainConfig, fit

    class Clock(Callback):
        def on_fit_start(self, s):
            self.start = time.perf_counter()

        def on_epoch_start(self, s):
            if s.epoch == 1 and not hasattr(self, "setup"):
                self.setup = time.perf_counter() - self.start

        def on_epoch_end(self, s):
            if between is not None:
                t = time.perf_counter()
                between(s.epoch)
                self.outside += time.perf_counter() - t

    clock = Clock()
    clock.outside = 0.0
    cfg = TrainConfig(data=str(data), backbone=args.backbone, weights="none", img_size=args.img_size,
                      mode="finetune", augment="light", epochs=args.epochs, batch_size=args.batch_size, lr=5e-4,
                      val_split=args.val_split, seed=0, cache=args.cache, checkpoint_every_steps=0,
                      amp=not args.no_amp)  # fmt: skip
    t0 = time.perf_counter()
    result = fit(cfg, workdir / name, [clock])
    wall = time.perf_counter() - t0 - clock.outside
    if result.status != "completed":
        raise SystemExit(f"the fit run ended {result.status}: {result.error}")
    return result.history, clock.setup, wall, result


def warm_up(timm_name: str, img_size: int, batch_size: int, device) -> None:
    """A few training steps at the benchmark's shapes first, so neither loop pays the kernels' first-use cost."""
    import timm
    import torch

    model = timm.create_model(timm_name, num_classes=2).to(device).train()
    for bs in (batch_size, batch_size, 3):
        model(torch.randn(bs, 3, img_size, img_size, device=device)).sum().backward()


def predict_rows(run_dir: Path, images: list[Path], repeats: int) -> list[tuple[str, str, str, str]]:
    import torch
    from PIL import Image

    from classifier.predict import load_run, predict_paths

    run = load_run(run_dir)
    model, transform = run.model.eval(), run.transform

    def bare(path):
        with torch.no_grad(), Image.open(path) as im:
            return torch.softmax(model(transform(im.convert("RGB")).unsqueeze(0)), 1).numpy()

    def ours(path):
        return predict_paths(run, [str(path)])

    ours(images[0]), bare(images[0])  # warm-up
    t_ours, t_bare = [], []
    for i in range(repeats):  # interleaved, so both see the same machine
        p = images[i % len(images)]
        t = time.perf_counter()
        ours(p)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare(p)
        t_bare.append(time.perf_counter() - t)
    mo, mb = statistics.median(t_ours), statistics.median(t_bare)
    batch = [str(p) for p in images[:32]]
    t = time.perf_counter()
    predict_paths(run, batch, batch_size=32)
    batched = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in batch:
        predict_paths(run, [p])
    single = len(batch) / (time.perf_counter() - t)
    onnx_row = []
    try:
        onnx_run = load_run(run_dir, backend="onnx")
        predict_paths(onnx_run, batch[:4], batch_size=32)  # warm-up
        t = time.perf_counter()
        predict_paths(onnx_run, batch, batch_size=32)
        onnx_ips = len(batch) / (time.perf_counter() - t)
        t = time.perf_counter()
        predict_paths(run, batch, batch_size=32)
        torch_ips = len(batch) / (time.perf_counter() - t)
        onnx_row = [("predict, 32 images batched: ONNX Runtime vs PyTorch backend", f"{onnx_ips:.1f} img/s",
                     f"{torch_ips:.1f} img/s", f"{onnx_ips / torch_ips:.2f}x")]  # fmt: skip
    except Exception as e:  # noqa: BLE001 - a missing onnxruntime only drops the row
        print(f"ONNX Runtime row skipped: {e}")
    return onnx_row + [
        ("predict latency, one image", f"{mo * 1000:.1f} ms", f"{mb * 1000:.1f} ms", f"{mb / mo:.2f}x"),
        ("predict, 32 images batched vs one by one", f"{batched:.1f} img/s", f"{single:.1f} img/s",
         f"{batched / single:.2f}x"),
    ]  # fmt: skip


def linear_probe(workdir: Path) -> list[tuple[str, str, str, str]]:
    if not HYMENOPTERA.is_dir():
        print(f"linear probe skipped: {HYMENOPTERA} is absent")
        return [("linear probe, hymenoptera", "skipped (data absent)", "", "")]
    import json

    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(workdir / "probe-ws")}
    rows = []
    for name in ("cold cache", "warm cache"):
        out = workdir / f"probe-{name.split()[0]}"
        cmd = [sys.executable, "-m", "classifier", "train", "--data", str(HYMENOPTERA), "--backbone",
               "efficientnet_lite0", "--mode", "linear", "--out", str(out), "--quiet"]  # fmt: skip
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        secs = time.perf_counter() - t
        if p.returncode != 0:
            rows.append((f"linear probe, hymenoptera ({name})", "failed", p.stderr.strip()[-200:], ""))
            continue
        acc = json.loads((out / "metrics.json").read_text())["accuracy"]
        ok = "met" if secs < 90 and acc >= 0.93 else "NOT met"
        rows.append((f"linear probe, hymenoptera ({name})", f"{secs:.1f} s, accuracy {acc:.3f}",
                     "target < 90 s at >= 0.93", ok))  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px, 48 images, 2 epochs, no linear probe")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=96, help="training images (demo data: generated)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cache", default="auto", choices=["auto", "memory", "disk", "off"])
    ap.add_argument(
        "--data",
        default=None,
        help="an image folder (default: ../shared/data/hymenoptera when present, else demo shapes)",
    )
    ap.add_argument("--repeats", type=int, default=20, help="single-image predictions timed")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--no-amp", action="store_true", help="our fit in float32 too (as before bf16 on CPUs)")
    args = ap.parse_args()
    if args.quick:
        args.img_size, args.images, args.epochs, args.skip_probe, args.repeats = 64, 48, 2, True, 10
    args.val_split = 0.2

    import torch

    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        workdir = Path(tmp)
        os.environ["CLASSIFIER_WORKSPACE"] = str(workdir / "ws")  # a cold cache for the first fit
        from classifier.data.demo import make_demo_dataset
        from classifier.device import default_workers, pick_device

        if args.data or (HYMENOPTERA.is_dir() and not args.quick):
            data = Path(args.data or HYMENOPTERA)
        else:
            per_class = max(2, round(args.images / (1 - args.val_split) / 6))
            data = make_demo_dataset(workdir / "data", n_per_class=per_class, size=max(2 * args.img_size, 160))
        device = pick_device("auto")
        if args.backbone != "simple_cnn":  # (ours, not a timm model)
            warm_up(args.backbone, args.img_size, args.batch_size, device)
        import csv
        import json

        for p in Path(data).rglob("*"):  # both loops start with the files in the OS page cache
            if p.is_file():
                p.read_bytes()
        run_dir = workdir / "ours"
        bare: list[dict] = []
        held: dict = {}

        def bare_epoch(epoch: int) -> None:
            """One bare epoch right after each of ours, so both see the same machine (other load included)."""
            if "gen" not in held:  # the run dir now holds the model's data config and the split
                config = json.loads((run_dir / "config.json").read_text())
                with open(run_dir / "split.csv", newline="", encoding="utf-8") as f:
                    rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
                root, classes = Path(config["dataset"]["root"]), config["class_names"]
                held["items"] = [(root / r["path"], classes.index(r["label"])) for r in rows]
                held["cfg"] = {"timm_name": config["timm_name"], "num_classes": len(classes),
                               "batch_size": args.batch_size, "workers": default_workers(device)}  # fmt: skip
                held["gen"] = bare_loop(held["items"], config["data_config"], "light", held["cfg"], args.epochs, device)
            bare.append(next(held["gen"]))

        history, setup, wall, result = our_fit(data, args, workdir, "ours", bare_epoch)
        items, bare_cfg = held["items"], held["cfg"]
        config = json.loads((run_dir / "config.json").read_text())
        # A second fit on the same data: a later run reads the cache the first one built.
        history2, setup2, wall2, _ = our_fit(data, args, workdir, "ours-again")
        runtime = config.get("runtime", {})

        n = len(items)
        table: list[tuple[str, str, str, str]] = []
        ours_e1 = n / (n / history[0]["images_per_sec"] + setup)
        table.append(("epoch 1 images/s (ours incl. cache build)", f"{ours_e1:.1f}", f"{bare[0]['images_per_sec']:.1f}",
                      f"{ours_e1 / bare[0]['images_per_sec']:.2f}x"))  # fmt: skip
        later_ours = [h["images_per_sec"] for h in history[1:]]
        later_bare = [b["images_per_sec"] for b in bare[1:]]
        if later_ours:
            lo, lb = statistics.mean(later_ours), statistics.mean(later_bare)
            table.append((f"epochs 2-{args.epochs} images/s (cache read)", f"{lo:.1f}", f"{lb:.1f}", f"{lo / lb:.2f}x"))
        tot_ours = n * args.epochs / (sum(n / h["images_per_sec"] for h in history) + setup)
        tot_bare = n * args.epochs / sum(b["seconds"] for b in bare)
        table.append(("all epochs images/s", f"{tot_ours:.1f}", f"{tot_bare:.1f}", f"{tot_ours / tot_bare:.2f}x"))
        r2 = n * args.epochs / (sum(n / h["images_per_sec"] for h in history2) + setup2)
        table.append(("second run, all epochs images/s (warm cache)", f"{r2:.1f}", f"{tot_bare:.1f}",
                      f"{r2 / tot_bare:.2f}x"))  # fmt: skip
        bare_s = sum(b["seconds"] for b in bare)
        table.append(("fit end to end (+ validation, checkpoints) vs bare training", f"{wall:.1f} s", f"{bare_s:.1f} s",
                      f"{bare_s / wall:.2f}x"))  # fmt: skip
        ep1_vs_later = statistics.mean(later_ours) / ours_e1 if later_ours else float("nan")
        table.append(("ours: later epochs vs epoch 1 images/s", "", "", f"{ep1_vs_later:.2f}x"))
        for i, (h, b) in enumerate(zip(history, bare), 1):
            table.append((f"data share of step time, epoch {i}", f"{h['data_share'] * 100:.1f} %",
                          f"{b['data_share'] * 100:.1f} %", ""))  # fmt: skip
        images = [p for p, _ in items]
        table += predict_rows(run_dir, images, args.repeats)
        if not args.skip_probe:
            table += linear_probe(workdir)
        del result, torch

    print(f"backbone {args.backbone}, {args.img_size} px, {n} training images, batch {args.batch_size}, "
          f"{args.epochs} epochs, device {device}, precision {runtime.get('amp') or 'float32'} (bare: float32), "
          f"channels_last {runtime.get('channels_last')}, threads {runtime.get('threads')}, "
          f"cache {runtime.get('cache')} "
          f"({runtime.get('cache_mb')} MB), loader workers: ours {runtime.get('num_workers')}, "
          f"bare {bare_cfg['workers']}")  # fmt: skip
    widths = [max(len(r[i]) for r in table + [("what", "ours", "bare / reference", "ratio")]) for i in range(4)]
    for r in [("what", "ours", "bare / reference", "ratio"), tuple("-" * w for w in widths), *table]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
