"""Multi-label targets, measured: the demo scenes (mAP, Grad-CAM pointing game per label) and collages of real
photos (the defaults against a linear probe on frozen features).

    python bench/multilabel.py                               # both parts (about 30 minutes on 2 busy CPU cores)
    python bench/multilabel.py --only demo                   # 400 demo scenes at 192 px
    python bench/multilabel.py --only demo --demo-train-args "--mode linear"  # the demo with a linear probe
    python bench/multilabel.py --only photos                 # 1,600 collages at 320 px from hymenoptera
    python bench/multilabel.py --only photos --collages 400  # a smaller collage set (a few minutes)

(1) Demo: `python -m classifier demo-data --multilabel` (scenes with one to three shapes, one mask per shape), then
`python -m classifier train` with the defaults in a fresh workspace (on a CPU the time budget of
`classifier/training/plan.py` chooses mode, epochs and image size; the plan is printed). Prints
the run's validation mAP and, for every validation image and every label it carries, whether Grad-CAM's map for
that label (each label its own target) peaks on that shape's mask: the pointing game per label, over all positives
and over those the model also predicts (above the run's threshold).

(2) Photos: collages of 320 px from ../shared/data/hymenoptera (skipped with a message when absent): a 2x2 grid
of 160 px cells, one to four of them holding a photo (ant or bee, a random square crop), the rest plain grey;
labels = the kinds shown (`ants`, `bees`, or both). Training collages use only hymenoptera's training photos and
validation collages only its validation photos (the CSV's `split` column), so no photo is on both sides. Then
`train` with the defaults and `train --mode linear` (the linear probe on frozen features), one after the other in
this process, each in a fresh workspace (cold caches): wall seconds, mAP, micro F1 and subset accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
KINDS = ("ants", "bees")


def machine() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at the start"
    )


def train(data: Path, out: Path, workspace: Path, *extra: str) -> float:
    """`python -m classifier train` in a fresh process and workspace; wall seconds (and what the time budget
    chose, when it chose: the CLI's `plan`). Raises on failure."""
    cmd = [sys.executable, "-m", "classifier", "train", "--data", str(data), "--out", str(out), "--quiet", *extra]
    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(workspace)}
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr.strip()[-2000:]}")
    secs = time.perf_counter() - t
    plan = json.loads(p.stdout.strip().splitlines()[-1]).get("plan")
    if plan:
        print(f"    time budget's plan for {out.name}: {plan}")
    return secs


def headline(run: Path) -> dict[str, float]:
    from classifier.rundir import read_metrics

    m = read_metrics(run) or {}
    return {k: float(m[k]) for k in ("map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")}


def train_rate(run: Path) -> float:
    """Mean training images/s over the run's epochs (history.csv), to scale its time to another dataset size."""
    from classifier.rundir import read_history

    history = read_history(run)
    return float(history["images_per_sec"].mean()) if history is not None else float("nan")


def pointing_per_label(
    run: Path, data: Path, masks: Path, **options
) -> tuple[dict[str, list[bool]], dict[str, list[bool]], str]:
    """Grad-CAM (with `attribute`'s `options`; none: its defaults) for every (validation image, label it carries),
    the label as the target; hits per label over all positives and over the positives the model predicts; the
    model's input size and the layer."""
    from PIL import Image

    from classifier.explain import attribute, pointing_game
    from classifier.predict import load_run, predict_images
    from classifier.rundir import read_split, read_thresholds

    loaded = load_run(run)
    names = list(loaded.class_names)
    thresholds = read_thresholds(run, len(names))
    rows = read_split(run, "val")
    images = [Image.open(data / r["path"]).convert("RGB") for r in rows]
    probs = predict_images(loaded, images)
    every: dict[str, list[bool]] = {n: [] for n in names}
    predicted: dict[str, list[bool]] = {n: [] for n in names}
    size = "?"
    for r, img, p in zip(rows, images, probs):
        for label in r["labels"]:
            c = names.index(label)
            a = attribute(loaded, img, "gradcam", target=c, **options)
            size = "x".join(str(s) for s in a.extra["input_size"]) + f" px input, layer {a.extra['layer']}"
            hit = pointing_game(a.map, Image.open(masks / label / Path(r["path"]).name))
            every[label].append(hit)
            if p[c] >= thresholds[c]:
                predicted[label].append(hit)
    return every, predicted, size


