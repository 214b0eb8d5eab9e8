"""The Streamlit app driven headless with AppTest: a smoke test per page, then uploads, training, cancel, predict.

Every test gets its own workspace (tests/conftest.py). Training uses `simple_cnn` at 32 px on a few dozen
generated images, so a run takes seconds on a CPU.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = [
    "app_pages/home.py",
    "app_pages/data.py",
    "app_pages/train.py",
    "app_pages/evaluate.py",
    "app_pages/explain.py",
    "app_pages/predict.py",
    "app_pages/runs.py",
    "app_pages/compare.py",
]
TIMEOUT = 60  # seconds per script run: the first one imports torch and timm


def png_bytes(seed: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page != "app_pages/home.py":
        at.switch_page(page).run()
    return at


def wait_for(at: AppTest, done: Callable[[], bool], timeout: float = 120.0) -> None:
    """Re-run the app (what the page's polling fragment does in a browser) until `done()` or the timeout."""
    end = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < end, "timed out waiting for the app"
        time.sleep(1.0)
        at.run()
        assert not at.exception, at.exception


def frame_with(at: AppTest, column: str):
    """The first dataframe on the page that has `column` (plain dataframes carry no key in AppTest)."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


@pytest.fixture
def shapes() -> Path:
    """A three-class dataset (12 images of 32 px each) saved in the workspace like an upload would be."""
    from classifier.data.demo import make_demo_dataset
    from classifier.workspace import datasets_dir

    return make_demo_dataset(
        datasets_dir() / "shapes", n_per_class=12, size=32, seed=3, classes=("circle", "square", "cross")
    )


@pytest.fixture
def completed_run(shapes: Path) -> str:
    """A finished run recorded in the run store, trained in this process (the app's job code path, no subprocess)."""
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    run_id = new_run_id()
    cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=32, batch_size=8)
    run_job(run_id, cfg, runs_dir() / run_id)
    return run_id


def start_run(at: AppTest, shapes: Path, epochs: int) -> None:
    """Fill in the Train page for a small simple_cnn run and click Start."""
    at.selectbox(key="w_data").set_value(str(shapes)).run()
    at.selectbox(key="w_backbone").set_value("simple_cnn").run()
    at.number_input(key="w_epochs_finetune").set_value(epochs)
    at.number_input(key="w_img").set_value(32)
    at.number_input(key="w_batch").set_value(8)
    at.text_input(key="w_run_name").set_value("ui-test")
    at.button[[b.label for b in at.button].index("Start training")].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception
    assert at.title[0].value.lower().startswith(Path(page).stem if page != "app_pages/home.py" else "image")


@pytest.mark.parametrize(
    "page",
    [
        "app_pages/evaluate.py",
        "app_pages/explain.py",
        "app_pages/predict.py",
        "app_pages/runs.py",
        "app_pages/train.py",
    ],
)
def test_result_pages_render_with_a_run(page: str, completed_run: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_zip_upload_shows_class_counts() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, n in (("cats", 7), ("dogs", 3), ("owls", 2)):
            for i in range(n):
                zf.writestr(f"pets/{cls}/{i}.png", png_bytes(hash((cls, i)) % 10_000))
        zf.writestr("pets/cats/broken.jpg", b"not an image at all")
    at = open_page("app_pages/data.py")
    at.file_uploader[0].upload("pets.zip", buf.getvalue(), "application/zip")
    at.run()
    assert not at.exception, at.exception
    counts = frame_with(at, "total")
    assert counts["total"].to_dict() == {"cats": 7, "dogs": 3, "owls": 2}
    assert counts["val"].sum() == 3  # one validation image per class at 20%
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "12" and metrics["Classes"] == "3" and metrics["Skipped files"] == "1"
    assert any("imbalanced" in w.value and "sampler" in w.value for w in at.warning)  # 7 vs 2 images
    from classifier.workspace import datasets_dir

    assert Path(at.session_state["dataset_path"]).is_relative_to(datasets_dir().resolve())


def _zip_of_junk() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/one.jpg", b"not an image")
        zf.writestr("b/two.png", b"nor this")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"this is not a zip", "not a valid .zip"), (_zip_of_junk(), "no usable images")],
)
def test_bad_uploads_show_an_error_not_a_traceback(payload: bytes, message: str) -> None:
    at = open_page("app_pages/data.py")
    at.file_uploader[0].upload("upload.zip", payload, "application/zip")
    at.run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_build_dataset_from_images_per_class() -> None:
    at = open_page("app_pages/data.py")
    at.radio(key="w_source").set_value("Images per class").run()
    for i, (cls, n) in enumerate((("apples", 4), ("pears", 3))):
        at.text_input(key=f"w_class_{i}").set_value(cls)
        at.file_uploader(key=f"u_files_{i}").set_value([(f"{cls}{j}.png", png_bytes(i * 100 + j), "image/png")
                                                        for j in range(n)])  # fmt: skip
    at.file_uploader(key="u_files_1").upload("fake.png", b"\x89PNG\r\n\x1a\nbroken", "image/png")
    at.run()
    at.button[[b.label for b in at.button].index("Save dataset")].click().run()
    assert not at.exception, at.exception
    assert any("Saved 7 images" in s.value for s in at.success)
    assert any("1 files are not usable" in w.value for w in at.warning)
    assert frame_with(at, "total")["total"].to_dict() == {"apples": 4, "pears": 3}


