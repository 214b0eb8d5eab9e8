"""`ensemble`: average the probabilities of runs trained on the same classes; save it and print its metrics."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "ensemble"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="average the probabilities of runs trained on the same classes; save it and print its metrics",
        description="Combine runs (same class names in the same order, same validation images) by averaging their "
        "probabilities, each through its own evaluation transform. Writes OUT/ensemble.json, metrics.json and "
        "val_predictions.csv and prints the metrics as JSON. Example: python -m classifier ensemble --runs runs/a "
        "runs/b --out ensembles/ab",
    )
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="two or more run dirs")
    p.add_argument("--out", required=True, help="new folder for the ensemble")
    p.add_argument("--name", default=None, help="a display name (default: the run ids joined by +)")
    p.add_argument("--device", default="auto")


def run(a: argparse.Namespace) -> int:
    from classifier.ensemble import build_ensemble

    def progress(done: int, total: int, eta: float | None) -> None:
        left = f", about {eta:.0f} s left" if eta else ""
        print(f"evaluated {done}/{total} members{left}", file=sys.stderr)

    metrics = build_ensemble(a.runs, a.out, name=a.name, device=a.device, progress=progress)
    print(json.dumps({"ensemble_dir": a.out, **metrics}, indent=2))
    return 0
