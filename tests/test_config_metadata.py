"""TrainConfig's field metadata is the one source of the CLI's flags, the Train page's widgets and the choices that
`resolved()` accepts: they agree with it, and changing the metadata changes all of them."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from streamlit.testing.v1 import AppTest

from classifier.cli import build_parser
from classifier.cli.config_flags import config_from_args
from classifier.training.config import (
    GROUPS,
    TrainConfig,
    config_field,
    config_fields,
    field_choices,
    field_type,
    per_mode_fields,
)

APP = str(Path(__file__).resolve().parents[1] / "app.py")
# The flags as they were written by hand before they were generated: scripts, docs and classifier.jobs use them.
FLAGS = {
    "data": "--data",
    "data_version": "--data-version",
    "val_split": "--val-split",
    "test_split": "--test-split",
    "img_size": "--img-size",
    "augment": "--augment",
    "mixup": "--mixup",
    "cutmix": "--cutmix",
    "grayscale": "--grayscale",
    "imbalance": "--imbalance",
    "backbone": "--backbone",
    "weights": "--weights",
    "mode": "--mode",
    "head_warmup_epochs": "--head-warmup-epochs",
    "drop_rate": "--drop-rate",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "scheduler": "--scheduler",
    "warmup_epochs": "--warmup-epochs",
    "weight_decay": "--weight-decay",
    "label_smoothing": "--label-smoothing",
    "multilabel_loss": "--multilabel-loss",
    "pos_weight": "--pos-weight",
    "grad_clip": "--grad-clip",
    "early_stopping": "--early-stopping",
    "time_budget": "--time-budget",
    "seed": "--seed",
    "device": "--device",
    "amp": "--no-amp",
    "num_workers": "--workers",
    "cache": "--cache",
    "compile": "--compile",
    "auto_batch_size": "--auto-batch-size",
    "nproc": "--nproc",
    "checkpoint_every_steps": "--checkpoint-every-steps",
    "tune_thresholds": "--tune-thresholds",
}
# Every field away from its default, so a flag that is dropped or mapped to the wrong field shows.
CHANGED = TrainConfig(
    data="shapes", data_version=2, val_split=0.3, test_split=0.1, img_size=64, augment="strong", mixup=0.2, cutmix=0.5,
    grayscale=True,
    imbalance="sampler", backbone="resnet18", weights="none", mode="linear", head_warmup_epochs=2, drop_rate=0.1,
    epochs=3, batch_size=8, lr=0.01, optimizer="sgd", scheduler="onecycle", warmup_epochs=1.0, weight_decay=0.01,
    label_smoothing=0.05, grad_clip=0.0, early_stopping=4, time_budget=30.0, seed=7, device="cpu", amp=False,
    num_workers=2, cache="off", compile=True, auto_batch_size=True, nproc=2, checkpoint_every_steps=50,
    multilabel_loss="asl", pos_weight="auto", tune_thresholds=True,
)  # fmt: skip


def command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def config_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's actions that set a TrainConfig field, by field name."""
    names = {f.name for f in config_fields()}
    return {a.dest: a for a in parser._actions if a.dest in names}


def argv_for(config: TrainConfig, parser: argparse.ArgumentParser) -> list[str]:
    """The flags of `parser` that describe `config`, written from the parser's own actions."""
    argv: list[str] = []
    for name, action in config_actions(parser).items():
        value = getattr(config, name)
        if action.nargs == 0:  # a switch
            argv += [action.option_strings[0]] if value != action.default else []
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    return argv


def test_every_field_is_described_consistently():
    labels = [f.metadata["label"] for f in config_fields()]
    assert len(set(labels)) == len(labels)  # the page and the tests find a field's widget by its label
    assert [g for g in GROUPS if config_fields(g)] == list(GROUPS)
    for f in config_fields():
        m = f.metadata
        assert m["help"] and m["group"] in GROUPS and field_type(f) in (int, float, str, bool), f.name
        assert f.default is not None or m.get("auto"), f"{f.name}: say what None becomes"
        choices = field_choices(f)
        assert choices is None or f.default in (*choices, None), f.name
        if f.default is not None:
            assert m.get("min", f.default) <= f.default <= m.get("max", f.default), f.name
    assert {f.name for f in config_fields()} == set(FLAGS) == {f.name for f in config_fields(*GROUPS)}
    assert per_mode_fields() == ("augment", "epochs", "lr", "label_smoothing")


def test_train_has_a_flag_per_field_with_its_name_default_choices_and_help():
    parser = command("train")
    actions = config_actions(parser)
    assert set(actions) == set(FLAGS)
    for f in config_fields():
        a = actions[f.name]
        assert a.option_strings == [FLAGS[f.name]]
        assert a.default == (None if f.metadata.get("required") else f.default), f.name
        assert a.choices == (None if field_choices(f) is None else list(field_choices(f))), f.name
        assert a.nargs == 0 if field_type(f) is bool else a.type is field_type(f), f.name
        assert f.metadata["help"] in a.help.replace("%%", "%"), f.name
    text = parser.format_help()
    for group in ("data", "model", "optimisation", "output and runtime"):
        assert f"\n{group}:\n" in text
    assert all(flag in text for flag in FLAGS.values())
    assert "(epochs; default: 20 for linear, 8 for partial and finetune)" in " ".join(text.split())