def test_server_folder_needs_allowed_root(monkeypatch, tmp_path, shapes: Path) -> None:
    at = open_page("app_pages/data.py")
    at.radio(key="w_source").set_value("Folder on the server").run()
    assert any("CLASSIFIER_DATA_ROOT" in i.value for i in at.info)
    monkeypatch.setenv("CLASSIFIER_DATA_ROOT", str(shapes.parent))
    at.run()
    at.text_input[0].set_value("../..").run()
    at.button[[b.label for b in at.button].index("Use this folder")].click().run()
    assert any("not inside the allowed data folder" in e.value for e in at.error)
    at.text_input[0].set_value("shapes").run()
    at.button[[b.label for b in at.button].index("Use this folder")].click().run()
    assert at.session_state["dataset_path"] == str(shapes.resolve())


def test_demo_button_prepares_data_and_opens_train(monkeypatch, shapes: Path) -> None:
    import classifier.data.demo

    monkeypatch.setattr(classifier.data.demo, "ensure_demo_dataset", lambda seed=0: shapes)  # the real one takes ~10 s
    at = open_page("app_pages/home.py")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Train"
    assert at.session_state["dataset_path"] == str(shapes)
    assert at.selectbox(key="w_data").value == str(shapes)


@pytest.mark.slow
def test_training_run_shows_progress_and_completes(shapes: Path) -> None:
    at = open_page("app_pages/train.py")
    start_run(at, shapes, epochs=2)
    assert "ui-test" in texts(at)
    seen = set()

    def finished() -> bool:
        status = texts(at)
        seen.update(s for s in ("queued", "running") if s in status)
        return "completed" in status or "failed" in status

    wait_for(at, finished)
    assert "completed" in texts(at), texts(at)
    assert seen, "the run was never shown as queued or running"
    assert {m.label for m in at.metric} >= {"Accuracy", "Macro F1"}


@pytest.mark.slow
def test_cancel_stops_a_running_job(shapes: Path) -> None:
    at = open_page("app_pages/train.py")
    start_run(at, shapes, epochs=300)
    wait_for(at, lambda: "running" in texts(at))
    assert at.get("progress"), "a running job shows a progress bar"
    at.button[[b.label for b in at.button].index("Cancel run")].click().run()
    wait_for(at, lambda: "cancelled" in texts(at), timeout=60)
    from classifier.jobs import default_executor

    assert default_executor().list()[0].status == "cancelled"


def test_predict_labels_an_uploaded_image(completed_run: str) -> None:
    at = open_page("app_pages/predict.py")
    at.file_uploader(key="u_pred_files").set_value(
        [
            ("a.png", png_bytes(1, 40), "image/png"),
            ("bad.png", b"nope", "image/png"),
            ("b.png", png_bytes(2), "image/png"),
        ]
    )
    at.run()
    assert not at.exception, at.exception
    assert any("bad.png" in e.value for e in at.error)
    table = frame_with(at, "file")
    assert list(table["file"]) == ["a.png", "b.png"]
    assert set(table["label"]) <= {"circle", "square", "cross"}
    assert len(at.get("download_button")) == 1


