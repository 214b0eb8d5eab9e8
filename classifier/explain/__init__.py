"""Attribution maps with Captum; the conventions every method follows are in `classifier.explain.core`."""

from classifier.explain.batch import explain_paths
from classifier.explain.core import (
    BASELINES,
    DEFAULT_BASELINE,
    METHOD_INFO,
    METHODS,
    REDUCTIONS,
    Attribution,
    attribute,
)
from classifier.explain.geometry import crop_box
from classifier.explain.layers import FAMILIES, VIT_GRADCAM_HELP, gradcam_layer, guess_family
from classifier.explain.render import overlay
from classifier.explain.scoring import mask_energy_ratio, peak, pointing_game

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINE",
    "FAMILIES",
    "METHODS",
    "METHOD_INFO",
    "REDUCTIONS",
    "VIT_GRADCAM_HELP",
    "Attribution",
    "attribute",
    "crop_box",
    "explain_paths",
    "gradcam_layer",
    "guess_family",
    "mask_energy_ratio",
    "overlay",
    "peak",
    "pointing_game",
]
