"""The TrainConfig flags, generated from the config's field metadata, and the TrainConfig parsed flags describe.

Each field becomes one flag named after it (`img_size` -> `--img-size`, or the metadata's `flag`: `num_workers` ->
`--workers`) whose destination is the field itself, with the field's type, default and choices, a help text from
its metadata and its unit as the metavar (`--img-size PIXELS`). A boolean field is a switch: `--grayscale` turns on
one that defaults to False, `--no-amp` turns off one that defaults to True. A required field (`data`) defaults to
None, so a command can tell it was not given.
Which flags a command has follows from the metadata groups: every training command has the settings groups
(`SETTINGS`) and the runtime group; `train` also has the output group.
"""

from __future__ import annotations

import argparse
from dataclasses import Field

from classifier.errors import ClassifierError
from classifier.training.config import TrainConfig, config_fields, describe, field_choices, field_type

SETTINGS = ("data", "model", "optimisation")  # the TrainConfig groups every training command shares, in help order
Target = argparse.ArgumentParser | argparse._ArgumentGroup


def flag_of(f: Field) -> str:
    """The field's flag: `--<name>` with dashes, `--no-<name>` for a switch that defaults to on."""
    stem = f.metadata.get("flag", f.name).replace("_", "-")
    return f"--no-{stem}" if field_type(f) is bool and f.default else f"--{stem}"


def flag_help(f: Field) -> str:
    """The field's description with its default, or that it is required (%-escaped for argparse)."""
    text = describe(f, show_default=True)
    if field_type(f) is bool and f.default:
        text = f"turn off {text}"
    elif f.metadata.get("required"):
        text += " (required without --config-json)"
    return text.replace("%", "%%")


def add_config_flags(target: Target, *groups: str) -> None:
    """One flag per TrainConfig field of `groups` into `target` (a parser or an argument group)."""
    for f in config_fields(*groups):
        add_config_flag(target, f)


def add_config_flag(target: Target, f: Field, default: str | None = None) -> None:
    """The flag of one TrainConfig field (see the module docstring for the rules); `default`: this command's default
    instead of the field's (a non-bool field)."""
    kind = field_type(f)
    if kind is bool:
        action = "store_false" if f.default else "store_true"
        target.add_argument(flag_of(f), dest=f.name, action=action, help=flag_help(f))
        return
    choices = field_choices(f)
    target.add_argument(
        flag_of(f),
        dest=f.name,
        type=kind,
        default=default if default is not None else None if f.metadata.get("required") else f.default,
        choices=None if choices is None else list(choices),
        metavar=None if choices is not None else f.metadata.get("unit", f.metadata.get("flag", f.name)).upper(),
        help=flag_help(f) if default is None else f"{describe(f)} (default: {default})".replace("%", "%%"),
    )


def add_settings(p: argparse.ArgumentParser) -> None:
    """The data, model and optimisation flags, one argument group each (train, lr-find and search share them)."""
    for group in SETTINGS:
        add_config_flags(p.add_argument_group(group), group)


def add_runtime(g: argparse._ArgumentGroup) -> None:
    """The runtime flags, --config-json and --quiet, for commands that train without writing a run dir."""
    add_config_flags(g, "runtime")
    g.add_argument(
        "--config-json", default=None, metavar="PATH", help="a JSON TrainConfig dict; the flags above are then ignored"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe (not yet resolved): each field from its flag where the command has
    one (the flag's destination is the field's name), the field's default where it has none."""
    return TrainConfig(**{f.name: getattr(a, f.name) for f in config_fields() if hasattr(a, f.name)})


def settings_config(a: argparse.Namespace) -> TrainConfig:
    """The resolved TrainConfig of --config-json or of the flags (user errors as ClassifierError)."""
    if a.config_json is not None:
        from classifier.jobs import load_config_json

        return load_config_json(a.config_json)
    if a.data is None:
        raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json")
    try:
        return config_from_args(a).resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e
