"""Attribution methods: one class per method, registered by name in `METHODS`.

A method class carries what the app and the CLI show about it (label, help text, the `attribute` options its map
depends on, its default baseline) next to the Captum call that computes it, so adding a method is adding one class:

    @register
    class Lime(AttributionMethod):
        name = "lime"
        label = "LIME"
        help = "a linear surrogate fitted on superpixels switched on and off (model-agnostic, slow)"
        options = ("baseline", "nt_samples")
        default_baseline = "black"

        def forward_passes(self, options, input_hw):
            return options.nt_samples

        def compute(self, inputs):
            ...  # a Captum call on inputs.model and inputs.x for inputs.target
            return MethodOutput(input_map)  # (H, W) at input resolution

`classifier.explain.core.attribute` validates, prepares the input, predicts, resolves the target and places the
map on the original image; a method only turns `Inputs` into one 2-D map at input resolution (and, where it has
one, a convergence delta).

torch, numpy and Captum are imported inside the functions that compute, not at the top: the CLI builds its
argument parser from `METHODS` and should not pay seconds of imports for `--help`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from classifier.errors import ClassifierError
from classifier.explain.baselines import BASELINES, make_baseline

if TYPE_CHECKING:
    import torch
    from torch import nn

REDUCTIONS: tuple[str, ...] = ("abs", "sum")
SMOOTHGRAD_BASES: tuple[str, ...] = ("saliency", "ig")


@dataclass(frozen=True)
class Options:
    """The `attribute` keyword options methods read (what each means: `attribute`'s docstring)."""

    n_steps: int
    internal_batch_size: int
    nt_samples: int
    smoothgrad_base: str
    occlusion_window: int | None
    perturbations_per_eval: int
    reduce: str
    layer: str | nn.Module | None
    seed: int
    shift_average: bool = True

    def check(self) -> None:
        """Raise ValueError for a bad option before any work starts."""
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, not {self.reduce!r}")
        if self.smoothgrad_base not in SMOOTHGRAD_BASES:
            raise ValueError(f"smoothgrad_base must be 'saliency' or 'ig', not {self.smoothgrad_base!r}")
        if min(self.n_steps, self.internal_batch_size, self.nt_samples, self.perturbations_per_eval) < 1:
            raise ValueError("n_steps, internal_batch_size, nt_samples and perturbations_per_eval must be at least 1")


# What a method may list in `options`: the `attribute` keywords that change a map.
OPTION_NAMES: frozenset[str] = frozenset({f.name for f in fields(Options)} | {"baseline"})


@dataclass
class Inputs:
    """What a method computes from, prepared by `attribute`. A method records what it used in `extra` and appends
    any hook it adds to `handles`; `attribute` removes those hooks whatever happens."""

    model: nn.Module  # the model wrapped to count forward passes (progress): give this one to Captum
    module: nn.Module  # the model itself: look layers up and hook them here
    x: torch.Tensor  # (1, C, H, W) normalised input; requires grad unless the method sets input_grad = False
    target: int
    options: Options
    baseline: str | None  # the caller's baseline, else the method's default (None: the method takes none)
    data_config: dict[str, Any]
    backbone: str | None  # the run's backbone name (Grad-CAM's layer choice), None for a bare model
    generator: torch.Generator  # seeded from options.seed; noise baselines draw from it
    extra: dict[str, Any]
    handles: list[Any]

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.x.shape[-2]), int(self.x.shape[-1])

    def baseline_tensor(self, kind: str | None = None) -> torch.Tensor:
        """The baseline `kind` (default: the chosen one) in the model's input space, shaped like `x`."""
        kind = kind or self.baseline
        if kind is None:
            raise ValueError("this method has no default baseline; name one")
        return make_baseline(kind, self.x, self.data_config, self.generator)

    @contextmanager
    def seeded(self) -> Iterator[None]:
        """Seed torch's and numpy's global RNGs for the block (Captum draws noise-tunnel samples from torch and
        GradientSHAP's baselines and path points from numpy), then put both back: same seed, same map, and the
        caller's RNG state untouched."""
        import numpy as np
        import torch

        np_state = np.random.get_state()
        devices = [self.x.device] if self.x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.options.seed)
            np.random.seed(self.options.seed % 2**32)
            try:
                yield
            finally:
                np.random.set_state(np_state)


