"""Backbone registry, weight sources and the bundled EfficientNet-Lite0/1/2 remapping."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image

from classifier.data.transforms import eval_transform
from classifier.errors import ModelError, WeightsError
from classifier.models import (
    CURATED,
    build_model,
    default_weights,
    pretrained_offline,
    resolve_backbone,
    set_trainable,
    weight_sources,
)
from classifier.models import weights as W
from classifier.models.factory import model_from_run_config


def _imagenet_top1(model: torch.nn.Module, data_config: dict, name: str) -> tuple[int, float]:
    img = Image.fromarray(load_sample_image(name))  # real photos shipped with scikit-learn
    with torch.no_grad():
        p = model.eval()(eval_transform(data_config)(img)[None]).softmax(1)[0]
    return int(p.argmax()), float(p.max())


@pytest.fixture(scope="module")
def bundled_imagenet():
    model = timm.create_model(W.BUNDLED_TIMM_ARCH["efficientnet_lite0"], pretrained=False)
    W.load_bundled(model)
    cfg = build_model("efficientnet_lite0", 2, "bundled").data_config
    return model, cfg


@pytest.mark.parametrize("name,side,crop", [("efficientnet_lite1", 240, 0.882), ("efficientnet_lite2", 260, 0.89)])
def test_bundled_lite1_lite2_mapping_and_preprocessing(name, side, crop):
    # Lite1/Lite2 come from the same TF source as Lite0: same padding, mean = std = 0.5, TF's input size and crop.
    # On hymenoptera's val photos (bench/bundled_check.py) this setup gives ImageNet "ant"/"bee" on 88 % of images,
    # symmetric padding 86 %, ImageNet mean/std 83-85 %. scikit-learn's flower photo reads as "honeycomb" to both
    # (a close-up of pollen), so the pinned prediction is the temple ("palace", 698), which a wrong pairing loses.
    built = build_model(name, 2, "bundled")
    assert built.timm_name == f"tf_{name}" and built.weights == "bundled"
    cfg = built.data_config
    assert cfg["input_size"] == (3, side, side) and cfg["crop_pct"] == crop
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    model = timm.create_model(W.BUNDLED_TIMM_ARCH[name], pretrained=False)
    W.load_bundled(model, name)
    cls, p = _imagenet_top1(model, cfg, "china.jpg")
    assert cls == 698 and p > 0.3
    shuffled = {k: v.clone() for k, v in model.state_dict().items()}
    for k in list(shuffled):
        if k.endswith("bn1.weight"):  # same shapes: only predictions reveal the swap
            b = k[: -len("weight")] + "bias"
            shuffled[k], shuffled[b] = shuffled[b].clone(), shuffled[k].clone()
    model.load_state_dict(shuffled)
    assert _imagenet_top1(model, cfg, "china.jpg")[0] != 698
    assert weight_sources(name) == ("bundled", "none", "file")  # timm has no Hub weights for these names
    assert pretrained_offline(name) is True and default_weights(name) == "bundled"
    with pytest.raises(WeightsError, match="bundled"):
        build_model(name, 2, "hub")


def test_bundled_mapping_gives_right_imagenet_classes(bundled_imagenet):
    model, cfg = bundled_imagenet
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    # ImageNet class 698 is "palace" (the photo is a Chinese temple), 985 is "daisy".
    assert _imagenet_top1(model, cfg, "china.jpg")[0] == 698
    cls, p = _imagenet_top1(model, cfg, "flower.jpg")
    assert cls == 985 and p > 0.2


def test_a_wrong_mapping_is_caught_by_the_same_check(bundled_imagenet):
    # Swap BN weight and bias of every layer (same shapes, so only predictions can reveal it).
    model, cfg = bundled_imagenet
    broken = timm.create_model(W.BUNDLED_TIMM_ARCH["efficientnet_lite0"], pretrained=False)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k in list(sd):
        if k.endswith("bn1.weight"):
            b = k[: -len("weight")] + "bias"
            sd[k], sd[b] = sd[b].clone(), sd[k].clone()
    broken.load_state_dict(sd)
    assert _imagenet_top1(broken, cfg, "flower.jpg")[0] != 985


def test_registry_param_counts_match_timm():
    for name in ["resnet18", "efficientnet_b0", "efficientnet_lite0", "mobilenetv3_large_100", "densenet121"]:
        m = timm.create_model(name, pretrained=False)
        assert CURATED[name].params_m == pytest.approx(sum(p.numel() for p in m.parameters()) / 1e6, abs=0.06), name


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ModelError) as e:
        resolve_backbone("resnet19")
    assert "resnet18" in str(e.value) and "Curated choices" in str(e.value)
    assert resolve_backbone("resnet34").curated is False  # any timm name passes through


def test_head_replaced_and_linear_mode_freezes_backbone():
    built = build_model("resnet18", 4, "none", img_size=64)
    assert built.model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    trainable = set_trainable(built.model, train_backbone=False)
    head = {id(p) for p in built.model.get_classifier().parameters()}
    assert {id(p) for p in trainable} == head
    assert len(set_trainable(built.model, True)) == len(list(built.model.parameters()))


def test_simple_cnn_trains_from_scratch_only():
    built = build_model("simple_cnn", 3, img_size=48)
    assert built.weights == "none"
    assert built.model(torch.zeros(2, 3, 48, 48)).shape == (2, 3)
    with pytest.raises(WeightsError):
        build_model("simple_cnn", 3, "hub")


def test_weight_sources_and_offline_follow_the_registry(monkeypatch):
    """What the Train page offers per backbone: its default among the sources, and whether internet is needed."""
    monkeypatch.setattr(W, "hub_cached", lambda name: name == "resnet50")
    assert weight_sources("simple_cnn") == ("none",) and pretrained_offline("simple_cnn") is None
    assert weight_sources("efficientnet_lite0") == ("bundled", "hub", "none", "file")
    assert pretrained_offline("efficientnet_lite0") is True  # bundled: offline whatever the cache holds
    assert weight_sources("resnet18") == ("hub", "none", "file")
    assert pretrained_offline("resnet18") is False and pretrained_offline("resnet50") is True
    for name in CURATED:
        assert default_weights(name) in weight_sources(name)
    assert not resolve_backbone("simple_cnn").pretrained and resolve_backbone("resnet18").pretrained


def test_hub_offline_fails_fast_with_offline_choices(monkeypatch):
    monkeypatch.setattr(W, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(W, "hub_cached", lambda name: False)
    with pytest.raises(WeightsError) as e:
        build_model("resnet18", 2, "hub")
    assert "bundled" in str(e.value) and "none" in str(e.value)


def test_bundled_only_for_efficientnet_lite():
    with pytest.raises(WeightsError, match="no bundled weights"):
        build_model("resnet18", 2, "bundled")


def test_local_safetensors_weights_load_and_mismatch_is_clear(tmp_path):
    src = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / "r18.safetensors"
    save_file(src.state_dict(), str(path))
    built = build_model("resnet18", 3, str(path))  # head differs (7 vs 3 classes): backbone loads, head is new
    assert torch.equal(built.model.conv1.weight, src.conv1.weight)
    with pytest.raises(WeightsError, match="does not fit"):
        build_model("efficientnet_b0", 3, str(path))


def test_pickle_weights_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(WeightsError):
        build_model("resnet18", 2, str(bad))
    pt = tmp_path / "evil.pth"
    pt.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(WeightsError, match="safetensors"):
        build_model("resnet18", 2, str(pt))
    assert not marker.exists()


def test_oversized_safetensors_header_refused(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError, match="header"):
        W.read_safetensors(path)


def test_run_model_rebuild_checks_class_count():
    built = build_model("simple_cnn", 3, "none", img_size=32)
    config = {"timm_name": "simple_cnn", "num_classes": 3, "class_names": ["a", "b", "c"], "train": {}}
    state = built.model.state_dict()
    rebuilt = model_from_run_config(config, state)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    assert torch.allclose(rebuilt(x), built.model.eval()(x))
    with pytest.raises(WeightsError):
        model_from_run_config({**config, "num_classes": 4, "class_names": list("abcd")}, state)
