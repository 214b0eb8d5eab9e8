"""The one-page HTML report: parses, has every section and the run's accuracy, inlines plotly.js exactly once (no
script fetched from the network); the report CLI and its errors."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

from classifier.cli import main
from classifier.report import SECTIONS, report_html


class _Outline(HTMLParser):
    """Collects h2 texts, script tags (with their src) and Plotly figure divs; checks tags are balanced."""

    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.h2: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.script_text: list[str] = []
        self.figures = 0
        self.unbalanced: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts.append(attrs)
            self.script_text.append("")
        if tag == "div" and "plotly-graph-div" in (attrs.get("class") or ""):
            self.figures += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.unbalanced.append(tag)
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "h2":
            self.h2.append(data.strip())
        if self.stack and self.stack[-1] == "script":
            self.script_text[-1] += data


def test_report_is_one_self_contained_page(two_runs, tmp_path) -> None:
    a = two_runs[0]
    page = report_html(a)
    outline = _Outline()
    outline.feed(page)
    outline.close()
    assert page.startswith("<!DOCTYPE html>") and not outline.unbalanced and not outline.stack
    assert outline.h2 == list(SECTIONS)
    metrics = json.loads((a / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.1%}" in page  # the run's accuracy, as on the Evaluate page's card
    for row in metrics["per_class"]:
        assert f"<td>{row['name']}</td>" in page
    assert "train.lr" in page and "0.001" in page  # settings
    # Figures: class histogram, training curves, confusion matrix, per-class bars, ROC, PR, reliability.
    assert outline.figures == 7
    assert not any(s.get("src") for s in outline.scripts), "no script is loaded from elsewhere"
    with_library = [t for t in outline.script_text if "plotly.js v" in t or len(t) > 1_000_000]
    assert len(with_library) == 1, "plotly.js is inlined exactly once"
    first_plot = next(i for i, t in enumerate(outline.script_text) if "Plotly.newPlot" in t)
    assert outline.script_text.index(with_library[0]) < first_plot, "before the first figure that needs it"


def test_report_cli_and_errors(two_runs, tmp_path, capsys) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "--run", str(two_runs[1]), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == str(out)
    assert "Reliability diagram" in out.read_text(encoding="utf-8")
    assert main(["report", "--run", str(two_runs[1]), "--out", str(tmp_path / "r.pdf")]) == 2
    assert ".html" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(two_runs[1], unfinished)
    (unfinished / "val_predictions.csv").unlink()
    assert main(["report", "--run", str(unfinished), "--out", str(out)]) == 2
    assert "has no val_predictions.csv yet" in capsys.readouterr().err
    assert main(["report", "--run", str(tmp_path), "--out", str(out)]) == 2
    assert "not a run or ensemble dir" in capsys.readouterr().err


def test_report_of_an_ensemble(two_runs, tmp_path) -> None:
    from classifier.ensemble import build_ensemble

    metrics = build_ensemble(list(two_runs), tmp_path / "ens", name="pair")
    page = report_html(tmp_path / "ens")
    assert "<h1>pair</h1>" in page and f"{metrics['accuracy']:.1%}" in page and "members" in page


def test_report_escapes_hostile_class_and_file_names(tmp_path) -> None:
    """Row 29: a class named like a script tag or a formula appears as text in the report, never as markup."""
    import numpy as np

    from classifier import rundir

    run = tmp_path / "run"
    names = ["<script>alert(1)</script>", "=1+1", "**bold**"]
    rundir.write_config(run, {"backbone": "simple_cnn", "timm_name": "simple_cnn", "num_classes": 3,
                              "class_names": names, "data_config": {}, "train": {"epochs": 1},
                              "dataset": {"root": str(tmp_path)}})  # fmt: skip
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    rundir.write_val_predictions(run, ["<img src=x onerror=alert(2)>.png", "b.png", "c.png"], [0, 1, 2], probs, names)
    page = report_html(run)
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_is_titled_with_the_run_name_and_leads_with_the_key_settings(two_runs, tmp_path) -> None:
    from classifier.store import RunStore

    run = tmp_path / "workspace" / "runs" / "20260101-000000-abcdef"
    shutil.copytree(two_runs[0], run)
    assert "<h1>simple_cnn · 20260101-000000-abcdef</h1>" in report_html(run)  # no store: backbone and folder
    RunStore().create(run.name, "ants vs bees, lr 3e-4", {"lr": 3e-4}, str(run), status="completed")
    page = report_html(run)
    assert "<h1>ants vs bees, lr 3e-4</h1>" in page and "<title>ants vs bees, lr 3e-4</title>" in page
    settings = page[page.index("<h2>Settings</h2>") : page.index("<h2>Dataset</h2>")]
    first, folded = settings.split("<details>")
    for label, value in (("Backbone", "simple_cnn"), ("Learning rate", "0.001"), ("Input size", "[3, 32, 32]"),
                         ("Epochs", "1"), ("Batch size", "8")):  # fmt: skip
        assert f"<td>{label}</td><td>{value}</td>" in first
    assert "train.num_workers" not in first and "<td>train.num_workers</td><td>0</td>" in folded
    assert folded.startswith("<summary>All other settings (")
    assert "<td>data_config.mean</td><td>[0.485, 0.456, 0.406]</td>" in folded
