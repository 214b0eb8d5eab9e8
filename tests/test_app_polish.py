"""What a newcomer meets on the result pages, driven headless with AppTest: Compare's metrics table and which runs
it offers, the Runs table (no "None", differing settings as columns, a running run's accuracy), Search while its
first trial runs, the outlined confusion cell on Evaluate, and Explain filling its maps fastest first.

Runs are tiny simple_cnn runs trained in this process (tests/test_app.py's fixtures); a run "still training" is a
copy of a finished one with its results removed and a store row whose process is faked alive.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_app import completed_run, open_page, shapes  # noqa: F401  (fixtures)
from test_app_compare import two_jobs  # noqa: F401  (fixture)

LIVE_ID = "20990101-000000-live00"


def live_copy_of(run_id: str, monkeypatch, *, epochs: list[dict], progress: dict) -> str:
    """A run "still training": `run_id`'s folder without its results, a running store row with `epochs` so far."""
    import classifier.jobs.local
    from classifier.store import RunStore
    from classifier.workspace import runs_dir

    live = runs_dir() / LIVE_ID
    shutil.copytree(runs_dir() / run_id, live)
    for name in ("metrics.json", "val_predictions.csv", "model.safetensors", "history.csv"):
        (live / name).unlink(missing_ok=True)
    store = RunStore()
    store.create(LIVE_ID, "live", {"lr": 0.01, "backbone": "simple_cnn", "epochs": 5}, str(live), status="running")
    store.update(LIVE_ID, pid=os.getpid())
    store.set_progress(LIVE_ID, progress)
    for row in epochs:
        store.add_epoch(LIVE_ID, row)
    monkeypatch.setattr(classifier.jobs.local, "_process_alive", lambda pid, run_id: True)
    return LIVE_ID


def frame(at, column: str):
    """The first dataframe element (not its value) that has `column`."""
    return next(df for df in at.dataframe if column in df.value.columns)


def test_compare_shows_metrics_side_by_side_and_offers_no_failed_run(two_jobs, monkeypatch) -> None:  # noqa: F811
    from classifier.store import RunStore
    from classifier.workspace import runs_dir

    RunStore().create("20990101-000000-fail00", "broken", {"lr": 0.1}, str(runs_dir() / "nope"), status="failed")
    first = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.4, "val_acc": 0.375}
    live = live_copy_of(two_jobs[1], monkeypatch, epochs=[first], progress={"fraction": 0.2, "epoch": 2, "epochs": 5})
    at = open_page("app_pages/compare.py")
    options = at.multiselect(key="w_compare_runs").options
    assert len(options) == 3 and not any("broken" in o for o in options)  # two finished runs and the live one
    at.multiselect(key="w_compare_runs").set_value([*two_jobs, live]).run()
    assert not at.exception, at.exception
    table = frame(at, "val loss")
    assert table.proto.placeholder == "—"
    df = table.value.set_index("run")
    assert list(df.columns) == ["status", "epochs", "accuracy", "macro F1", "ROC AUC", "ECE", "val loss", "from"]
    for run_id in two_jobs:
        metrics = json.loads((runs_dir() / run_id / "metrics.json").read_text())
        row = df.loc[next(k for k in df.index if k.endswith(run_id[-6:]))]
        assert row["accuracy"] == metrics["accuracy"] and row["ROC AUC"] == metrics["roc_auc_macro"]
        assert row["val loss"] > 0 and row["from"].startswith("best epoch")
    live_row = df.loc["live #live00"]
    assert live_row["accuracy"] == 0.375 and live_row["val loss"] == 1.2 and live_row["from"] == "epoch 1 so far"


def test_runs_table_says_dash_not_none_and_lists_what_differs(two_jobs, monkeypatch) -> None:  # noqa: F811
    live = live_copy_of(two_jobs[1], monkeypatch, epochs=[{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.625}],
                        progress={"fraction": 0.45, "epoch": 3, "epochs": 5})  # fmt: skip
    at = open_page("app_pages/runs.py")
    assert not at.exception, at.exception
    table = frame(at, "img size")
    assert table.proto.placeholder == "—"  # missing values read "—", not "None"
    df = table.value.set_index("run")
    assert df.loc[two_jobs[0], "img size"] == 32 and df.loc[two_jobs[1], "img size"] == 40  # as built, not None
    assert df.loc[two_jobs[0], "learning rate"] == 1e-3 and df.loc[two_jobs[1], "learning rate"] == 3e-3
    assert df.loc[live, "accuracy"] == 0.625 and df.loc[live, "progress"] == 0.45  # its latest epoch, and how far
    assert df.loc[two_jobs[0], "progress"] == 1.0


