"""Attribution maps for a trained run (or any image classifier), computed with Captum.

    >>> run = load_run("runs/r1")  # doctest: +SKIP
    >>> a = attribute(run, "ant.jpg", "gradcam")  # doctest: +SKIP
    >>> a.map.shape  # the original image's (EXIF-upright) height and width  # doctest: +SKIP
    (375, 500)
    >>> overlay(load_image("ant.jpg"), a.map).save("ant_gradcam.png")  # doctest: +SKIP

All attribution maths is Captum's; this package prepares the input exactly as validation saw it, picks the
layer, target and baseline, reduces the result to one 2-D map and puts that map back onto the original image.

Conventions (the same for every method):

- **What is explained**: the model's raw logit for the target class (not the softmax probability).
  `target=None` explains the predicted class; a class name is looked up in the run's class names. For a
  multi-label run each label is its own target (its logit; the probability reported is that label's sigmoid), and
  `target=None` explains the most probable label.
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
  one is given, integrated gradients start from noise and occlusion and GradientSHAP from black (each method
  class's `default_baseline`, chosen by the pointing game on the demo dataset).
- **Randomness** (SmoothGrad, GradientSHAP, noise baselines) comes from `seed` through a forked RNG, so the
  same call gives the same map and the global torch RNG is left untouched.
- The model is put in eval mode (its previous mode is restored), gradients are enabled even inside a caller's
  `torch.no_grad()`, only the input requires grad (parameters' flags are restored afterwards), and no hook
  stays on the model: Captum removes its own, and the one this package adds for ViT Grad-CAM is removed too.

Modules, one concern each: `methods` (one class per method in the `METHODS` registry: label, help, options,
default baseline, forward passes, the Captum call; a new method is one `@register`ed class there), `core`
(`attribute`), `baselines`, `layers` (backbone family, Grad-CAM layer, ViT token grid), `geometry` (crop box,
placing the map), `render` (`overlay`), `scoring` (`peak`, `pointing_game`, `mask_energy_ratio`), `batch`
(`explain_paths`, the CLI's).

The public names below are loaded from their module on first use: importing the registry (which the CLI reads
to build its argument parser) must not import torch and Captum, which takes seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from classifier.lazy import lazy_exports

if TYPE_CHECKING:  # the same names, statically: for type checkers and for the import graph (tests/test_layers.py)
    from classifier.explain.baselines import BASELINES
    from classifier.explain.batch import explain_paths
    from classifier.explain.core import Attribution, attribute, cost_order
    from classifier.explain.geometry import crop_box
    from classifier.explain.layers import FAMILIES, VIT_GRADCAM_HELP, gradcam_layer, guess_family
    from classifier.explain.methods import (
        METHODS,
        REDUCTIONS,
        AttributionMethod,
        Inputs,
        MethodOutput,
        Options,
        get_method,
        methods_using,
        register,
    )
    from classifier.explain.render import colour_scale, overlay
    from classifier.explain.scoring import mask_energy_ratio, peak, pointing_game

_OWNER = {  # public name -> the module that owns it
    "Attribution": "core",
    "attribute": "core",
    "cost_order": "core",
    "METHODS": "methods",
    "REDUCTIONS": "methods",
    "AttributionMethod": "methods",
    "Inputs": "methods",
    "MethodOutput": "methods",
    "Options": "methods",
    "get_method": "methods",
    "methods_using": "methods",
    "register": "methods",
    "BASELINES": "baselines",
    "FAMILIES": "layers",
    "VIT_GRADCAM_HELP": "layers",
    "gradcam_layer": "layers",
    "guess_family": "layers",
    "crop_box": "geometry",
    "overlay": "render",
    "colour_scale": "render",
    "mask_energy_ratio": "scoring",
    "peak": "scoring",
    "pointing_game": "scoring",
    "explain_paths": "batch",
}
__all__ = [
    "Attribution",
    "AttributionMethod",
    "BASELINES",
    "FAMILIES",
    "Inputs",
    "METHODS",
    "MethodOutput",
    "Options",
    "REDUCTIONS",
    "VIT_GRADCAM_HELP",
    "attribute",
    "colour_scale",
    "cost_order",
    "crop_box",
    "explain_paths",
    "get_method",
    "gradcam_layer",
    "guess_family",
    "mask_energy_ratio",
    "methods_using",
    "overlay",
    "peak",
    "pointing_game",
    "register",
]

__getattr__, __dir__ = lazy_exports(__name__, _OWNER)
