"""`issues`: scan a dataset version for likely label errors, near duplicates, outliers and overlapping classes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from classifier.cli.config_flags import add_config_flag, config_from_args
from classifier.errors import ClassifierError
from classifier.quality import SCAN_BACKBONE
from classifier.training.config import config_field

if TYPE_CHECKING:
    from classifier.quality.scan import ScanResult

NAME = "issues"
SCAN_FIELDS = ("data_version", "val_split", "test_split", "backbone", "weights", "img_size", "grayscale", "seed",
               "device", "cache")  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="find likely label errors (with the suggested label), near duplicates, outliers, overlapping classes",
        description="Frozen-backbone features of every image (computed once, cached), K-fold out-of-sample "
        "probabilities of a linear probe on them, then cleanlab. Writes issues.csv (path,issue,given_label,"
        "suggested_label,score; most likely problems first within each issue) and prints a summary. Fix what it "
        "finds with `python -m classifier versions`. Example: python -m classifier issues --data "
        "../shared/data/hymenoptera --out issues.csv",
    )
    p.add_argument("--data", required=True, help="the dataset: folder, .zip, CSV, or demo")
    for name in SCAN_FIELDS:
        add_config_flag(p, config_field(name), default=SCAN_BACKBONE if name == "backbone" else None)
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the linear probe (default 5)")
    p.add_argument("--out", default=None, metavar="CSV", help="write the issues here (issues.csv)")
    p.add_argument("--refresh", action="store_true", help="scan again even if this version was scanned before")
    p.add_argument("--include-reviewed", action="store_true", help="also list images the version marks reviewed")
    p.add_argument("--json", action="store_true", help="print the scan's summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(a: argparse.Namespace) -> int:
    from classifier.data.demo import resolve_data
    from classifier.data.versions import DatasetVersions
    from classifier.quality import scan_dataset

    if a.folds < 2:
        raise ClassifierError(f"--folds must be at least 2, not {a.folds}")
    a.data = resolve_data(a.data)
    try:
        cfg = config_from_args(a).resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e
    with _Bars(a.quiet) as bars:
        result = scan_dataset(cfg, a.folds, progress=bars.update, refresh=a.refresh)
    reviewed = () if a.include_reviewed else DatasetVersions(a.data).get(result.meta["version"]).reviewed
    if a.out:
        result.write_csv(a.out, skip=reviewed)
    summary = {**result.meta, "counts": result.counts(reviewed), "out": a.out}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_scan(result, reviewed, a.out))
    return 0


def format_scan(result: ScanResult, reviewed: Iterable[str], out: str | None) -> str:
    """A few lines: what was scanned, how long it took, counts and the top issues of each type."""
    m = result.meta
    feats = m.get("features", {})
    how = "read back from the scan cache" if m.get("cached") else (
        f"features {feats.get('computed', 0)} computed, {feats.get('reused', 0)} reused")  # fmt: skip
    lines = [
        f"scanned {m['n_images']} images of {m['data']} (version {m['version']}) with {m['backbone']} "
        f"({m['weights']}) in {m['seconds_total']:.1f} s; {how}; probe: {m['folds']} folds, C={m['probe_c']}, "
        f"out-of-sample agreement with the labels {m['probe_accuracy']:.1%}"
    ]
    table = result.issues(reviewed)
    for issue, n in result.counts(reviewed).items():
        rows = table[table["issue"] == issue].head(5)
        lines.append(f"  {issue}: {n}")
        for r in rows.itertuples():
            what = f"{r.given_label} -> {r.suggested_label}" if r.suggested_label else r.given_label
            lines.append(f"    {r.score:.3f}  {r.path or '(class pair)'}  {what}")
    leaks = result.images[result.images["is_duplicate"] & result.images["cross_split"]]
    if len(leaks):
        lines.append(f"  warning: {len(leaks)} near duplicates have a copy in another split (train/val leakage)")
    if out:
        lines.append(f"wrote {out}")
    return "\n".join(lines)


class _Bars:
    """One tqdm bar per phase on stderr (it shows the ETA), closed when the next phase starts."""

    LABELS = {"cache": "decoding images", "features": "features", "probe": "probe heads", "issues": "cleanlab"}

    def __init__(self, quiet: bool):
        self.quiet, self.bars = quiet, {}  # phase -> its tqdm bar

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        for b in self.bars.values():
            b.close()

    def update(self, phase: str, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if phase not in self.bars:
            for b in self.bars.values():
                b.close()
            self.bars[phase] = tqdm(total=total, desc=self.LABELS.get(phase, phase), file=sys.stderr, leave=False)
        self.bars[phase].n = done
        self.bars[phase].refresh()
