"""ONNX and TorchScript files: write them, quantize ONNX to int8 (static QDQ, or dynamic), open them for inference.

Used by `classifier.export` (the checked, downloadable export) and `classifier.predict` (the ONNX Runtime
backend, which exports a run once into the workspace cache). Formats and tool versions are explained in
`classifier.export`'s docstring.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.errors import ModelError

INPUT_NAME = "input"  # (N, 3, H, W) float32, normalised like the run's evaluation transform
OUTPUT_NAME = "logits"  # (N, num_classes) float32


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write `model` as ONNX with a dynamic batch axis (torch.export-based exporter, `dynamo=True`)."""
    path = Path(path)
    # The example batch must not have size 1: torch.export would specialise the batch axis to a constant.
    example = example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    except ImportError as e:  # onnxscript / onnx missing
        raise ModelError(
            f"ONNX export needs the onnx and onnxscript packages ({e}); pip install -r requirements.txt"
        ) from e
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs the one line
        raise ModelError(f"could not export the model to ONNX: {type(e).__name__}: {first_line(e)}") from e
    import onnx

    onnx.checker.check_model(str(path))
    return path


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Write `model` traced to TorchScript (`torch.jit.trace` + `torch.jit.save`; deprecated in torch 2.15)."""
    path = Path(path)
    try:
        with torch.no_grad(), _no_jit_deprecation():
            traced = torch.jit.trace(model.eval(), example[:2], check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not trace the model to TorchScript: {type(e).__name__}: {first_line(e)}") from e
    return path


def _plain_copy(src: str | Path, dst: Path) -> None:
    """`src` without the exporter's shape annotations of weights: onnxruntime < 1.32 quantizes a Gemm by transposing
    its weight under the same name and then fails shape inference on that stale annotation."""
    import onnx

    model = onnx.load(str(src))
    weights = {t.name for t in model.graph.initializer}
    keep = [v for v in model.graph.value_info if v.name not in weights]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.save(model, str(dst))


def quantize_onnx_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization (weights int8, activations at run time) of the ONNX model at `src`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    plain, pre = dst.with_name(dst.stem + ".plain.onnx"), dst.with_name(dst.stem + ".pre.onnx")
    try:
        _plain_copy(src, plain)
        quant_pre_process(str(plain), str(pre), skip_symbolic_shape=True)  # ONNX Runtime's recommended step
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not quantize the ONNX model: {type(e).__name__}: {first_line(e)}") from e
    finally:
        plain.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    return dst


CALIBRATION_METHODS = ("percentile", "minmax", "entropy")


def quantize_onnx_static(
    src: str | Path, dst: str | Path, calibration: np.ndarray, method: str = "percentile", batch: int = 8
) -> Path:
    """Static int8 quantization in QDQ form of the ONNX model at `src`: weights int8 per output channel, activations
    uint8 with ranges calibrated on `calibration` (N, 3, H, W float32 images, preprocessed exactly like evaluation).

    ONNX Runtime fuses the QDQ pairs into its integer kernels (QLinearConv), which use AVX-512 VNNI / AVX-VNNI where
    the CPU has them; dynamic quantization quantizes activations at run time and falls back to slower ConvInteger.
    Calibration: `percentile` (99.999th percentile of each activation's histogram) clips the rare outliers that
    make plain `minmax` ranges coarse; `entropy` picks the range that keeps the histogram's information. Measured
    on EfficientNet-Lite0's ImageNet head (1000 classes, 153 hymenoptera photos, 64 calibration images), percentile
    agreed with float on 97.4 % of top-1 predictions; keeping the first convolution and the classifier in float
    changed nothing (97.4 %) and ran slower, so every Conv and Gemm is quantized (docs/benchmarks.md).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ModelError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    if len(calibration) == 0:
        raise ModelError("static int8 quantization needs calibration images; none were given")
    x = np.ascontiguousarray(calibration, dtype=np.float32)
    if len(x) > batch:  # the calibrators stack each batch's outputs, so every batch must have the same size
        x = x[: len(x) // batch * batch]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([x[i : i + batch] for i in range(0, len(x), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {INPUT_NAME: b}

    dst = Path(dst)
    plain, pre = dst.with_name(dst.stem + ".plain.onnx"), dst.with_name(dst.stem + ".pre.onnx")
    calib_method = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy}[method]  # fmt: skip
    try:
        _plain_copy(src, plain)
        quant_pre_process(str(plain), str(pre), skip_symbolic_shape=True)  # folds batch norms into convolutions
        with _quiet_stdout():  # the calibrators print progress lines
            quantize_static(str(pre), str(dst), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calib_method)  # fmt: skip
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not quantize the ONNX model (static int8): {type(e).__name__}: {first_line(e)}") from e
    finally:
        plain.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
        for leftover in dst.parent.glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)
    return dst


class _quiet_stdout(contextlib.redirect_stdout):
    def __init__(self) -> None:
        super().__init__(io.StringIO())


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session using `threads` intra-op threads (default: as many as torch uses).

    Its threads do not spin-wait after a run: spinning ones would take the cores from the PyTorch calls timed
    right after (measured: PyTorch ~20% slower on 2 cores), which would flatter ONNX Runtime in the comparison.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with _no_jit_deprecation():
        return torch.jit.load(str(path), map_location="cpu").eval()


class _no_jit_deprecation(warnings.catch_warnings):
    def __enter__(self) -> Any:
        out = super().__enter__()
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        return out


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def onnx_forward(session: Any, x: np.ndarray) -> np.ndarray:
    """Logits of a float32 batch from an ONNX Runtime session of an exported run."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32, copy=False)})[0]


def cached_onnx_session(model: nn.Module, weights: Path, input_size: int, folder: Path) -> Any:
    """An ONNX Runtime session for `model`, exported once per weights file (path, size, mtime) into `folder`.

    Concurrent callers each write their own temp file and `os.replace` it, so a reader never opens half a file.
    """
    st = weights.stat()
    key = hashlib.sha1(f"{weights.resolve()}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.onnx"
    if not path.is_file():
        tmp = folder / f".{key}-{os.getpid()}.onnx"
        export_onnx(model.cpu().eval(), torch.zeros(2, 3, input_size, input_size), tmp)
        os.replace(tmp, path)
    return onnx_session(path)
