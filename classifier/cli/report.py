"""`report`: a one-page self-contained HTML report of a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from classifier.errors import ClassifierError

NAME = "report"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="write a one-page self-contained HTML report of a run (settings, metrics, figures)",
        description="Example: python -m classifier report --run runs/a --out a-report.html",
    )
    p.add_argument("--run", required=True, help="run (or ensemble) dir")
    p.add_argument("--out", required=True, help="the .html file to write")


def run(a: argparse.Namespace) -> int:
    from classifier.report import write_report

    if Path(a.out).suffix.lower() not in (".html", ".htm"):
        raise ClassifierError(f"--out {a.out}: the report is HTML; give a file name ending in .html")
    print(json.dumps({"report": str(write_report(a.run, a.out))}))
    return 0
