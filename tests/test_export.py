"""Export: ONNX and TorchScript files agree with PyTorch on the run's validation images, the batch axis is dynamic,
a broken export is flagged, the bundle's predict script preprocesses exactly like the run, and the CLI's exit codes.

One tiny simple_cnn run (32 px, generated shapes) is trained once for the whole module.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import bundle_predict, export
from classifier.cli import main
from classifier.data.images import load_image
from classifier.data.loader import draft_size
from classifier.data.transforms import eval_transform
from classifier.predict import load_run, predict_images

FAST = dict(bench_seconds=0.05)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from classifier.data.demo import make_demo_dataset
    from classifier.training import TrainConfig, fit

    root = tmp_path_factory.mktemp("export")
    data = make_demo_dataset(root / "data", n_per_class=10, size=40, seed=3, classes=("circle", "square", "cross"))
    cfg = TrainConfig(
        data=str(data), backbone="simple_cnn", weights="none", img_size=32, epochs=2, batch_size=8, num_workers=0
    )
    assert fit(cfg, root / "run").status == "completed"
    return root / "run"


@pytest.fixture(scope="module")
def onnx_bundle(run_dir: Path, tmp_path_factory) -> tuple[export.ExportReport, Path]:
    out = tmp_path_factory.mktemp("bundle") / "shapes-onnx.zip"
    report = export.export_run(run_dir, "onnx", out, **FAST)
    with zipfile.ZipFile(out) as zf:
        zf.extractall(out.parent)
    return report, out.parent / "shapes-onnx"


def val_batch(run_dir: Path, n: int) -> torch.Tensor:
    run = load_run(run_dir)
    inputs = export.parity_inputs(run, n)
    assert inputs.source == "validation images" and len(inputs.x) == n
    return inputs.x


def test_onnx_export_agrees_with_pytorch_on_validation_images(run_dir: Path, onnx_bundle) -> None:
    report, _ = onnx_bundle
    n_val = sum(1 for line in (run_dir / "split.csv").read_text().splitlines() if line.endswith(",val"))
    assert report.status == "ok", report.reasons
    assert report.inputs == "validation images" and report.n_images == n_val
    check = report.check
    assert check.name == "ONNX float32" and check.top1_agreement == 1.0 and check.max_prob_diff < 1e-5
    assert check.accuracy == report.pytorch_accuracy is not None
    # every validation image: the run's headline accuracy (evaluated in float32) is the PyTorch accuracy here
    headline = json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert report.headline_accuracy == pytest.approx(headline, abs=1e-4) == report.pytorch_accuracy
    layouts = next(n for n in report.notes if n.startswith("PyTorch: the faster memory layout"))
    assert "contiguous" in layouts and "channels_last" in layouts
    assert check.images_per_s > 0 and report.pytorch_images_per_s > 0 and report.speed_ratio() > 0
    d = report.to_dict()
    assert d["status"] == "ok" and d["reasons"] == [] and json.dumps(d)


def test_onnx_batch_axis_is_dynamic(run_dir: Path, onnx_bundle) -> None:
    _, folder = onnx_bundle
    session = export.onnx_session(folder / "model.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"
    run = load_run(run_dir)
    x = val_batch(run_dir, 5)
    with torch.no_grad():
        want = run.model(x).numpy()
    for n in (1, 5):
        got = session.run(None, {"input": x[:n].numpy()})[0]
        np.testing.assert_allclose(got, want[:n], atol=1e-5)


def test_bundle_contents(run_dir: Path, onnx_bundle) -> None:
    _, folder = onnx_bundle
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "model.onnx", "predict_onnx.py"]
    cfg = json.loads((folder / "config.json").read_text())
    run_cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["class_names"] == run_cfg["class_names"] and cfg["model_file"] == "model.onnx"
    pre = cfg["preprocessing"]
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"):
        assert pre[key] == run_cfg["data_config"][key], key
    assert cfg["parity"]["status"] == "ok" and cfg["onnx_opset"] >= 17
    card = (folder / "MODEL_CARD.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for text in ("## Data", "## Training", "## Intended use", "## Limitations", "top-1 agreement 100.0%",
                 "circle", "simple_cnn", f"accuracy: {metrics['accuracy']:.4g}"):  # fmt: skip
        assert text in card, text


def test_predict_script_reproduces_pytorch_probabilities(run_dir: Path, onnx_bundle, tmp_path: Path) -> None:
    _, folder = onnx_bundle
    rng = np.random.default_rng(5)
    paths = []
    for i, (w, h) in enumerate([(57, 43), (30, 70)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    out = subprocess.run(
        [sys.executable, str(folder / "predict_onnx.py"), *map(str, paths), "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    run = load_run(run_dir)
    want = predict_images(run, [load_image(p) for p in paths])
    for line, probs in zip(out.stdout.splitlines(), want):
        got = dict(json.loads(line)["top_k"])
        assert list(got) == [run.class_names[i] for i in np.argsort(-probs)]
        np.testing.assert_allclose([got[c] for c in run.class_names], probs, atol=2e-6)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"interpolation": "bicubic", "crop_pct": 0.875, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        {"interpolation": "bilinear", "crop_pct": 0.95, "input_size": [3, 33, 33]},
        {"interpolation": "nearest", "crop_pct": 0.9, "crop_mode": "squash", "grayscale": True},
    ],
)
def test_predict_script_preprocessing_matches_the_eval_transform(changes: dict, tmp_path: Path) -> None:
    pre = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "crop_mode": "center", "grayscale": False}  # fmt: skip
    pre |= changes
    transform = eval_transform(pre, pre["grayscale"])
    rng = np.random.default_rng(0)
    files = []
    for i, (w, h) in enumerate([(57, 43), (20, 90), (32, 32), (300, 200)]):
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        files.append((tmp_path / f"a{i}.png", rgb))
        files.append((tmp_path / f"b{i}.jpg", rgb))  # JPEG: both decode at the same draft scale
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    files.append((tmp_path / "alpha.png", rgba))
    draft = (draft_size(pre),) * 2
    for path, image in files:
        image.save(path)
        want = transform(load_image(path, draft_size=draft)).numpy()
        got = bundle_predict.preprocess(bundle_predict.load_rgb(str(path), pre), pre)
        assert got.dtype == np.float32 and got.shape == want.shape, path.name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=path.name)


def test_torchscript_export_agrees_and_takes_any_batch(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    report = export.export_run(run_dir, "torchscript", out, **FAST)
    assert report.status == "ok", report.reasons
    assert report.kind == "model" and report.check.top1_agreement == 1.0 and report.check.max_prob_diff < 1e-5
    module = export.load_torchscript(out)
    x = val_batch(run_dir, 5)
    with torch.no_grad():
        want = load_run(run_dir).model(x)
        for n in (1, 5):
            torch.testing.assert_close(module(x[:n]), want[:n], atol=1e-5, rtol=0)


def _broken_torchscript(monkeypatch) -> None:
    real = export.export_torchscript

    def perturbed(model, example, path):
        model = copy.deepcopy(model)
        with torch.no_grad():
            model.fc.weight.mul_(-1.0)  # the exported file no longer matches the run's weights
        return real(model, example, path)

    monkeypatch.setattr(export, "export_torchscript", perturbed)


def test_broken_export_is_flagged_and_cli_exits_1(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _broken_torchscript(monkeypatch)
    report = export.export_run(run_dir, "torchscript", None, **FAST)
    assert report.status == "warning" and report.check.status == "warning"
    assert "differs" in report.check.reason and report.reasons
    out = tmp_path / "bad.pt"
    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "warning" and "warning: TorchScript" in captured.err
    assert out.is_file()  # written, but not offered as fine


def test_int8_quantized_onnx_reports_accuracy(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    report = export.export_run(run_dir, "onnx", out, quantize="int8", **FAST)
    assert [c.name for c in report.checks] == ["ONNX float32", "ONNX int8 dynamic", "ONNX int8"]
    shipped = report.checks[-1]
    assert shipped.method.startswith("static QDQ") and "training images" in shipped.method  # static ships
    assert report.check is shipped and shipped.size_mb < report.checks[0].size_mb / 2
    flt, q = report.checks[0], report.checks[-1]
    assert flt.status == "ok" and q.accuracy is not None and report.pytorch_accuracy is not None
    assert 0.0 <= q.top1_agreement <= 1.0 and q.images_per_s > 0 and q.size_mb < flt.size_mb
    assert q.status == ("ok" if report.pytorch_accuracy - q.accuracy <= export.INT8_MAX_ACCURACY_DROP else "warning")
    assert out.is_file() and out.stat().st_size == pytest.approx(q.size_mb * 1e6, abs=1e3)
    assert any("int8" in n and "smaller" in n for n in report.notes)


def test_int8_accuracy_drop_is_flagged() -> None:
    def check(acc: float) -> export.Check:
        return export.Check("ONNX int8", "m.onnx", 1.0, top1_agreement=0.9, max_prob_diff=0.2, accuracy=acc)

    assert export.judge(check(0.89), 0.90, quantized=True, n_images=64).status == "ok"
    flagged = export.judge(check(0.85), 0.90, quantized=True, n_images=64)
    assert flagged.status == "warning" and "accuracy falls" in flagged.reason
    # on 30 images one changed answer (3.3 points) is tolerated, two are not
    assert export.judge(check(0.9 - 1 / 30), 0.9, quantized=True, n_images=30).status == "ok"
    assert export.judge(check(0.9 - 2 / 30), 0.9, quantized=True, n_images=30).status == "warning"
    no_labels = export.Check("ONNX int8", "m.onnx", 1.0, top1_agreement=0.9, max_prob_diff=0.2)
    assert export.judge(no_labels, None, quantized=True).status == "warning"
    float_off = export.Check("ONNX float32", "m.onnx", 1.0, top1_agreement=1.0, max_prob_diff=2e-3)
    assert export.judge(float_off, None, quantized=False).status == "warning"


def test_unreadable_validation_images_fall_back_to_generated_inputs(run_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["dataset"]["root"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    report = export.export_run(moved, "torchscript", None, **FAST)
    assert report.inputs == "generated inputs" and report.n_images == export.N_GENERATED
    assert report.pytorch_accuracy is None and report.check.accuracy is None and report.status == "ok"
    assert any("not readable" in n or "none of its" in n for n in report.notes)


def test_cli_torchscript_bundle_and_its_predict_script(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ts.zip"
    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok" and result["kind"] == "bundle" and result["checks"][0]["top1_agreement"] == 1.0
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path)
    folder = tmp_path / "ts"
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md", "config.json", "model.pt", "predict_torchscript.py"]  # fmt: skip
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(image)
    run = load_run(run_dir)
    proc = subprocess.run([sys.executable, str(folder / "predict_torchscript.py"), str(image), "--top-k", "9"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = dict(json.loads(proc.stdout)["top_k"])
    want = predict_images(run, [load_image(image)])[0]
    np.testing.assert_allclose([got[c] for c in run.class_names], want, atol=2e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx", "--out", "{tmp}/m.txt"], "end it in .zip"),
        (["--format", "torchscript", "--out", "{tmp}/m.onnx"], "end it in .zip"),
        (["--format", "torchscript", "--quantize", "int8", "--out", "{tmp}/m.zip"], "only available for ONNX"),
        (["--format", "onnx", "--out", "{tmp}/m.zip", "--max-images", "0"], "at least 1"),
    ],
)
def test_cli_user_errors_exit_2(run_dir: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    argv = ["export", "--run", str(run_dir), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not list(tmp_path.iterdir())


def test_cli_missing_run_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.zip")]) == 2
    assert "not a run dir" in capsys.readouterr().err
