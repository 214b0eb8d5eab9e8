"""`export`: a run as ONNX or TorchScript, checked against PyTorch on its validation images."""

from __future__ import annotations

import argparse
import json
import sys

from classifier.errors import ClassifierError

NAME = "export"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="export a run to ONNX or TorchScript, checked against PyTorch on its validation images",
        description="Export a run and check it: top-1 agreement and largest probability difference against the "
        "PyTorch model on the run's validation images, and images/s of both. Prints the result as JSON; exit code 1 "
        "when the check flags the export (the file is still written). Example: python -m classifier export "
        "--run runs/demo --format onnx --out demo-onnx.zip",
    )
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument(
        "--out",
        required=True,
        help="PATH.zip: the bundle (model, config.json, MODEL_CARD.md, predict script); "
        "PATH.onnx or PATH.pt: the model file alone",
    )
    p.add_argument("--quantize", default=None, choices=["int8"], help="ONNX only: dynamic int8 quantization")
    p.add_argument("--max-images", type=int, default=64, help="validation images to check the export on")


def run(a: argparse.Namespace) -> int:
    from classifier.export import export_run

    if a.max_images < 1:
        raise ClassifierError(f"--max-images must be at least 1, got {a.max_images}")
    report = export_run(a.run, a.format, a.out, quantize=a.quantize, max_images=a.max_images)
    print(json.dumps(report.to_dict(), indent=2))
    for reason in report.reasons:
        print(f"warning: {reason}", file=sys.stderr)
    return 1 if report.reasons else 0  # flagged: the file is written, but say so in the exit code
