"""`demo-data`: write the built-in demo dataset (and its object masks), or make sure the workspace has it; with
`--multilabel`, scenes of one to three shapes labelled with the shapes present (a `path,labels` CSV)."""

from __future__ import annotations

import argparse

NAME = "demo-data"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="write the built-in demo dataset (and object masks)")
    p.add_argument("--out", default=None, help="folder to write (default: the workspace demo dataset the app uses)")
    p.add_argument("--masks-out", default=None, help="folder for the object masks (multi-label: one per shape)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=60, help="images per class")
    p.add_argument(
        "--multilabel", action="store_true",
        help="scenes with one to three shapes each, labels = the shapes present (labels.csv); needs --out",
    )  # fmt: skip
    p.add_argument("--images", type=int, default=400, help="--multilabel: number of scenes")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 128; 192 for --multilabel)")


def run(a: argparse.Namespace) -> int:
    from classifier.data.demo import make_demo_dataset, make_multilabel_demo
    from classifier.errors import ClassifierError

    if a.multilabel:
        if a.out is None:
            raise ClassifierError("demo-data --multilabel needs --out DIR (the folder to write the scenes to)")
        out = make_multilabel_demo(a.out, n_images=a.images, size=a.size or 192, seed=a.seed, masks_out=a.masks_out)
    elif a.out is None:
        from classifier.data.demo import ensure_demo_dataset

        print(f"demo dataset ready in {ensure_demo_dataset(a.seed)}")
        return 0
    else:
        out = make_demo_dataset(a.out, n_per_class=a.per_class, size=a.size or 128, seed=a.seed,
                                masks_out=a.masks_out)  # fmt: skip
    print(f"wrote demo dataset to {out}" + (f" and masks to {a.masks_out}" if a.masks_out else ""))
    return 0
