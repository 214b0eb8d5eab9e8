"""Build a backbone with a fresh head for the dataset's classes, and decide which parameters train.

`build_model` is the one place that turns (backbone name, weight source, class count) into a model and
the data config its preprocessing must use. Prediction and attribution rebuild models the same way from
a run's `config.json`, so the transforms at inference always match training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from classifier.errors import ModelError, WeightsError
from classifier.models import weights as W
from classifier.models.registry import BackboneInfo, resolve_backbone
from classifier.models.simple_cnn import SimpleCNN


@dataclass
class BuiltModel:
    model: nn.Module
    info: BackboneInfo
    timm_name: str  # the architecture actually instantiated (may differ for bundled weights)
    weights: str  # the resolved weight source: bundled | hub | none | a path
    data_config: dict[str, Any]  # input_size, interpolation, mean, std, crop_pct, crop_mode


def default_weights(backbone: str) -> str:
    """`bundled` where a package ships weights (efficientnet_lite0/1/2), `none` without pretrained weights
    (simple_cnn), `hub` otherwise."""
    info = resolve_backbone(backbone)
    if info.bundled_weights:
        return "bundled"
    return "hub" if info.pretrained else "none"


def weight_sources(backbone: str) -> tuple[str, ...]:
    """The weight sources to offer for `backbone`: `bundled` where shipped, `hub`, `none` and `file` (a local
    .safetensors path); only `none` for a backbone without pretrained weights, which trains from scratch."""
    info = resolve_backbone(backbone)
    if not info.pretrained:
        return ("none",)
    return ("bundled",) * info.bundled_weights + ("hub",) * info.hub + ("none", "file")


def pretrained_offline(backbone: str) -> bool | None:
    """Whether `backbone`'s pretrained weights load without internet (bundled, or already in the local Hugging Face
    cache); None when it has none to load (it trains from scratch, so internet is not needed)."""
    info = resolve_backbone(backbone)
    if not info.pretrained:
        return None
    return info.bundled_weights or W.hub_cached(info.name)


def _create(timm_name: str, num_classes: int, drop_rate: float, pretrained: bool) -> nn.Module:
    if timm_name == "simple_cnn":
        return SimpleCNN(num_classes=num_classes, drop_rate=drop_rate)
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)
    except RuntimeError as e:
        if pretrained and ("Hub" in str(e) or "connection" in str(e).lower() or "offline" in str(e).lower()):
            raise WeightsError(W.offline_hint(timm_name)) from e
        raise ModelError(f"could not build backbone {timm_name!r}: {e}") from e


def build_model(
    backbone: str,
    num_classes: int,
    weights: str | None = None,
    *,
    drop_rate: float = 0.0,
    img_size: int | None = None,
) -> BuiltModel:
    """Create `backbone` with a `num_classes` head and load `weights` (bundled | hub | none | PATH.safetensors).

    >>> built = build_model("simple_cnn", num_classes=3, weights="none", img_size=64)
    >>> built.data_config["input_size"]
    (3, 64, 64)
    """
    info = resolve_backbone(backbone)
    weights = weights or default_weights(info.name)
    timm_name = info.name
    if weights == "bundled":
        if info.name not in W.BUNDLED_TIMM_ARCH:
            raise WeightsError(
                f"no bundled weights for {info.name!r}; bundled weights exist for: {', '.join(W.BUNDLED_TIMM_ARCH)}. "
                "Choose the weight source 'hub' (needs internet), a local .safetensors file, or 'none'."
            )
        timm_name = W.BUNDLED_TIMM_ARCH[info.name]
        model = _create(timm_name, 1000, drop_rate, pretrained=False)
        W.load_bundled(model, info.name)
        model.reset_classifier(num_classes)
    elif weights == "hub":
        if not info.hub and info.pretrained:
            raise WeightsError(f"{info.name} has no weights on the Hugging Face Hub; use --weights bundled (offline)")
        if not info.pretrained:
            raise WeightsError(f"{info.name} has no pretrained weights; it trains from scratch (weight source 'none')")
        if not W.hub_cached(timm_name) and not W.hub_reachable():
            raise WeightsError(W.offline_hint(info.name))
        model = _create(timm_name, num_classes, drop_rate, pretrained=True)
    elif weights == "none":
        model = _create(timm_name, num_classes, drop_rate, pretrained=False)
    else:
        path = Path(weights)
        if path.suffix.lower() != ".safetensors":
            raise WeightsError(
                f"weights {weights!r}: expected bundled, hub, none or a path to a .safetensors file "
                "(pickled .pt/.pth/.bin files are refused for safety)"
            )
        state = W.read_safetensors(path)
        model = _create(timm_name, num_classes, drop_rate, pretrained=False)
        W.load_state_checked(model, state, str(path), allow_head_mismatch=True)
    data_config = resolve_data_config(model, img_size=img_size, bundled=weights == "bundled")
    return BuiltModel(model, info, timm_name, weights, data_config)


def resolve_data_config(model: nn.Module, img_size: int | None = None, bundled: bool = False) -> dict[str, Any]:
    """The model's own preprocessing (timm's pretrained config), with the image size overridden if asked."""
    cfg = dict(timm.data.resolve_data_config({}, model=model))
    if bundled:
        cfg.update(W.BUNDLED_DATA_CONFIG)
    if img_size:
        cfg["input_size"] = (cfg["input_size"][0], int(img_size), int(img_size))
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "crop_mode": str(cfg.get("crop_mode", "center")),
    }


@dataclass(frozen=True)
class ArchitectureProbe:
    """What a dry run of an architecture tells before anything is trained (see `probe_architecture`)."""

    input_size: tuple[int, int, int]
    params: int
    trainable_head_params: int
    activation_bytes: int  # per image: float32 outputs of every leaf module in training mode (kept for backward)
    largest_output_bytes: int  # per image: the largest single leaf output (what an inference pass holds at most)


@functools.lru_cache(maxsize=64)
def probe_architecture(
    backbone: str, num_classes: int, weights: str | None = None, img_size: int | None = None
) -> ArchitectureProbe:
    """Build the architecture on PyTorch's meta device (shapes only: no memory, no weights, no download) and run a
    forward pass of two images at the run's input size. About 0.1-0.4 s for the curated backbones on this project's
    CPU. Raises ModelError naming the size when the architecture cannot take that input (inception_v3 below 75 px,
    a ViT at another size than it was built for)."""
    info = resolve_backbone(backbone)
    weights = weights or default_weights(info.name)
    timm_name = W.BUNDLED_TIMM_ARCH.get(info.name, info.name) if weights == "bundled" else info.name
    with torch.device("meta"):
        model = _create(timm_name, num_classes, 0.0, pretrained=False)
    data_config = resolve_data_config(model, img_size=img_size, bundled=weights == "bundled")
    size = data_config["input_size"]
    outputs: list[int] = []

    def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs.append(out.numel() // 2)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        model.train()
        model(torch.empty(2, *size, device="meta"))
    except (RuntimeError, AssertionError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{info.name} cannot take {size[-1]} px images: {first}") from e
    finally:
        for h in hooks:
            h.remove()
    head = model.get_classifier()
    return ArchitectureProbe(
        input_size=tuple(int(v) for v in size),
        params=sum(p.numel() for p in model.parameters()),
        trainable_head_params=sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0,
        activation_bytes=4 * sum(outputs),
        largest_output_bytes=4 * max(outputs, default=0),
    )


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_classifier().parameters())


def set_trainable(model: nn.Module, train_backbone: bool) -> list[nn.Parameter]:
    """Freeze or unfreeze the backbone (the head always trains); return the parameters that train."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(train_backbone or id(p) in head)
    return [p for p in model.parameters() if p.requires_grad]


