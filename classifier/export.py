"""Export a trained run to ONNX or TorchScript, check the export against PyTorch, and package it for download.

Every export is compared with the run's PyTorch model on the run's own validation images, preprocessed with
the run's exact evaluation transform (at most `max_images`, spread over the classes). A float export must
agree on every top-1 prediction and stay within `FLOAT_MAX_PROB_DIFF` on every probability; an int8 model
must not lose more than `INT8_MAX_ACCURACY_DROP` accuracy against the labels (or one image, on a small set).
Each model is also run on one image alone, which must give what it gave inside the batch. A multi-label run is
compared on its sigmoid outputs: "top-1 agreement" is then the share of images whose predicted label set (at the
run's thresholds) is the same, and accuracy is exact-match (subset) accuracy. Whatever misses its
bar gets status "warning" and a reason: it is reported, never offered as fine. When no validation image is
readable (dataset moved or deleted), generated images are used instead and the report says so.

How the files are made (torch 2.15, onnx 1.23, onnxruntime 1.32, onnxscript 0.7):

- ONNX: `torch.onnx.export(..., dynamo=True)`, the torch.export-based exporter that is PyTorch's default since
  2.9 and needs `onnxscript`. The TorchScript-based exporter (`dynamo=False`) raises a DeprecationWarning in
  torch 2.15, so it is not used. The batch axis is dynamic (`torch.export.Dim`), the rest is fixed to the run's
  input size; one self-contained file (no external data). Input "input" (N, 3, H, W) float32, output "logits".
- int8: static QDQ quantization (`classifier.model_io.quantize_onnx_static`: int8 weights per channel, uint8
  activations with ranges calibrated on up to `CALIBRATION_IMAGES` of the run's training images, preprocessed
  exactly like evaluation), which runs on ONNX Runtime's integer kernels (AVX-512 VNNI where the CPU has it) at
  1.5-2.5x the float model's images/s here. Dynamic quantization (`quantize_dynamic`: int8 weights, activations
  quantized at run time, 3-4x *slower* than float on this CPU) is built beside it for comparison and is the
  file shipped only when static quantization fails or misses its bar, with the reason in the report.
- TorchScript: `torch.jit.trace` + `torch.jit.save`. Torch 2.15 marks TorchScript deprecated (FutureWarning,
  silenced here); prefer ONNX where the target allows it.

>>> report = export_run("runs/r1", "onnx", "exports/r1-onnx.zip", quantize="int8")  # doctest: +SKIP
>>> report.status, report.checks[0].top1_agreement, report.checks[1].accuracy  # doctest: +SKIP
('ok', 1.0, 0.94)
"""

from __future__ import annotations

import copy
import io
import json
import os
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from classifier import rundir
from classifier.data.images import load_image
from classifier.data.loader import draft_size
from classifier.errors import ClassifierError
from classifier.io import atomic_write_bytes
from classifier.model_io import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    export_torchscript,
    load_torchscript,
    onnx_forward,
    onnx_session,
    quantize_onnx_int8,
    quantize_onnx_static,
)
from classifier.predict import LoadedRun, load_run
from classifier.task import MULTI, probabilities

FORMATS = ("onnx", "torchscript")
QUANTIZE = ("int8",)
MODEL_FILES = {("onnx", None): "model.onnx", ("onnx", "int8"): "model.int8.onnx", ("torchscript", None): "model.pt"}
SNIPPET_FILES = {"onnx": "predict_onnx.py", "torchscript": "predict_torchscript.py"}

FLOAT_MIN_AGREEMENT = 1.0  # float exports must give the same top-1 class on every image
FLOAT_MAX_PROB_DIFF = 1e-3  # ... and no probability may move by more than this
INT8_MAX_ACCURACY_DROP = 0.02  # int8: accuracy against the labels may fall by at most 2 points, or one image
INT8_MIN_AGREEMENT = 0.95  # int8 without labels (generated inputs): top-1 agreement with PyTorch
# Every validation image up to this many (about 600 MB of 224 px inputs), so the accuracy shown is measured on the
# same images as the run's headline; a 64-image sample gave 96.9 % beside a headline of 96.1 % on 153 images.
MAX_PARITY_IMAGES = 1000
CALIBRATION_IMAGES = 64  # training images for static int8 ranges
CALIBRATION_BATCH = 8
SPEED_BATCH = 16  # images per timed call (the first of the parity images)
N_GENERATED = 16


