"""`evaluate`: a run's (or a saved ensemble's) metrics as JSON."""

from __future__ import annotations

import argparse
import json

NAME = "evaluate"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="print a run's metrics as JSON")
    p.add_argument("--run", required=True, help="run dir (or a saved ensemble dir)")
    p.add_argument("--data", default=None, help="dataset to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="val", choices=["val", "test", "all"])
    p.add_argument("--device", default="auto")


def run(a: argparse.Namespace) -> int:
    from classifier.ensemble import evaluate_ensemble
    from classifier.evaluate import evaluate_run
    from classifier.rundir import is_ensemble_dir

    evaluate = evaluate_ensemble if is_ensemble_dir(a.run) else evaluate_run
    print(json.dumps(evaluate(a.run, a.data, a.split, a.device), indent=2))
    return 0
