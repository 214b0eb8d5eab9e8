"""The Runs page's Export section driven headless with AppTest: build an export, read its parity figures, get the
bundle; a broken export shows a warning. Each test trains a tiny simple_cnn run in its own workspace."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 120  # seconds per script run: the first imports torch and timm, a build exports and times the model


@pytest.fixture
def completed_run() -> str:
    """A finished run recorded in the run store, trained in this process (the app's job code path, no subprocess)."""
    from classifier.data.demo import make_demo_dataset
    from classifier.jobs import new_run_id, run_job
    from classifier.training import TrainConfig
    from classifier.workspace import datasets_dir, runs_dir

    shapes = make_demo_dataset(
        datasets_dir() / "shapes", n_per_class=12, size=32, seed=3, classes=("circle", "square", "cross")
    )
    run_id = new_run_id()
    cfg = TrainConfig(data=str(shapes), backbone="simple_cnn", weights="none", epochs=1, img_size=32, batch_size=8)
    run_job(run_id, cfg, runs_dir() / run_id)
    return run_id


def runs_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception, at.exception
    return at


def build(at: AppTest, run_id: str, fmt: str, int8: bool = False) -> None:
    at.radio(key=f"w_export_format_{run_id}").set_value(fmt).run()
    if int8:
        at.checkbox(key=f"w_export_int8_{run_id}").check().run()
    at.button(key=f"b_export_build_{run_id}").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def bundle_buttons(at: AppTest) -> list:
    return [b for b in at.get("download_button") if "bundle" in b.label]


def table(at: AppTest):
    return next(df.value for df in at.dataframe if "images/s" in df.value.columns)


def test_onnx_int8_export_shows_parity_and_speed_and_offers_the_bundle(completed_run: str) -> None:
    from classifier.export import default_export_path
    from classifier.workspace import runs_dir

    at = runs_page()
    assert any(s.value == "Export" for s in at.subheader)
    assert not bundle_buttons(at)  # nothing built yet
    build(at, completed_run, "ONNX", int8=True)
    cards = {m.label: m.value for m in at.metric}
    assert {"Top-1 agreement", "Max prob. difference", "Speed vs PyTorch", "Accuracy (ONNX int8)"} <= set(cards)
    assert cards["Speed vs PyTorch"].endswith("×")
    acc = next(m for m in at.metric if m.label == "Accuracy (ONNX int8)")
    assert "all the run's validation images" in acc.help and "headline accuracy" in acc.help
    assert (acc.proto.delta == "") == ("no change" in acc.help)  # an arrow only for a real change
    frame = table(at)
    assert frame["model"].tolist() == ["PyTorch", "ONNX float32", "ONNX int8 dynamic", "ONNX int8"]
    assert frame.loc[1, "top-1 agreement"] == 1.0 and frame.loc[1, "check"] == "ok"
    assert frame["images/s"].gt(0).all() and frame["accuracy"].notna().all()
    assert at.success or at.warning  # the verdict is always spelled out
    assert [b.label for b in bundle_buttons(at)] == ["Download ONNX int8 bundle (.zip)"]

    bundle = default_export_path(runs_dir() / completed_run, "onnx", "int8")
    with zipfile.ZipFile(bundle) as zf:
        names = sorted(Path(n).name for n in zf.namelist())
        cfg = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("config.json"))))
    assert names == ["MODEL_CARD.md", "config.json", "model.int8.onnx", "predict_onnx.py"]
    assert cfg["quantize"] == "int8" and cfg["class_names"] == ["circle", "cross", "square"]

    again = runs_page()  # a reload shows the last export of this choice without rebuilding it
    again.radio(key=f"w_export_format_{completed_run}").set_value("ONNX").run()
    again.checkbox(key=f"w_export_int8_{completed_run}").check().run()
    assert table(again)["model"].tolist() == ["PyTorch", "ONNX float32", "ONNX int8 dynamic", "ONNX int8"]


def test_broken_export_shows_a_warning(completed_run: str, monkeypatch) -> None:
    import copy

    import torch

    from classifier import export

    real = export.export_torchscript

    def perturbed(model, example, path):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.fc.weight.mul_(-1.0)
        return real(model, example, path)

    monkeypatch.setattr(export, "export_torchscript", perturbed)
    at = runs_page()
    build(at, completed_run, "TorchScript")
    assert at.checkbox(key=f"w_export_int8_{completed_run}").disabled  # int8 is for ONNX only
    assert any("flagged" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.success
    assert table(at).loc[1, "check"] == "warning"


def test_export_failure_shows_an_error_not_a_traceback(completed_run: str, monkeypatch) -> None:
    from classifier import export
    from classifier.errors import ModelError

    def fails(model, example, path):
        raise ModelError("could not export the model to ONNX: Unsupported: some operator")

    monkeypatch.setattr(export, "export_onnx", fails)
    at = runs_page()
    at.radio(key=f"w_export_format_{completed_run}").set_value("ONNX").run()
    at.button(key=f"b_export_build_{completed_run}").click().run()
    assert not at.exception, at.exception
    assert any(e.value.startswith("Export failed: could not export") for e in at.error), [e.value for e in at.error]
    assert not bundle_buttons(at)