@dataclass
class Check:
    """One exported model against the PyTorch model on the same inputs."""

    name: str  # "ONNX float32", "ONNX int8", "TorchScript"
    file: str
    size_mb: float
    top1_agreement: float  # share of images where the export's top-1 class equals PyTorch's
    max_prob_diff: float  # largest |p_export - p_pytorch| over all images and classes
    accuracy: float | None = None  # against the labels; None on generated inputs
    images_per_s: float | None = None
    status: str = "ok"  # ok | warning
    reason: str = ""
    method: str = ""  # how an int8 file was made (static QDQ with its calibration, or dynamic)


@dataclass
class ExportReport:
    """What `export_run` made and how it compares with the PyTorch model. `to_dict()` is what the CLI prints."""

    run_dir: str
    format: str
    quantize: str | None
    out: str
    kind: str  # "bundle" (a .zip) or "model" (the model file alone)
    inputs: str  # "validation images" or "generated inputs"
    n_images: int
    pytorch_accuracy: float | None
    pytorch_images_per_s: float | None
    speed_batch: int
    threads: int
    headline_accuracy: float | None = None  # the run's metrics.json accuracy (when checked on all its val images)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "warning" if any(c.status != "ok" for c in self.checks) else "ok"

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.reason}" for c in self.checks if c.status != "ok"]

    @property
    def check(self) -> Check:
        """The check of the model that was asked for (the int8 one when quantizing)."""
        return self.checks[-1]

    def speed_ratio(self, name: str | None = None) -> float | None:
        """Images/s of the named export (default: the one asked for) over PyTorch's, measured side by side."""
        c = self.check if name is None else next(c for c in self.checks if c.name == name)
        if not c.images_per_s or not self.pytorch_images_per_s:
            return None
        return c.images_per_s / self.pytorch_images_per_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"], d["reasons"] = self.status, self.reasons
        d["speed_ratio"] = _round(self.speed_ratio())
        return d


@dataclass
class ParityInputs:
    x: torch.Tensor  # (n, 3, H, W), already through the run's evaluation transform
    labels: np.ndarray | None  # class indices (multi-label: 0/1 rows), None for generated inputs
    source: str
    note: str
    all_validation: bool = False  # every validation image: the images the run's headline metrics are measured on


def parity_inputs(run: LoadedRun, max_images: int = MAX_PARITY_IMAGES) -> ParityInputs:
    """Up to `max_images` validation images of the run (split.csv, relative to the dataset root), taken in turn
    from each class (a multi-label image by its first label) and run through the run's evaluation transform.
    Unreadable or moved images are skipped; when none is readable, generated images go through the same transform
    instead and the note says so."""
    xs, ys, skipped, rows, root = _split_images(run, "val", max_images)
    if xs:
        note = f"{len(xs)} of the run's {len(rows)} validation images"
        if skipped:
            note += f" ({skipped} unreadable or missing under {root} were skipped)"
        return ParityInputs(torch.stack(xs), np.array(ys), "validation images", note, len(xs) == len(rows))
    why = (
        f"none of its {len(rows)} validation images is readable under {root}" if rows else "it has no validation split"
    )
    return ParityInputs(
        _generated(run, min(N_GENERATED, max_images)),
        None,
        "generated inputs",
        f"{why}; compared on {min(N_GENERATED, max_images)} generated images instead, so top-1 agreement and "
        "probabilities are checked but accuracy is not",
    )


