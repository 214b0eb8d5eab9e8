"""Prediction speed paths: batched inference over many images, and the optional ONNX Runtime backend."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from classifier import export as export_mod
from classifier.errors import RunError
from classifier.predict import load_run, predict_paths


def _images(run_dir: Path) -> list[str]:
    import json

    root = Path(json.loads((run_dir / "config.json").read_text())["dataset"]["root"])
    return sorted(str(p) for p in root.rglob("*.png"))[:11]


def _probs(results: list[dict]) -> list[list[float]]:
    return [[p for _, p in sorted(r["top_k"])] for r in results]


def test_many_images_run_through_the_model_in_batches_with_the_same_results(two_runs):
    run = load_run(two_runs[0])
    images = _images(two_runs[0])
    calls = []
    real = run.model.forward
    run.model.forward = lambda x: calls.append(len(x)) or real(x)
    batched = predict_paths(run, images, top_k=3, batch_size=4)
    assert calls == [4, 4, 3] and len(calls) == math.ceil(len(images) / 4)
    calls.clear()
    one_by_one = [predict_paths(run, [p], top_k=3)[0] for p in images]
    assert calls == [1] * len(images)
    assert [r["label"] for r in batched] == [r["label"] for r in one_by_one]
    assert np.allclose(_probs(batched), _probs(one_by_one), atol=1e-6)


def test_onnx_backend_matches_pytorch_and_exports_once(two_runs, monkeypatch):
    images = _images(two_runs[0])
    torch_run = load_run(two_runs[0])
    onnx_run = load_run(two_runs[0], backend="onnx")
    assert (torch_run.backend, onnx_run.backend) == ("torch", "onnx") and onnx_run.session is not None
    a, b = predict_paths(torch_run, images), predict_paths(onnx_run, images)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert np.allclose(_probs(a), _probs(b), atol=1e-5)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the weights did not change")

    monkeypatch.setattr(export_mod, "export_onnx", no_export)
    again = load_run(two_runs[0], backend="onnx")
    assert again.backend == "onnx"
    auto = load_run(two_runs[0], backend="auto")  # keeps whichever measured faster; results stay the same
    assert auto.backend in ("torch", "onnx") and (auto.session is not None) == (auto.backend == "onnx")
    assert np.allclose(_probs(predict_paths(auto, images)), _probs(a), atol=1e-5)
    with pytest.raises(RunError, match="backend must be one of"):
        load_run(two_runs[0], backend="tensorrt")
