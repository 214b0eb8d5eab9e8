"""The Compare page, ensembles on Evaluate and Predict, and the report download, driven headless with AppTest.

Two tiny simple_cnn runs (same data and split, different learning rates and image sizes) are trained in this
process through the app's job code path; each test gets its own workspace (tests/conftest.py).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 90


@pytest.fixture
def two_jobs() -> list[str]:
    from classifier.data.demo import make_demo_dataset
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import datasets_dir, runs_dir

    shapes = make_demo_dataset(
        datasets_dir() / "shapes", n_per_class=10, size=32, seed=3, classes=("circle", "square", "cross")
    )
    ids = []
    for lr, size in ((1e-3, 32), (3e-3, 40)):
        run_id = new_run_id()
        cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=size,
                          batch_size=8, lr=lr, num_workers=0)  # fmt: skip
        run_job(run_id, cfg, runs_dir() / run_id)
        ids.append(run_id)
    return ids


def png_bytes(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def frame_with(at: AppTest, column: str):
    return next(df.value for df in at.dataframe if column in df.value.columns)


def test_compare_needs_two_runs() -> None:
    at = page("app_pages/compare.py")
    assert at.title[0].value == "Compare"
    assert any("at least two runs" in i.value for i in at.info)


def test_compare_two_finished_runs(two_jobs: list[str]) -> None:
    at = page("app_pages/compare.py")
    at.multiselect(key="w_compare_runs").set_value(two_jobs[:1]).run()
    assert any("Pick two or more runs" in i.value for i in at.info)
    at.multiselect(key="w_compare_runs").set_value(two_jobs).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    settings = frame_with(at, "setting")
    assert set(settings["setting"]) == {"data_config.input_size", "train.img_size", "train.lr"}
    f1 = frame_with(at, "best")
    assert list(f1["class"]) == ["circle", "cross", "square"] and f1.shape[1] == 4  # class, two runs, best
    winners = next(m.value for m in at.markdown if m.value.startswith("- circle: "))
    assert winners.count("\n- ") == 2 and "(F1 " in winners
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # curves, F1 bars, two confusion matrices


def test_compare_a_run_that_is_still_training(two_jobs: list[str], monkeypatch) -> None:
    """A running run (its process faked alive) shows its curve so far and 'no metrics yet' instead of F1."""
    import classifier.jobs.local
    from classifier.store import RunStore
    from classifier.workspace import runs_dir

    live_id = "20990101-000000-live00"
    live = runs_dir() / live_id
    shutil.copytree(runs_dir() / two_jobs[1], live)
    for name in ("metrics.json", "val_predictions.csv", "model.safetensors"):
        (live / name).unlink()
    store = RunStore()
    store.create(live_id, "live", {"lr": 0.01}, str(live), status="running")
    store.update(live_id, pid=os.getpid())
    monkeypatch.setattr(classifier.jobs.local, "_process_alive", lambda pid, run_id: True)

    at = page("app_pages/compare.py")
    at.multiselect(key="w_compare_runs").set_value([two_jobs[0], live_id]).run()
    assert not at.exception, at.exception
    assert any("No per-class results yet for live" in i.value for i in at.info)
    assert any("no confusion matrix yet" in i.value for i in at.info)
    assert any("running" in m.value and "**live #live00**" in m.value for m in at.markdown)
    curves = at.get("plotly_chart")[0].proto.spec
    assert "live #live00 train" in curves and "live #live00 val" in curves


def test_ensemble_on_evaluate_then_predict(two_jobs: list[str]) -> None:
    at = page("app_pages/evaluate.py")
    at.multiselect(key="w_ens_runs").set_value(two_jobs).run()
    at.button(key="b_ens_save").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    picked = at.selectbox(key="w_run_picker")
    assert picked.value.startswith("ens-") and any("ensemble of 2" in o for o in picked.options)
    assert any("ensemble of 2 runs" in c.value for c in at.caption)
    assert {m.label for m in at.metric} >= {"Accuracy", "Macro F1", "ECE"}
    assert not [b for b in at.button if b.label == "Explain"]  # attribution is per model, not for an ensemble
    assert any(b.label == "Download report (.html)" for b in at.get("download_button"))

    ens_id = picked.value
    at.switch_page("app_pages/predict.py").run()
    at.selectbox(key="w_run_picker").set_value(ens_id).run()  # the saved ensemble is a run-like entry here too
    files = [("a.png", png_bytes(1, 40), "image/png"), ("b.png", png_bytes(2, 32), "image/png")]
    at.file_uploader(key="u_pred_files").set_value(files).run()
    assert not at.exception, at.exception
    assert any("mean of 2 runs" in c.value for c in at.caption)
    saved = frame_with(at, "file")
    assert list(saved["file"]) == ["a.png", "b.png"]

    at.radio(key="w_pred_kind").set_value("Ensemble").run()
    assert any("Pick two or more" in i.value for i in at.info)
    at.multiselect(key="w_pred_ens").set_value(two_jobs).run()
    assert not at.exception, at.exception
    adhoc = frame_with(at, "file")
    # The same members combined on the spot give the saved ensemble's probabilities.
    prob_cols = [c for c in adhoc.columns if c.startswith("p_")]
    assert (abs(adhoc[prob_cols].to_numpy() - saved[prob_cols].to_numpy()) < 1e-9).all()


def test_ensemble_of_runs_with_other_classes_is_refused(two_jobs: list[str]) -> None:
    import json

    from classifier.workspace import runs_dir

    cfg_path = runs_dir() / two_jobs[1] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["class_names"] = ["circle", "square", "cross"]  # same names, another order
    cfg_path.write_text(json.dumps(cfg))
    at = page("app_pages/predict.py")
    at.radio(key="w_pred_kind").set_value("Ensemble").run()
    at.multiselect(key="w_pred_ens").set_value(two_jobs).run()
    assert not at.exception, at.exception
    assert any("Cannot combine these runs" in e.value and "another order" in e.value for e in at.error)


def test_runs_page_offers_the_report(two_jobs: list[str]) -> None:
    at = page("app_pages/runs.py")
    assert any(b.label == "Download report (.html)" for b in at.get("download_button"))


def test_runs_page_lists_saved_ensembles_and_deletes_one_keeping_its_members(two_jobs: list[str]) -> None:
    from classifier.ensemble import build_ensemble, ensembles_dir
    from classifier.workspace import runs_dir

    build_ensemble([runs_dir() / i for i in two_jobs], ensembles_dir() / "pair", name="pair")
    at = page("app_pages/runs.py")
    table = frame_with(at, "members")
    assert list(table["ensemble"]) == ["pair (ensemble of 2)"] and list(table["members"]) == [", ".join(two_jobs)]
    button = next(b for b in at.button if b.label == "Delete ensemble")
    assert button.disabled  # not before the confirmation
    next(c for c in at.checkbox if c.label.startswith("Yes, delete the ensemble")).check().run()
    next(b for b in at.button if b.label == "Delete ensemble").click().run()
    assert not at.exception, at.exception
    assert not (ensembles_dir() / "pair").exists()
    assert all((runs_dir() / i / "model.safetensors").is_file() for i in two_jobs)  # members kept
    assert not any("members" in df.value.columns for df in at.dataframe)  # the section is gone