def calibration_inputs(run: LoadedRun, max_images: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to `max_images` training images of the run through its evaluation transform (classes in turn): what
    static int8 quantization calibrates activation ranges on; empty when none is readable."""
    xs = _split_images(run, "train", max_images)[0]
    return torch.stack(xs).numpy() if xs else np.zeros((0, 3, 1, 1), np.float32)


def _split_images(run: LoadedRun, split: str, max_images: int):
    """(images, targets, skipped, split rows, dataset root) of one split of the run, classes interleaved: a
    multi-label image goes by its first label and its target is the 0/1 vector of its labels."""
    root = Path(run.config.get("dataset", {}).get("root", ""))
    names = list(run.class_names)
    rows = rundir.read_split(run.run_dir, split)
    by_class: dict[str, list[tuple[str, Any]]] = {}
    for r in rows:
        labels = r["labels"] if "labels" in r else [r.get("label")]
        if all(n in names for n in labels):
            target = [int(c in labels) for c in names] if run.task == MULTI else names.index(labels[0])
            by_class.setdefault(labels[0] if labels else "", []).append((r["path"], target))
    queue = _interleave(list(by_class.items()))
    draft = (draft_size(run.config["data_config"]),) * 2
    xs, ys, skipped = [], [], 0
    for _, (rel, target) in queue:
        if len(xs) >= max_images:
            break
        try:
            xs.append(run.transform(load_image(root / rel, draft_size=draft)))
            ys.append(target)
        except ClassifierError:
            skipped += 1
    return xs, ys, skipped, rows, root


def _interleave(groups: list[tuple[str, list[Any]]]) -> list[tuple[str, Any]]:
    """Round-robin over classes, so a capped sample still covers every class."""
    out = []
    for i in range(max((len(paths) for _, paths in groups), default=0)):
        out += [(label, paths[i]) for label, paths in groups if i < len(paths)]
    return out


def _generated(run: LoadedRun, n: int) -> torch.Tensor:
    """Smooth random colour images (blocky noise, upsampled), larger than the input so resize and crop both act."""
    rng = np.random.default_rng(0)
    side = int(run.config["data_config"]["input_size"][-1] * 1.3)
    images = [
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side + 7), Image.BILINEAR)
        for _ in range(n)
    ]
    return torch.stack([run.transform(im) for im in images])


# ------------------------------------------------------------------------------------------- parity, speed


def decide(probs: np.ndarray, thresholds: Any = None) -> np.ndarray:
    """What a model answers per image: its top class, or (with `thresholds`, a multi-label run) its 0/1 label row."""
    return probs.argmax(1) if thresholds is None else (probs >= np.asarray(thresholds)[None, :]).astype(np.int64)


def _agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a == b if a.ndim == 1 else (a == b).all(axis=1)


def compare(
    reference: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray | None,
    *,
    name: str,
    file: str,
    size_mb: float,
    thresholds: Any = None,
) -> Check:
    """Top-1 agreement (multi-label: the same label set), largest probability difference and accuracy (multi-label:
    exact match) of `probs` against `reference`."""
    agree = float(np.mean(_agree(decide(reference, thresholds), decide(probs, thresholds))))
    diff = float(np.abs(reference - probs).max())
    acc = None if labels is None else float(np.mean(_agree(decide(probs, thresholds), labels)))
    return Check(name, file, round(size_mb, 3), agree, diff, acc)


def judge(check: Check, pytorch_accuracy: float | None, quantized: bool, n_images: int = 0) -> Check:
    """Set `status`/`reason` from the thresholds at the top of this module.

    An int8 model may lose `INT8_MAX_ACCURACY_DROP` of accuracy, or one of the `n_images` where that is more: on
    a small validation set a single changed answer is more than 2 points and says little on its own.
    """
    problems = []
    if not quantized:
        if check.top1_agreement < FLOAT_MIN_AGREEMENT:
            problems.append(f"top-1 class (label set) differs from PyTorch on {1 - check.top1_agreement:.1%} of images")
        if check.max_prob_diff > FLOAT_MAX_PROB_DIFF:
            problems.append(f"a probability differs by {check.max_prob_diff:.2g} (allowed {FLOAT_MAX_PROB_DIFF:g})")
    elif check.accuracy is not None and pytorch_accuracy is not None:
        allowed = max(INT8_MAX_ACCURACY_DROP, 1.0 / n_images if n_images else 0.0)
        if pytorch_accuracy - check.accuracy > allowed + 1e-9:
            problems.append(
                f"accuracy falls from {pytorch_accuracy:.1%} to {check.accuracy:.1%} "
                f"(more than the {allowed:.1%} allowed: 2 points or one image of {n_images})"
            )
    elif check.top1_agreement < INT8_MIN_AGREEMENT:
        problems.append(
            f"top-1 agreement with PyTorch is {check.top1_agreement:.1%} (below {INT8_MIN_AGREEMENT:.0%}); "
            "no labelled images to measure accuracy"
        )
    check.status = "warning" if problems else "ok"
    check.reason = "; ".join(problems)
    return check


def throughput(fns: dict[str, Callable[[], Any]], n_images: int, seconds: float = 2.0, min_reps: int = 2) -> dict:
    """Images/s of each function, timed side by side: one warm-up call each, then rounds of one call each, in
    alternating order (so neither always runs right after the other), for `seconds`; the median call counts."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    end = time.perf_counter() + seconds
    reps = 0
    while reps < min_reps or time.perf_counter() < end:
        for k, f in list(fns.items())[:: 1 if reps % 2 == 0 else -1]:
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        reps += 1
    return {k: n_images / statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ export


@dataclass
class _Parity:
    """What every candidate file is checked against: the PyTorch model's probabilities on the same inputs."""

    run: LoadedRun
    inputs: ParityInputs
    ref: np.ndarray  # PyTorch probabilities
    pytorch_acc: float | None
    threads: int

    def check(self, name: str, path: Path, forward: Callable[[torch.Tensor], np.ndarray], quantized: bool) -> Check:
        x, run = self.inputs.x, self.run
        probs = probabilities(forward(x), run.task)
        check = compare(self.ref, probs, self.inputs.labels, name=name, file=path.name, size_mb=_mb(path),
                        thresholds=run.thresholds)  # fmt: skip
        _check_batch_one(check, probs, probabilities(forward(x[:1]), run.task), run.thresholds)
        return judge(check, self.pytorch_acc, quantized, len(x))


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    quantize: str | None = None,
    max_images: int = MAX_PARITY_IMAGES,
    bench_seconds: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a run, check it against PyTorch, measure speed, and write `out`.

    `out` ending in `.zip` gets the download bundle (model, config.json, MODEL_CARD.md, the predict snippet);
    ending in `.onnx` / `.pt`, the model file alone. A flagged export is still written; its report says why
    (`report.status == "warning"`, `report.reasons`).
    """
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    fmt, out_path, kind = _check_args(fmt, quantize, out)
    run = load_run(run_dir, device="cpu")
    run.model.eval()
    inputs = parity_inputs(run, max_images)
    with torch.no_grad():
        ref = probabilities(run.model(inputs.x).numpy(), run.task)
    pytorch_acc = None if inputs.labels is None else float(np.mean(_agree(decide(ref, run.thresholds), inputs.labels)))
    parity = _Parity(run, inputs, ref, pytorch_acc, torch.get_num_threads())
    xs = inputs.x[:SPEED_BATCH]
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        make = _onnx_candidates if fmt == "onnx" else _torchscript_candidates
        checks, timed, notes = make(parity, Path(tmp), quantize, xs, say)
        say("Measuring speed…")
        speed = throughput({**_pytorch_timed(run.model, xs), **timed}, len(xs), bench_seconds)
        pytorch_speed, layout_note = _best_pytorch(speed)
        notes = [f"inputs: {inputs.note}", *notes, *_speed_notes(checks, speed, len(xs), parity.threads, quantize),
                 layout_note]  # fmt: skip
        report = ExportReport(
            run_dir=str(run.run_dir),
            format=fmt,
            quantize=quantize,
            out=str(out_path) if out_path else "",
            kind=kind,
            inputs=inputs.source,
            n_images=len(inputs.x),
            pytorch_accuracy=_round(pytorch_acc),
            pytorch_images_per_s=_round(pytorch_speed, 2),
            speed_batch=len(xs),
            threads=parity.threads,
            headline_accuracy=_headline_accuracy(run) if inputs.all_validation else None,
            checks=checks,
            notes=notes,
        )
        report.seconds = round(time.perf_counter() - t_start, 2)
        if out_path is not None:
            model_path = Path(tmp) / checks[-1].file
            data = build_bundle(run, model_path, report, out_path.stem) if kind == "bundle" else model_path.read_bytes()
            atomic_write_bytes(out_path, data)
    return report


def _onnx_candidates(parity: _Parity, tmp: Path, quantize: str | None, xs: torch.Tensor, say: Callable):
    """The float ONNX file (and with int8 its static and dynamic versions), each checked; their timed forward
    passes. The int8 file shipped comes last (see `_int8_candidates`)."""
    say("Exporting to ONNX…")
    float_path = export_onnx(parity.run.model, parity.inputs.x, tmp / MODEL_FILES[("onnx", None)])
    checks, timed, xs_np = [], {}, xs.numpy()

    def check(name: str, path: Path, quantized: bool, method: str = "") -> Check:
        say(f"Checking {name} against PyTorch…")
        sess = onnx_session(path, parity.threads)
        c = parity.check(name, path, lambda x, s=sess: onnx_forward(s, x.numpy()), quantized)
        c.method = method
        timed[name] = lambda s=sess: onnx_forward(s, xs_np)
        return c

    checks.append(check("ONNX float32", float_path, False))
    notes: list[str] = []
    if quantize == "int8":
        int8_checks, notes, (old, new) = _int8_candidates(parity, float_path, tmp, check, say)
        checks += int8_checks
        timed[new] = timed.pop(old)
    return checks, timed, notes


def _int8_candidates(parity: _Parity, float_path: Path, tmp: Path, check: Callable, say: Callable):
    """Static int8 (calibrated on the run's training images) and dynamic int8, each checked. The static one ships
    ("ONNX int8", last) unless it failed or missed its bar while the dynamic one passed: then the dynamic one
    ships and a note says why."""
    calib = calibration_inputs(parity.run)
    if len(calib) > CALIBRATION_BATCH:  # equal batches for the calibrators (model_io.quantize_onnx_static)
        calib = calib[: len(calib) // CALIBRATION_BATCH * CALIBRATION_BATCH]
    calib_note = f"{len(calib)} training images"
    if len(calib) == 0:  # no readable training image: calibrate on the check's own inputs, and say so
        calib, calib_note = (
            parity.inputs.x.numpy(),
            f"{len(parity.inputs.x)} {parity.inputs.source} (no training image)",
        )
    path = tmp / MODEL_FILES[("onnx", "int8")]
    say("Quantizing to int8 (static, calibrating)…")
    static_method = f"static QDQ, per-channel int8 weights, uint8 activations, percentile calibration on {calib_note}"
    static, static_error = None, ""
    try:
        quantize_onnx_static(float_path, tmp / "static.int8.onnx", calib, batch=CALIBRATION_BATCH)
    except ClassifierError as e:
        static_error = str(e)
    else:
        static = check("ONNX int8 static", tmp / "static.int8.onnx", True, static_method)
    say("Quantizing to int8 (dynamic)…")
    quantize_onnx_int8(float_path, tmp / "dynamic.int8.onnx")
    dynamic = check(
        "ONNX int8 dynamic", tmp / "dynamic.int8.onnx", True, "dynamic: int8 weights, activations at run time"
    )
    if static is not None and (static.status == "ok" or dynamic.status != "ok"):
        shipped, other, note = static, dynamic, f"int8: {static_method}; dynamic int8 shown for comparison"
    else:
        why = static_error or static.reason
        shipped, other, note = dynamic, static, f"int8: static quantization was not used ({why}); dynamic int8 instead"
    os.replace(tmp / shipped.file, path)
    renamed = (shipped.name, "ONNX int8")
    shipped.name, shipped.file = "ONNX int8", path.name
    return [c for c in (other, shipped) if c is not None], [note], renamed


def _torchscript_candidates(parity: _Parity, tmp: Path, quantize: str | None, xs: torch.Tensor, say: Callable):
    """The traced TorchScript file, checked; its timed forward pass."""
    say("Tracing to TorchScript…")
    path = export_torchscript(parity.run.model, parity.inputs.x, tmp / MODEL_FILES[("torchscript", None)])
    say("Checking TorchScript against PyTorch…")
    module = load_torchscript(path)
    check = parity.check("TorchScript", path, lambda x: _torch_forward(module, x), False)
    note = "TorchScript is deprecated in PyTorch 2.15; prefer ONNX where the target allows it"
    return [check], {"TorchScript": lambda: _torch_forward(module, xs)}, [note]


def _speed_notes(checks: list[Check], speed: dict, batch: int, threads: int, quantize: str | None) -> list[str]:
    """Fill each check's speed and round its figures; the notes that explain the speed comparison."""
    for c in checks:
        c.images_per_s = _round(speed[c.name], 2)
        c.top1_agreement, c.max_prob_diff = _round(c.top1_agreement), float(f"{c.max_prob_diff:.3g}")
        c.accuracy = _round(c.accuracy)
    notes = [
        f"speed: batch of {batch}, {threads} threads for PyTorch and ONNX Runtime (CPUExecutionProvider), "
        "timed side by side in one process (ONNX Runtime threads not spin-waiting)"
    ]
    if quantize == "int8" and checks[-1].images_per_s and checks[0].images_per_s:
        ratio = checks[-1].images_per_s / checks[0].images_per_s
        notes.append(
            f"int8 is {checks[0].size_mb / max(checks[-1].size_mb, 1e-9):.1f}x smaller and runs at {ratio:.2f}x "
            f"the float model's speed here ({checks[-1].method.split(',')[0]})"
        )
    return notes


def _check_args(fmt: str, quantize: str | None, out: str | Path | None) -> tuple[str, Path | None, str]:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ClassifierError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ClassifierError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZE)}")
    if quantize and fmt != "onnx":
        raise ClassifierError("int8 quantization is only available for ONNX exports (--format onnx)")
    if out is None:
        return fmt, None, "none"
    out = Path(out)
    suffix = out.suffix.lower()
    want = ".onnx" if fmt == "onnx" else ".pt"
    if suffix == ".zip":
        return fmt, out, "bundle"
    if suffix == want:
        return fmt, out, "model"
    raise ClassifierError(
        f"--out {out}: end it in .zip for the download bundle or in {want} for the {fmt} model file alone"
    )


def _torch_forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


PYTORCH_LAYOUTS = {"PyTorch": torch.contiguous_format, "PyTorch channels_last": torch.channels_last}


def _pytorch_timed(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """PyTorch in both memory layouts, so its side of the comparison is its best: in eager mode on a CPU,
    EfficientNet-Lite0's depthwise convolutions ran 5x faster channels_last (6.4 against 1.2 images/s, batch 16)."""
    out = {}
    for name, layout in PYTORCH_LAYOUTS.items():
        m = model if layout is torch.contiguous_format else copy.deepcopy(model).to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        out[name] = lambda m=m, xl=xl: _torch_forward(m, xl)
    return out


def _best_pytorch(speed: dict[str, float]) -> tuple[float, str]:
    """The faster PyTorch layout's images/s (taken out of `speed`) and a note naming both."""
    timed = {name: speed.pop(name) for name in PYTORCH_LAYOUTS}
    best = max(timed, key=timed.get)
    both = ", ".join(f"{n.removeprefix('PyTorch').strip() or 'contiguous'} {v:.1f}" for n, v in timed.items())
    return timed[best], f"PyTorch: the faster memory layout in inference mode ({both} images/s)"


def _headline_accuracy(run: LoadedRun) -> float | None:
    """The run's own accuracy from metrics.json: exact-match (subset) accuracy for a multi-label run, as checked."""
    metrics = rundir.read_metrics(run.run_dir) or {}
    return _round(metrics.get("subset_accuracy" if run.task == MULTI else "accuracy"))


def _check_batch_one(check: Check, probs: np.ndarray, single: np.ndarray, thresholds: Any = None) -> None:
    """The same image alone must give what it gave inside the batch (the batch axis really is dynamic)."""
    diff = float(np.abs(probs[:1] - single).max())
    if diff > FLOAT_MAX_PROB_DIFF:
        check.max_prob_diff = max(check.max_prob_diff, diff)
        same = _agree(decide(probs[:1], thresholds), decide(single, thresholds))
        check.top1_agreement = min(check.top1_agreement, float(same[0]))


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(float(v), digits)


# ------------------------------------------------------------------------------------------------ bundle


def bundle_config(run: LoadedRun, report: ExportReport, opset: int | None = None) -> dict[str, Any]:
    """config.json of the bundle: classes, preprocessing, how to feed the model, and the parity result."""
    dc = run.config["data_config"]
    check = report.check
    cfg: dict[str, Any] = {
        "format": report.format,
        "quantize": report.quantize,
        "model_file": check.file,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input": "float32 (batch, 3, height, width), batch size free; the output is logits ("
        + (
            "sigmoid per label -> probabilities; a label is predicted at or above its threshold)"
            if run.task == MULTI
            else "softmax -> probabilities)"
        ),
        "task": run.task,
        "class_names": run.class_names,
        **({"thresholds": run.thresholds} if run.task == MULTI else {}),
        "preprocessing": {
            "input_size": list(dc["input_size"]),
            "interpolation": dc["interpolation"],
            "mean": list(dc["mean"]),
            "std": list(dc["std"]),
            "crop_pct": dc["crop_pct"],
            "crop_mode": dc["crop_mode"],
            "grayscale": bool(run.config.get("grayscale", False)),
        },
        "source_run": {
            "run": run.run_dir.name,
            "backbone": run.config.get("backbone"),
            "timm_name": run.config.get("timm_name"),
            "created_at": run.config.get("created_at"),
        },
        "parity": {
            "status": report.status,
            "reasons": report.reasons,
            "inputs": report.inputs,
            "n_images": report.n_images,
            "top1_agreement": check.top1_agreement,
            "max_prob_diff": check.max_prob_diff,
            "accuracy": check.accuracy,
            "pytorch_accuracy": report.pytorch_accuracy,
        },
        "onnx_opset": opset,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(report.format),
    }
    return cfg


def _versions(fmt: str) -> dict[str, str]:
    import platform

    v = {"python": platform.python_version(), "torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        v |= {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    return v


def build_bundle(run: LoadedRun, model_path: str | Path, report: ExportReport, folder: str = "export") -> bytes:
    """The download zip: `folder/` with the model file, config.json, MODEL_CARD.md and the predict snippet."""
    model_path = Path(model_path)
    opset = None
    if report.format == "onnx":
        import onnx

        opsets = onnx.load(str(model_path), load_external_data=False).opset_import
        opset = next((int(o.version) for o in opsets if o.domain in ("", "ai.onnx")), None)
    cfg = bundle_config(run, report, opset)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(model_path, f"{folder}/{report.check.file}")
        zf.writestr(f"{folder}/config.json", json.dumps(cfg, indent=2) + "\n")
        zf.writestr(f"{folder}/MODEL_CARD.md", model_card(run, report))
        zf.writestr(f"{folder}/{SNIPPET_FILES[report.format]}", predict_snippet())
    return buf.getvalue()


def predict_snippet() -> str:
    """The standalone predict script of a bundle: `classifier/bundle_predict.py`, which imports nothing from here."""
    return (Path(__file__).with_name("bundle_predict.py")).read_text(encoding="utf-8")


CARD_METRICS = {  # task -> (metrics.json key, label) in the card's list
    "single-label": (("accuracy", "accuracy"), ("top_k_accuracy", "top-k accuracy"), ("macro_f1", "macro F1"),
                     ("roc_auc_macro", "ROC AUC (macro, one-vs-rest)"), ("ece", "expected calibration error"),
                     ("n_val", "validation images")),
    MULTI: (("map", "mean average precision (mAP)"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1"),
            ("subset_accuracy", "subset accuracy (every label right)"), ("hamming_loss", "Hamming loss"),
            ("label_ranking_ap", "label-ranking average precision"), ("n_val", "validation images")),
}  # fmt: skip
CARD_WORDS = {  # task -> what the card calls things
    "single-label": {"unit": "class", "agreement": "top-1 agreement",
                     "use": "Sorting images into the {n} classes above",
                     "answer": "The model always answers with one of its classes; it cannot say that an image shows "
                               "none of them."},
    MULTI: {"unit": "label", "agreement": "label-set agreement (at the thresholds)",
            "use": "Tagging images with any of the {n} labels above (multi-label: sigmoid per label, a label is "
                   "predicted at or above its threshold in config.json)",
            "answer": "Each label is decided on its own at its threshold; an image can get no label, and labels the "
                      "training set never showed together may be predicted together."},
}  # fmt: skip


def model_card(run: LoadedRun, report: ExportReport) -> str:
    """MODEL_CARD.md: data, training settings, validation metrics, intended use, limitations (parity included);
    its words and metrics are the run's task's (`CARD_WORDS`, `CARD_METRICS`)."""
    metrics = rundir.read_metrics(run.run_dir) or {}
    words = CARD_WORDS[run.task]
    lines = (_card_data(run, report, words) + _card_training(run) + _card_metrics(metrics, CARD_METRICS[run.task],
             words) + _card_use(run, report, metrics, words))  # fmt: skip
    return "\n".join(lines) + "\n"


def _card_data(run: LoadedRun, report: ExportReport, words: dict[str, str]) -> list[str]:
    cfg = run.config
    counts = rundir.split_counts(run.run_dir)
    root = cfg.get("dataset", {}).get("root", "")
    check = report.check
    lines = [
        f"# Model card: {Path(root).name or 'dataset'} classifier ({cfg.get('backbone')}, {check.name})",
        "",
        f"Exported {datetime.now(timezone.utc):%Y-%m-%d} by the image-classifier workbench from run "
        f"`{run.run_dir.name}` (trained {cfg.get('created_at', '?')}).",
        "",
        "## Data",
        "",
        f"- Dataset: `{Path(root).name}` ({cfg.get('dataset', {}).get('layout', '?')})",
        f"- {words['unit'].capitalize()}s ({len(run.class_names)}): {', '.join(run.class_names)}"
        + (" (multi-label: any number per image)" if run.task == MULTI else ""),
    ]
    if counts:
        splits = [s for s in ("train", "val", "test") if any(s in c for c in counts.values())]
        lines += ["", f"| {words['unit']} | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        lines += [f"| {c} | " + " | ".join(str(counts.get(c, {}).get(s, 0)) for s in splits) + " |"
                  for c in run.class_names]  # fmt: skip
    return lines


def _card_training(run: LoadedRun) -> list[str]:
    cfg, train = run.config, run.config.get("train", {})
    dc = cfg["data_config"]
    return [
        "",
        "## Training",
        "",
        f"- Backbone `{cfg.get('backbone')}` (timm architecture `{cfg.get('timm_name')}`), starting weights "
        f"`{cfg.get('weights')}`, mode `{train.get('mode')}`",
        f"- {train.get('epochs')} epochs, batch size {train.get('batch_size')}, "
        f"optimizer {train.get('optimizer')}, learning rate {train.get('lr')}, "
        f"scheduler {train.get('scheduler')}, weight decay {train.get('weight_decay')}",
        f"- Augmentation `{train.get('augment')}`, label smoothing {train.get('label_smoothing')}, "
        f"mixup {train.get('mixup')}, cutmix {train.get('cutmix')}, imbalance handling `{train.get('imbalance')}`, "
        f"seed {train.get('seed')}",
        f"- Input {dc['input_size'][-1]} px: resize the shorter side to floor({dc['input_size'][-1]} / "
        f"{dc['crop_pct']}) ({dc['interpolation']}), centre crop, normalise with mean {list(dc['mean'])} and "
        f"std {list(dc['std'])}" + (", grayscale" if cfg.get("grayscale") else ""),
        "",
        "## Validation metrics (PyTorch model, the run's validation split)",
        "",
    ]


def _card_metrics(metrics: dict[str, Any], keys: tuple, words: dict[str, str]) -> list[str]:
    lines: list[str] = []
    if metrics:
        for key, label in keys:
            if metrics.get(key) is not None:
                value = metrics[key]
                label = label.replace("top-k", f"top-{metrics.get('top_k', '?')}")
                lines.append(f"- {label}: {value:.4g}" if isinstance(value, float) else f"- {label}: {value}")
        rows = metrics.get("per_class") or metrics.get("per_label") or []
        if rows:
            lines += ["", f"| {words['unit']} | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {p['name']} | {p['precision']:.3f} | {p['recall']:.3f} | {p['f1']:.3f} | {p['support']} |"
                      for p in rows]  # fmt: skip
    else:
        lines.append("- metrics.json is missing from the run.")
    return lines


def _card_use(run: LoadedRun, report: ExportReport, metrics: dict[str, Any], words: dict[str, str]) -> list[str]:
    check = report.check
    lines: list[str] = []
    lines += [
        "",
        "## Export check",
        "",
        f"Compared with the PyTorch model on {report.n_images} {report.inputs}: {words['agreement']} "
        f"{check.top1_agreement:.1%}, largest probability difference {check.max_prob_diff:.2g}"
        + (
            f", accuracy {check.accuracy:.1%} (PyTorch {report.pytorch_accuracy:.1%})"
            if check.accuracy is not None and report.pytorch_accuracy is not None
            else ""
        )  # fmt: skip
        + f". Status: **{report.status}**"
        + (f" — {'; '.join(report.reasons)}" if report.reasons else "")
        + ".",
        "",
        "## Intended use",
        "",
        words["use"].format(n=len(run.class_names)) + ", for images like those of the training set "
        "(same kind of camera, framing and subjects). Use the preprocessing in config.json "
        f"(`{SNIPPET_FILES[report.format]}` implements it).",
        "",
        "## Limitations",
        "",
        f"- {words['answer']}",
        f"- The metrics come from {metrics.get('n_val', '?')} validation images of one dataset; expect lower accuracy "
        "on images that look different (other cameras, lighting, backgrounds).",
        "- Probabilities can be over- or under-confident (see the calibration error above).",
        f"- This file was checked against the PyTorch model on {report.n_images} {report.inputs} only "
        f"(status {report.status}; see Export check).",
    ]
    if report.status != "ok":
        lines.append(f"- **The export check flagged this file: {'; '.join(report.reasons)}.**")
    if report.inputs != "validation images":
        lines.append("- The export was checked on generated images only: the validation images were not readable.")
    if report.quantize == "int8":
        lines.append("- int8 weights: probabilities differ slightly from the float model (see the export check).")
    return lines


def default_export_path(run_dir: str | Path, fmt: str, quantize: str | None = None) -> Path:
    """Where the app keeps a run's export bundle: `<workspace>/exports/<run name>/<format>[-int8].zip`."""
    from classifier.workspace import workspace_dir

    name = f"{fmt}-{quantize}" if quantize else fmt
    return workspace_dir() / "exports" / Path(run_dir).name / f"{name}.zip"
