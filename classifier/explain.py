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
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from classifier.data.images import load_image
from classifier.data.transforms import eval_transform
from classifier.errors import ClassifierError, ImageError

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
FAMILIES: tuple[str, ...] = (
    "resnet",
    "efficientnet",
    "mobilenet",
    "convnext",
    "densenet",
    "vgg",
    "inception",
    "simple",
    "vit",
)

VIT_GRADCAM_HELP = "use ig, saliency, smoothgrad, occlusion or gradient_shap"


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


# ----------------------------------------------------------------------------------------------- geometry


def crop_box(image_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[int, int, int, int]:
    """The centre crop of the evaluation transform as `(left, top, right, bottom)` in original-image pixels.

    `image_size` is `(width, height)` like `PIL.Image.size`. Follows timm's eval transform exactly: "center"
    resizes the shorter side to `floor(size / crop_pct)` (torchvision truncates the longer side) and centre-crops;
    "squash" resizes both sides to that; "border" fits the longer side and pads. Edges are rounded to whole
    pixels (at most half a pixel off). With "border" (or a crop larger than the resized image) the box extends
    past the image: that part of the model's input was padding.

    >>> crop_box((300, 200), {"input_size": (3, 64, 64), "crop_pct": 0.875, "crop_mode": "center"})
    (61, 11, 237, 186)
    """
    left, top, right, bottom = _crop_box_exact(image_size, data_config)
    return round(left), round(top), round(right), round(bottom)


def _crop_box_exact(image_size: tuple[int, int], data_config: dict[str, Any]) -> tuple[float, float, float, float]:
    w, h = (int(v) for v in image_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    th, tw = (int(v) for v in tuple(data_config["input_size"])[-2:])
    crop_pct = float(data_config.get("crop_pct") or 0.875)  # timm's default when unset
    mode = str(data_config.get("crop_mode") or "center")
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    if mode == "squash":
        nh, nw = sh, sw
    elif mode == "border":
        ratio = max(h / sh, w / sw)  # timm ResizeKeepRatio(longest=1): the longer side fits
        nh, nw = round(h / ratio), round(w / ratio)
    elif sh == sw:
        # torchvision Resize(int): shorter side -> sh, longer side truncated
        if w <= h:
            nw, nh = sh, int(sh * h / w)
        else:
            nh, nw = sh, int(sh * w / h)
    else:
        ratio = min(h / sh, w / sw)  # timm ResizeKeepRatio(longest=0): the shorter side fits
        nh, nw = round(h / ratio), round(w / ratio)
    # torchvision / timm centre crop: pad (left/top gets the floor half) when too small, then crop at round()
    pad_l = (tw - nw) // 2 if tw > nw else 0
    pad_t = (th - nh) // 2 if th > nh else 0
    pw, ph = max(nw, tw), max(nh, th)
    left = round((pw - tw) / 2.0) - pad_l
    top = round((ph - th) / 2.0) - pad_t
    sx, sy = w / nw, h / nh
    return left * sx, top * sy, (left + tw) * sx, (top + th) * sy


def _place(input_map: torch.Tensor, box: tuple[int, int, int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Resize an input-resolution map onto `box` of a (width, height) image; zeros elsewhere."""
    w, h = image_size
    left, top, right, bottom = box
    bw, bh = max(1, right - left), max(1, bottom - top)
    m = input_map.detach().float().cpu()[None, None]
    shrink = bh < m.shape[-2] or bw < m.shape[-1]
    up = F.interpolate(m, size=(bh, bw), mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy()
    out = np.zeros((h, w), dtype=np.float32)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + bw, w), min(top + bh, h)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = up[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


# ------------------------------------------------------------------------------------ family and layers


_CLASS_FAMILY = {
    "ResNet": "resnet",
    "EfficientNet": "efficientnet",
    "MobileNetV3": "mobilenet",
    "ConvNeXt": "convnext",
    "DenseNet": "densenet",
    "VGG": "vgg",
    "InceptionV3": "inception",
    "SimpleCNN": "simple",
    "VisionTransformer": "vit",
}


def guess_family(model: nn.Module) -> str:
    """The backbone family of a built model, from its class (timm's or SimpleCNN) or its structure.

    Returns one of `FAMILIES`, or "unknown" (Grad-CAM then falls back to the last Conv2d).
    """
    name = type(model).__name__
    if name in _CLASS_FAMILY:
        return _CLASS_FAMILY[name]
    if _is_vit_like(model):
        return "vit"
    return "unknown"


def _is_vit_like(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (
        hasattr(model, "patch_embed")
        and isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
        and hasattr(model, "num_prefix_tokens")
    )


def _family_of(model: nn.Module, backbone: str | None) -> str:
    """The run's registry family when it is one `gradcam_layer` knows; else guessed from the model's class."""
    if backbone:
        from classifier.models.registry import resolve_backbone

        try:
            family = resolve_backbone(backbone).family
        except ClassifierError:
            family = ""
        if family in FAMILIES:
            return family
    return guess_family(model)


def _last_conv(module: nn.Module) -> nn.Module | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _module_name(model: nn.Module, layer: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is layer:
            return name or "<model>"
    return type(layer).__name__


def gradcam_layer(model: nn.Module, family: str | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM uses for `model`: `(qualified name, module)`.

    resnet -> `layer4`; efficientnet -> `conv_head` (timm's EfficientNet applies it before pooling);
    mobilenet (MobileNetV3 applies `conv_head` after pooling, on a 1x1 map) -> the last of `blocks`;
    convnext -> `stages[-1]`; densenet -> the last module of `features` (the final norm + ReLU);
    vgg and simple_cnn -> the last Conv2d in `features`; inception -> `Mixed_7c`; anything else -> the last
    Conv2d in the model. ViT-style models have no conv feature map: see `attribute` (tokens are reshaped).
    """
    family = family or guess_family(model)
    layer: nn.Module | None = None
    if family == "resnet":
        layer = getattr(model, "layer4", None)
    elif family in ("efficientnet", "mobilenet"):
        if hasattr(model, "conv_head") and hasattr(model, "bn2"):
            layer = model.conv_head
        elif isinstance(getattr(model, "blocks", None), nn.Sequential) and len(model.blocks):
            layer = model.blocks[-1]
    elif family == "convnext":
        stages = getattr(model, "stages", None)
        layer = stages[-1] if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) else None
    elif family == "densenet":
        features = getattr(model, "features", None)
        layer = features[-1] if isinstance(features, nn.Sequential) and len(features) else None
    elif family in ("vgg", "simple"):
        features = getattr(model, "features", None)
        layer = _last_conv(features) if isinstance(features, nn.Module) else None
    elif family == "inception":
        layer = getattr(model, "Mixed_7c", None)
    elif family == "vit":
        raise ClassifierError(
            "ViT-style models have no convolutional feature map; attribute() reshapes their tokens for Grad-CAM"
        )
    if layer is None:
        layer = _last_conv(model)
    if layer is None:
        raise ClassifierError(
            f"Grad-CAM needs a convolutional layer and {type(model).__name__} has none; "
            "use ig, saliency, smoothgrad, occlusion or gradient_shap"
        )
    return _module_name(model, layer), layer


def _resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    if isinstance(layer, nn.Module):
        return _module_name(model, layer), layer
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        raise ClassifierError(f"the model has no layer {layer!r}") from None


class _TokenGrid(nn.Module):
    """Identity on a (B, D, gh, gw) grid of ViT patch tokens: the 'layer' Captum's Grad-CAM hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _vit_token_grid(model: nn.Module) -> tuple[str, _TokenGrid, Any]:
    """Hook the input of the last transformer block's attention (`blocks[-1].norm1`, where the class token still
    mixes with the patch tokens) so its patch tokens pass through a `_TokenGrid` as a 2-D grid.

    Returns (name, grid module, hook handle); the caller removes the handle.
    """
    block = model.blocks[-1]
    target = getattr(block, "norm1", None) or block
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    grid_size = tuple(getattr(model.patch_embed, "grid_size", ()) or ())
    grid = _TokenGrid()

    def hook(_module: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise ClassifierError(f"Grad-CAM is not supported for this ViT's token layout yet; {VIT_GRADCAM_HELP}")
        b, n, d = out.shape
        n_patches = n - n_prefix
        gh, gw = grid_size if len(grid_size) == 2 else (0, 0)
        if gh * gw != n_patches:
            side = math.isqrt(n_patches)
            if side * side != n_patches:
                raise ClassifierError(
                    f"Grad-CAM is not supported for this ViT ({n_patches} patch tokens, not a grid); {VIT_GRADCAM_HELP}"
                )
            gh = gw = side
        prefix, patches = out[:, :n_prefix], out[:, n_prefix:]
        g = grid(patches.transpose(1, 2).reshape(b, d, gh, gw))
        return torch.cat([prefix, g.flatten(2).transpose(1, 2)], dim=1)

    handle = target.register_forward_hook(hook)
    return _module_name(model, target) + " (tokens as grid)", grid, handle


# ------------------------------------------------------------------------------------------- attribute


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


def _resolve_target(target: int | str | None, class_names: Sequence[str] | None, n_out: int, pred: int) -> int:
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
            t = _resolve_target(target, names, n_out, int(logits[0].argmax()))
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
                family = _family_of(model, backbone)
                extra["family"] = family
                if layer is not None:
                    lname, lmod = _resolve_layer(model, layer)
                elif family == "vit" or _is_vit_like(model):
                    if not _is_vit_like(model):
                        raise ClassifierError(
                            f"Grad-CAM is not supported for this ViT backbone yet; {VIT_GRADCAM_HELP}"
                        )
                    lname, lmod, handle = _vit_token_grid(model)
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
    amap = _place(input_map, box, img.size)
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


# ---------------------------------------------------------------------------------------------- display


def _normalise(amap: np.ndarray, signed: bool) -> np.ndarray:
    """Map to [0, 1] (unsigned: positive part / p99) or [-1, 1] (signed: value / p99 of |map|)."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(np.percentile(np.abs(a), 99)) if a.size else 0.0
    if scale <= 0:
        scale = float(np.abs(a).max()) if a.size else 0.0
    if scale <= 0:
        return np.zeros_like(a)
    return np.clip(a / scale, -1.0, 1.0) if signed else np.clip(a / scale, 0.0, 1.0)


def overlay(
    image: Image.Image, amap: np.ndarray, cmap: str = "jet", alpha: float = 0.5, signed: bool = False
) -> Image.Image:
    """Colourise `amap` with a matplotlib colormap and blend it over `image` (RGB, same size as the map).

    The map is scaled robustly by the 99th percentile of |map| (the max when that is 0), so a few extreme
    pixels do not wash out the rest. Unsigned (default): the positive part in [0, 1] (negative values show as
    0). `signed=True`: [-1, 1] is mapped onto the whole colormap with 0 in the middle (use a diverging one,
    e.g. "bwr" or "RdBu_r"). A map of another size is resized (bilinear) to the image first.
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; any matplotlib colormap name works (jet, viridis, ...)") from None
    rgb = image.convert("RGB")
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"attribution map must be 2-D, got shape {a.shape}")
    if a.shape != (rgb.height, rgb.width):
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        a = F.interpolate(t, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)[0, 0].numpy()
    v = _normalise(a, signed)
    if signed:
        v = (v + 1.0) / 2.0
    colour = colormap(v)[..., :3]
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    out = (1.0 - alpha) * base + alpha * colour
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------ evaluation


def _mask_array(mask: np.ndarray | Image.Image, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, Image.Image):
        m = mask.convert("L")
        if m.size != (shape[1], shape[0]):
            m = m.resize((shape[1], shape[0]), Image.NEAREST)
        arr = np.asarray(m)
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3:
            arr = arr[..., 0]
        if arr.shape != shape:
            m = Image.fromarray(arr.astype(np.uint8) * (255 if arr.dtype == bool else 1), "L")
            arr = np.asarray(m.resize((shape[1], shape[0]), Image.NEAREST))
    return arr if arr.dtype == bool else arr > 127


def peak(amap: np.ndarray) -> tuple[int, int]:
    """`(row, col)` of the map's maximum. A maximum shared by several pixels (a plateau: upsampling a coarse map
    bilinearly repeats the border cells' values out to the edge) resolves to the plateau pixel nearest the
    plateau's centroid, not to its first pixel in row-major order, which would sit on the plateau's top edge."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=-np.inf)
    top = a.max()
    ys, xs = np.nonzero(a >= top - 1e-6 * max(abs(top), 1e-30))
    if len(ys) == 1:
        return int(ys[0]), int(xs[0])
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[i]), int(xs[i])


def pointing_game(amap: np.ndarray, mask: np.ndarray | Image.Image, tolerance: float = 0.03) -> bool:
    """Whether the map's maximum lies on the object: a hit when the argmax pixel is within
    `tolerance x max(H, W)` pixels of a mask pixel (mask > 127, or a bool mask).

    The tolerance stands in for the 15 px the standard pointing game (Zhang et al., 2016) allows at ~224 px;
    3 % is about 7 px at 224 px and 3-4 px on the 96-128 px demo images. A map with no positive maximum (all
    zero or negative) never hits. A plateau of maxima resolves as in `peak`.
    """
    a = np.nan_to_num(np.asarray(amap, dtype=np.float64), nan=-np.inf)
    m = _mask_array(mask, a.shape)
    if not m.any() or not np.isfinite(a).any() or a.max() <= 0:
        return False
    y, x = peak(a)
    if m[y, x]:
        return True
    radius = tolerance * max(a.shape)
    ys, xs = np.nonzero(m)
    return bool(np.min((ys - y) ** 2 + (xs - x) ** 2) <= radius**2)


def mask_energy_ratio(amap: np.ndarray, mask: np.ndarray | Image.Image) -> float:
    """Share of the positive attribution that falls inside the mask, divided by the mask's share of the image.

    1.0 is what a map spread evenly over the image scores; above 1 the attribution concentrates on the
    object (the maximum is 1 / mask area fraction). NaN when the map has no positive part or the mask is empty.
    """
    a = np.clip(np.nan_to_num(np.asarray(amap, dtype=np.float64)), 0, None)
    m = _mask_array(mask, a.shape)
    total = a.sum()
    area = m.mean()
    if total <= 0 or area <= 0:
        return float("nan")
    return float(a[m].sum() / total / area)


# ------------------------------------------------------------------------------------------- batch/CLI


def _atomic_save(path: Path, write: Callable[[str], None]) -> None:
    from classifier.io import _atomic

    _atomic(path, write)


def _safe_stem(path: str, used: set[str]) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(path).stem) or "image"
    out, i = stem, 1
    while out in used:
        out, i = f"{stem}-{i}", i + 1
    used.add(out)
    return out


def explain_paths(
    run: Any,
    paths: Iterable[str | Path],
    method: str,
    target: int | str | None = None,
    *,
    out_dir: str | Path,
    cmap: str = "jet",
    alpha: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Explain every image in `paths` (files, or folders searched recursively) with `method`.

    Writes `out_dir/<stem>.npy` (the raw float32 map at the image's own upright height and width) and
    `out_dir/<stem>.png` (the overlay), atomically; a stem seen twice gets `-1`, `-2`, ... appended. Returns one
    dict per image in input order: `{path, npy, png, method, target, target_name, seconds}` (plus `delta` where
    the method has one), or `{path, error}` for an image that cannot be read, and carries on with the others.
    Options (`baseline`, `n_steps`, ...) go to `attribute`. `progress(done, total)` counts images.
    """
    from classifier.predict import expand_inputs

    if method not in METHOD_INFO:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    names = run.class_names if hasattr(run, "class_names") else options.get("class_names")
    if target is not None:
        n = len(names) if names is not None else int(run.config["num_classes"])
        target = _resolve_target(target, names, n, 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = expand_inputs([str(p) for p in paths])
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, path in enumerate(items):
        entry: dict[str, Any] = {"path": path}
        try:
            if not Path(path).is_file():
                raise ImageError(path, "file not found")
            img = load_image(path)
            a = attribute(run, img, method, target, **options)
            stem = _safe_stem(path, used)
            npy, png = out / f"{stem}.npy", out / f"{stem}.png"

            def write_npy(tmp: str, arr: np.ndarray = a.map) -> None:
                with open(tmp, "wb") as f:
                    np.save(f, arr)

            _atomic_save(npy, write_npy)
            picture = overlay(img, a.map, cmap=cmap, alpha=alpha)
            _atomic_save(png, lambda tmp, pic=picture: pic.save(tmp, format="PNG"))
            entry.update(
                npy=str(npy),
                png=str(png),
                method=method,
                target=a.target,
                target_name=a.target_name,
                seconds=round(a.seconds, 4),
            )
            if a.delta is not None:
                entry["delta"] = a.delta
        except ImageError as e:
            entry["error"] = str(e)
        results.append(entry)
        if progress is not None:
            progress(i + 1, len(items))
    return results
