"""`predict`: the classes of images or folders with a run (or a saved ensemble); one JSON object per line."""

from __future__ import annotations

import argparse

from classifier.cli.common import print_results

NAME = "predict"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="predict images or folders with a run; one JSON object per line")
    p.add_argument("--run", required=True, help="run dir (or a saved ensemble dir)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "auto"],
        help="forward pass in PyTorch, in ONNX Runtime on the CPU (exported once, cached), or whichever measures "
        "faster here (auto)",
    )


def run(a: argparse.Namespace) -> int:
    from classifier.ensemble import load_ensemble
    from classifier.predict import load_run, predict_paths
    from classifier.rundir import is_ensemble_dir

    if is_ensemble_dir(a.run):  # a saved ensemble: the members' averaged probabilities
        results = load_ensemble(a.run, device=a.device).predict_paths(a.inputs, top_k=a.top_k)
    else:
        device = "cpu" if a.backend == "onnx" and a.device == "auto" else a.device
        results = predict_paths(load_run(a.run, device=device, backend=a.backend), a.inputs, top_k=a.top_k)
    return print_results(results)
