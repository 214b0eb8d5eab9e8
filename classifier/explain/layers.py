"""Which layer Grad-CAM explains: the backbone family of a model, the layer per family, and ViT patch tokens
reshaped to a 2-D grid (ViTs have no convolutional feature map)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from classifier.errors import ClassifierError

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
    if is_vit_like(model):
        return "vit"
    return "unknown"


def is_vit_like(model: nn.Module) -> bool:
    """Whether `model` looks like a timm ViT (patch embedding, a stack of blocks, prefix tokens): its tokens can be
    reshaped to a patch grid for Grad-CAM even when its class is not one `guess_family` knows."""
    blocks = getattr(model, "blocks", None)
    return (
        hasattr(model, "patch_embed")
        and isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) > 0
        and hasattr(model, "num_prefix_tokens")
    )


def family_of(model: nn.Module, backbone: str | None) -> str:
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


def _downsamples(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def _efficientnet_layer(model: nn.Module) -> nn.Module | None:
    """Grad-CAM's layer for a timm EfficientNet: the output of the second-to-last stage of `blocks` when the last
    stage keeps its resolution (so the map is as fine as `conv_head`'s), else `conv_head`.

    Why not `conv_head`: it is a 1x1 convolution of the last stage, so its Grad-CAM equals the last stage's, and
    that map points at the object less often than the stage before it. Measured with linear probes of
    EfficientNet-Lite0 (bench/explain_bench.py, bench/multilabel.py): pointing game on the single-object demo at
    128 px input 0.877 against 0.281, at 192 px 0.931 against 0.879 (in-mask energy 5.7 against 3.5), at 256 px
    0.933 both; on the multi-label demo scenes at 224 px 0.74-0.97 per label against 0.44-0.67 (and 0.71-0.84
    against 0.32-0.68 after the default fine-tune)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) >= 2 and not _downsamples(blocks[-1]):
        return blocks[-2]
    if hasattr(model, "conv_head"):
        return model.conv_head
    return blocks[-1] if isinstance(blocks, nn.Sequential) and len(blocks) else None


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """The qualified name of `layer` inside `model`, as reported in `Attribution.extra["layer"]`."""
    for name, m in model.named_modules():
        if m is layer:
            return name or "<model>"
    return type(layer).__name__


def gradcam_layer(model: nn.Module, family: str | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM uses for `model`: `(qualified name, module)`.

    resnet -> `layer4`; efficientnet -> the stage before the last one when the last keeps its resolution
    (`blocks.5` of EfficientNet-B0 and -Lite0-4: see `_efficientnet_layer`), else `conv_head`; mobilenet
    (MobileNetV3 applies `conv_head` after pooling, on a 1x1 map) -> the last of `blocks`;
    convnext -> `stages[-1]`; densenet -> the last module of `features` (the final norm + ReLU);
    vgg and simple_cnn -> the last Conv2d in `features`; inception -> `Mixed_7c`; anything else -> the last
    Conv2d in the model. ViT-style models have no conv feature map: see `attribute` (tokens are reshaped).
    """
    family = family or guess_family(model)
    layer: nn.Module | None = None
    if family == "resnet":
        layer = getattr(model, "layer4", None)
    elif family == "efficientnet":
        layer = _efficientnet_layer(model)
    elif family == "mobilenet":
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
    return module_name(model, layer), layer


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """A caller's layer choice (qualified name or module) as `(name, module)`; an unknown name is a user error."""
    if isinstance(layer, nn.Module):
        return module_name(model, layer), layer
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        raise ClassifierError(f"the model has no layer {layer!r}") from None


class _TokenGrid(nn.Module):
    """Identity on a (B, D, gh, gw) grid of ViT patch tokens: the 'layer' Captum's Grad-CAM hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def vit_token_grid(model: nn.Module) -> tuple[str, _TokenGrid, Any]:
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
    return module_name(model, target) + " (tokens as grid)", grid, handle


@dataclass
class CamLayer:
    """The layer Grad-CAM hooks, the family it was chosen for, and the token-grid hook to remove afterwards."""

    family: str
    name: str
    module: nn.Module
    hook: Any = None  # a RemovableHandle for ViT-style models (the caller removes it), else None


def cam_layer(model: nn.Module, backbone: str | None, layer: str | nn.Module | None) -> CamLayer:
    """Grad-CAM's layer for `model`: `layer` when the caller names one; for ViT-style models their patch tokens as
    a grid (`vit_token_grid`); otherwise `gradcam_layer` for the run's backbone family (or the guessed one)."""
    family = family_of(model, backbone)
    if layer is not None:
        name, module = resolve_layer(model, layer)
        return CamLayer(family, name, module)
    if family == "vit" or is_vit_like(model):
        if not is_vit_like(model):
            raise ClassifierError(f"Grad-CAM is not supported for this ViT backbone yet; {VIT_GRADCAM_HELP}")
        name, grid, hook = vit_token_grid(model)
        return CamLayer(family, name, grid, hook)
    name, module = gradcam_layer(model, family)
    return CamLayer(family, name, module)