def demo_part(work: Path, images: int, train_args: list[str]) -> None:
    data, masks, run = work / "demo", work / "demo-masks", work / "demo-run"
    cmd = [sys.executable, "-m", "classifier", "demo-data", "--multilabel", "--out", str(data),
           "--masks-out", str(masks), "--images", str(images)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    secs = train(data, run, work / "demo-ws", *train_args)
    m = headline(run)
    recipe = " ".join(train_args) or "defaults"
    print(f"\n(1) multi-label demo, {images} scenes at 192 px, {recipe}: trained in {secs:.0f} s "
          f"({train_rate(run):.1f} training images/s), load average {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print(f"    mAP {m['map']:.3f} (target >= 0.95: {'met' if m['map'] >= 0.95 else 'NOT met'}), micro F1 "
          f"{m['micro_f1']:.3f}, subset accuracy {m['subset_accuracy']:.3f}")  # fmt: skip
    os.environ["CLASSIFIER_WORKSPACE"] = str(work / "demo-ws")
    # The defaults (the mean of four shifted copies), one plain pass, and (EfficientNet) one pass of conv_head, the
    # layer Grad-CAM used before, on the same run.
    backbone = json.loads((run / "config.json").read_text())["backbone"]
    variants = {"default": {}, "one pass": {"shift_average": False}}
    if "efficientnet" in backbone:
        variants["conv_head, one pass"] = {"layer": "conv_head", "shift_average": False}
    for name, options in variants.items():
        t = time.perf_counter()
        every, predicted, size = pointing_per_label(run, data, masks, **options)
        print(f"    Grad-CAM ({name}) pointing game per label at {size} ({time.perf_counter() - t:.0f} s):")
        print(f"    {'label':10s}{'positives':>10s}{'hit rate':>10s}{'predicted':>11s}{'hit rate':>10s}")
        for label in every:
            e, p = every[label], predicted[label]
            print(f"    {label:10s}{len(e):10d}{sum(e) / max(len(e), 1):10.3f}{len(p):11d}"
                  f"{sum(p) / max(len(p), 1):10.3f}")  # fmt: skip
        worst = min(sum(e) / len(e) for e in every.values() if e)
        print(f"    lowest per-label hit rate {worst:.3f} (target >= 0.80: {'met' if worst >= 0.8 else 'NOT met'})")


def make_collages(out: Path, n: int, size: int, seed: int) -> dict[str, int]:
    """`n` collages (80 % train from hymenoptera/train, 20 % val from hymenoptera/val) and labels.csv; counts of
    each label set."""
    import numpy as np
    from PIL import Image

    from classifier.io import atomic_write_text, csv_text

    rng = np.random.default_rng(seed)
    pools = {
        (split, kind): sorted((HYMENOPTERA / folder / kind).glob("*.jpg"))
        for split, folder in (("train", "train"), ("val", "val"))
        for kind in KINDS
    }
    out.mkdir(parents=True, exist_ok=True)
    cell, rows, counts = size // 2, [], {}
    for i in range(n):
        split = "train" if i < round(n * 0.8) else "val"
        canvas = Image.new("RGB", (size, size), (128, 128, 128))
        cells = rng.permutation(4)[: int(rng.integers(1, 5))]
        shown = set()
        for c in cells:
            kind = KINDS[int(rng.integers(0, 2))]
            pool = pools[(split, kind)]
            with Image.open(pool[int(rng.integers(0, len(pool)))]) as im:
                canvas.paste(
                    random_square(im.convert("RGB"), rng).resize((cell, cell)), ((c % 2) * cell, (c // 2) * cell)
                )
            shown.add(kind)
        name = f"collage_{i:04d}.jpg"
        canvas.save(out / name, quality=92)
        labels = " ".join(sorted(shown))
        rows.append((name, labels, split))
        counts[labels] = counts.get(labels, 0) + 1
    atomic_write_text(out / "labels.csv", csv_text(("path", "labels", "split"), rows))
    return counts


def random_square(im, rng):
    """A random square crop of at least 70 % of the short side (the photo's subject is usually central)."""
    w, h = im.size
    side = int(min(w, h) * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return im.crop((x, y, x + side, y + side))


def photos_part(work: Path, n: int, size: int) -> None:
    if not HYMENOPTERA.is_dir():
        print(f"\n(2) skipped: {HYMENOPTERA} is absent")
        return
    data = work / "collages"
    counts = make_collages(data, n, size, seed=0)
    print(f"\n(2) {n} collages at {size} px from hymenoptera (80 % train / 20 % val by source photo), label sets: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))  # fmt: skip
    print(f"    {'recipe':30s}{'wall s':>8s}{'train img/s':>13s}{'mAP':>7s}{'micro F1':>10s}{'subset acc':>12s}"
          f"{'load after':>12s}")  # fmt: skip
    results = {}
    for name, extra in (("defaults", ()), ("linear probe (--mode linear)", ("--mode", "linear"))):
        run = work / name.split()[0]
        secs = train(data, run, work / f"ws-{name.split()[0]}", *extra)
        results[name] = m = headline(run)
        print(f"    {name:30s}{secs:8.0f}{train_rate(run):13.1f}{m['map']:7.3f}{m['micro_f1']:10.3f}"
              f"{m['subset_accuracy']:12.3f}{os.getloadavg()[0]:12.2f}")  # fmt: skip
    d, p = results["defaults"], results["linear probe (--mode linear)"]
    print(f"    defaults - probe: mAP {d['map'] - p['map']:+.3f}, micro F1 {d['micro_f1'] - p['micro_f1']:+.3f}, "
          f"subset accuracy {d['subset_accuracy'] - p['subset_accuracy']:+.3f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["demo", "photos"])
    ap.add_argument("--demo-images", type=int, default=400, help="demo scenes (default 400)")
    ap.add_argument("--demo-train-args", default="", help='extra train flags for the demo run, e.g. "--mode linear"')
    ap.add_argument("--collages", type=int, default=1600, help="collages of real photos (default 1600)")
    ap.add_argument("--size", type=int, default=320, help="collage side in pixels (default 320)")
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "photos"):
            photos_part(Path(tmp), a.collages, a.size)
        if a.only in (None, "demo"):
            demo_part(Path(tmp), a.demo_images, a.demo_train_args.split())


if __name__ == "__main__":
    main()
