"""A multi-label run through the app with AppTest: the Data page's label statistics, the Train page's multi-label
settings, a run trained through the Train page's job path, then Evaluate (metrics, tuned thresholds beside 0.5, the
per-label gallery), Explain (any label as the target, opened from the gallery) and Predict (labels above their
thresholds, per-label bars, CSV).

Training is `simple_cnn` at 32 px on 48 generated scenes: seconds on a CPU.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_app import frame_with, open_page, wait_for


@pytest.fixture
def scenes() -> Path:
    """48 multi-label scenes (48 px) saved in the workspace like an upload would be."""
    from classifier.data.demo import make_multilabel_demo
    from classifier.workspace import datasets_dir

    return make_multilabel_demo(datasets_dir() / "scenes", n_images=48, size=48, seed=4)


@pytest.fixture
def ml_run(scenes: Path) -> str:
    """A finished multi-label run with tuned thresholds in the run store (the app's job code path, in process)."""
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    run_id = new_run_id()
    cfg = TrainConfig(data=str(scenes), backbone="simple_cnn", weights="none", epochs=2, img_size=32, batch_size=8,
                      tune_thresholds=True)  # fmt: skip
    run_job(run_id, cfg, runs_dir() / run_id)
    return run_id


def _png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    return buf.getvalue()


def test_data_page_shows_label_statistics(scenes: Path) -> None:
    from ui import state

    at = open_page("app_pages/data.py")
    at.session_state[state.DATASET] = str(scenes)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any(m.label == "Labels (multi-label)" and m.value == "5" for m in at.metric)
    assert any("labels per image on average" in c.value and "0 images have no label" in c.value for c in at.caption)


def test_train_page_offers_the_multilabel_settings_and_starts_a_run(scenes: Path) -> None:
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_data").set_value(str(scenes)).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    assert at.selectbox(key="w_ml_loss").options == ["bce", "asl"]
    at.selectbox(key="w_ml_loss").set_value("asl")
    at.selectbox(key="w_pos_weight").set_value("auto")
    at.checkbox(key="w_tune_thresholds").check()
    at.number_input(key="w_epochs_finetune").set_value(1)
    at.number_input(key="w_img").set_value(32)
    at.number_input(key="w_batch").set_value(8)
    at.selectbox(key="w_imb").set_value("sampler").run()
    assert any("use --pos-weight auto" in w.value for w in at.warning), "a class-imbalance setting on labels"
    assert at.button(key="b_fix_config_0").label == "Use imbalance none"
    at.button(key="b_fix_config_0").click().run()
    assert at.selectbox(key="w_imb").value == "none"
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    from ui.cache import executor

    job = executor().list()[0]
    wait_for(at, lambda: executor().status(job.run_id).status in ("completed", "failed"), timeout=180)
    done = executor().status(job.run_id)
    assert done.status == "completed", done.error
    assert done.config["multilabel_loss"] == "asl" and done.metrics["task"] == "multilabel" and done.metrics["map"]


def test_evaluate_shows_multilabel_metrics_and_the_gallery_opens_explain(ml_run: str) -> None:
    at = open_page("app_pages/evaluate.py")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert {m.label for m in at.metric} >= {"mAP", "Micro F1", "Subset accuracy", "Hamming loss"}
    table = frame_with(at, "F1 at 0.5")
    assert list(table["label"]) == ["circle", "cross", "square", "star", "triangle"]
    assert not (table["threshold"] == 0.5).all()  # tuned, shown beside the F1 at 0.5
    assert any("tuned per label" in c.value for c in at.caption)
    at.selectbox(key="w_ml_outcome").set_value("all").run()
    captions = [c.value for c in at.caption if c.value.startswith("p(")]
    assert captions and all("**true**" in c for c in captions)
    label = at.selectbox(key="w_ml_label").value
    at.button[[b.label for b in at.button].index("Explain")].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Explain"
    assert at.selectbox(key="x_image").value == captions[0].split("`")[1]
    assert at.selectbox(key="x_target").value.startswith(f"label {label} (")
    assert len(at.get("download_button")) == 3  # the three default methods' maps
    assert not at.error, [e.value for e in at.error]


def test_explain_lists_every_label_as_a_target(ml_run: str) -> None:
    at = open_page("app_pages/explain.py")
    at.selectbox(key="x_ml_outcome").set_value("all").run()
    assert not at.exception, at.exception
    targets = at.selectbox(key="x_target").options
    assert len(targets) == 5 and all(t.startswith("label ") for t in targets)
    at.selectbox(key="x_target").set_value(targets[-1]).run()
    at.multiselect(key="x_methods").set_value(["saliency"]).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any(c.value.startswith("Labels predicted: ") for c in at.caption)


def test_predict_shows_labels_above_thresholds_and_a_csv(ml_run: str, scenes: Path) -> None:
    from classifier import rundir
    from classifier.workspace import runs_dir

    at = open_page("app_pages/predict.py")
    images = sorted(scenes.glob("*.png"))[:2]
    at.file_uploader(key="u_pred_files").set_value([(p.name, _png(p), "image/png") for p in images])
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = frame_with(at, "labels")
    assert list(table["file"]) == [p.name for p in images]
    thresholds = rundir.read_thresholds(runs_dir() / ml_run, 5)
    names = ["circle", "cross", "square", "star", "triangle"]
    for _, row in table.iterrows():
        above = [c for c, t in zip(names, thresholds) if row[f"p_{c}"] >= t]
        assert set(filter(None, row["labels"].split("; "))) == set(above)
    assert len(at.get("download_button")) == 1 and isinstance(table, pd.DataFrame)
    assert not any(s.key == "w_topk" for s in at.slider)  # no top-k for labels
