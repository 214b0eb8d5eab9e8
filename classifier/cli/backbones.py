"""`backbones`: the curated backbones (and, with --all, every timm model name)."""

from __future__ import annotations

import argparse

NAME = "backbones"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="list backbones")
    p.add_argument("--all", action="store_true", help="also list every timm model name")


def run(a: argparse.Namespace) -> int:
    from classifier.models import list_backbones

    for b in list_backbones(all_timm=a.all):
        params = f"{b.params_m:6.1f}M" if b.params_m == b.params_m else "      ?"
        offline = "offline weights" if b.bundled_weights else ""
        print(f"{b.name:28s} {params}  {b.description}  {offline}".rstrip())
    return 0