class MethodOutput(NamedTuple):
    map: torch.Tensor  # (H, W) at input resolution
    delta: float | None = None  # |convergence delta| averaged, for methods that have one


class AttributionMethod(ABC):
    """One attribution method: what the app and CLI show about it, and how it computes a map.

    Subclass it, set the class attributes, implement `forward_passes` and `compute`, and decorate with `@register`.
    """

    name: ClassVar[str]  # the key in METHODS, the CLI's --method value and Attribution.method
    label: ClassVar[str]  # the name people read (app)
    help: ClassVar[str]  # one line: what the map shows and what it costs
    options: ClassVar[tuple[str, ...]] = ()  # the attribute() keywords (OPTION_NAMES) that change this method's map
    default_baseline: ClassVar[str | None] = None  # one of BASELINES; None: the method takes no baseline
    input_grad: ClassVar[bool] = True  # whether the input must require grad (perturbation methods need not)

    def used_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The part of `options` (attribute keywords) this method's map depends on: what a cache key needs."""
        return {k: options[k] for k in self.options if k in options}

    @abstractmethod
    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        """The model forward passes `compute` makes (Captum batches them), for progress reporting."""

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        """Images the model processes for this map (Captum batches them; gradient methods also go backward), which
        orders maps fast to slow. Default: `forward_passes`, for a method that pushes one image per pass.

        It ranks the methods as measured (docs/benchmarks.md, 224 px, EfficientNet-Lite0, seconds): saliency 1
        image (0.07), Guided Grad-CAM 2 (0.09), Grad-CAM 5 (0.12; one plain pass: 1 image), SmoothGrad 8 (0.28),
        GradientSHAP 24 (0.49), integrated gradients 34 (1.3), occlusion 170 forward only (2.1)."""
        return self.forward_passes(options, input_hw)

    @abstractmethod
    def compute(self, inputs: Inputs) -> MethodOutput:
        """The map for `inputs.target` at input resolution (the conventions: `classifier.explain`)."""


METHODS: dict[str, AttributionMethod] = {}  # name -> method, in registration order (the order the app lists)

M = TypeVar("M", bound=type[AttributionMethod])


def register(cls: M) -> M:
    """Class decorator: add an instance of `cls` to `METHODS` under `cls.name` (as timm's `register_model` does
    for models). Checks what the app and CLI rely on, so a half-declared method fails at import, not in the app."""
    for attr in ("name", "label", "help"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__name__} needs a non-empty string {attr}")
    if cls.name in METHODS:
        raise ValueError(f"attribution method {cls.name!r} is already registered")
    if cls.default_baseline is not None and cls.default_baseline not in BASELINES:
        raise ValueError(f"{cls.__name__}.default_baseline must be one of {', '.join(BASELINES)} or None")
    unknown = sorted(set(cls.options) - OPTION_NAMES)
    if unknown:
        raise ValueError(f"{cls.__name__}.options names no attribute() option: {', '.join(unknown)}")
    if "baseline" in cls.options and cls.default_baseline is None:
        raise ValueError(f"{cls.__name__} takes a baseline and needs a default_baseline")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> AttributionMethod:
    """The registered method `name`; ValueError (listing the choices) for an unknown one."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}") from None


def methods_using(option: str) -> list[AttributionMethod]:
    """The registered methods whose map depends on `option` (to say which methods a setting affects)."""
    return [m for m in METHODS.values() if option in m.options]


# -------------------------------------------------------------------------------------------- shared helpers


def _reduce(attr: torch.Tensor, how: str) -> torch.Tensor:
    """(1, C, H, W) channel attributions -> (H, W) map: sum of |values| ("abs") or of signed values ("sum")."""
    a = attr.detach()[0].float()
    return a.abs().sum(0) if how == "abs" else a.sum(0)


def _ig_batches(options: Options) -> int:
    """Forward passes of one integrated-gradients path (its steps in batches of internal_batch_size)."""
    return math.ceil(options.n_steps / options.internal_batch_size)


def _cam_layer(inputs: Inputs) -> tuple[str, nn.Module]:
    """Grad-CAM's layer (`layers.cam_layer`), recorded in `extra`; a ViT token-grid hook goes to `handles`."""
    from classifier.explain.layers import cam_layer

    chosen = cam_layer(inputs.module, inputs.backbone, inputs.options.layer)
    if chosen.hook is not None:
        inputs.handles.append(chosen.hook)
    inputs.extra.update(family=chosen.family, layer=chosen.name)
    return chosen.name, chosen.module


