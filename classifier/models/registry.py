"""Backbone registry: curated names with a one-line description, plus pass-through to any timm model.

The curated list is what the UI offers first; any other name timm knows is accepted too. An unknown
name fails loudly with the closest matches, the way timm's own factory does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from classifier.errors import ModelError


@dataclass(frozen=True)
class BackboneInfo:
    name: str  # the name users type and configs store
    description: str
    params_m: float  # parameters in millions with the 1000-class ImageNet head
    family: str  # used to pick e.g. the Grad-CAM layer
    curated: bool = True
    bundled_weights: bool = False  # ImageNet weights ship with a pip package (works offline)
    pretrained: bool = True  # pretrained weights exist (bundled or on the Hub); False: it only trains from scratch
    hub: bool = True  # timm has pretrained weights for it on the Hugging Face Hub


CURATED: dict[str, BackboneInfo] = {}


def _register(
    name: str,
    description: str,
    params_m: float,
    family: str,
    bundled: bool = False,
    pretrained: bool = True,
    hub: bool = True,
) -> None:
    CURATED[name] = BackboneInfo(name, description, params_m, family, True, bundled, pretrained, hub)


_register(
    "efficientnet_lite0",
    "EfficientNet-Lite0: small, fast and accurate; ImageNet weights work offline",
    4.7,
    "efficientnet",
    bundled=True,
)
# Lite1/Lite2: the same family scaled up (TF's reference 240 / 260 px input); ImageNet weights from the same source
# as Lite0, in their own pip packages; timm has none on the Hub for the non-TF names.
_register(
    "efficientnet_lite1",
    "EfficientNet-Lite1: Lite0 scaled to 240 px, more accurate, slower; ImageNet weights work offline",
    5.4,
    "efficientnet",
    bundled=True,
    hub=False,
)
_register(
    "efficientnet_lite2",
    "EfficientNet-Lite2: Lite0 scaled to 260 px, more accurate still; ImageNet weights work offline",
    6.1,
    "efficientnet",
    bundled=True,
    hub=False,
)
_register("resnet18", "ResNet-18: the classic small residual network, a solid default on CPU", 11.7, "resnet")
_register("resnet50", "ResNet-50: the standard mid-size residual network", 25.6, "resnet")
_register("efficientnet_b0", "EfficientNet-B0: strong accuracy for its size", 5.3, "efficientnet")
_register("mobilenetv3_large_100", "MobileNetV3-Large: built for phones, very fast inference", 5.5, "mobilenet")
_register("convnext_tiny", "ConvNeXt-Tiny: a modern CNN, strong when fine-tuned", 28.6, "convnext")
_register("vit_small_patch16_224", "ViT-Small/16: a vision transformer; needs 224 px input", 22.1, "vit")
_register("densenet121", "DenseNet-121: densely connected CNN, compact for its depth", 8.0, "densenet")
_register("inception_v3", "Inception-v3: the GoogLeNet line; designed for 299 px input", 23.8, "inception")
_register("vgg16_bn", "VGG-16 with batch norm: large and slow, a historical reference", 138.4, "vgg")
_register(
    "simple_cnn",
    "Simple CNN: three conv/max-pool blocks and a dense-128 layer, trained from scratch",
    0.2,
    "simple",
    pretrained=False,
)


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def resolve_backbone(name: str) -> BackboneInfo:
    """Return the registry entry for `name` (curated or any timm model), or raise ModelError with close matches.

    >>> resolve_backbone("resnet18").params_m
    11.7
    """
    name = (name or "").strip()
    if name in CURATED:
        return CURATED[name]
    if name in _timm_names():
        family = name.split("_")[0].rstrip("0123456789")
        return BackboneInfo(name, f"timm model {name}", float("nan"), family, curated=False)
    candidates = list(CURATED) + sorted(_timm_names() - set(CURATED))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown backbone {name!r}.{hint} Curated choices: {', '.join(CURATED)}; "
        "any timm model name also works (`python -m classifier backbones --all` lists them)."
    )


def list_backbones(all_timm: bool = False) -> list[BackboneInfo]:
    """Curated backbones first; with `all_timm`, every other timm name after them."""
    out = list(CURATED.values())
    if all_timm:
        out += [resolve_backbone(n) for n in sorted(_timm_names()) if n not in CURATED]
    return out
