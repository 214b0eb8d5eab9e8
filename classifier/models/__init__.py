"""Backbones: a registry over timm, weight sources (bundled, hub, local safetensors, none) and head replacement."""

from classifier.models.factory import (
    BuiltModel,
    build_model,
    default_weights,
    extract_features,
    freeze_bn_stats,
    pretrained_offline,
    resolve_data_config,
    set_trainable,
    set_trainable_mode,
    weight_sources,
)
from classifier.models.registry import CURATED, BackboneInfo, list_backbones, resolve_backbone

__all__ = [
    "BackboneInfo",
    "BuiltModel",
    "CURATED",
    "build_model",
    "default_weights",
    "extract_features",
    "freeze_bn_stats",
    "list_backbones",
    "pretrained_offline",
    "resolve_backbone",
    "resolve_data_config",
    "set_trainable",
    "set_trainable_mode",
    "weight_sources",
]
