"""`summary`: check a dataset (classes, counts, image sizes, skipped files, duplicates, leakage) before training."""

from __future__ import annotations

import argparse
import json

from classifier.cli.common import EXIT_USER_ERROR
from classifier.cli.config_flags import add_config_flag
from classifier.errors import ClassifierError
from classifier.training.config import config_field

NAME = "summary"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="check a dataset: classes, counts, sizes, skipped files, duplicates")
    p.add_argument("--data", required=True)
    add_config_flag(p, config_field("data_version"))
    add_config_flag(p, config_field("val_split"))  # the split a run with these settings would make
    add_config_flag(p, config_field("seed"))
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(a: argparse.Namespace) -> int:
    from classifier.data.dataset import check_trainable, load_dataset
    from classifier.data.demo import resolve_data
    from classifier.data.splits import assign_splits

    data = resolve_data(a.data, a.seed)
    index = load_dataset(data, a.data_version)
    problem = None
    try:
        check_trainable(index)
        splits = assign_splits(index, a.val_split, 0.0, a.seed)
    except ClassifierError as e:
        problem, splits = str(e), None
    s = index.summary(splits)
    s["trainable"] = problem is None
    s["problem"] = problem
    if a.json:
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
    return 0 if problem is None else EXIT_USER_ERROR


def format_summary(s: dict) -> str:
    multi = s.get("task") == "multilabel"
    unit, units = ("label", "labels") if multi else ("class", "classes")
    kind = ", multi-label" if multi else ""
    lines = [f"dataset {s['root']} ({s['layout']}{kind}): {s['n_images']} images, {len(s['classes'])} {units}"]
    if s.get("version"):
        lines.append(f"  version {s['version']}: {len(s['relabelled'])} relabelled, {len(s['excluded'])} excluded")
    splits = list(s["counts"])
    lines.append("  " + unit.ljust(24) + "".join(sp.rjust(8) for sp in splits))
    for c in s["classes"]:
        lines.append("  " + c[:23].ljust(24) + "".join(str(s["counts"][sp].get(c, 0)).rjust(8) for sp in splits))
    if multi:
        lab = s["labels"]
        hist = ", ".join(f"{k}: {n}" for k, n in enumerate(lab["labels_per_image"]))
        lines.append(f"  labels per image (labels: images): {hist}; mean {lab['mean_labels']:.2f}")
        lines.append(f"  images with no label (negative for every label): {lab['no_label']}")
    sz = s["image_size"]
    lines.append(f"  image sizes: {sz['min_width']}-{sz['max_width']} x {sz['min_height']}-{sz['max_height']} px")
    if s["skipped"]:
        lines.append(f"  skipped {len(s['skipped'])} files:")
        lines += [f"    {k['path']}: {k['reason']}" for k in s["skipped"]]
    if s["duplicates"]:
        lines.append(f"  {len(s['duplicates'])} groups of identical images:")
        lines += ["    " + " = ".join(g) for g in s["duplicates"][:20]]
    if s["leakage"]:
        lines.append(f"  warning: {len(s['leakage'])} validation/test images also appear in train (leakage):")
        lines += [f"    {a} = {b}" for a, b in s["leakage"][:20]]
    lines += [f"  warning: {w}" for w in s["warnings"]]
    if s.get("problem"):
        lines.append(f"  cannot train: {s['problem']}")
    return "\n".join(lines)
