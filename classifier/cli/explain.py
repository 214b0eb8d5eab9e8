"""`explain`: attribution maps for images; the methods, baselines and baseline help come from the registry
(`classifier.explain.methods`, which imports no torch)."""

from __future__ import annotations

import argparse
import sys

from classifier.cli.common import print_results
from classifier.errors import ClassifierError

NAME = "explain"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from classifier.explain.methods import BASELINES, METHODS, methods_using  # the registry; imports no torch

    p = sub.add_parser(
        NAME,
        help="attribution maps (Grad-CAM, integrated gradients, ...) for images; writes .npy maps and .png overlays",
    )
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument(
        "--method",
        required=True,
        choices=list(METHODS),
    )
    p.add_argument("--target", default=None, help="class name or index to explain (default: the predicted class)")
    p.add_argument("--out-dir", required=True, help="folder for <stem>.npy (raw map) and <stem>.png (overlay)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    takers = methods_using("baseline")
    p.add_argument(
        "--baseline",
        default=None,
        choices=list(BASELINES),
        help=f"reference image for {', '.join(m.name for m in takers)} "
        f"(default: {', '.join(f'{m.default_baseline} for {m.name}' for m in takers)})",
    )
    p.add_argument("--n-steps", type=int, default=32, help="integrated gradients: path steps")
    p.add_argument(
        "--no-shift-average",
        dest="shift_average",
        action="store_false",
        help="Grad-CAM: one plain pass instead of the mean over four copies shifted by a quarter of the layer's cell",
    )
    p.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlay")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1")
    p.add_argument("--device", default="auto")


def run(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from classifier.explain import explain_paths
    from classifier.predict import load_run

    if not 0.0 <= a.alpha <= 1.0:
        raise ClassifierError(f"--alpha must be between 0 and 1, got {a.alpha}")
    loaded = load_run(a.run, device=a.device)
    bar = tqdm(total=0, unit="img", desc=a.method, file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        results = explain_paths(
            loaded,
            a.inputs,
            a.method,
            a.target,
            out_dir=a.out_dir,
            cmap=a.cmap,
            alpha=a.alpha,
            baseline=a.baseline,
            n_steps=a.n_steps,
            shift_average=a.shift_average,
            progress=progress,
        )
    except ValueError as e:  # a bad colour map or option
        raise ClassifierError(str(e)) from None
    finally:
        bar.close()
    return print_results(results)
