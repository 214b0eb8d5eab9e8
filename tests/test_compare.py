"""Run comparison: exactly the differing settings (nested, one-sided), per-class F1 and winners with ties, runs that
are still training or queued, figures, and the compare CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from classifier.cli import main
from classifier.compare import (
    COMPARABLE,
    ComparedRun,
    class_winners,
    compare_summary,
    confusion_figures,
    curves_figure,
    differing_settings,
    f1_figure,
    f1_table,
    flatten,
    format_setting,
    load_runs,
    metrics_table,
    per_class_f1,
    settings_table,
    winner_sentence,
)
from classifier.errors import RunError
from classifier.store import RunStore


def test_flatten_nested_dicts_to_dotted_keys() -> None:
    cfg = {"backbone": "r18", "train": {"lr": 0.1, "aug": {"p": 0.5, "ops": ["flip"]}}, "empty": {}}
    assert flatten(cfg) == {"backbone": "r18", "train.lr": 0.1, "train.aug.p": 0.5, "train.aug.ops": ["flip"],
                            "empty": {}}  # fmt: skip


def test_differing_settings_picks_exactly_the_differing_keys() -> None:
    a = {
        "backbone": "resnet18",
        "created_at": "2026-01-01",  # always differs, never a setting
        "train": {"lr": 0.001, "epochs": 3, "seed": 0, "aug": {"preset": "light", "p": 0.5}},
        "data_config": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5]},
        "amp": True,
        "only_a": 1,
    }
    b = {
        "backbone": "resnet18",
        "created_at": "2026-02-02",
        "train": {"lr": 0.003, "epochs": 3.0, "seed": 0, "aug": {"preset": "strong", "p": 0.5}, "only_b": None},
        "data_config": {"input_size": [3, 40, 40], "mean": [0.5, 0.5, 0.5]},
        "amp": 1,  # not the same setting as True
    }
    diff = differing_settings({"a": a, "b": b})
    expected = ["amp", "data_config.input_size", "only_a", "train.aug.preset", "train.lr", "train.only_b"]
    assert list(diff) == expected
    assert diff["train.lr"] == {"a": 0.001, "b": 0.003}
    assert diff["only_a"] == {"a": 1}  # present in one run only: the other is absent, not None
    assert diff["train.only_b"] == {"b": None}
    assert diff["data_config.input_size"] == {"a": [3, 32, 32], "b": [3, 40, 40]}
    # Three runs: a key equal in two and different in the third still differs; identical configs give nothing.
    c = json.loads(json.dumps(a))
    assert "train.lr" in differing_settings({"a": a, "a2": json.loads(json.dumps(a)), "c": {**c, "train": b["train"]}})
    assert differing_settings({"a": a, "same": c}) == {}
    table = settings_table(diff, ["a", "b"])
    assert list(table.columns) == ["setting", "a", "b"]
    assert table.set_index("setting").loc["only_a", "b"] == "(not set)"


def _run(key: str, f1: dict[str, float] | None) -> ComparedRun:
    import pandas as pd

    metrics = None if f1 is None else {"per_class": [{"name": c, "f1": v} for c, v in f1.items()]}
    return ComparedRun(key, Path(key), key, "completed", {}, pd.DataFrame(), metrics)


def test_per_class_f1_winners_ties_and_runs_without_metrics() -> None:
    runs = [
        _run("a", {"cat": 0.9, "dog": 0.5, "owl": 0.7}),
        _run("b", {"cat": 0.8, "dog": 0.5, "fox": 0.4}),
        _run("c", None),
    ]
    f1 = per_class_f1(runs)
    assert f1["classes"] == ["cat", "dog", "owl", "fox"]
    assert f1["no_metrics"] == ["c"]
    assert f1["f1"]["owl"] == {"a": 0.7} and f1["f1"]["fox"] == {"b": 0.4}
    winners = {w["class"]: w for w in class_winners(f1)}
    assert winners["cat"] == {"class": "cat", "best_f1": 0.9, "winners": ["a"], "tie": False}
    assert winners["dog"]["winners"] == ["a", "b"] and winners["dog"]["tie"]
    assert winners["fox"]["winners"] == ["b"]
    assert winner_sentence(winners["dog"]) == "dog: tie between a and b (F1 0.50)"
    assert winner_sentence({"class": "x", "best_f1": None, "winners": [], "tie": False}) == "x: no run has metrics yet"
    table = f1_table(f1, ["a", "b"]).set_index("class")
    assert table.loc["dog", "best"] == "tie: a, b" and table.loc["cat", "best"] == "a"
    assert len(f1_figure(f1).data) == 2  # one bar series per run that has metrics


def test_two_finished_runs(two_runs) -> None:
    a, b = two_runs
    runs = load_runs([a, b], store=False)
    assert [r.key for r in runs] == ["run_a", "run_b"]
    assert [r.epochs_done for r in runs] == [1, 2]
    s = compare_summary(runs)
    assert set(s["differing_settings"]) == {"data_config.input_size", "train.epochs", "train.img_size", "train.lr"}
    assert s["no_metrics"] == []
    metrics = json.loads((a / "metrics.json").read_text())
    assert s["per_class_f1"]["circle"]["run_a"] == next(r["f1"] for r in metrics["per_class"] if r["name"] == "circle")
    assert [w["class"] for w in s["winners"]] == metrics["class_names"]
    fig = curves_figure(runs)
    assert len(fig.data) == 8  # 2 runs x (train, val) x (loss, accuracy)
    assert {t.name for t in fig.data} == {"run_a train", "run_a val", "run_b train", "run_b val"}
    cms = confusion_figures(runs)
    assert [k for k, _ in cms] == ["run_a", "run_b"] and all(f is not None for _, f in cms)


def test_running_and_queued_runs_are_read_as_stored_so_far(two_runs, tmp_path) -> None:
    a, b = two_runs
    running = tmp_path / "runs" / "r-running"
    shutil.copytree(b, running)
    for name in ("metrics.json", "val_predictions.csv", "history.csv"):
        (running / name).unlink()
    store = RunStore(tmp_path / "runs.sqlite")
    store.create("r-running", "live one", {"lr": 0.01}, str(running), status="running")
    store.add_epoch("r-running", {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.4, "val_acc": 0.3})
    queued = tmp_path / "runs" / "r-queued"  # no run dir yet: only the store row
    store.create("r-queued", "waiting", {"lr": 0.05, "backbone": "resnet18"}, str(queued), status="queued")

    runs = load_runs([a, running, queued], store=store)
    live, wait = runs[1], runs[2]
    assert live.status == "running" and live.metrics is None and live.epochs_done == 1 and live.name == "live one"
    assert "no metrics yet" in live.notes
    assert wait.status == "queued" and "not started yet" in wait.notes and wait.epochs_done == 0
    s = compare_summary(runs)
    assert s["no_metrics"] == ["r-running", "r-queued"]
    assert s["differing_settings"]["train.lr"] == {"run_a": 0.001, "r-running": 0.003, "r-queued": 0.05}
    assert all(list(v) == ["run_a"] for v in s["per_class_f1"].values())
    assert all(w["winners"] == ["run_a"] for w in s["winners"])
    # The live run's curve comes from the store's epoch rows (no history.csv yet); the queued run has none.
    names = {t.name for t in curves_figure(runs).data}
    assert {"r-running train", "r-running val"} <= names and not any(n.startswith("r-queued") for n in names)
    assert dict(confusion_figures(runs))["r-running"] is None


def test_compare_refuses_fewer_than_two_runs_and_missing_dirs(two_runs, tmp_path) -> None:
    with pytest.raises(RunError, match="at least two runs"):
        load_runs([two_runs[0]], store=False)
    with pytest.raises(RunError, match="given twice"):
        load_runs([two_runs[0], two_runs[0]], store=False)
    with pytest.raises(RunError, match="does not exist"):
        load_runs([two_runs[0], tmp_path / "nope"], store=False)


def test_compare_cli_prints_json(two_runs, capsys, tmp_path) -> None:
    assert main(["compare", "--runs", str(two_runs[0]), str(two_runs[1])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"differing_settings", "per_class_f1", "winners", "runs"}
    assert out["differing_settings"]["train.lr"] == {"run_a": 0.001, "run_b": 0.003}
    assert main(["compare", "--runs", str(two_runs[0]), str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_differing_settings_read_to_three_significant_figures() -> None:
    diff = {"train.lr": {"a": 0.00031622776601683794, "b": 0.003}, "data_config.mean": {"a": [0.48501, 0.5]},
            "train.amp": {"a": True, "b": None}, "train.epochs": {"a": 3, "b": 12}}  # fmt: skip
    table = settings_table(diff, ["a", "b"]).set_index("setting")
    assert table.loc["train.lr"].tolist() == ["0.000316", "0.003"]
    assert table.loc["data_config.mean"].tolist() == ["[0.485, 0.5]", "(not set)"]
    assert table.loc["train.amp"].tolist() == ["true", "—"]
    assert table.loc["train.epochs"].tolist() == ["3", "12"]
    assert format_setting(1e-5) == "1e-05" and format_setting({"p": 0.123456}) == "{p: 0.123}"


def test_metrics_table_finished_and_still_training(two_runs, tmp_path) -> None:
    """Finished runs: metrics.json and the validation loss of the best epoch; a running run: its latest epoch."""
    a, b = two_runs
    running = tmp_path / "runs" / "r-live"
    shutil.copytree(b, running)
    for name in ("metrics.json", "val_predictions.csv", "history.csv"):
        (running / name).unlink()
    store = RunStore(tmp_path / "runs.sqlite")
    store.create("r-live", "live", {"lr": 0.01}, str(running), status="running")
    for epoch, acc, loss in ((1, 0.3, 1.2), (2, 0.45, 1.05)):
        store.add_epoch(
            "r-live", {"epoch": epoch, "train_loss": 1.0, "val_loss": loss, "train_acc": 0.4, "val_acc": acc}
        )
    runs = load_runs([a, b, running], store=store)
    table = metrics_table(runs).set_index("run")
    assert list(table.columns) == ["status", "epochs", "accuracy", "macro F1", "ROC AUC", "ECE", "val loss", "from"]
    for run_dir, key in ((a, "run_a"), (b, "run_b")):
        m = json.loads((run_dir / "metrics.json").read_text())
        history = pd.read_csv(run_dir / "history.csv")
        best_loss = float(history.loc[history["epoch"] == m["best_epoch"], "val_loss"].iloc[0])
        row = table.loc[key]
        assert (row["accuracy"], row["macro F1"], row["ROC AUC"], row["ECE"]) == (
            m["accuracy"], m["macro_f1"], m["roc_auc_macro"], m["ece"])  # fmt: skip
        assert row["val loss"] == pytest.approx(best_loss) and row["from"] == f"best epoch {m['best_epoch']}"
    live = table.loc["r-live"]
    assert live["accuracy"] == 0.45 and live["val loss"] == 1.05 and live["from"] == "epoch 2 so far"
    assert pd.isna(live["macro F1"]) and pd.isna(live["ECE"])  # need the final evaluation
    assert compare_summary(runs)["runs"][2]["headline"]["accuracy"] == 0.45


def test_failed_runs_are_not_offered_for_comparison() -> None:
    assert "failed" not in COMPARABLE
    assert {"completed", "running", "queued"} <= set(COMPARABLE)
