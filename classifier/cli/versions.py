"""`versions`: list a dataset's versions, or save a new one with relabels, exclusions and "reviewed" marks."""

from __future__ import annotations

import argparse
import csv
import json

from classifier.data.versions import Edits
from classifier.errors import DatasetError

NAME = "versions"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="dataset versions: list them, or save relabels / exclusions / reviewed marks as a new version",
        description="Without edits: list the dataset's versions (0 is the files as they are). With edits: save the "
        "latest version plus them as a new version (the files are never changed) and print its number; train on it "
        "with --data-version N (the default is the latest). Example: python -m classifier versions --data photos "
        "--from-issues issues.csv --accept label --note 'label fixes'",
    )
    p.add_argument("--data", required=True, help="the dataset: folder, .zip, CSV, or demo")
    p.add_argument("--relabel", nargs="+", default=[], metavar="PATH=CLASS", help="give these images another class")
    p.add_argument("--exclude", nargs="+", default=[], metavar="PATH", help="leave these images out")
    p.add_argument("--restore", nargs="+", default=[], metavar="PATH", help="bring excluded images back")
    p.add_argument("--reviewed", nargs="+", default=[], metavar="PATH", help="mark images reviewed (kept as they are)")
    p.add_argument(
        "--from-issues", default=None, metavar="CSV", help="an issues.csv from `python -m classifier issues`"
    )
    p.add_argument(
        "--accept",
        nargs="+",
        default=["label"],
        choices=["label", "outlier"],
        help="with --from-issues: relabel label issues as suggested, exclude outliers (default: label)",
    )
    p.add_argument("--top", type=int, default=None, help="with --from-issues: only the first N rows of each issue type")
    p.add_argument("--note", default="", help="a note saved with the version")
    p.add_argument("--json", action="store_true", help="print the versions as JSON")


def run(a: argparse.Namespace) -> int:
    from classifier.data.dataset import save_version
    from classifier.data.demo import resolve_data
    from classifier.data.versions import DatasetVersions, parse_relabels

    data = resolve_data(a.data)
    versions = DatasetVersions(data)
    edits = Edits(parse_relabels(a.relabel), set(a.exclude), set(a.restore), set(a.reviewed))
    if a.from_issues:
        edits = edits.merged(edits_from_issues(a.from_issues, a.accept, a.top))
    if edits:
        number = save_version(data, edits, note=a.note, use_draft=False)
        print(json.dumps({"version": number, **versions.get(number).changes}) if a.json else f"saved version {number}")
        return 0
    history = versions.history()
    if a.json:
        print(json.dumps([o.to_dict() for o in history], indent=2))
        return 0
    print(f"{data}: version 0 = the files as they are" + ("" if history else "; no other versions"))
    for o in history:
        changes = ", ".join(f"{k} {v}" for k, v in o.changes.items() if v)
        print(f"  version {o.version} ({o.created_at}, from {o.parent}): {changes}{'; ' + o.note if o.note else ''}")
        print(f"    in all: {len(o.relabel)} relabelled, {len(o.exclude)} excluded, {len(o.reviewed)} reviewed")
    draft = versions.draft()
    if draft:
        print(f"  unsaved edits (the app's draft): {draft.to_dict()}")
    return 0


def edits_from_issues(path: str, accept: list[str], top: int | None) -> Edits:
    """Edits from an issues.csv: label issues relabelled as suggested, outliers excluded (as `accept` says)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the issues file ({e.strerror or e})") from e
    if rows and not {"path", "issue", "suggested_label"} <= set(rows[0]):
        raise DatasetError(
            f"{path}: not an issues.csv (needs the columns path,issue,given_label,suggested_label,score)"
        )
    taken: dict[str, int] = {}
    edits = Edits()
    for r in rows:
        if r["issue"] not in accept or not r["path"] or (top is not None and taken.get(r["issue"], 0) >= top):
            continue
        taken[r["issue"]] = taken.get(r["issue"], 0) + 1
        if r["issue"] == "label":
            edits.relabel[r["path"]] = r["suggested_label"]
        else:
            edits.exclude.add(r["path"])
    return edits
