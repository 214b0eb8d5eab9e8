"""Do the bundled EfficientNet-Lite0/1/2 weights load right? ImageNet predictions on real photos, per setup.

    python bench/bundled_check.py                  # ../shared/data/hymenoptera val/ants and val/bees
    python bench/bundled_check.py --data DIR       # a folder with ants/ and bees/ (ImageNet photos of them)

For each backbone the share of images whose ImageNet top-1 is the right class (310 "ant", 309 "bee") with the setup
`build_model(..., "bundled")` uses (timm's tf_efficientnet_lite* with TF "same" padding, inputs scaled with
mean = std = 0.5, the TF input size and crop), and with one thing changed at a time: symmetric padding (timm's
efficientnet_lite*, same parameter names), ImageNet mean/std. A wrong key mapping gives near 0 %; the right setup
should be clearly best. Also the forward time per image at the native size (batch 16, torch threads as set).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
CLASSES = {"ants": 310, "bees": 309}
IMAGENET_STATS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def images(root: Path) -> list[tuple[Path, int]]:
    return [(p, cls) for name, cls in CLASSES.items() for p in sorted((root / name).glob("*")) if p.is_file()]


def top1_share(model, data_config: dict, items: list[tuple[Path, int]]) -> tuple[float, float]:
    """Share of items whose top-1 is their ImageNet class, and seconds per image of the forward passes."""
    import torch

    from classifier.data.images import load_image
    from classifier.data.transforms import eval_transform

    t = eval_transform(data_config)
    xs, ys = [], []
    for p, cls in items:
        try:
            xs.append(t(load_image(p)))
            ys.append(cls)
        except Exception:  # noqa: BLE001 - a placeholder GIF in the data set
            continue
    x, y = torch.stack(xs), torch.tensor(ys)
    model.eval()
    preds, t0 = [], time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), 16):
            preds.append(model(x[i : i + 16]).argmax(1))
    secs = (time.perf_counter() - t0) / len(x)
    return float((torch.cat(preds) == y).float().mean()), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HYMENOPTERA / "val"), help="a folder with ants/ and bees/")
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    a = ap.parse_args()
    root = Path(a.data)
    if not root.is_dir():
        raise SystemExit(f"{root} is absent: give --data DIR with ants/ and bees/ folders")
    import timm
    import torch

    from classifier.models import build_model
    from classifier.models import weights as W

    items = images(root)
    print(f"{len(items)} images under {root}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("backbone | input | TF padding, mean=std=0.5 (ours) | symmetric padding | ImageNet mean/std | ms/image")
    for name in a.backbones.split(","):
        ours = timm.create_model(W.BUNDLED_TIMM_ARCH[name], pretrained=False)
        W.load_bundled(ours, name)
        dc = build_model(name, 2, "bundled").data_config
        sym = timm.create_model(name, pretrained=False)  # same names and shapes, symmetric padding
        sym.load_state_dict(ours.state_dict())
        acc, secs = top1_share(ours, dc, items)
        acc_sym, _ = top1_share(sym, dc, items)
        acc_inet, _ = top1_share(ours, {**dc, **IMAGENET_STATS}, items)
        print(f"{name} | {dc['input_size'][-1]} px crop {dc['crop_pct']} | {acc:.1%} | {acc_sym:.1%} | "
              f"{acc_inet:.1%} | {secs * 1000:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
