"""bf16 autocast on a CPU against float32, side by side: training and inference speed, and what it does to accuracy.

    python bench/cpu_bf16.py                 # efficientnet_lite0 and resnet18, 160 px, batch 32
    python bench/cpu_bf16.py --skip-accuracy # speed only

Speed: a bare timm training step (forward, cross-entropy, backward, AdamW step) and a no-grad forward, in float32
and bf16 autocast, each contiguous and channels_last (the candidates `classifier/training/precision.py` measures per
model), alternating calls so all see the same machine; the median call counts. Accuracy (needs
../shared/data/hymenoptera): a linear probe of efficientnet_lite0 (bundled weights) trained twice with `fit`, amp
on and off (`--no-amp`), same seed; the difference in validation accuracy is the tolerance the docs state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def speed(name: str, side: int, batch: int, reps: int) -> dict[str, float]:
    """Images/s of float32 and of the CPU precision, training steps and inference, alternating."""
    import timm
    import torch

    from classifier.device import Precision

    cpu = torch.device("cpu")
    bf16 = torch.bfloat16
    precs = {
        "float32": Precision(cpu),
        "float32 + channels_last": Precision(cpu, channels_last=True),
        "bf16": Precision(cpu, bf16),
        "bf16 + channels_last": Precision(cpu, bf16, channels_last=True),
    }
    x = torch.randn(batch, 3, side, side)
    y = torch.randint(0, 5, (batch,))
    runs = {}
    for key, prec in precs.items():
        torch.manual_seed(0)
        model = prec.prepare(timm.create_model(name, num_classes=5))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        xx = prec.layout(x)

        def train(model=model, opt=opt, xx=xx, prec=prec) -> None:
            model.train()
            with prec.autocast():
                loss = torch.nn.functional.cross_entropy(model(xx).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer(model=model, xx=xx, prec=prec) -> None:
            model.eval()
            with torch.no_grad(), prec.autocast():  # the feature pass of a linear probe runs like this
                model(xx)

        runs[key] = (train, infer)
        train(), infer()  # warm-up
    times = {(k, w): [] for k in runs for w in ("train", "infer")}
    for r in range(reps):
        for k in list(runs)[:: 1 if r % 2 == 0 else -1]:
            for w, fn in zip(("train", "infer"), runs[k]):
                t = time.perf_counter()
                fn()
                times[(k, w)].append(time.perf_counter() - t)
    return {f"{k} {w}": batch / statistics.median(v) for (k, w), v in times.items()}


def probe_accuracy() -> list[tuple[str, float, float]]:
    """(amp setting, validation accuracy, seconds) of a linear probe on hymenoptera, amp on and off."""
    from classifier.training import TrainConfig, fit

    out = []
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as tmp:
        os.environ["CLASSIFIER_WORKSPACE"] = str(Path(tmp) / "ws")
        for amp in (True, False):
            cfg = TrainConfig(data=str(HYMENOPTERA), backbone="efficientnet_lite0", mode="linear", amp=amp, seed=0)
            t = time.perf_counter()
            r = fit(cfg, Path(tmp) / f"amp-{amp}")
            out.append(("bf16" if amp else "float32", r.metrics["accuracy"], time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0,resnet18")
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-accuracy", action="store_true")
    a = ap.parse_args()
    import torch

    from classifier.device import cpu_has_bf16

    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16: {cpu_has_bf16()}, "
          f"load average {load:.2f} at the start")  # fmt: skip
    for name in a.models.split(","):
        timm_name = "tf_efficientnet_lite0" if name == "efficientnet_lite0" else name
        s = speed(timm_name, a.img_size, a.batch_size, a.reps)
        for prec in ("float32", "float32 + channels_last", "bf16", "bf16 + channels_last"):
            train, infer = s[f"{prec} train"], s[f"{prec} infer"]
            print(f"{name} {a.img_size} px batch {a.batch_size}, {prec:24s} train {train:6.1f} img/s "
                  f"({train / s['float32 train']:.2f}x), inference {infer:6.1f} img/s "
                  f"({infer / s['float32 infer']:.2f}x)", flush=True)  # fmt: skip
    if not a.skip_accuracy:
        if not HYMENOPTERA.is_dir():
            print(f"accuracy skipped: {HYMENOPTERA} is absent")
            return
        rows = probe_accuracy()
        for amp, acc, secs in rows:
            print(f"linear probe efficientnet_lite0 on hymenoptera, amp {amp}: accuracy {acc:.4f} in {secs:.1f} s")
        print(f"accuracy difference bf16 - float32: {rows[0][1] - rows[1][1]:+.4f}; time ratio float32/bf16: "
              f"{rows[1][2] / rows[0][2]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
