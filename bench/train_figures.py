"""Accuracy and wall time of the CLI's default training recipes, measured end to end (process start to exit).

    python bench/train_figures.py            # all three recipes
    python bench/train_figures.py --only linear

Recipes: linear probe and fine-tune of efficientnet_lite0 (bundled offline weights) on ../shared/data/hymenoptera
(skipped with a message when that folder is absent), and default training on the built-in demo dataset.
Absolute times depend on the machine; the script prints the CPU count and torch thread count with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"

RECIPES = {
    "linear": ["--data", str(HYMENOPTERA), "--backbone", "efficientnet_lite0", "--mode", "linear"],
    "finetune": ["--data", str(HYMENOPTERA), "--backbone", "efficientnet_lite0", "--mode", "finetune"],
    "demo": ["--data", "demo"],
}


def run(name: str, args: list[str], workdir: Path) -> dict:
    out = workdir / name
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "classifier", "train", *args, "--out", str(out), "--quiet"]
    env = {**os.environ, "CLASSIFIER_WORKSPACE": str(workdir)}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        return {"recipe": name, "error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}
    final = json.loads(p.stdout.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "recipe": name,
        "accuracy": final["accuracy"],
        "macro_f1": final["macro_f1"],
        "ece": final["ece"],
        "epochs": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "fit_s": final["seconds"],
        "command_s": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(RECIPES), action="append")
    a = ap.parse_args()
    import torch

    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only or list(RECIPES):
            if RECIPES[name][1] == str(HYMENOPTERA) and not HYMENOPTERA.is_dir():
                print(f"{name}: skipped, {HYMENOPTERA} not found")
                continue
            print(json.dumps(run(name, RECIPES[name], Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
