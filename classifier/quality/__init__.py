"""Data quality: find likely label errors, near duplicates, outliers and overlapping classes in a dataset version.

probe.py  K-fold out-of-sample probabilities of a linear probe on frozen features (logistic regression)
find.py   cleanlab (Datalab, find_overlapping_classes) on the features and those probabilities; scores as severities
scan.py   scan_dataset: features once (through the feature cache), probe, cleanlab; ScanResult, issues.csv, its cache

Fixing what the scan finds is a new dataset version (`classifier.data.versions`): relabels, exclusions and "reviewed"
marks beside the data, applied by `classifier.data.dataset.load_dataset`. The public names load on first use, so the
CLI's parser imports no torch or cleanlab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from classifier.lazy import lazy_exports

if TYPE_CHECKING:  # the same names, statically: for type checkers and for the import graph
    from classifier.quality.find import ISSUE_TYPES, Found, find_issues
    from classifier.quality.probe import ProbeResult, out_of_sample_probs
    from classifier.quality.scan import CSV_COLUMNS, ScanResult, scan_dataset

_OWNER = {  # public name -> the module that owns it
    "ISSUE_TYPES": "find",
    "Found": "find",
    "find_issues": "find",
    "ProbeResult": "probe",
    "out_of_sample_probs": "probe",
    "CSV_COLUMNS": "scan",
    "ScanResult": "scan",
    "scan_dataset": "scan",
}
# The scan's backbone unless the user picks one: the largest offline one. On hymenoptera with 10 % of the training
# labels flipped (bench/quality.py, 5 seeds) its features found 0.908 of the flips among the top k (lowest seed 0.875)
# against 0.858 (0.792) with Lite0's, and fixing what it flagged won back 88 % of the accuracy the noise cost against
# 76 %; its feature pass costs about twice Lite0's (260 px against 224 px input).
SCAN_BACKBONE = "efficientnet_lite2"

__all__ = [
    "CSV_COLUMNS",
    "Found",
    "ISSUE_TYPES",
    "ProbeResult",
    "ScanResult",
    "find_issues",
    "out_of_sample_probs",
    "scan_dataset",
]

__getattr__, __dir__ = lazy_exports(__name__, _OWNER)
