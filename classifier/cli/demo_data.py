"""`demo-data`: write the built-in demo dataset (and its object masks), or make sure the workspace has it."""

from __future__ import annotations

import argparse

NAME = "demo-data"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="write the built-in demo dataset (and object masks)")
    p.add_argument("--out", default=None, help="folder to write (default: the workspace demo dataset the app uses)")
    p.add_argument("--masks-out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=60, help="images per class")


def run(a: argparse.Namespace) -> int:
    from classifier.data.demo import make_demo_dataset

    if a.out is None:
        from classifier.data.demo import ensure_demo_dataset

        print(f"demo dataset ready in {ensure_demo_dataset(a.seed)}")
        return 0
    out = make_demo_dataset(a.out, n_per_class=a.per_class, seed=a.seed, masks_out=a.masks_out)
    print(f"wrote demo dataset to {out}" + (f" and masks to {a.masks_out}" if a.masks_out else ""))
    return 0