def test_lr_find_and_search_have_the_settings_and_runtime_flags_but_not_the_run_dir_ones():
    for name in ("lr-find", "search"):
        output = {"checkpoint_every_steps", "tune_thresholds"}
        assert set(config_actions(command(name))) == {f.name for f in config_fields()} - output
        assert {f.name for f in config_fields("output")} == {"checkpoint_every_steps", "tune_thresholds"}


@pytest.mark.parametrize("name", ["train", "lr-find", "search"])
def test_a_config_round_trips_through_the_flags(name):
    parser = command(name)
    shown = set(config_actions(parser))
    expected = replace(CHANGED, **{f.name: f.default for f in config_fields() if f.name not in shown})
    for f in config_fields():
        assert getattr(CHANGED, f.name) != f.default, f"{f.name}: CHANGED must move every field"
    args = build_parser().parse_args([name, *argv_for(CHANGED, parser)])
    assert config_from_args(args) == expected
    assert config_from_args(build_parser().parse_args([name, "--data", "d"])) == TrainConfig(data="d")


def test_choices_come_from_the_metadata_for_the_cli_and_the_checks(monkeypatch, capsys):
    f = config_field("scheduler")
    monkeypatch.setattr(f, "metadata", MappingProxyType({**f.metadata, "choices": ("cosine", "step")}))
    assert config_actions(command("train"))["scheduler"].choices == ["cosine", "step"]
    assert config_actions(command("lr-find"))["scheduler"].choices == ["cosine", "step"]
    args = build_parser().parse_args(["train", "--data", "d", "--scheduler", "step"])
    assert config_from_args(args).resolved().scheduler == "step"
    with pytest.raises(ValueError, match=r"^scheduler must be one of cosine, step, not 'constant'$"):
        TrainConfig(scheduler="constant").resolved()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--scheduler", "constant"])
    assert "invalid choice: 'constant'" in capsys.readouterr().err


def _form(mode: str) -> None:
    """A page that draws every TrainConfig field with ui.config_form and keeps the values (for AppTest)."""
    import streamlit as st

    from classifier.training.config import config_fields
    from ui.config_form import config_inputs

    keys = {f.name: f"k_{f.name}" for f in config_fields()}
    st.session_state["values"] = config_inputs(st.columns(4), keys, mode)


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_the_form_draws_every_field_from_its_metadata_and_gives_back_the_config(mode):
    at = AppTest.from_function(_form, args=(mode,), default_timeout=30).run()
    assert not at.exception
    assert TrainConfig(**at.session_state["values"]) == TrainConfig(mode=mode).resolved()
    widgets = {w.label: w for kind in (at.number_input, at.selectbox, at.checkbox, at.text_input) for w in kind}
    for f in config_fields():
        w = widgets[f.metadata["label"]]
        assert f.metadata["help"][1:] in w.help, f.name
        if field_choices(f) is not None:
            assert w.options == list(field_choices(f)), f.name
        if w.type == "number_input":
            assert (w.min, w.max) == (f.metadata.get("min"), f.metadata.get("max")), f.name
    at.number_input(key=f"k_epochs_{mode}").set_value(3)
    at.number_input(key="k_img_size").set_value(64)
    at.selectbox(key="k_optimizer").set_value("sgd")
    at.checkbox(key="k_grayscale").check()
    at.run()
    got = TrainConfig(**at.session_state["values"])
    assert (got.epochs, got.img_size, got.optimizer, got.grayscale) == (3, 64, "sgd", True)
    assert type(got.epochs) is int and type(got.lr) is float


def test_train_page_widgets_follow_the_metadata(monkeypatch):
    """Change a label, a bound and the choices: the Train page shows the change without being edited."""
    epochs, scheduler = config_field("epochs"), config_field("scheduler")
    monkeypatch.setattr(epochs, "metadata", MappingProxyType({**epochs.metadata, "label": "Passes", "max": 50}))
    monkeypatch.setattr(scheduler, "metadata", MappingProxyType({**scheduler.metadata, "choices": ("cosine", "step")}))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception
    assert at.number_input(key="w_epochs_finetune").label == "Passes"
    assert at.number_input(key="w_epochs_finetune").max == 50
    assert at.selectbox(key="w_sched").options == ["cosine", "step"]
    by_label = {f.metadata["label"]: f for f in config_fields()}
    shown = {
        by_label[w.label].name: w
        for kind in (at.number_input, at.selectbox, at.radio)
        for w in kind
        if w.label in by_label and w.key != "w_data"  # the dataset picker lists the workspace's datasets
    }
    assert {"backbone", "weights", "mode", *per_mode_fields()} <= set(shown)
    for name, w in shown.items():
        assert config_field(name).metadata["help"][1:] in w.help, name
