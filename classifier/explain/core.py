"""`attribute`: validate, prepare the input exactly as validation saw it, predict and resolve the target, run the
registered method (`classifier.explain.methods`) and place its map on the original image. The conventions every
method follows are in the package docstring (`classifier.explain`)."""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from classifier.data.images import load_image
from classifier.data.transforms import eval_transform
from classifier.errors import ClassifierError
from classifier.explain.baselines import BASELINES
from classifier.explain.geometry import crop_box, place_map
from classifier.explain.methods import AttributionMethod, Inputs, MethodOutput, Options, get_method
from classifier.task import MULTI, SINGLE, task_of


@dataclass
class Attribution:
    """One attribution map and how it was made."""

    map: np.ndarray  # float32 (H, W) at the original image's (EXIF-upright) height and width; 0 outside crop_box
    method: str
    target: int
    target_name: str | None
    seconds: float
    delta: float | None  # |convergence delta| averaged (integrated gradients, GradientSHAP); None otherwise
    extra: dict[str, Any] = field(default_factory=dict)  # layer, crop_box, logit, probability, baseline, ...


def attribute(
    model_or_run: Any,
    image: Image.Image | str | Path,
    method: str,
    target: int | str | None = None,
    *,
    data_config: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    baseline: str | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 16,
    nt_samples: int = 8,
    smoothgrad_base: str = "saliency",
    occlusion_window: int | None = None,
    perturbations_per_eval: int = 16,
    reduce: str = "abs",
    layer: str | nn.Module | None = None,
    shift_average: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Attribution:
    """Attribution map of `image` for `target` (None: the predicted class) with `method` (a name in `METHODS`).

    `model_or_run` is a `LoadedRun` (its model, eval transform, data config, class names and backbone family
    are used) or a bare `nn.Module`, which then needs `data_config` (and optionally `class_names`). `image` is
    an upright RGB PIL image or a path (decoded with `load_image`, EXIF orientation applied).

    Method options: `n_steps` and `internal_batch_size` (integrated gradients; the batch also bounds SmoothGrad's
    noisy batches), `nt_samples` (SmoothGrad noisy copies, stdev 0.15 x the input's value range; GradientSHAP
    samples), `smoothgrad_base` ("saliency" or "ig"), `occlusion_window` (pixels at input resolution; default
    input size / 7, stride half the window) with `perturbations_per_eval` windows per forward pass, `baseline`
    (see the package docstring; None: the method's `default_baseline`), `reduce` ("abs" or "sum" over channels,
    gradient methods), `layer` (Grad-CAM layer by qualified name or module; default per family, see
    `gradcam_layer`), `shift_average` (Grad-CAM: the mean map of four copies of the input shifted by a quarter of
    the layer's cell, which resolves twice as finely; False: one plain pass).

    `progress(done, total)` is called after every forward pass of the model (Captum batches them), `total`
    being the passes the method needs; it ends with `(total, total)`.

    Raises ClassifierError for an unknown target name or a model Grad-CAM cannot handle, ImageError for an
    unreadable image, ValueError for a bad option.
    """
    t0 = time.perf_counter()
    chosen = get_method(method)
    baseline = _baseline_name(baseline, chosen)
    options = Options(
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        nt_samples=nt_samples,
        smoothgrad_base=smoothgrad_base,
        occlusion_window=occlusion_window,
        perturbations_per_eval=perturbations_per_eval,
        reduce=reduce,
        layer=layer,
        seed=seed,
        shift_average=shift_average,
    )
    options.check()
    parts = _model_parts(model_or_run, data_config, class_names)
    img = _as_image(image)
    box = crop_box(img.size, parts.data_config)
    x = _input_tensor(parts.model, parts.transform(img))
    extra: dict[str, Any] = {"crop_box": box, "input_size": tuple(x.shape[-2:])}
    out, t = _run(chosen, parts, x, target, options, baseline, extra, progress)
    names = parts.names
    return Attribution(
        map=place_map(out.map, box, img.size),
        method=method,
        target=t,
        target_name=names[t] if names is not None and t < len(names) else None,
        seconds=time.perf_counter() - t0,
        delta=out.delta,
        extra=extra,
    )


def cost_order(methods: Sequence[str], input_hw: tuple[int, int], **options: Any) -> list[str]:
    """`methods` fastest first by `AttributionMethod.cost` (images through the model) with `attribute`'s options
    (its defaults for any not given); equal costs keep their order. The Explain page draws maps in this order."""
    defaults = inspect.signature(attribute).parameters
    chosen = Options(**{f.name: options.get(f.name, defaults[f.name].default) for f in fields(Options)})
    cost = {m: get_method(m).cost(chosen, input_hw) for m in methods}
    return sorted(methods, key=cost.__getitem__)


def _run(
    method: AttributionMethod,
    parts: _ModelParts,
    x: torch.Tensor,
    target: int | str | None,
    options: Options,
    baseline: str | None,
    extra: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> tuple[MethodOutput, int]:
    """Predict, resolve the target and run `method` on the prepared input `x` in attribution mode, counting the
    forward passes for `progress`. Returns the method's output and the target index; fills `extra`."""
    counted = _Counted(parts.model, progress)
    counted.total = 1 + method.forward_passes(options, (int(x.shape[-2]), int(x.shape[-1])))  # 1: the prediction
    with _attribution_mode(parts.model) as handles:
        t = _predict(counted, x, target, parts.names, extra, parts.task)
        inputs = Inputs(
            model=counted,
            module=parts.model,
            x=x.detach().clone().requires_grad_(method.input_grad),
            target=t,
            options=options,
            baseline=baseline,
            data_config=parts.data_config,
            backbone=parts.backbone,
            generator=torch.Generator().manual_seed(options.seed),
            extra=extra,
            handles=handles,
        )
        out = method.compute(inputs)
    extra["evaluations"] = counted.calls
    if progress is not None:
        progress(counted.total, counted.total)
    return out, t


def resolve_target(target: int | str | None, class_names: Sequence[str] | None, n_out: int, pred: int) -> int:
    """The class index to explain: `pred` for None, a class name looked up in `class_names`, or an index (a digit
    string too, as the CLI passes it); ClassifierError for an unknown name or an index out of range."""
    if target is None:
        return pred
    if isinstance(target, str):
        names = list(class_names or [])
        if target in names:
            return names.index(target)
        if target.strip().lstrip("-").isdigit():
            target = int(target)
        else:
            known = f"; classes: {', '.join(names)}" if names else " (the model has no class names)"
            raise ClassifierError(f"unknown target class {target!r}{known}")
    t = int(target)
    if not 0 <= t < n_out:
        raise ClassifierError(f"target class index {t} is out of range: the model has {n_out} classes")
    return t


def _baseline_name(baseline: str | None, method: AttributionMethod) -> str | None:
    """The caller's baseline, else the method's default (None when it takes none); ValueError for an unknown one."""
    kind = method.default_baseline if baseline is None else baseline
    if kind is not None and kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
    return kind


class _ModelParts(NamedTuple):
    model: nn.Module
    transform: Callable[[Image.Image], torch.Tensor]
    data_config: dict[str, Any]
    names: list[str] | None
    backbone: str | None
    task: str = SINGLE  # a multi-label run's target is one of its labels, its probability that label's sigmoid


def _model_parts(
    model_or_run: Any, data_config: dict[str, Any] | None, class_names: Sequence[str] | None
) -> _ModelParts:
    """What `attribute` needs from a LoadedRun or a bare model; the caller's data_config / class_names win."""
    if isinstance(model_or_run, nn.Module):
        if data_config is None:
            raise ValueError("a bare model needs data_config (input_size, interpolation, mean, std, crop_pct)")
        names = list(class_names) if class_names is not None else None
        return _ModelParts(model_or_run, eval_transform(data_config), data_config, names, None)
    run = model_or_run
    run_dc = run.config["data_config"]
    data_config = data_config or run_dc
    transform = run.transform if data_config is run_dc else eval_transform(data_config)
    names = list(class_names) if class_names is not None else run.class_names
    backbone = run.config.get("backbone") or run.config.get("timm_name")
    return _ModelParts(run.model, transform, data_config, names, backbone, task_of(run.config))


def _as_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return load_image(image)


def _input_tensor(model: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """The transformed image as a batch of one on the model's device and dtype (channels-last when the model is)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = tensor[None].to(device=device, dtype=dtype)
    if (
        device.type == "cuda"
        and param is not None
        and param.ndim == 4
        and param.is_contiguous(memory_format=torch.channels_last)
    ):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class _Counted(nn.Module):
    """Wraps the model (without changing it) to count forward passes and report them as progress."""

    def __init__(self, model: nn.Module, progress: Callable[[int, int], None] | None):
        super().__init__()
        self.model = model
        self.progress = progress
        self.calls = 0
        self.total = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        self.calls += 1
        if self.progress is not None:
            self.progress(min(self.calls, self.total - 1), self.total)
        return out


@contextmanager
def _attribution_mode(model: nn.Module) -> Iterator[list[Any]]:
    """Eval mode, gradients on even inside a caller's `no_grad`/`inference_mode`, parameters not requiring grad
    (only the input does). Yields the list a method appends its hooks to; afterwards the hooks are removed and
    the model's mode and parameters' flags are restored, whatever happened."""
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    handles: list[Any] = []
    try:
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(backward hooks on ReLU|required_grads has been set).*")
            yield handles
    finally:
        for h in handles:
            h.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _predict(
    counted: _Counted,
    x: torch.Tensor,
    target: int | str | None,
    names: list[str] | None,
    extra: dict[str, Any],
    task: str = SINGLE,
) -> int:
    """One forward pass: the target index (None: the predicted class, for a multi-label run its most probable label),
    with its logit and probability (softmax, or that label's sigmoid) in `extra`."""
    with torch.no_grad():
        logits = counted(x)
    pred = int(logits[0].argmax())
    t = resolve_target(target, names, int(logits.shape[-1]), pred)
    probs = torch.sigmoid(logits.float())[0] if task == MULTI else torch.softmax(logits.float(), -1)[0]
    extra["logit"] = float(logits[0, t])
    extra["probability"] = float(probs[t])
    extra["predicted"] = pred
    return t
