"""`compare`: runs side by side as stored so far (also while they train), as JSON."""

from __future__ import annotations

import argparse
import json

NAME = "compare"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="compare runs (also while they train): differing settings, per-class F1, which run wins each class",
        description="Compare two or more runs as stored so far and print JSON: the settings that differ, per-class "
        "F1 side by side, and the best run for each class (ties named). Example: python -m classifier compare "
        "--runs runs/a runs/b",
    )
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="two or more run dirs")


def run(a: argparse.Namespace) -> int:
    from classifier.compare import compare_summary, load_runs

    print(json.dumps(compare_summary(load_runs(a.runs)), indent=2, default=str))
    return 0
