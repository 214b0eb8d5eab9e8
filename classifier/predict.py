"""Inference from a run dir: rebuild the model and its exact evaluation transform, then predict.

>>> run = load_run("runs/r1")  # doctest: +SKIP
>>> predict_paths(run, ["ant.jpg"], top_k=2)  # doctest: +SKIP
[{'path': 'ant.jpg', 'label': 'ants', 'probability': 0.97, 'top_k': [['ants', 0.97], ['bees', 0.03]]}]

`load_run(..., backend="onnx")` runs the forward pass in ONNX Runtime on the CPU (the model exported once per
weights file into `workspace/cache/onnx/`, through `classifier.model_io`); `backend="auto"` times both
on one batch and keeps the faster (on this project's 2-core CPU, ONNX Runtime measured 2-4x PyTorch's images/s,
see docs/benchmarks.md). `run.model` stays the PyTorch model either way (explanations need it).

A multi-label run (`run.task`) gives each label's sigmoid probability instead of a softmax over the classes, and
its predictions are the labels whose probability reaches the run's threshold (`run.thresholds`, from metrics.json:
0.5, or tuned per label on validation):

>>> predict_paths(multi_run, ["street.jpg"])  # doctest: +SKIP
[{'path': 'street.jpg', 'labels': [['bus', 0.93], ['bicycle', 0.61]], 'probabilities': {'bicycle': 0.61, ...}}]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from classifier import rundir
from classifier.data.images import is_image_path, load_image
from classifier.data.loader import ImageListDataset, draft_size
from classifier.data.transforms import eval_transform
from classifier.device import pick_device
from classifier.errors import ClassifierError, ImageError, ModelError, RunError
from classifier.model_io import cached_onnx_session, onnx_forward
from classifier.models.factory import model_from_run_config
from classifier.task import MULTI, task_of
from classifier.workspace import cache_dir


@dataclass
class LoadedRun:
    run_dir: Path
    config: dict[str, Any]
    model: nn.Module
    transform: Any
    device: torch.device
    backend: str = "torch"  # torch | onnx: what predict_tensor runs
    session: Any = None  # the ONNX Runtime session when backend == "onnx"
    thresholds: list[float] | None = None  # a multi-label run's per-label thresholds; None for single-label

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def task(self) -> str:
        return task_of(self.config)


BACKENDS = ("torch", "onnx", "auto")
log = logging.getLogger(__name__)


def load_run(run_dir: str | Path, device: str = "cpu", backend: str = "torch") -> LoadedRun:
    """Rebuild a run's model (weights from model.safetensors, never a pickle) and its evaluation transform.

    `backend`: torch; onnx (ONNX Runtime on the CPU); auto (onnx when it measures faster on this machine)."""
    if backend not in BACKENDS:
        raise RunError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    weights = rundir.weights_path(run_dir)
    model = model_from_run_config(config, rundir.load_weights(run_dir), source=str(weights))
    dev = pick_device(device)
    model.to(dev)
    run = LoadedRun(run_dir, config, model, eval_transform(config["data_config"], config.get("grayscale", False)), dev)
    if run.task == MULTI:
        run.thresholds = rundir.read_thresholds(run_dir, len(run.class_names))
    if backend == "onnx" and dev.type != "cpu":
        raise RunError(f"backend onnx runs on the CPU; load the run with device cpu, not {dev.type}")
    if backend != "torch" and dev.type == "cpu":
        _use_onnx(run, weights, measure=backend == "auto")
    return run


def _use_onnx(run: LoadedRun, weights: Path, measure: bool) -> None:
    """Switch `run` to ONNX Runtime (exported once per weights file); with `measure`, only if it is faster."""
    size = int(run.config["data_config"]["input_size"][-1])
    try:
        session = cached_onnx_session(run.model, weights, size, cache_dir() / "onnx")
    except (ModelError, ImportError, OSError) as e:
        if not measure:
            raise RunError(f"cannot run {run.run_dir} with ONNX Runtime: {e}") from e
        log.warning("ONNX Runtime unavailable for %s (%s); predicting with PyTorch", run.run_dir, e)
        return
    if measure:
        x = torch.rand(8, 3, size, size)
        t_torch = _best_time(lambda: predict_tensor(run, x))
        run.backend, run.session = "onnx", session
        t_onnx = _best_time(lambda: predict_tensor(run, x))
        if t_onnx >= t_torch:
            run.backend, run.session = "torch", None
        log.info("predict backend for %s: %s (8 images: torch %.3f s, onnx %.3f s)", run.run_dir, run.backend,
                 t_torch, t_onnx)  # fmt: skip
        return
    run.backend, run.session = "onnx", session


def _best_time(fn, reps: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.no_grad()
def predict_tensor(run: LoadedRun, x: torch.Tensor) -> np.ndarray:
    if run.session is not None:
        logits = torch.from_numpy(onnx_forward(run.session, x.float().cpu().numpy()))
    else:
        logits = run.model(x.to(run.device))
    return activate(logits, run.task).cpu().numpy().astype(np.float64)


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Probabilities from logits: softmax over the classes, or each label's sigmoid (multi-label)."""
    return torch.sigmoid(logits.float()) if task == MULTI else torch.softmax(logits.float(), 1)