PARTIAL_GROUPS = 3  # "partial" trains the last two stages of the body and the head


def layer_groups(model: nn.Module) -> list[list[str]]:
    """The model's parameter names in coarse groups from input to output (stem, each stage, head): timm's own
    grouping (`group_matcher`, what layer-wise LR decay uses); one group per child module for other models."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        from timm.models import group_parameters

        return [list(names) for names in group_parameters(model, matcher(coarse=True)).values()]
    children = [(c, m) for c, m in model.named_children() if next(m.parameters(), None) is not None]
    return [[f"{c}.{n}" for n, _ in m.named_parameters()] for c, m in children]


def set_trainable_mode(model: nn.Module, mode: str, train_backbone: bool = True) -> list[nn.Parameter]:
    """What trains in `mode`: the head alone (linear, or any mode while `train_backbone` is off for a head
    warm-up), the last `PARTIAL_GROUPS` groups of `layer_groups` (partial; the head is always among them), or
    everything (finetune). Returns the parameters that train."""
    if mode != "partial" or not train_backbone:
        return set_trainable(model, train_backbone and mode == "finetune")
    names = {n for group in layer_groups(model)[-PARTIAL_GROUPS:] for n in group}
    head = {id(p) for p in head_parameters(model)}
    for n, p in model.named_parameters():
        p.requires_grad_(n in names or id(p) in head)
    return [p for p in model.parameters() if p.requires_grad]


def freeze_bn_stats(model: nn.Module) -> None:
    """Keep BatchNorm running stats fixed in frozen parts: a few small batches would only spoil them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def extract_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-logit features (what the head sees), for the fast linear probe."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def model_from_run_config(
    config: dict[str, Any], state: dict[str, torch.Tensor] | None = None, source: str = "the run's weights"
) -> nn.Module:
    """Rebuild a trained run's architecture (no download) and load its weights strictly (keys, shapes, classes).

    `source` names the weights file in error messages.
    """
    model = _create(
        config["timm_name"], int(config["num_classes"]), float(config["train"].get("drop_rate", 0.0)), pretrained=False
    )
    if state is not None:
        head = model.get_classifier()
        n_classes = len(config["class_names"])
        n_out = getattr(head, "out_features", None)
        if n_out is not None and n_out != n_classes:
            raise WeightsError(f"model head has {n_out} outputs but the run names {n_classes} classes")
        head_weight = next((f"{name}.weight" for name, mod in model.named_modules() if mod is head), None)
        found = state.get(head_weight) if head_weight else None
        if found is not None and found.ndim >= 1 and found.shape[0] != n_classes:
            raise WeightsError(
                f"{source} has a classifier head for {found.shape[0]} classes but the run names {n_classes} "
                f"({', '.join(map(str, config['class_names']))}); these weights belong to another run"
            )
        W.load_state_checked(model, state, source, allow_head_mismatch=False)
    return model.eval()
