"""Attribution maps for a trained run (or any image classifier), computed with Captum.

    >>> run = load_run("runs/r1")  # doctest: +SKIP
    >>> a = attribute(run, "ant.jpg", "gradcam")  # doctest: +SKIP
    >>> a.map.shape  # the original image's (EXIF-upright) height and width  # doctest: +SKIP
    (375, 500)
    >>> overlay(load_image("ant.jpg"), a.map).save("ant_gradcam.png")  # doctest: +SKIP

All attribution maths is Captum's; this module prepares the input exactly as validation saw it, picks the
layer, target and baseline, reduces the result to one 2-D map and puts that map back onto the original image.

Conventions (the same for every method):

- **What is explained**: the model's raw logit for the target class (not the softmax probability).
  `target=None` explains the predicted class; a class name is looked up in the run's class names.
- **Input space**: attributions are computed on the normalised tensor the model sees, i.e. the run's
  evaluation transform (resize the shorter side to `size / crop_pct`, centre crop `size`, normalise).
- **Channel reduction**: gradient methods (saliency, SmoothGrad, integrated gradients, GradientSHAP, guided
  Grad-CAM) give one value per input channel; the map is the sum over channels of their absolute values
  (`reduce="abs"`, the usual choice for display) or of their signed values (`reduce="sum"`). Grad-CAM is the
  ReLU'd class-weighted layer map, bilinearly upsampled (`LayerAttribution.interpolate`) to the input size.
  Occlusion windows span all channels, so every channel holds the same value; the map is that value: how much
  the logit drops when the region is replaced by the baseline (signed: negative where hiding it helps).
- **Geometry**: the map at input resolution covers only the centre crop. It is resized onto the crop's box in
  original-image pixels (`crop_box`) and pixels outside that box (cut off by the crop, never seen by the
  model) are 0. The returned map has the original image's (EXIF-upright) height and width.
- **Baselines** (integrated gradients, GradientSHAP, occlusion, SmoothGrad over IG): `black` (zero pixels,
  normalised like the input), `blur` (the input, Gaussian-blurred with sigma = input size / 20) or `noise`
  (uniform pixel noise, seeded). GradientSHAP draws from the chosen baseline plus three noise images. Unless
  one is given, integrated gradients start from noise and occlusion and GradientSHAP from black
  (`DEFAULT_BASELINE`, chosen by the pointing game on the demo dataset).
- **Randomness** (SmoothGrad, GradientSHAP, noise baselines) comes from `seed` through a forked RNG, so the
  same call gives the same map and the global torch RNG is left untouched.
- The model is put in eval mode (its previous mode is restored), gradients are enabled even inside a caller's
  `torch.no_grad()`, only the input requires grad (parameters' flags are restored afterwards), and no hook
  stays on the model: Captum removes its own, and the one this module adds for ViT Grad-CAM is removed too.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from classifier.data.images import load_image
from classifier.data.transforms import eval_transform
from classifier.errors import ClassifierError
from classifier.explain.geometry import crop_box, place_map
from classifier.explain.layers import (
    VIT_GRADCAM_HELP,
    family_of,
    gradcam_layer,
    is_vit_like,
    resolve_layer,
    vit_token_grid,
)

METHOD_INFO: dict[str, str] = {
    "gradcam": "Grad-CAM: class-weighted activations of the last feature map, upsampled (coarse, fast)",
    "guided_gradcam": "Guided Grad-CAM: Grad-CAM times guided backpropagation (pixel-sharp, class-sensitive)",
    "ig": "Integrated gradients: gradients averaged along a path from a baseline image (sums to the logit change)",
    "saliency": "Saliency: absolute input gradient of the class logit (one backward pass, noisy)",
    "smoothgrad": "SmoothGrad: saliency averaged over noisy copies of the image (less noisy, nt_samples passes)",
    "occlusion": "Occlusion: logit drop when a sliding window is replaced by the baseline (model-agnostic, slow)",
    "gradient_shap": "GradientSHAP: expected gradients x (input - baseline) over random baselines and path points",
}
METHODS: tuple[str, ...] = tuple(METHOD_INFO)
BASELINES: tuple[str, ...] = ("black", "blur", "noise")
# Used when `baseline` is None. Measured on the demo dataset (bench/explain_bench.py, pointing game): integrated
# gradients from a black baseline pointed at the object in 38-49 % of images, from uniform noise in 83 %;
# occlusion and GradientSHAP (which adds noise baselines itself) keep the customary black.
DEFAULT_BASELINE: dict[str, str] = {
    "ig": "noise",
    "smoothgrad": "noise",
    "occlusion": "black",
    "gradient_shap": "black",
}
REDUCTIONS: tuple[str, ...] = ("abs", "sum")


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
def _seeded(seed: int, devices: list) -> Iterator[None]:
    """Seed torch's and numpy's global RNGs (Captum draws GradientSHAP's baselines and path points from numpy)
    for the block, then put both back as they were."""
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _baseline(kind: str, x: torch.Tensor, data_config: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """A baseline in the model's (normalised) input space, shaped like `x` (1, C, H, W)."""
    mean = torch.tensor(data_config["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if kind == "black":
        return ((torch.zeros_like(x) - mean) / std).detach()
    if kind == "noise":
        u = torch.rand(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        return ((u - mean) / std).detach()
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        size = min(x.shape[-2:])
        sigma = max(size / 20.0, 0.5)
        k = min(2 * math.ceil(3 * sigma) + 1, size - 1 if size % 2 == 0 else size)  # reflect padding < size
        # blurring commutes with the per-channel affine normalisation (the kernel sums to 1)
        return gaussian_blur(x.detach(), [k, k], [sigma, sigma]).detach()
    raise ValueError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def resolve_target(target: int | str | None, class_names: Sequence[str] | None, n_out: int, pred: int) -> int:
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


def _reduce(attr: torch.Tensor, how: str) -> torch.Tensor:
    """(1, C, H, W) channel attributions -> (H, W) map."""
    a = attr.detach()[0].float()
    return a.abs().sum(0) if how == "abs" else a.sum(0)


def _as_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return load_image(image)


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
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Attribution:
    """Attribution map of `image` for `target` (None: the predicted class) with `method` (one of `METHODS`).

    `model_or_run` is a `LoadedRun` (its model, eval transform, data config, class names and backbone family
    are used) or a bare `nn.Module`, which then needs `data_config` (and optionally `class_names`). `image` is
    an upright RGB PIL image or a path (decoded with `load_image`, EXIF orientation applied).

    Method options: `n_steps` and `internal_batch_size` (integrated gradients; the batch also bounds SmoothGrad's
    noisy batches), `nt_samples` (SmoothGrad noisy copies, stdev 0.15 x the input's value range; GradientSHAP
    samples), `smoothgrad_base` ("saliency" or "ig"), `occlusion_window` (pixels at input resolution; default
    input size / 7, stride half the window) with `perturbations_per_eval` windows per forward pass, `baseline`
    (see module docstring; None: the method's `DEFAULT_BASELINE`), `reduce` ("abs" or "sum" over channels,
    gradient methods), `layer` (Grad-CAM layer by qualified name or module; default per family, see
    `gradcam_layer`).

    `progress(done, total)` is called after every forward pass of the model (Captum batches them), `total`
    being the passes the method needs; it ends with `(total, total)`.

    Raises ClassifierError for an unknown target name or a model Grad-CAM cannot handle, ImageError for an
    unreadable image, ValueError for a bad option.
    """
    from captum.attr import (
        GradientShap,
        GuidedGradCam,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    t0 = time.perf_counter()
    if method not in METHOD_INFO:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if baseline is None:
        baseline = DEFAULT_BASELINE.get(method, "black")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, not {reduce!r}")
    if smoothgrad_base not in ("saliency", "ig"):
        raise ValueError(f"smoothgrad_base must be 'saliency' or 'ig', not {smoothgrad_base!r}")
    if min(n_steps, internal_batch_size, nt_samples, perturbations_per_eval) < 1:
        raise ValueError("n_steps, internal_batch_size, nt_samples and perturbations_per_eval must be at least 1")

    if isinstance(model_or_run, nn.Module):
        if data_config is None:
            raise ValueError("a bare model needs data_config (input_size, interpolation, mean, std, crop_pct)")
        model, transform, backbone = model_or_run, eval_transform(data_config), None
        names = list(class_names) if class_names is not None else None
    else:
        run = model_or_run
        model = run.model
        data_config = data_config or run.config["data_config"]
        transform = run.transform if data_config is run.config["data_config"] else eval_transform(data_config)
        names = list(class_names) if class_names is not None else run.class_names
        backbone = run.config.get("backbone") or run.config.get("timm_name")

    img = _as_image(image)
    box = crop_box(img.size, data_config)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = transform(img)[None].to(device=device, dtype=dtype)
    if (
        device.type == "cuda"
        and param is not None
        and param.ndim == 4
        and param.is_contiguous(memory_format=torch.channels_last)
    ):
        x = x.contiguous(memory_format=torch.channels_last)
    size_hw = tuple(x.shape[-2:])
    gen = torch.Generator().manual_seed(seed)

    # Forward passes each method makes (the first one predicts the class), for progress reporting.
    window = max(1, min(int(occlusion_window or round(min(size_hw) / 7)), *size_hw))
    stride = max(1, window // 2)
    n_windows = math.prod(math.ceil((s - window) / stride) + 1 for s in size_hw)
    ig_calls = math.ceil(n_steps / internal_batch_size)
    sg_batch = min(nt_samples, internal_batch_size)
    planned = {
        "gradcam": 1,
        "guided_gradcam": 2,
        "saliency": 1,
        "ig": ig_calls + 2,  # + the convergence delta's forward passes at input and baseline
        "smoothgrad": math.ceil(nt_samples / sg_batch) if smoothgrad_base == "saliency" else nt_samples * ig_calls,
        "occlusion": 1 + math.ceil(n_windows / perturbations_per_eval),
        "gradient_shap": 1 + 2,
    }
    counted = _Counted(model, progress)
    counted.total = 1 + planned[method]
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    handles: list[Any] = []
    extra: dict[str, Any] = {"crop_box": box, "input_size": size_hw}
    delta: float | None = None
    fork_devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(backward hooks on ReLU|required_grads has been set).*")
            with torch.no_grad():
                logits = counted(x)
            n_out = int(logits.shape[-1])
            t = resolve_target(target, names, n_out, int(logits[0].argmax()))
            probs = torch.softmax(logits.float(), -1)[0]
            extra["logit"] = float(logits[0, t])
            extra["probability"] = float(probs[t])
            extra["predicted"] = int(logits[0].argmax())

            x_in = x.detach().clone().requires_grad_(method != "occlusion")
            base = (
                _baseline(baseline, x, data_config, gen)
                if method in ("ig", "occlusion", "gradient_shap")
                or (method == "smoothgrad" and smoothgrad_base == "ig")
                else None
            )

            if method in ("gradcam", "guided_gradcam"):
                family = family_of(model, backbone)
                extra["family"] = family
                if layer is not None:
                    lname, lmod = resolve_layer(model, layer)
                elif family == "vit" or is_vit_like(model):
                    if not is_vit_like(model):
                        raise ClassifierError(
                            f"Grad-CAM is not supported for this ViT backbone yet; {VIT_GRADCAM_HELP}"
                        )
                    lname, lmod, handle = vit_token_grid(model)
                    handles.append(handle)
                else:
                    lname, lmod = gradcam_layer(model, family)
                extra["layer"] = lname
                if method == "gradcam":
                    cam = LayerGradCam(counted, lmod).attribute(x_in, target=t, relu_attributions=True)
                    _check_spatial(cam, lname)
                    extra["layer_map_size"] = tuple(cam.shape[-2:])
                    input_map = LayerAttribution.interpolate(cam.detach().float(), size_hw, "bilinear")[0, 0]
                else:
                    gg = GuidedGradCam(counted, lmod).attribute(x_in, target=t, interpolate_mode="bilinear")
                    if gg.numel() == 0:
                        raise ClassifierError(f"Grad-CAM of layer {lname} could not be upsampled to the input")
                    input_map = _reduce(gg, reduce)
            elif method == "saliency":
                input_map = _reduce(Saliency(counted).attribute(x_in, target=t, abs=True), reduce)
            elif method == "ig":
                attr, d = IntegratedGradients(counted).attribute(
                    x_in,
                    baselines=base,
                    target=t,
                    n_steps=n_steps,
                    internal_batch_size=internal_batch_size,
                    return_convergence_delta=True,
                )
                delta = float(d.abs().mean())
                extra.update(baseline=baseline, n_steps=n_steps, attribution_sum=float(attr.detach().sum()))
                input_map = _reduce(attr, reduce)
            elif method == "smoothgrad":
                stdev = 0.15 * float(x.max() - x.min())
                nt = NoiseTunnel(Saliency(counted) if smoothgrad_base == "saliency" else IntegratedGradients(counted))
                kw: dict[str, Any]
                if smoothgrad_base == "saliency":
                    kw = {"abs": True, "nt_samples_batch_size": sg_batch}
                else:
                    kw = {
                        "baselines": base,
                        "n_steps": n_steps,
                        "internal_batch_size": internal_batch_size,
                        "nt_samples_batch_size": 1,
                    }
                with _seeded(seed, fork_devices):
                    attr = nt.attribute(x_in, nt_type="smoothgrad", nt_samples=nt_samples, stdevs=stdev, target=t, **kw)
                extra.update(smoothgrad_base=smoothgrad_base, nt_samples=nt_samples, stdev=stdev)
                input_map = _reduce(attr, reduce)
            elif method == "occlusion":
                c = int(x.shape[1])
                attr = Occlusion(counted).attribute(
                    x_in,
                    sliding_window_shapes=(c, window, window),
                    strides=(c, stride, stride),
                    baselines=base,
                    target=t,
                    perturbations_per_eval=perturbations_per_eval,
                )
                extra.update(baseline=baseline, window=window, stride=stride, windows=n_windows)
                input_map = attr.detach()[0].float().mean(0)
            else:  # gradient_shap
                assert base is not None
                pool = [base] + [_baseline("noise", x, data_config, gen) for _ in range(3)]
                with _seeded(seed, fork_devices):
                    attr, d = GradientShap(counted).attribute(
                        x_in,
                        baselines=torch.cat(pool),
                        n_samples=nt_samples,
                        stdevs=0.0,
                        target=t,
                        return_convergence_delta=True,
                    )
                delta = float(d.abs().mean())
                extra.update(baseline=baseline, n_samples=nt_samples, attribution_sum=float(attr.detach().sum()))
                input_map = _reduce(attr, reduce)
    finally:
        for h in handles:
            h.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    extra["evaluations"] = counted.calls
    if progress is not None:
        progress(counted.total, counted.total)
    amap = place_map(input_map, box, img.size)
    return Attribution(
        map=amap,
        method=method,
        target=t,
        target_name=names[t] if names is not None and t < len(names) else None,
        seconds=time.perf_counter() - t0,
        delta=delta,
        extra=extra,
    )


def _check_spatial(cam: torch.Tensor, layer_name: str) -> None:
    if cam.ndim != 4:
        raise ClassifierError(
            f"Grad-CAM layer {layer_name} has no 2-D feature map (output of {cam.ndim} dims); choose another layer"
        )
    if cam.shape[-1] * cam.shape[-2] <= 1:
        raise ClassifierError(
            f"Grad-CAM layer {layer_name} outputs a 1x1 map at this input size, so it cannot localise anything; "
            "choose an earlier layer or a larger input"
        )
