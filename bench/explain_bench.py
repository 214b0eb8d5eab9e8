"""Cost and localisation quality of every attribution method in `classifier.explain`.

    python bench/explain_bench.py                 # timing + pointing game (about 10-15 minutes on 2 CPU cores)
    python bench/explain_bench.py --only timing
    python bench/explain_bench.py --only pointing --img-sizes 128
    python bench/explain_bench.py --only pointing --img-sizes 128,192,256 --methods gradcam  # Grad-CAM's variants

1. Timing: seconds per 224 px image for each method on resnet18 (random weights; cost does not depend on them)
   and efficientnet_lite0 (bundled weights), and that time as a multiple of one forward pass of the same model on
   one image, measured in the same run (median of `--repeats`).
2. Pointing game: the demo dataset (60 images per class at 128 px, masks kept), a linear probe of
   efficientnet_lite0 trained for each model input size in `--img-sizes` (128 = native; 256 = the images
   upsampled 2x, which gives Grad-CAM a 8x8 instead of 4x4 last feature map), then on every correctly classified
   validation image: pointing-game hit rate (argmax within 3 % of the image side of the object mask, and within
   the 15 px-at-224 px equivalent, 6.7 %) and the mean in-mask energy ratio (1 = no better than uniform).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = [  # (label, method, options)
    ("gradcam", "gradcam", {}),  # the default: the mean of four copies shifted by a quarter cell
    ("gradcam (one pass)", "gradcam", {"shift_average": False}),  # the plain map, as before 2026-11-29
    ("gradcam (conv_head, one pass)", "gradcam", {"layer": "conv_head", "shift_average": False}),  # EfficientNet only
    ("guided_gradcam", "guided_gradcam", {}),
    ("ig (black baseline)", "ig", {"baseline": "black"}),
    ("ig (noise, default)", "ig", {}),
    ("saliency", "saliency", {}),
    ("smoothgrad", "smoothgrad", {}),
    ("occlusion", "occlusion", {}),
    ("gradient_shap", "gradient_shap", {}),
]


def machine() -> str:
    import torch

    cuda = f"yes: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no"
    return (
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"CUDA {cuda}, load average {os.getloadavg()[0]:.1f}"
    )


def timing(repeats: int) -> None:
    import numpy as np
    import torch

    from classifier.data.demo import demo_image
    from classifier.explain import METHODS, attribute
    from classifier.models import build_model

    img, _ = demo_image("star", np.random.default_rng(0), 256)
    print(f"\n(1) seconds per 224 px image (median of {repeats}; ratio = x one forward pass of 1 image)")
    print(f"{'method':16s}" + "".join(f"{name:>30s}" for name in ("resnet18", "efficientnet_lite0")))
    cols: dict[str, dict[str, str]] = {}
    for backbone, weights in (("resnet18", "none"), ("efficientnet_lite0", "bundled")):
        built = build_model(backbone, 5, weights, img_size=224)
        model = built.model.eval()
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            model(x)
            fwd = []
            for _ in range(max(5, repeats)):
                t = time.perf_counter()
                model(x)
                fwd.append(time.perf_counter() - t)
        forward = statistics.median(fwd)
        cols.setdefault("forward", {})[backbone] = f"{forward:.4f} s"
        attribute(model, img, "saliency", data_config=built.data_config)  # warm-up (imports, allocator)
        for method in METHODS:
            secs = [attribute(model, img, method, data_config=built.data_config).seconds for _ in range(repeats)]
            s = statistics.median(secs)
            cols.setdefault(method, {})[backbone] = f"{s:.3f} s  ({s / forward:6.1f}x)"
    for row, vals in cols.items():
        print(f"{row:16s}" + "".join(f"{vals[b]:>30s}" for b in ("resnet18", "efficientnet_lite0")))


def pointing(img_sizes: list[int], n_per_class: int, size: int, limit: int | None, methods: set[str] | None) -> None:
    import numpy as np
    from PIL import Image

    from classifier.data.demo import make_demo_dataset
    from classifier.explain import attribute, mask_energy_ratio, pointing_game
    from classifier.predict import load_run, predict_images
    from classifier.training import TrainConfig, fit

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["CLASSIFIER_WORKSPACE"] = str(tmp_path / "workspace")
        data, masks = tmp_path / "data", tmp_path / "masks"
        make_demo_dataset(data, n_per_class=n_per_class, size=size, seed=3, masks_out=masks)
        for img_size in img_sizes:
            t = time.perf_counter()
            cfg = TrainConfig(
                data=str(data),
                backbone="efficientnet_lite0",
                mode="linear",
                img_size=img_size,
                epochs=30,
                num_workers=0,
            )
            result = fit(cfg, tmp_path / f"run{img_size}")
            run = load_run(tmp_path / f"run{img_size}")
            val = [r for r in csv.DictReader(open(tmp_path / f"run{img_size}" / "split.csv")) if r["split"] == "val"]
            images = [Image.open(data / r["path"]).convert("RGB") for r in val]
            pred = predict_images(run, images).argmax(1)
            ok = [i for i, r in enumerate(val) if run.class_names[pred[i]] == r["label"]][:limit]
            acc = (result.metrics or {}).get("accuracy", float("nan"))
            print(
                f"\n(2) demo dataset {n_per_class}/class at {size} px, efficientnet_lite0 linear probe at input "
                f"{img_size} px: val accuracy {acc:.3f}, {len(ok)} correctly classified val images used "
                f"(train {time.perf_counter() - t:.0f} s)"
            )
            print(f"{'method':30s}{'pointing@3%':>12s}{'pointing@6.7%':>15s}{'energy ratio':>14s}{'s/img':>8s}  note")
            for label, method, opts in VARIANTS:
                if methods and method not in methods:
                    continue
                hits, hits_std, energy, secs = [], [], [], []
                note = ""
                for i in ok:
                    mask = Image.open(masks / val[i]["path"])
                    a = attribute(run, images[i], method, **opts)
                    hits.append(pointing_game(a.map, mask))
                    hits_std.append(pointing_game(a.map, mask, tolerance=15 / 224))
                    energy.append(mask_energy_ratio(a.map, mask))
                    secs.append(a.seconds)
                    if "layer" in a.extra:
                        grid = a.extra.get("layer_map_size")
                        note = f"layer {a.extra['layer']}" + (f", {grid[0]}x{grid[1]} map" if grid else "")
                print(
                    f"{label:30s}{np.mean(hits):12.3f}{np.mean(hits_std):15.3f}{np.nanmean(energy):14.2f}"
                    f"{np.mean(secs):8.3f}  {note}"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["timing", "pointing"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--img-sizes", default="128,256", help="model input sizes for the pointing game, comma-separated")
    ap.add_argument("--n-per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=128, help="demo image side in pixels")
    ap.add_argument("--limit", type=int, default=None, help="at most this many val images per model (quick runs)")
    ap.add_argument("--methods", default="", help="pointing game: only these methods, comma-separated (default all)")
    a = ap.parse_args()
    import torch

    torch.manual_seed(0)
    print(machine())
    t = time.perf_counter()
    if a.only in (None, "timing"):
        timing(a.repeats)
    if a.only in (None, "pointing"):
        methods = {m for m in a.methods.split(",") if m}
        pointing([int(s) for s in a.img_sizes.split(",")], a.n_per_class, a.size, a.limit, methods or None)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