def test_predict_from_a_camera_photo(completed_run: str) -> None:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(5, 48))).save(buf, "JPEG")
    at = open_page("app_pages/predict.py")
    at.toggle(key="w_camera_on").set_value(True).run()
    at.camera_input(key="u_camera").set_value(("photo.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert any(m.value.split("**")[1] in {"circle", "square", "cross"} for m in at.markdown if m.value.startswith("**"))


def test_untrainable_dataset_is_refused_before_submitting() -> None:
    from classifier.jobs import default_executor
    from classifier.workspace import datasets_dir

    (datasets_dir() / "lonely" / "only").mkdir(parents=True)
    for i in range(3):
        (datasets_dir() / "lonely" / "only" / f"{i}.png").write_bytes(png_bytes(i))
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_data").set_value(str(datasets_dir() / "lonely")).run()
    assert not at.exception, at.exception
    assert any("Dataset" in w.value and "at least two classes" in w.value for w in at.warning)
    assert at.button[[b.label for b in at.button].index("Start training")].disabled
    assert default_executor().list() == []


def test_runs_that_cannot_work_are_not_started(shapes: Path, monkeypatch) -> None:
    """Offline hub weights: the weight source defaults to one that works; choosing the hub anyway marks the field,
    keeps Start off and offers the fix. A size the architecture cannot take and a batch that does not fit in memory
    are marked the same way, worded as settings (no command-line flags)."""
    from classifier.models import weights as W
    from classifier.training import preflight

    monkeypatch.setattr(W, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(W, "hub_cached", lambda name: False)
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_data").set_value(str(shapes)).run()
    at.selectbox(key="w_backbone").set_value("resnet18").run()
    assert at.selectbox(key="w_weights_resnet18").value == "none" and not at.warning
    start = lambda: at.button[[b.label for b in at.button].index("Start training")]  # noqa: E731
    assert not start().disabled
    at.selectbox(key="w_weights_resnet18").set_value("hub").run()
    [warning] = at.warning
    assert "Weights" in warning.value and "cannot be reached" in warning.value and "--" not in warning.value
    assert start().disabled
    at.button(key="b_fix_weights_0").click().run()
    assert at.selectbox(key="w_weights_resnet18").value == "none" and not at.warning and not start().disabled

    at.selectbox(key="w_backbone").set_value("inception_v3").run()
    at.selectbox(key="w_weights_inception_v3").set_value("none").run()
    at.number_input(key="w_img").set_value(64).run()
    assert any("Image size" in w.value and "cannot take 64 px" in w.value for w in at.warning) and start().disabled

    monkeypatch.setattr(preflight, "available_memory", lambda device: 2_000_000_000)
    at.number_input(key="w_img").set_value(299).run()
    at.number_input(key="w_batch").set_value(256).run()
    [warning] = at.warning
    assert "Batch size" in warning.value and "needs about" in warning.value and start().disabled
    at.button(key="b_fix_batch_size_0").click().run()
    assert at.number_input(key="w_batch").value < 256


def test_runs_page_deletes_after_confirmation(completed_run: str) -> None:
    from classifier.jobs import default_executor

    at = open_page("app_pages/runs.py")
    delete = at.button[[b.label for b in at.button].index("Delete run")]
    assert delete.disabled
    at.checkbox(key=f"c_confirm_{completed_run}").check().run()
    at.button[[b.label for b in at.button].index("Delete run")].click().run()
    assert not at.exception, at.exception
    assert default_executor().list() == []
    assert any("No runs yet" in i.value for i in at.info)


def test_run_zip_holds_the_run_files(completed_run: str) -> None:
    from classifier.rundir import run_zip
    from classifier.workspace import runs_dir

    with zipfile.ZipFile(io.BytesIO(run_zip(runs_dir() / completed_run, "r"))) as zf:
        names = set(zf.namelist())
    assert {"r/model.safetensors", "r/config.json", "r/metrics.json", "r/history.csv"} <= names


def test_safe_name_and_augment_preview() -> None:
    from classifier.data.ingest import safe_name
    from classifier.data.transforms import augment_preview

    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("...") == "dataset"
    views = augment_preview(Image.new("RGB", (50, 40), (200, 30, 30)), "standard", n=3, size=32)
    assert len(views) == 3 and views[0].shape == (32, 32, 3) and 0 <= views[0].min() <= views[0].max() <= 1


def test_evaluate_gallery_opens_an_image_in_explain(completed_run: str) -> None:
    at = open_page("app_pages/evaluate.py")
    at.toggle(key="w_only_wrong").set_value(False).run()  # every val image, worst first
    at.selectbox(key="w_true").set_value("square").run()
    captions = [c.value for c in at.caption if c.value.startswith("**true** square")]
    assert captions, [c.value for c in at.caption]
    worst = captions[0].split("`")[1]
    buttons = [b for b in at.button if b.label == "Explain"]
    assert len(buttons) == len(captions)
    buttons[0].click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Explain"
    assert at.selectbox(key="x_image").value == worst
    labels = [c.value for c in at.caption]
    for method in ("Grad-CAM", "Integrated gradients", "Saliency"):  # the default methods, each with its time
        assert any(c.startswith(f"**{method}** · ") and " s" in c for c in labels), labels
    assert len(at.get("download_button")) == 3
    assert not at.error, [e.value for e in at.error]


def test_explain_page_methods_targets_and_upload(completed_run: str) -> None:
    at = open_page("app_pages/explain.py")
    at.selectbox(key="x_outcome").set_value("correct").run()
    at.multiselect(key="x_methods").set_value(["occlusion", "smoothgrad", "gradient_shap", "guided_gradcam"]).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    labels = [c.value for c in at.caption]
    assert sum(c.startswith("**") for c in labels) == 5, labels  # the original and four maps
    assert sum(c.endswith(" s") or " s · " in c for c in labels) == 4, labels  # each map with its time
    targets = at.selectbox(key="x_target").options
    assert targets[0].startswith("predicted: ") and targets[1].startswith("true: ")
    assert sum(t.startswith("class ") for t in targets) == 3
    at.selectbox(key="x_target").set_value(targets[-1]).run()
    assert not at.exception, at.exception

    at.segmented_control(key="x_source").set_value("Upload").run()
    at.file_uploader(key="u_explain_upload").set_value([("mine.png", png_bytes(7, 40), "image/png")]).run()
    assert not at.exception, at.exception
    assert "**Original** · 40×40 px" in [c.value for c in at.caption]  # the upload, not the 32 px val image
    assert len(at.get("download_button")) == 4
    assert not any(t.startswith("true: ") for t in at.selectbox(key="x_target").options)
    at.file_uploader(key="u_explain_upload").set_value([("broken.png", b"not an image", "image/png")]).run()
    assert not at.exception, at.exception
    assert any("broken.png" in e.value for e in at.error)


@pytest.mark.parametrize(
    ("button", "title"), [("Evaluate", "Evaluate"), ("Explain", "Explain"), ("Predict", "Predict"), ("Export", "Runs")]
)
def test_next_step_buttons_open_the_right_page_on_the_run(completed_run: str, shapes: Path, button, title) -> None:
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    other = new_run_id()  # a second, newer run: the pickers would show it first
    run_job(other, TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=32,
                               batch_size=8), runs_dir() / other)  # fmt: skip
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_watch").set_value(completed_run).run()
    at.button(key=f"b_next_{button}_{completed_run}").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == title
    key = "w_runs_pick" if title == "Runs" else "w_run_picker"
    assert at.selectbox(key=key).value == completed_run


def test_train_again_puts_the_run_settings_into_the_train_page(shapes: Path) -> None:
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    run_id = new_run_id()
    cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=40, batch_size=4,
                      lr=0.0123, optimizer="sgd", augment="strong")  # fmt: skip
    run_job(run_id, cfg, runs_dir() / run_id)
    at = open_page("app_pages/runs.py")
    at.button(key=f"b_again_{run_id}").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Train"
    assert at.selectbox(key="w_data").value == str(shapes) and at.selectbox(key="w_backbone").value == "simple_cnn"
    assert at.number_input(key="w_epochs_finetune").value == 1 and at.number_input(key="w_img").value == 40
    assert at.number_input(key="w_batch").value == 4 and at.number_input(key="w_lr_finetune").value == 0.0123
    assert at.selectbox(key="w_opt").value == "sgd" and at.selectbox(key="w_aug_finetune").value == "strong"


def test_a_failed_run_offers_a_retry_that_fixes_its_cause(shapes: Path) -> None:
    from classifier.jobs import default_executor
    from classifier.store import RunStore
    from classifier.training import TrainConfig
    from classifier.workspace import runs_dir

    cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=32, batch_size=8)
    store = RunStore()
    store.create("r-oom", "big batch", cfg.resolved().to_dict(), str(runs_dir() / "r-oom"), status="failed")
    store.update("r-oom", error="out of memory at batch size 8 on cpu (epoch 1 step 1); try a smaller image size")
    at = open_page("app_pages/train.py")
    at.selectbox(key="w_watch").set_value("r-oom").run()
    retry = at.button(key="b_retry_r-oom")
    assert retry.label == "Retry with batch size 4"
    retry.click().run()
    assert not at.exception, at.exception
    [new] = [j for j in default_executor().list() if j.run_id != "r-oom"]
    assert new.config["batch_size"] == 4 and new.name == "big batch (retry)"
    default_executor().cancel(new.run_id)