def _check_spatial(cam: torch.Tensor, layer_name: str) -> None:
    """Refuse layer maps Grad-CAM cannot localise with: not 2-D, or a single cell."""
    if cam.ndim != 4:
        raise ClassifierError(
            f"Grad-CAM layer {layer_name} has no 2-D feature map (output of {cam.ndim} dims); choose another layer"
        )
    if cam.shape[-1] * cam.shape[-2] <= 1:
        raise ClassifierError(
            f"Grad-CAM layer {layer_name} outputs a 1x1 map at this input size, so it cannot localise anything; "
            "choose an earlier layer or a larger input"
        )


def _shifted(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`t` (N, C, H, W) moved so that out[..., i, j] = t[..., i + dy, j + dx], edge pixels repeated where that
    falls outside."""
    import torch.nn.functional as F

    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return t
    h, w = t.shape[-2:]
    padded = F.pad(t, (pad, pad, pad, pad), mode="replicate")
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _layer_output_shape(module: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The shape of `layer`'s output for input `x` (one forward pass with a hook)."""
    seen: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    try:
        module(x)
    finally:
        handle.remove()
    return seen[0] if seen else ()


# ----------------------------------------------------------------------------------------------- the methods


@register
class GradCamMethod(AttributionMethod):
    """Grad-CAM (Selvaraju et al., 2017) of the family's layer (`layers.cam_layer`), upsampled bilinearly.

    With `shift_average` (the default) the map is the mean of Grad-CAM on four copies of the input moved diagonally
    by a quarter of the layer's cell (8 px for a 7x7 map of a 224 px input: up-left, up-right, down-left,
    down-right), each map moved back. The copies sample the layer half a cell apart, so the map's peak is no longer
    tied to a cell centre (the idea of Morbidelli et al., "Augmented Grad-CAM", 2020, with shifts; pytorch-grad-cam's
    `aug_smooth` averages flips). It costs one forward pass to size the cell and one batch of four. On the
    multi-label demo scenes the per-label pointing game went from 0.77-0.90 (one pass) to 0.83-0.97, on the
    single-object demo from 0.88-0.93 to 0.93-0.97 (docs/benchmarks.md).
    """

    name = "gradcam"
    label = "Grad-CAM"
    help = "class-weighted activations of the last feature map, averaged over 4 shifted copies (coarse, fast)"
    options = ("layer", "shift_average")

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 1  # the shifted copies go in one batch

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        # Shifted: one forward pass that sizes the layer's cell, then the four copies (only two images in all where
        # the cell is under 4 px, which no real backbone's Grad-CAM layer has).
        return 5 if options.shift_average else 1

    def compute(self, inputs: Inputs) -> MethodOutput:
        import torch
        from captum.attr import LayerAttribution, LayerGradCam

        name, layer = _cam_layer(inputs)
        hw, step = inputs.input_hw, 0
        if inputs.options.shift_average:
            with torch.no_grad():  # the layer's cell at this input size, from one forward pass
                cells = _layer_output_shape(inputs.module, layer, inputs.x)
            step = round(hw[0] / cells[-2] / 4) if len(cells) == 4 else 0
        shifts = [(dy, dx) for dy in (-step, step) for dx in (-step, step)] if step else [(0, 0)]
        views = torch.cat([_shifted(inputs.x.detach(), dy, dx) for dy, dx in shifts]).requires_grad_(True)
        cams = LayerGradCam(inputs.model, layer).attribute(views, target=inputs.target, relu_attributions=True)
        _check_spatial(cams, name)
        inputs.extra.update(layer_map_size=tuple(cams.shape[-2:]), shift_px=step)
        up = LayerAttribution.interpolate(cams.detach().float(), hw, "bilinear")
        back = torch.cat([_shifted(up[i : i + 1], -dy, -dx) for i, (dy, dx) in enumerate(shifts)])
        return MethodOutput(back.mean(0)[0])


@register
class GuidedGradCamMethod(AttributionMethod):
    name = "guided_gradcam"
    label = "Guided Grad-CAM"
    help = "Grad-CAM times guided backpropagation (pixel-sharp, class-sensitive)"
    options = ("layer",)

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 2  # Grad-CAM's and guided backpropagation's

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 2

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import GuidedGradCam

        name, layer = _cam_layer(inputs)
        gg = GuidedGradCam(inputs.model, layer).attribute(inputs.x, target=inputs.target, interpolate_mode="bilinear")
        if gg.numel() == 0:
            raise ClassifierError(f"Grad-CAM of layer {name} could not be upsampled to the input")
        return MethodOutput(_reduce(gg, inputs.options.reduce))


@register
class IntegratedGradientsMethod(AttributionMethod):
    name = "ig"
    label = "Integrated gradients"
    help = "gradients averaged along a path from a baseline image (sums to the logit change)"
    options = ("baseline", "n_steps")
    # Measured on the demo dataset (bench/explain_bench.py, pointing game): from a black baseline integrated
    # gradients pointed at the object in 38-49 % of images, from uniform noise in 83 %.
    default_baseline = "noise"

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return _ig_batches(options) + 2  # + the convergence delta's passes at the input and the baseline

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        return options.n_steps + 2  # every path point, + the input and the baseline for the delta

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import IntegratedGradients

        o = inputs.options
        attr, delta = IntegratedGradients(inputs.model).attribute(
            inputs.x,
            baselines=inputs.baseline_tensor(),
            target=inputs.target,
            n_steps=o.n_steps,
            internal_batch_size=o.internal_batch_size,
            return_convergence_delta=True,
        )
        inputs.extra.update(baseline=inputs.baseline, n_steps=o.n_steps, attribution_sum=float(attr.detach().sum()))
        return MethodOutput(_reduce(attr, o.reduce), float(delta.abs().mean()))


@register
class SaliencyMethod(AttributionMethod):
    name = "saliency"
    label = "Saliency"
    help = "absolute input gradient of the class logit (one backward pass, noisy)"

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 1

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import Saliency

        attr = Saliency(inputs.model).attribute(inputs.x, target=inputs.target, abs=True)
        return MethodOutput(_reduce(attr, inputs.options.reduce))


@register
class SmoothGradMethod(AttributionMethod):
    name = "smoothgrad"
    label = "SmoothGrad"
    help = "saliency averaged over noisy copies of the image (less noisy, nt_samples passes)"
    options = ("nt_samples", "smoothgrad_base")
    default_baseline = "noise"  # used over integrated gradients only (smoothgrad_base="ig"), as for "ig"

    def used_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Over integrated gradients the map also depends on IG's baseline and steps."""
        used = super().used_options(options)
        if options.get("smoothgrad_base") == "ig":
            used |= {k: options[k] for k in ("baseline", "n_steps") if k in options}
        return used

    @staticmethod
    def _batch(options: Options) -> int:
        return min(options.nt_samples, options.internal_batch_size)

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        if options.smoothgrad_base == "saliency":
            return math.ceil(options.nt_samples / self._batch(options))
        return options.nt_samples * _ig_batches(options)

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        return options.nt_samples * (1 if options.smoothgrad_base == "saliency" else options.n_steps)

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

        o = inputs.options
        x = inputs.x.detach()
        stdev = 0.15 * float(x.max() - x.min())
        kw: dict[str, Any]
        if o.smoothgrad_base == "saliency":
            tunnel = NoiseTunnel(Saliency(inputs.model))
            kw = {"abs": True, "nt_samples_batch_size": self._batch(o)}
        else:
            tunnel = NoiseTunnel(IntegratedGradients(inputs.model))
            kw = {
                "baselines": inputs.baseline_tensor(),
                "n_steps": o.n_steps,
                "internal_batch_size": o.internal_batch_size,
                "nt_samples_batch_size": 1,
            }
        with inputs.seeded():
            attr = tunnel.attribute(
                inputs.x, nt_type="smoothgrad", nt_samples=o.nt_samples, stdevs=stdev, target=inputs.target, **kw
            )
        inputs.extra.update(smoothgrad_base=o.smoothgrad_base, nt_samples=o.nt_samples, stdev=stdev)
        return MethodOutput(_reduce(attr, o.reduce))


@register
class OcclusionMethod(AttributionMethod):
    name = "occlusion"
    label = "Occlusion"
    help = "logit drop when a sliding window is replaced by the baseline (model-agnostic, slow)"
    options = ("baseline", "occlusion_window")
    default_baseline = "black"
    input_grad = False

    @staticmethod
    def windows(options: Options, input_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(window side, stride, window positions): the window defaults to input size / 7, the stride is half."""
        window = max(1, min(int(options.occlusion_window or round(min(input_hw) / 7)), *input_hw))
        stride = max(1, window // 2)
        return window, stride, math.prod(math.ceil((s - window) / stride) + 1 for s in input_hw)

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        # the unoccluded input once, then perturbations_per_eval windows per pass
        return 1 + math.ceil(self.windows(options, input_hw)[2] / options.perturbations_per_eval)

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 1 + self.windows(options, input_hw)[2]  # one occluded copy per window position

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import Occlusion

        o = inputs.options
        window, stride, n_windows = self.windows(o, inputs.input_hw)
        c = int(inputs.x.shape[1])  # windows span all channels
        attr = Occlusion(inputs.model).attribute(
            inputs.x,
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            baselines=inputs.baseline_tensor(),
            target=inputs.target,
            perturbations_per_eval=o.perturbations_per_eval,
        )
        inputs.extra.update(baseline=inputs.baseline, window=window, stride=stride, windows=n_windows)
        return MethodOutput(attr.detach()[0].float().mean(0))  # every channel holds the same value


@register
class GradientShapMethod(AttributionMethod):
    name = "gradient_shap"
    label = "GradientSHAP"
    help = "expected gradients x (input - baseline) over random baselines and path points"
    options = ("baseline", "nt_samples")
    default_baseline = "black"

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 1 + 2  # the samples in one batch, + the convergence delta's passes at the input and the baselines

    def cost(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 3 * options.nt_samples  # the samples, + the input and a baseline per sample for the delta

    def compute(self, inputs: Inputs) -> MethodOutput:
        import torch
        from captum.attr import GradientShap

        o = inputs.options
        pool = torch.cat([inputs.baseline_tensor()] + [inputs.baseline_tensor("noise") for _ in range(3)])
        with inputs.seeded():
            attr, delta = GradientShap(inputs.model).attribute(
                inputs.x,
                baselines=pool,
                n_samples=o.nt_samples,
                stdevs=0.0,
                target=inputs.target,
                return_convergence_delta=True,
            )
        inputs.extra.update(
            baseline=inputs.baseline, n_samples=o.nt_samples, attribution_sum=float(attr.detach().sum())
        )
        return MethodOutput(_reduce(attr, o.reduce), float(delta.abs().mean()))
