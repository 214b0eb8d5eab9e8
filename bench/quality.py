"""The data-quality scan against known label noise, and what fixing it is worth; then its cost on a few thousand images.

    python bench/quality.py                       # hymenoptera, 10 % of training labels flipped, seeds 0-9
    python bench/quality.py --seeds 0 --skip-timing
    python bench/quality.py --backbone efficientnet_lite0 --skip-timing  # the scan on Lite0's features
    python bench/quality.py --timing-images 3000  # the scan's time on 3000 generated images (minutes on 2 cores)

For each seed, in a fresh workspace (cold caches), through the public API and dataset versions as a user would:
1. version 1 of ../shared/data/hymenoptera = 10 % of the training images (drawn with the seed) relabelled to the
   other class; the validation images keep their labels;
2. `scan_dataset` on version 1: recall (flipped images found / flipped) and precision (flipped / flagged) among
   the top k images by label score, for k = half, once and twice the number flipped, and for cleanlab's own
   flags; ranked among all scanned images (train and validation), so a hard validation image costs a place;
3. version 2 = version 1 with every training image cleanlab flags relabelled as suggested (validation images are
   left as they are, so all runs are scored on the same, correct validation labels); with --rounds 2 (default),
   version 3 = version 2 scanned again and its flags relabelled the same way, as a user re-scans after fixing;
4. the same run (EfficientNet-Lite0, bundled weights, `fit` with the default linear-probe recipe, float32 so every
   version trains with the same numerics; --modes finetune adds the fine-tune one) on version 0 (clean), 1 (noisy)
   and each fixed version, one after the other: accuracy lost to the noise and the share of it each fix recovered,
   for the best epoch (what the run reports: the checkpoint picked by validation accuracy) and for the last epoch
   (the head after all its epochs on the labels it got). Pooled over seeds: the sum of what the fixes gained over
   the sum of what the noise cost.
The first seed computes the features cold; later seeds start from a copy of its caches (decoded images, features),
since flipping labels does not change an image's features.
Then (unless --skip-timing) the scan's time per phase on generated demo images, cold (features computed) and again
after relabelling 5 % of them (a new version: features read back, probe and cleanlab rerun).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"


def flip_and_find(data: str, seed: int, noise: float, out: Path, modes: list[str], backbone: str, rounds: int) -> dict:
    """One seed of steps 1-4 in the workspace `out` (set by the caller)."""
    from classifier.data.dataset import index_dataset, load_dataset, save_version
    from classifier.data.splits import assign_splits
    from classifier.data.versions import Edits
    from classifier.quality import scan_dataset
    from classifier.training import TrainConfig, fit

    files = index_dataset(data)
    splits = assign_splits(files)
    train = sorted(s.path for s, sp in zip(files.samples, splits) if sp == "train")
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(train, size=round(noise * len(train)), replace=False).tolist())
    label_of = {s.path: files.classes[s.label] for s in files.samples}
    others = {c: [o for o in files.classes if o != c] for c in files.classes}
    noisy = {p: str(rng.choice(others[label_of[p]])) for p in sorted(flipped)}
    v1 = save_version(data, Edits(relabel=noisy), note=f"{len(noisy)} labels flipped, seed {seed}")

    t0 = time.time()
    scan = scan_dataset(TrainConfig(data=data, data_version=v1, seed=0, backbone=backbone))
    scan_s = time.time() - t0
    ranked = scan.images.sort_values("label_score", ascending=False, kind="stable")["path"].tolist()
    n = len(flipped)
    in_train = scan.images[scan.images["split"] == "train"].sort_values("label_score", ascending=False, kind="stable")
    at = {}
    for name, k in (("k/2", n // 2), ("k", n), ("2k", 2 * n), ("flagged", int(scan.images["is_label"].sum()))):
        top = set(ranked[:k])
        hit = len(top & flipped)
        at[name] = {"k": k, "recall": hit / n, "precision": hit / max(1, k)}
    at["k train"] = {"k": n, "recall": len(set(in_train["path"].head(n)) & flipped) / n}

    # Steps 3 and 4: each round relabels what a scan of the latest version flags; the next round scans the result.
    fixed, version, found = [], v1, scan
    for round_ in range(1, rounds + 1):
        if round_ > 1:
            found = scan_dataset(TrainConfig(data=data, data_version=version, seed=0, backbone=backbone))
        img = found.images
        fixes = img[img["is_label"] & (img["split"] == "train")]
        relabel = {p: s for p, s, g in zip(fixes["path"], fixes["suggested"], fixes["given"]) if s != g}
        if relabel:  # a round that flags nothing new leaves the version as it is
            version = save_version(data, Edits(relabel=relabel), note=f"scan's suggestions, round {round_}")
        fixed.append({
            "version": version, "relabelled": len(relabel),
            "relabelled_right": sum(1 for p, s in relabel.items() if s == label_of[p]),
            "wrong_after_fix": sum(c != label_of[p] for p, c in load_relabels(load_dataset(data, version)).items()),
        })  # fmt: skip

    names = ["clean", "noisy"] + [f"fixed{i + 1}" for i in range(len(fixed))]
    runs = {}
    for mode in modes:
        acc = {}
        for name, version in zip(names, [0, v1] + [r["version"] for r in fixed]):
            cfg = TrainConfig(data=data, data_version=version, backbone="efficientnet_lite0", mode=mode, seed=0,
                              amp=False)  # fmt: skip
            result = fit(cfg, out / "runs" / f"{mode}-{name}-{seed}")
            acc[name] = result.metrics["accuracy"]  # the best epoch's, as the run reports it
            acc[f"{name}-last"] = result.history[-1]["val_acc"]  # the last epoch's
            print(f"  seed {seed} {mode} {name}: accuracy {acc[name]:.4f} (last epoch {acc[f'{name}-last']:.4f}) in "
                  f"{result.seconds:.0f} s", file=sys.stderr)  # fmt: skip
        for end in ("", "-last"):
            lost = acc["clean" + end] - acc["noisy" + end]
            runs[mode + end] = {"acc": {k: acc[k + end] for k in names}, "lost": lost}
    return {
        "seed": seed, "flipped": n, "at": at, "scan_s": scan_s, "meta": scan.meta, "rounds": fixed, "runs": runs,
    }  # fmt: skip


def load_relabels(index) -> dict[str, str]:
    """Path -> class of every image the version labels differently from the files."""
    return {p: new for p, (_old, new) in index.relabelled.items()}


def timing(n_images: int, out: Path, backbone: str) -> dict:
    """The scan of `n_images` generated 128 px images: cold, then after 5 % of them are relabelled."""
    from classifier.data.dataset import index_dataset, save_version
    from classifier.data.demo import make_demo_dataset
    from classifier.data.versions import Edits
    from classifier.quality import scan_dataset
    from classifier.training import TrainConfig

    per_class = max(2, n_images // 5)
    data = str(make_demo_dataset(out / "demo-timing", n_per_class=per_class, seed=1))
    t0 = time.time()
    cold = scan_dataset(TrainConfig(data=data, backbone=backbone)).meta
    cold["wall"] = time.time() - t0
    files = index_dataset(data)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(files.samples), size=len(files.samples) // 20, replace=False)
    relabel = {files.samples[i].path: files.classes[(files.samples[i].label + 1) % len(files.classes)] for i in picks}
    version = save_version(data, Edits(relabel=relabel), index=files)
    t0 = time.time()
    again = scan_dataset(TrainConfig(data=data, data_version=version, backbone=backbone)).meta
    again["wall"] = time.time() - t0
    return {"images": len(files.samples), "cold": cold, "after_edit": again}


def report(rows: list[dict], noise: float, backbone: str) -> None:
    print(f"\n### Flip {noise:.0%} of the training labels and find them (hymenoptera, {backbone} features)\n")
    print("| seed | flipped | recall@k/2 | recall@k (precision) | recall@2k (precision) | cleanlab flags: n, recall, "
          "precision | recall@k among training images | scan s (features computed) | probe C |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, m = r["at"], r["meta"]
        print(
            f"| {r['seed']} | {r['flipped']} | {a['k/2']['recall']:.2f} | {a['k']['recall']:.2f} "
            f"({a['k']['precision']:.2f}) | {a['2k']['recall']:.2f} ({a['2k']['precision']:.2f}) | "
            f"{a['flagged']['k']}, {a['flagged']['recall']:.2f}, {a['flagged']['precision']:.2f} | "
            f"{a['k train']['recall']:.2f} | "
            f"{r['scan_s']:.1f} ({m['features'].get('computed')}) | {m['probe_c']} |"
        )
    mean = {k: np.mean([r["at"][k]["recall"] for r in rows]) for k in ("k/2", "k", "2k", "flagged", "k train")}
    print(f"\nmean recall: k/2 {mean['k/2']:.3f}, k {mean['k']:.3f}, 2k {mean['2k']:.3f}, flagged {mean['flagged']:.3f}"
          f"; lowest recall@k {min(r['at']['k']['recall'] for r in rows):.3f}; among training images: mean "
          f"{mean['k train']:.3f}, lowest {min(r['at']['k train']['recall'] for r in rows):.3f}")  # fmt: skip
    rounds = len(rows[0]["rounds"])
    print("\n| seed | " + " | ".join(f"round {i + 1}: relabelled (to the true class), wrong labels left" for i in
                                    range(rounds)) + " |")  # fmt: skip
    print("|---|" + "---|" * rounds)
    for r in rows:
        cells = [f"{f['relabelled']} ({f['relabelled_right']}), {f['wrong_after_fix']} of {r['flipped']}" for f in
                 r["rounds"]]  # fmt: skip
        print(f"| {r['seed']} | " + " | ".join(cells) + " |")
    for mode in rows[0]["runs"]:
        which = "last epoch" if mode.endswith("-last") else "best epoch, as the run reports it"
        names = list(rows[0]["runs"][mode]["acc"])
        fixes = names[2:]
        print(f"\n{mode.removesuffix('-last')}, {which}: validation accuracy (fixedN: after N rounds of fixes)\n")
        print("| seed | " + " | ".join(names) + " | lost | " + " | ".join(f"recovered, {f}" for f in fixes) + " |")
        print("|---|" + "---|" * (len(names) + 1 + len(fixes)))
        for r in rows:
            m = r["runs"][mode]
            a = m["acc"]
            rec = [f"{(a[f] - a['noisy']) / m['lost']:.0%}" if m["lost"] > 1e-9 else "nothing lost" for f in fixes]
            print(f"| {r['seed']} | " + " | ".join(f"{a[k]:.4f}" for k in names) + f" | {m['lost']:+.4f} | "
                  + " | ".join(rec) + " |")  # fmt: skip
        lost = sum(r["runs"][mode]["lost"] for r in rows)
        for f in fixes:
            gained = sum(r["runs"][mode]["acc"][f] - r["runs"][mode]["acc"]["noisy"] for r in rows)
            text = f"recovered {gained / lost:.0%}" if lost > 1e-9 else "nothing lost in all"
            print(f"pooled over seeds, {f}: accuracy lost {lost / len(rows):+.4f} per seed on average, {text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HYMENOPTERA))
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=2, help="scan-and-relabel rounds; each run is scored (default 2)")
    p.add_argument("--timing-images", type=int, default=3000)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--backbone", default="efficientnet_lite2", help="the scan's frozen backbone (default: the CLI's, "
                   "classifier.quality.SCAN_BACKBONE); the runs on the three versions use Lite0")  # fmt: skip
    p.add_argument("--modes", nargs="+", default=["linear"], choices=["linear", "finetune"],
                   help="finetune: the default fine-tune recipe too (hours on 2 busy cores)")  # fmt: skip
    a = p.parse_args()
    import torch

    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at the start")  # fmt: skip
    rows = []
    if Path(a.data).is_dir():
        with tempfile.TemporaryDirectory() as caches:
            for seed in a.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    workspace = Path(tmp) / "workspace"
                    if rows:
                        shutil.copytree(Path(caches) / "cache", workspace / "cache")
                    os.environ["CLASSIFIER_WORKSPACE"] = str(workspace)
                    rows.append(flip_and_find(a.data, seed, a.noise, Path(tmp), a.modes, a.backbone, a.rounds))
                    if len(rows) == 1:
                        shutil.copytree(workspace / "cache", Path(caches) / "cache")
                print(f"seed {seed} done (load average {os.getloadavg()[0]:.2f})", file=sys.stderr)
        report(rows, a.noise, a.backbone)
    else:
        print(f"{a.data} not found: skipping the flip-and-find part")
    if not a.skip_timing:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CLASSIFIER_WORKSPACE"] = str(Path(tmp) / "workspace")
            t = timing(a.timing_images, Path(tmp), a.backbone)
        for name in ("cold", "after_edit"):
            m = t[name]
            print(
                f"\nscan of {t['images']} generated 128 px images, {name}: {m['wall']:.1f} s in all; phases "
                f"{m['seconds']}; features {m['features']}; load average {os.getloadavg()[0]:.2f} after"
            )


if __name__ == "__main__":
    main()