def test_search_page_while_the_first_trial_runs(two_jobs, monkeypatch) -> None:  # noqa: F811
    from classifier import search
    from classifier.training import TrainConfig

    live = live_copy_of(two_jobs[0], monkeypatch, epochs=[{"epoch": 1, "val_acc": 0.5, "val_loss": 0.9}],
                        progress={"fraction": 0.3, "epoch": 2, "epochs": 5})  # fmt: skip
    base = TrainConfig(data="demo", backbone="simple_cnn", weights="none", img_size=32)
    spec = search.create_search(base, {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}, sampler="random", n_trials=3)
    spec["trials"] = [{"number": 1, "params": {"lr": 0.00031622776601683794}, "run_id": live, "state": "running",
                       "value": None, "intermediate": {"1": 0.5}}]  # fmt: skip
    search.save_search(spec)
    at = open_page("app_pages/search.py")
    assert not at.exception, at.exception
    assert not at.get("plotly_chart")  # no empty chart with meaningless axes
    assert any("appears when the first trial finishes" in c.value for c in at.caption)
    table = frame(at, "rank")
    row = table.value.iloc[0]
    assert row["epoch"] == "2/5" and row["latest val_acc"] == 0.5  # the run's epoch under way, its latest accuracy
    assert table.proto.placeholder == "—"


def test_evaluate_outlines_the_selected_confusion_cell(completed_run: str) -> None:  # noqa: F811
    def outline(at) -> list[dict]:
        spec = json.loads(next(c for c in at.get("plotly_chart") if "heatmap" in c.proto.spec).proto.spec)
        return [s for s in spec["layout"].get("shapes", []) if s.get("name") == "selected cell"]

    at = open_page("app_pages/evaluate.py")
    assert outline(at) == []  # nothing picked yet
    at.selectbox(key="w_true").set_value("square").run()
    assert outline(at) == []  # a row is not a cell
    at.selectbox(key="w_pred").set_value("cross").run()
    assert not at.exception, at.exception
    [shape] = outline(at)
    names = at.selectbox(key="w_true").options[1:]  # after "any"
    i, j = names.index("square"), names.index("cross")
    assert (shape["x0"], shape["x1"], shape["y0"], shape["y1"]) == (j - 0.5, j + 0.5, i - 0.5, i + 0.5)
    assert any(c.value.endswith("(outlined).") for c in at.caption)


def test_explain_fills_the_fast_maps_first_in_the_chosen_layout(completed_run: str, monkeypatch) -> None:  # noqa: F811
    import ui.explain

    events: list[tuple[str, str]] = []
    real_attribute, real_tile = ui.explain.attribute, ui.explain._tile

    def attribute(run, image, method, target, **kw):
        events.append(("compute", method))
        return real_attribute(run, image, method, target, **kw)

    def tile(image, result, look, stem):
        events.append(("shown", result.method))
        real_tile(image, result, look, stem)

    monkeypatch.setattr(ui.explain, "attribute", attribute)
    monkeypatch.setattr(ui.explain, "_tile", tile)
    at = open_page("app_pages/explain.py")  # computes the default maps: Grad-CAM, integrated gradients, saliency
    events.clear()
    at.multiselect(key="x_methods").set_value(["occlusion", "ig", "smoothgrad", "guided_gradcam"]).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    # The cached map at once, then each new one shown as soon as it is computed, cheapest first: Guided Grad-CAM is
    # on the page before SmoothGrad starts, and occlusion (one pass per window position) comes last.
    assert events == [("shown", "ig"), ("compute", "guided_gradcam"), ("shown", "guided_gradcam"),
                      ("compute", "smoothgrad"), ("shown", "smoothgrad"), ("compute", "occlusion"),
                      ("shown", "occlusion")]  # fmt: skip
    # ...while the slots keep the order the user chose.
    maps = [c.value.split("**")[1] for c in at.caption if c.value.startswith("**") and " s" in c.value]
    assert maps == ["Occlusion", "Integrated gradients", "SmoothGrad", "Guided Grad-CAM"]
    assert any(c.value == "no attribution (0)" for c in at.caption)  # the colour legend


@pytest.mark.parametrize("page", ["app_pages/runs.py", "app_pages/home.py"])
def test_run_tables_on_runs_and_home_show_a_dash_for_missing_values(page: str, completed_run: str) -> None:  # noqa: F811
    at = open_page(page)
    assert not at.exception, at.exception
    assert all(df.proto.placeholder == "—" for df in at.dataframe if "accuracy" in df.value.columns)
