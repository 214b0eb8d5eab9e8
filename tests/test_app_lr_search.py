"""AppTest: the Train page's LR finder (run, plot, apply the suggestion) and the Search page (start a search, live
table and chart, open the best trial in Evaluate). Tiny simple_cnn runs at 32 px in a fresh workspace per test."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120  # seconds per script run: the first one imports torch and timm


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def shapes() -> Path:
    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir

    return make_demo_dataset(
        datasets_dir() / "shapes", n_per_class=12, size=32, seed=3, classes=("circle", "square", "cross")
    )


def _train(shapes: Path, lr: float) -> str:
    """A finished run in the run store, trained in this process (the app's job code path, no subprocess)."""
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    run_id = new_run_id()
    cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=32, batch_size=8,
                      lr=lr, num_workers=0)  # fmt: skip
    run_job(run_id, cfg, runs_dir() / run_id)
    return run_id


def test_train_page_lr_finder_plots_and_applies_the_suggestion(shapes: Path) -> None:
    from ui import state

    at = open_page("app_pages/train.py")
    at.selectbox(key="w_data").set_value(str(shapes)).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_img").set_value(32)
    at.number_input(key="w_batch").set_value(8)
    at.number_input(key="w_lrf_start").set_value(1e-5)
    at.number_input(key="w_lrf_end").set_value(1.0)
    at.number_input(key="w_lrf_steps").set_value(8)
    assert at.number_input(key="w_lr_finetune").value == pytest.approx(5e-4)
    at.button(key="b_lrf_run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result = at.session_state[state.LR_FIND]
    assert result["config"]["backbone"] == "simple_cnn" and result["config"]["img_size"] == 32
    assert 1e-5 <= result["suggestion"] <= 1.0 and len(result["lrs"]) >= 2
    charts = at.get("plotly_chart")
    assert any("Learning-rate finder" in json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts)
    use = at.button(key="b_lrf_use")
    assert use.label.startswith("Use this learning rate")
    use.click().run()
    assert not at.exception, at.exception
    assert at.number_input(key="w_lr_finetune").value == pytest.approx(min(1.0, max(1e-6, result["suggestion"])))


def test_lr_finder_shows_a_bad_setting_as_an_error(shapes: Path) -> None:
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_data").set_value(str(shapes)).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_lrf_start").set_value(1.0)
    at.number_input(key="w_lrf_end").set_value(0.1)
    at.button(key="b_lrf_run").click().run()
    assert not at.exception, at.exception
    # the message is shown literally: markdown escapes its '<' ('\\<'), which renders as '<'
    assert any("0 \\< start (1.0)" in e.value for e in at.error), [e.value for e in at.error]


class InstantExecutor:
    """Completes every submitted run at its second status call, with accuracy 0.3, 0.9, 0.6, ..."""

    def __init__(self):
        self.runs: dict[str, dict] = {}

    def submit(self, config, name=None, owner=None):  # the Executor protocol's signature
        run_id = f"fake{len(self.runs) + 1}"
        self.runs[run_id] = {"acc": [0.3, 0.9, 0.6][len(self.runs) % 3], "polls": 0}
        return run_id

    def status(self, run_id):
        r = self.runs[run_id]
        r["polls"] += 1
        done = r["polls"] >= 2
        return SimpleNamespace(status="completed" if done else "running", metrics={"accuracy": r["acc"]}, error=None)

    def history(self, run_id):
        r = self.runs[run_id]
        return [{"epoch": 1, "val_acc": r["acc"], "val_loss": 1 - r["acc"]}] if r["polls"] else []

    def cancel(self, run_id):
        pass


def test_search_page_starts_a_search_and_shows_ranked_trials(monkeypatch, shapes: Path) -> None:
    from classifier import search

    launched = []

    def launch_here(search_id: str) -> int:  # the background driver, run in this process with instant runs
        launched.append(search_id)
        search.run_search(search_id, InstantExecutor(), poll=0)
        return 0

    monkeypatch.setattr(search, "launch_search", launch_here)
    at = open_page("app_pages/search.py")
    assert any("No searches yet" in i.value for i in at.info)
    at.selectbox(key="w_s_data").set_value(str(shapes)).run()
    at.selectbox(key="w_s_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_s_img").set_value(32)
    at.text_input(key="w_space_lr").set_value("1e-3..1e-1")
    at.text_input(key="w_space_batch_size").set_value("8, 16")
    at.selectbox(key="w_s_sampler").set_value("random")
    at.number_input(key="w_s_trials").set_value(3)
    at.toggle(key="w_s_prune").set_value(False)
    at.button[[b.label for b in at.button].index("Start search")].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(launched) == 1
    spec = search.load_search(launched[0])
    assert spec["space"] == {"lr": {"low": 1e-3, "high": 0.1, "log": True}, "batch_size": {"choices": [8, 16]}}
    assert spec["base_config"]["data"] == str(shapes) and spec["base_config"]["backbone"] == "simple_cnn"
    assert spec["status"] == "completed" and spec["sampler"] == "random"
    table = next(df.value for df in at.dataframe if "rank" in df.value.columns)
    assert list(table["accuracy"]) == [0.9, 0.6, 0.3] and list(table["rank"]) == [1, 2, 3]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any(d.get("type") == "parcoords" for c in charts for d in c["data"])
    assert at.button(key="b_search_best").label.startswith("Open best in Evaluate (trial 2")


def test_search_page_bad_space_is_an_error_not_a_traceback() -> None:
    at = open_page("app_pages/search.py")
    at.text_input(key="w_space_lr").set_value("fast").run()
    assert not at.exception, at.exception
    assert any("'fast'" in e.value for e in at.error), [e.value for e in at.error]
    at.selectbox(key="w_s_sampler").set_value("grid").run()
    at.text_input(key="w_space_lr").set_value("1e-3..1e-1").run()
    at.button[[b.label for b in at.button].index("Start search")].click().run()
    assert any("grid search needs a list of choices for lr" in e.value for e in at.error)


def test_open_best_trial_in_evaluate(shapes: Path) -> None:
    from classifier import search
    from classifier.training import TrainConfig

    best = _train(shapes, 1e-3)
    other = _train(shapes, 1e-2)  # newer: Evaluate would show it by default
    base = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", img_size=32)
    spec = search.create_search(base, {"lr": [1e-3, 1e-2]}, sampler="grid", name="two lrs")
    spec["status"] = "completed"
    spec["trials"] = [
        {"number": 1, "params": {"lr": 1e-2}, "run_id": other, "state": "completed", "value": 0.4, "intermediate": {}},
        {"number": 2, "params": {"lr": 1e-3}, "run_id": best, "state": "completed", "value": 0.8, "intermediate": {}},
    ]  # fmt: skip
    search.save_search(spec)
    at = open_page("app_pages/evaluate.py")
    assert at.selectbox(key="w_run_picker").value == other
    at.switch_page("app_pages/search.py").run()
    assert not at.exception, at.exception
    at.button(key="b_search_best").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Evaluate"
    assert at.selectbox(key="w_run_picker").value == best
