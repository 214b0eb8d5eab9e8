"""Command line: `python -m classifier {train,evaluate,predict,explain,summary,issues,versions,jobs,...} ...`.

Thin by design: it parses arguments, calls the package and prints. A user error (bad dataset, unknown
backbone, bad weights file, existing run dir) prints one line `error: ...` and exits with code 2.

One module per command, each with its `NAME`, `add_parser(sub)` and `run(args) -> exit code`; `config_flags`
generates the TrainConfig flags of train, lr-find and search from the config's field metadata. Building the parser
imports no torch: the commands import the package's heavy parts inside `run`.
"""

from __future__ import annotations

import argparse
import sys

from classifier.cli import (
    access,
    backbones,
    compare,
    demo_data,
    ensemble,
    evaluate,
    explain,
    export,
    issues,
    jobs,
    lr_find,
    predict,
    report,
    search,
    summary,
    train,
    versions,
)
from classifier.cli.common import EXIT_USER_ERROR
from classifier.errors import ClassifierError

__all__ = ["COMMANDS", "EXIT_USER_ERROR", "build_parser", "main"]

COMMANDS = {  # command name -> its module, in the order `--help` lists them
    m.NAME: m
    for m in (
        train,
        evaluate,
        predict,
        explain,
        summary,
        issues,
        versions,
        demo_data,
        export,
        lr_find,
        search,
        jobs,
        compare,
        ensemble,
        report,
        backbones,
        access,
    )
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a DDP run re-launches itself with these
    try:
        return COMMANDS[args.command].run(args)
    except ClassifierError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