def predict_images(run: LoadedRun, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """Class probabilities (n, C) for already-decoded RGB images, through the run's evaluation transform."""
    out = [np.zeros((0, len(run.class_names)))]
    for i in range(0, len(images), batch_size):
        x = torch.stack([run.transform(im) for im in images[i : i + batch_size]])
        out.append(predict_tensor(run, x))
    return np.concatenate(out)


def predict_items(
    run: LoadedRun, paths: Sequence[str | Path], batch_size: int = 32, num_workers: int = 0
) -> np.ndarray:
    """Class probabilities (n, C) for image files; raises ImageError on the first unreadable file."""
    ds = ImageListDataset([(p, 0) for p in paths], run.transform, draft_size(run.config["data_config"]))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers)
    out = [np.zeros((0, len(run.class_names)))]
    for x, _ in loader:
        out.append(predict_tensor(run, x))
    return np.concatenate(out)


def format_prediction(
    path: str, probs: np.ndarray, class_names: list[str], top_k: int = 3, thresholds: Sequence[float] | None = None
) -> dict[str, Any]:
    """One image's result: `{"path", "label", "probability", "top_k"}`; with `thresholds` (a multi-label run),
    `{"path", "labels": [[label, p], ...] (those at or above their threshold, most probable first),
    "probabilities": {label: p}}`."""
    if thresholds is not None:
        order = [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= thresholds[i]]
        return {
            "path": path,
            "labels": [[class_names[i], round(float(probs[i]), 6)] for i in order],
            "probabilities": {c: round(float(v), 6) for c, v in zip(class_names, probs)},
        }
    order = np.argsort(-probs)[: max(1, min(top_k, len(class_names)))]
    return {
        "path": path,
        "label": class_names[int(order[0])],
        "probability": round(float(probs[order[0]]), 6),
        "top_k": [[class_names[int(i)], round(float(probs[i]), 6)] for i in order],
    }


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files as given, and the image files inside any folder (recursively, sorted)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_path(f)]
        else:
            out.append(item)
    return out


def predict_paths(run: LoadedRun, inputs: Iterable[str], top_k: int = 3, batch_size: int = 32) -> list[dict[str, Any]]:
    """One result dict per image, in input order; an unreadable image gives `{"path", "error"}` instead of
    stopping the batch. Images are decoded one by one and run through the model in batches."""
    draft = (draft_size(run.config["data_config"]),) * 2
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, str, Image.Image]] = []

    def flush() -> None:
        probs = predict_images(run, [im for _, _, im in pending], batch_size)
        for (i, path, _), p in zip(pending, probs):
            results[i] = format_prediction(path, p, run.class_names, top_k, run.thresholds)
        pending.clear()

    for path in expand_inputs(inputs):
        results.append({"path": path})
        try:
            if not Path(path).is_file():
                raise ImageError(path, "file not found")
            pending.append((len(results) - 1, path, load_image(path, draft_size=draft)))
        except ClassifierError as e:
            results[-1]["error"] = str(e)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return results
