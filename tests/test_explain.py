"""Attribution maps: exact answers on hand-built models, the method registry driving attribute(), the app and the
CLI, geometry back onto the original image, layer choice per backbone, display and evaluation helpers, and a
pointing-game check on a model trained on the demo dataset."""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from classifier.data.transforms import eval_transform
from classifier.errors import ClassifierError
from classifier.explain import (
    BASELINES,
    METHODS,
    Attribution,
    AttributionMethod,
    Inputs,
    MethodOutput,
    Options,
    attribute,
    crop_box,
    explain_paths,
    gradcam_layer,
    guess_family,
    mask_energy_ratio,
    methods_using,
    overlay,
    peak,
    pointing_game,
    register,
)
from classifier.explain.methods import OPTION_NAMES
from classifier.predict import LoadedRun

SIZE = 32
# crop_pct 1 and an image of the input size: the eval transform is only ToTensor + Normalize, so maps are exact
IDENTITY_DC = {
    "input_size": (3, SIZE, SIZE),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
}
GREY = 200  # pixel value of the test images: normalised (200/255 - 0.5) / 0.5
X = (GREY / 255 - 0.5) / 0.5
BLACK = -1.0  # black in normalised space


class Quadrant(nn.Module):
    """Logit 1 = sum over the top-left quadrant of the channel-summed input; logit 0 = its negative.

    Linear, so every gradient method has a closed-form answer: d logit1 / dx = 1 inside the quadrant, 0 outside.
    """

    def __init__(self, size: int = SIZE):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)
        mask = torch.zeros(size, size)
        mask[: size // 2, : size // 2] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (self.conv(x)[:, 0] * self.mask).sum((1, 2))
        return torch.stack([-q, q], 1)


class Bright(nn.Module):
    """Logit 1 = mean brightness above mid-grey (ReLU of the channel mean), logit 0 = its negative.

    Its conv output is exactly the normalised channel mean, so Grad-CAM of class 1 is positive exactly where the
    image is brighter than mid-grey, and of class 0 exactly where it is darker.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.conv(x)).mean((1, 2, 3))
        return torch.stack([-s, s], 1)


def grey(size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    return Image.new("RGB", size, (GREY,) * 3)


def square_image(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """Black image (width, height) with a white box (left, top, right, bottom)."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(arr, "RGB")


def quadrant_mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[: SIZE // 2, : SIZE // 2] = True
    return m


def centroid(amap: np.ndarray) -> tuple[float, float]:
    w = np.clip(amap, 0, None)
    ys, xs = np.indices(w.shape)
    return float((ys * w).sum() / w.sum()), float((xs * w).sum() / w.sum())


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks and not m._backward_pre_hooks
        for m in model.modules()
    )


# ----------------------------------------------------------------------------------- exact answers


def test_methods_listed_with_descriptions():
    assert tuple(METHODS) == ("gradcam", "guided_gradcam", "ig", "saliency", "smoothgrad", "occlusion", "gradient_shap")
    assert all(len(METHODS[m].help) > 20 for m in METHODS)


def test_saliency_is_exactly_the_quadrant():
    a = attribute(Quadrant(), grey(), "saliency", data_config=IDENTITY_DC)
    assert isinstance(a, Attribution) and a.map.dtype == np.float32 and a.map.shape == (SIZE, SIZE)
    assert a.target == 1 and a.delta is None  # target None -> the predicted class
    expected = np.where(quadrant_mask(), 3.0, 0.0)  # |gradient| summed over 3 channels
    np.testing.assert_allclose(a.map, expected, atol=1e-6)


def test_integrated_gradients_exact_and_complete():
    model = Quadrant()
    a = attribute(model, grey(), "ig", data_config=IDENTITY_DC, baseline="black", n_steps=8, internal_batch_size=3)
    np.testing.assert_allclose(a.map, np.where(quadrant_mask(), 3 * (X - BLACK), 0.0), rtol=1e-5, atol=1e-6)
    # completeness: attributions sum to f(x) - f(baseline), computed here independently of Captum
    n = (SIZE // 2) ** 2
    f_x, f_black = 3 * n * X, 3 * n * BLACK
    assert a.extra["attribution_sum"] == pytest.approx(f_x - f_black, rel=1e-5)
    assert a.extra["logit"] == pytest.approx(f_x, rel=1e-5)
    assert a.delta is not None and a.delta < 1e-3
    assert a.extra["evaluations"] == 1 + 3 + 2  # predict, ceil(8 / 3) IG batches, delta at input and baseline


@pytest.mark.parametrize(("method", "expected"), [("ig", "noise"), ("occlusion", "black"), ("gradient_shap", "black")])
def test_default_baseline_per_method(method, expected):
    a = attribute(Quadrant(), grey(), method, data_config=IDENTITY_DC, n_steps=4, nt_samples=2)
    assert a.extra["baseline"] == expected
    b = attribute(Quadrant(), grey(), method, data_config=IDENTITY_DC, n_steps=4, nt_samples=2, baseline=expected)
    np.testing.assert_array_equal(a.map, b.map)


@pytest.mark.parametrize("baseline", ["blur", "noise"])
def test_integrated_gradients_other_baselines_stay_in_quadrant(baseline):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    a = attribute(Quadrant(), img, "ig", 1, data_config=IDENTITY_DC, baseline=baseline, reduce="sum")
    assert np.all(a.map[~quadrant_mask()] == 0) and np.abs(a.map[quadrant_mask()]).sum() > 0
    assert a.delta < 1e-3  # linear model: the path integral is exact


@pytest.mark.parametrize("base", ["saliency", "ig"])
def test_smoothgrad_exact_and_seeded(base):
    kw = {"data_config": IDENTITY_DC, "smoothgrad_base": base, "nt_samples": 4, "n_steps": 4}
    a = attribute(Quadrant(), grey(), "smoothgrad", **kw)
    if base == "saliency":  # the gradient is the same for every noisy copy
        np.testing.assert_allclose(a.map, np.where(quadrant_mask(), 3.0, 0.0), atol=1e-6)
    else:
        assert np.all(a.map[~quadrant_mask()] == 0) and np.all(a.map[quadrant_mask()] > 0)
    model = Quadrant()  # (building it draws from the global RNG)
    state = torch.random.get_rng_state()
    b = attribute(model, grey(), "smoothgrad", **kw)
    np.testing.assert_array_equal(a.map, b.map)  # same seed, same map
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_gradient_shap_exact():
    a = attribute(Quadrant(), grey(), "gradient_shap", data_config=IDENTITY_DC, nt_samples=6)
    assert np.all(a.map[~quadrant_mask()] == 0)
    assert np.all(a.map[quadrant_mask()] > 0)
    assert a.delta is not None and a.delta < 1e-3  # linear: gradient x (input - baseline) is exact per sample
    model = Quadrant()  # (building it draws from torch's global RNG)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    b = attribute(model, grey(), "gradient_shap", data_config=IDENTITY_DC, nt_samples=6)
    np.testing.assert_array_equal(a.map, b.map)  # Captum draws from numpy's global RNG: seeded, then restored
    np.testing.assert_array_equal(np_state, np.random.get_state()[1])
    assert torch.equal(torch_state, torch.random.get_rng_state())


def test_occlusion_exact():
    a = attribute(Quadrant(), grey(), "occlusion", data_config=IDENTITY_DC, perturbations_per_eval=7)
    w, s = a.extra["window"], a.extra["stride"]
    assert (w, s) == (5, 2)  # round(32 / 7), half of it
    # a pixel whose covering windows all lie inside the quadrant: each window drops the logit by 3 w^2 (x - b)
    assert a.map[8, 8] == pytest.approx(3 * w * w * (X - BLACK), rel=1e-5)
    far = np.ones((SIZE, SIZE), bool)
    far[: SIZE // 2 + w - 1, : SIZE // 2 + w - 1] = False
    assert np.all(a.map[far] == 0)  # no window reaching the quadrant covers these pixels
    assert mask_energy_ratio(a.map, quadrant_mask()) > 0.75 / 0.25  # >75 % of the mass in 25 % of the area


def test_gradcam_exact_region_and_target_by_name():
    box = (20, 8, 28, 16)
    img = square_image((SIZE, SIZE), box)
    square = np.zeros((SIZE, SIZE), bool)
    square[8:16, 20:28] = True
    a = attribute(Bright(), img, "gradcam", "bright", data_config=IDENTITY_DC, class_names=["dark", "bright"])
    assert a.extra["layer"] == "conv" and a.target == 1 and a.target_name == "bright"
    np.testing.assert_array_equal(a.map > 0, square)
    d = attribute(Bright(), img, "gradcam", "dark", data_config=IDENTITY_DC, class_names=["dark", "bright"])
    np.testing.assert_array_equal(d.map > 0, ~square)  # the dark class points at the dark pixels
    with pytest.raises(ClassifierError, match="unknown target class 'cat'.*dark, bright"):
        attribute(Bright(), img, "gradcam", "cat", data_config=IDENTITY_DC, class_names=["dark", "bright"])
    with pytest.raises(ClassifierError, match="out of range"):
        attribute(Bright(), img, "gradcam", 5, data_config=IDENTITY_DC)


def test_guided_gradcam_exact_region():
    img = square_image((SIZE, SIZE), (4, 20, 12, 30))
    square = np.zeros((SIZE, SIZE), bool)
    square[20:30, 4:12] = True
    model = Bright()
    a = attribute(model, img, "guided_gradcam", data_config=IDENTITY_DC)
    np.testing.assert_array_equal(a.map > 0, square)
    assert no_hooks(model)  # Captum's ReLU hooks are gone


def test_model_state_restored_and_works_under_no_grad():
    model = Bright().train()
    with torch.no_grad():
        a = attribute(model, square_image((SIZE, SIZE), (0, 0, 8, 8)), "saliency", data_config=IDENTITY_DC)
    assert a.map.max() > 0
    assert model.training and all(p.requires_grad for p in model.parameters()) and no_hooks(model)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(Bright(), grey(), "lime", data_config=IDENTITY_DC)
    with pytest.raises(ValueError, match="unknown baseline"):
        attribute(Bright(), grey(), "ig", data_config=IDENTITY_DC, baseline="white")
    with pytest.raises(ValueError, match="data_config"):
        attribute(Bright(), grey(), "ig")


def test_progress_counts_forward_passes():
    calls: list[tuple[int, int]] = []
    a = attribute(Quadrant(), grey(), "occlusion", data_config=IDENTITY_DC, progress=lambda d, t: calls.append((d, t)))
    total = 1 + 1 + int(np.ceil(a.extra["windows"] / 16))
    assert calls[-1] == (total, total) and a.extra["evaluations"] == total
    assert all(t == total and d <= t for d, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)


# ------------------------------------------------------------------------------------------ registry

# What the Explain page's cache key held per method before the registry (ui/explain.py's OPTIONS_USED), from the
# page's options: the registry must give the same, so switching a setting recomputes exactly the maps it changes.
PAGE_OPTIONS = {"baseline": None, "n_steps": 32, "nt_samples": 8, "occlusion_window": 5}
PAGE_CACHE_KEYS = {
    "gradcam": set(),
    "guided_gradcam": set(),
    "saliency": set(),
    "ig": {"baseline", "n_steps"},
    "smoothgrad": {"nt_samples"},
    "occlusion": {"baseline", "occlusion_window"},
    "gradient_shap": {"baseline", "nt_samples"},
}


def explain_choices() -> dict[str, argparse.Action]:
    """The `explain` subcommand's options, by flag, from the CLI's real parser."""
    from classifier.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[0]: a for a in sub.choices["explain"]._actions if a.option_strings}


def test_every_method_declares_what_the_app_and_cli_show():
    options = Options(
        n_steps=8,
        internal_batch_size=4,
        nt_samples=4,
        smoothgrad_base="saliency",
        occlusion_window=None,
        perturbations_per_eval=16,
        reduce="abs",
        layer=None,
        seed=0,
    )
    for name, m in METHODS.items():
        assert isinstance(m, AttributionMethod) and m.name == name
        assert m.label and not m.help.startswith(m.label)  # shown as "**label**: help"
        assert set(m.options) <= OPTION_NAMES
        assert m.default_baseline is None or m.default_baseline in BASELINES
        assert ("baseline" in m.options) <= (m.default_baseline is not None)
        assert m.forward_passes(options, (SIZE, SIZE)) >= 1
    assert {m: set(METHODS[m].used_options(PAGE_OPTIONS)) for m in PAGE_CACHE_KEYS} == PAGE_CACHE_KEYS
    over_ig = METHODS["smoothgrad"].used_options({**PAGE_OPTIONS, "smoothgrad_base": "ig"})
    assert set(over_ig) == {"nt_samples", "smoothgrad_base", "baseline", "n_steps"}  # IG's settings matter then
    assert [m.name for m in methods_using("baseline")] == ["ig", "occlusion", "gradient_shap"]


def test_cli_choices_come_from_the_registry():
    flags = explain_choices()
    assert flags["--method"].choices == list(METHODS)
    assert flags["--baseline"].choices == list(BASELINES)
    assert "noise for ig" in flags["--baseline"].help and "black for occlusion" in flags["--baseline"].help


def test_registry_and_cli_parser_import_without_torch():
    """The CLI builds its parser from the registry on every call: that must not cost seconds of torch imports."""
    code = (
        "import sys; from classifier.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'captum', 'numpy') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class GradientTimesDelta(AttributionMethod):
    """A method defined outside the package: the input gradient times (input - baseline), i.e. one step of
    integrated gradients. On the linear Quadrant model it equals integrated gradients exactly."""

    name = "grad_x_delta"
    label = "Gradient x delta"
    help = "the input gradient times (input - baseline): one step of integrated gradients"
    options = ("baseline",)
    default_baseline = "black"

    def forward_passes(self, options: Options, input_hw: tuple[int, int]) -> int:
        return 1

    def compute(self, inputs: Inputs) -> MethodOutput:
        from captum.attr import Saliency

        grad = Saliency(inputs.model).attribute(inputs.x, target=inputs.target, abs=False)
        inputs.extra["baseline"] = inputs.baseline
        return MethodOutput((grad * (inputs.x.detach() - inputs.baseline_tensor())).detach()[0].abs().sum(0))


@pytest.fixture
def extra_method():
    assert GradientTimesDelta.name not in METHODS
    register(GradientTimesDelta)
    try:
        yield GradientTimesDelta.name
    finally:
        METHODS.pop(GradientTimesDelta.name, None)


def test_one_class_adds_a_method_everywhere(extra_method, tmp_path):
    from ui.explain import baseline_help, method_help

    assert list(METHODS)[-1] == extra_method
    assert explain_choices()["--method"].choices[-1] == extra_method
    assert "black for grad_x_delta" in explain_choices()["--baseline"].help
    assert "**Gradient x delta**: the input gradient" in method_help() and "Gradient x delta" in baseline_help()
    calls: list[tuple[int, int]] = []
    a = attribute(Quadrant(), grey(), extra_method, data_config=IDENTITY_DC, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(a.map, np.where(quadrant_mask(), 3 * (X - BLACK), 0.0), rtol=1e-5, atol=1e-6)
    assert a.method == extra_method and a.extra["baseline"] == "black" and a.delta is None
    assert a.extra["evaluations"] == 2 and calls[-1] == (2, 2)  # the prediction + the declared pass
    noisy = attribute(Quadrant(), grey(), extra_method, data_config=IDENTITY_DC, baseline="noise")
    assert noisy.extra["baseline"] == "noise" and not np.array_equal(noisy.map, a.map)
    with pytest.raises(ValueError, match="unknown baseline"):
        attribute(Quadrant(), grey(), extra_method, data_config=IDENTITY_DC, baseline="white")
    config = {"data_config": IDENTITY_DC, "class_names": ["a", "b"]}
    run = LoadedRun(tmp_path, config, Quadrant(), eval_transform(IDENTITY_DC), torch.device("cpu"))
    grey().save(tmp_path / "g.png")
    [row] = explain_paths(run, [tmp_path / "g.png"], extra_method, out_dir=tmp_path / "out")
    assert row["method"] == extra_method and np.load(row["npy"]).shape == (SIZE, SIZE)


def test_register_refuses_half_declared_methods():
    class NoHelp(GradientTimesDelta):
        name = "no_help"
        help = ""

    class Taken(GradientTimesDelta):
        name = "ig"

    class BadOption(GradientTimesDelta):
        name = "bad_option"
        options = ("n_step",)

    class NoDefault(GradientTimesDelta):
        name = "no_default"
        default_baseline = None

    class Abstract(AttributionMethod):
        name, label, help = "abstract", "Abstract", "no compute"

    with pytest.raises(TypeError, match="non-empty string help"):
        register(NoHelp)
    with pytest.raises(ValueError, match="'ig' is already registered"):
        register(Taken)
    with pytest.raises(ValueError, match="n_step"):
        register(BadOption)
    with pytest.raises(ValueError, match="needs a default_baseline"):
        register(NoDefault)
    with pytest.raises(TypeError, match="abstract"):
        register(Abstract)
    assert tuple(METHODS) == ("gradcam", "guided_gradcam", "ig", "saliency", "smoothgrad", "occlusion", "gradient_shap")


# ------------------------------------------------------------------------------------------ geometry


DC64 = {**IDENTITY_DC, "input_size": (3, 64, 64), "crop_pct": 0.875}


def test_crop_box_by_hand():
    # shorter side 200 -> floor(64 / 0.875) = 73, longer 300 -> int(73 * 1.5) = 109; crop 64 at round(22.5) = 22,
    # round(4.5) = 4; back to original pixels: 22 * 300/109, 4 * 200/73, 86 * 300/109, 68 * 200/73
    assert crop_box((300, 200), DC64) == (61, 11, 237, 186)
    assert crop_box((200, 300), DC64) == (11, 61, 186, 237)
    assert crop_box((64, 64), IDENTITY_DC | {"input_size": (3, 64, 64)}) == (0, 0, 64, 64)
    assert crop_box((300, 200), DC64 | {"crop_mode": "squash"}) == (16, 11, 279, 186)
    left, top, right, bottom = crop_box((300, 200), DC64 | {"crop_mode": "border"})
    assert top < 0 < 200 < bottom and 0 < left < right < 300  # the longer side fits; above and below is padding


@pytest.mark.parametrize("mode", ["center", "squash"])
@pytest.mark.parametrize("size", [(250, 180), (180, 250), (90, 60)])
def test_crop_box_matches_the_real_transform(size, mode):
    """Pixels that encode their own coordinates, sent through the eval transform (nearest resampling)."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    img = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8), "RGB")
    dc = {**DC64, "interpolation": "nearest", "mean": (0, 0, 0), "std": (1, 1, 1), "crop_mode": mode}
    out = (eval_transform(dc)(img) * 255).round()
    left, top, right, bottom = crop_box(size, dc)
    step_x, step_y = (right - left) / 64, (bottom - top) / 64  # original pixels per input pixel
    assert abs(out[0, 0, 0] - left) <= step_x + 1 and abs(out[0, 0, -1] - (right - 1)) <= step_x + 1
    assert abs(out[1, 0, 0] - top) <= step_y + 1 and abs(out[1, -1, 0] - (bottom - 1)) <= step_y + 1


def test_map_lands_on_the_original_image():
    box = (200, 120, 230, 150)
    img = square_image((300, 200), box)
    a = attribute(Bright(), img, "gradcam", data_config=DC64)
    assert a.map.shape == (200, 300)
    left, top, right, bottom = crop_box(img.size, DC64)
    outside = np.ones(a.map.shape, bool)
    outside[top:bottom, left:right] = False
    assert np.all(a.map[outside] == 0)
    y, x = peak(a.map)
    assert box[0] <= x < box[2] and box[1] <= y < box[3]
    cy, cx = centroid(a.map)
    assert abs(cx - 214.5) < 2 and abs(cy - 134.5) < 2


def test_exif_rotated_jpeg_gives_upright_map(tmp_path):
    stored = square_image((300, 200), (200, 120, 230, 150))  # stored sideways; EXIF 6 = rotate 90 deg clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    a = attribute(Bright(), path, "gradcam", data_config=DC64)
    assert a.map.shape == (300, 200)
    # clockwise rotation: stored (x, y) -> upright (H - 1 - y, x); the square's centre (214.5, 134.5) -> (64.5, 214.5)
    cy, cx = centroid(a.map)
    assert abs(cx - 64.5) < 3 and abs(cy - 214.5) < 3


# ------------------------------------------------------------------------------- backbones and layers


@pytest.mark.parametrize(
    "backbone, layer",
    [
        ("resnet18", "layer4"),
        ("efficientnet_lite0", "blocks.5"),  # the stage before the last: it points better (see _efficientnet_layer)
        ("tf_efficientnet_lite0", "blocks.5"),
        ("tf_efficientnetv2_b0", "conv_head"),  # its last stage halves the resolution: blocks.4 would be coarser
        ("mobilenetv3_large_100", "blocks.6"),
        ("convnext_tiny", "stages.3"),
        ("simple_cnn", "features.6"),
    ],
)
def test_gradcam_layer_per_backbone(backbone, layer):
    from classifier.models import build_model

    built = build_model(backbone, 3, "none", img_size=64)
    model = built.model
    assert gradcam_layer(model)[0] == layer
    run = LoadedRun(
        Path("."),
        {"backbone": backbone, "data_config": built.data_config, "class_names": list("abc")},
        model,
        eval_transform(built.data_config),
        torch.device("cpu"),
    )
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    a = attribute(run, img, "gradcam")
    assert a.extra["layer"] == layer and a.map.shape == (80, 100) and np.isfinite(a.map).all()
    assert a.map.min() >= 0 and a.target_name == "abc"[a.target]
    assert a.extra["family"] == guess_family(model)
    if backbone == "resnet18":
        g = attribute(run, img, "guided_gradcam", 0)
        assert g.extra["layer"] == "layer4" and np.isfinite(g.map).all() and no_hooks(model)


def test_gradcam_for_vit_reshapes_tokens():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64).eval()
    assert guess_family(model) == "vit"
    img = square_image((64, 64), (0, 0, 32, 32))
    for method in ("gradcam", "guided_gradcam"):
        a = attribute(model, img, method, data_config=IDENTITY_DC | {"input_size": (3, 64, 64)})
        assert a.extra["layer"] == "blocks.11.norm1 (tokens as grid)"
        assert a.map.shape == (64, 64) and np.isfinite(a.map).all()
    assert a.extra["family"] == "vit" and no_hooks(model)
    g = attribute(model, img, "gradcam", data_config=IDENTITY_DC | {"input_size": (3, 64, 64)})
    assert g.extra["layer_map_size"] == (4, 4)


def test_gradcam_refuses_a_1x1_feature_map():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 2, 1), nn.Flatten())
    with pytest.raises(ClassifierError, match="1x1 map"):
        attribute(model, grey(), "gradcam", data_config=IDENTITY_DC)


# ------------------------------------------------------------------------------- display and scores


def test_overlay_blends_and_scales_robustly():
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    amap = np.ones((30, 40), np.float32)
    amap[0, 0] = 1000.0  # one outlier must not wash out the rest (99th percentile scaling)
    assert overlay(img, amap, alpha=0.0).tobytes() == img.tobytes()
    full = np.asarray(overlay(img, amap, cmap="viridis", alpha=1.0))
    assert full.shape == (30, 40, 3)
    import matplotlib

    top = np.rint(np.array(matplotlib.colormaps["viridis"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(full[15, 20], top)  # value 1 = the 99th percentile -> top of the colormap
    zero = np.asarray(overlay(img, np.zeros((30, 40)), cmap="bwr", alpha=1.0, signed=True))
    np.testing.assert_array_equal(zero[0, 0], np.rint(np.array(matplotlib.colormaps["bwr"](0.5)[:3]) * 255))
    assert overlay(img, np.ones((10, 10))).size == (40, 30)  # other sizes are resized
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay(img, amap, cmap="nope")


def test_pointing_game_and_energy_ratio():
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 40:60] = 255
    amap = np.zeros((100, 100))
    amap[50, 50] = 1
    assert pointing_game(amap, mask)
    amap[50, 50], amap[50, 62] = 0, 1  # 3 px from the mask: inside the 3 % tolerance
    assert pointing_game(amap, mask) and not pointing_game(amap, mask, tolerance=0.0)
    amap[50, 62], amap[5, 5] = 0, 1
    assert not pointing_game(amap, mask)
    assert not pointing_game(np.zeros((100, 100)), mask)  # no maximum, no hit
    assert pointing_game(amap, Image.fromarray(np.where(amap > 0, 255, 0).astype(np.uint8)))  # PIL masks too

    assert mask_energy_ratio(np.ones((100, 100)), mask) == pytest.approx(1.0)
    inside = (mask > 127).astype(float)
    assert mask_energy_ratio(inside, mask) == pytest.approx(1 / 0.04)
    assert math.isnan(mask_energy_ratio(-inside, mask))  # no positive part


def test_peak_resolves_plateaus_to_their_centre():
    a = np.zeros((20, 20))
    a[0:6, 10:20] = 5  # e.g. a border cell of an upsampled coarse map
    assert peak(a) in {(2, 14), (2, 15), (3, 14), (3, 15)}  # not (0, 10), the first maximum in row-major order
    a[12, 3] = 6
    assert peak(a) == (12, 3)


# -------------------------------------------------------------------------------------- explain_paths


def test_explain_paths_writes_maps_and_overlays(tmp_path):
    model = Bright()
    run = LoadedRun(
        tmp_path,
        {"backbone": "x", "data_config": DC64, "class_names": ["dark", "bright"], "num_classes": 2},
        model,
        eval_transform(DC64),
        torch.device("cpu"),
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    square_image((120, 80), (10, 10, 40, 40)).save(tmp_path / "a" / "img.png")
    square_image((90, 100), (50, 50, 80, 80)).save(tmp_path / "b" / "img.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    paths = [tmp_path / "a" / "img.png", tmp_path / "broken.jpg", tmp_path / "b" / "img.png", tmp_path / "nope.png"]
    res = explain_paths(run, paths, "gradcam", "bright", out_dir=tmp_path / "out")
    assert [("error" in r) for r in res] == [False, True, False, True]
    assert "broken.jpg" in res[1]["error"] and "not found" in res[3]["error"]
    assert Path(res[0]["npy"]).name == "img.npy" and Path(res[2]["npy"]).name == "img-1.npy"
    for r, (w, h) in zip([res[0], res[2]], [(120, 80), (90, 100)]):
        assert np.load(r["npy"]).shape == (h, w)
        assert Image.open(r["png"]).size == (w, h)
        assert r["target"] == 1 and r["target_name"] == "bright" and r["method"] == "gradcam" and r["seconds"] >= 0
    with pytest.raises(ClassifierError, match="unknown target class"):
        explain_paths(run, paths, "gradcam", "cat", out_dir=tmp_path / "out")


# ------------------------------------------------------------------------------------ pointing game


@pytest.mark.slow
def test_pointing_game_on_demo_dataset(tmp_path):
    """A linear probe of EfficientNet-Lite0 (bundled ImageNet weights) on the demo shapes: Grad-CAM and integrated
    gradients must point at the object on correctly classified validation images.

    The 96 px images are fed at 192 px: at 96 px the last feature map is 3x3 and Grad-CAM pointed at the object
    in only ~15 % of images (chance level), at 192 px (6x6) ~90 %. Integrated gradients use the uniform-noise
    baseline: with the black baseline (x - 0 weights bright background pixels up) they pointed ~45 % of the time.
    """
    from classifier.data.demo import make_demo_dataset
    from classifier.predict import load_run, predict_images
    from classifier.training import TrainConfig, fit

    data, masks = tmp_path / "data", tmp_path / "masks"
    make_demo_dataset(data, n_per_class=24, size=96, seed=3, masks_out=masks)
    cfg = TrainConfig(
        data=str(data), backbone="efficientnet_lite0", mode="linear", img_size=192, epochs=30, num_workers=0
    )
    assert fit(cfg, tmp_path / "run").status == "completed"
    run = load_run(tmp_path / "run")
    val = [r for r in csv.DictReader(open(tmp_path / "run" / "split.csv")) if r["split"] == "val"]
    images = [Image.open(data / r["path"]).convert("RGB") for r in val]
    pred = predict_images(run, images).argmax(1)
    ok = [i for i, r in enumerate(val) if run.class_names[pred[i]] == r["label"]]
    assert len(ok) >= 0.7 * len(val)
    scores: dict[str, list[tuple[bool, float]]] = {"gradcam": [], "ig": []}
    for i in ok:
        mask = Image.open(masks / val[i]["path"])
        for method in scores:
            kw = {"baseline": "noise", "n_steps": 16} if method == "ig" else {}
            a = attribute(run, images[i], method, **kw)
            scores[method].append((pointing_game(a.map, mask), mask_energy_ratio(a.map, mask)))
    pointing = {m: np.mean([p for p, _ in s]) for m, s in scores.items()}
    energy = {m: np.nanmean([e for _, e in s]) for m, s in scores.items()}
    assert pointing["gradcam"] >= 0.85, (pointing, energy)
    assert pointing["ig"] >= 0.70, (pointing, energy)
    assert energy["gradcam"] > 2 and energy["ig"] > 2, (pointing, energy)


def test_cli_explain_writes_npy_and_png_per_image(tmp_path, capsys):
    import json

    from classifier.cli import main
    from classifier.data.demo import make_demo_dataset
    from classifier.training import TrainConfig, fit

    data = make_demo_dataset(tmp_path / "data", n_per_class=6, size=40, seed=1, classes=("circle", "square"))
    cfg = TrainConfig(data=str(data), backbone="simple_cnn", weights="none", epochs=1, img_size=32, num_workers=0)
    assert fit(cfg, tmp_path / "run").status == "completed"
    wide = square_image((70, 50), (5, 5, 30, 30))
    wide.save(tmp_path / "wide.png")
    args = ["explain", "--run", str(tmp_path / "run"), "--out-dir", str(tmp_path / "out"), "--target", "square"]
    assert main([*args, "--method", "ig", "--n-steps", "8", str(tmp_path / "wide.png"), str(data / "circle")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 + 6 and all(r["target_name"] == "square" and r["method"] == "ig" for r in lines)
    assert np.load(tmp_path / "out" / "wide.npy").shape == (50, 70)  # the image file's own height and width
    assert Image.open(tmp_path / "out" / "wide.png").size == (70, 50)
    assert len(list((tmp_path / "out").glob("circle_*.npy"))) == 6
    # a missing file is reported on its own line (exit 2); the other images are still explained
    assert main([*args, "--method", "occlusion", str(tmp_path / "missing.png"), str(tmp_path / "wide.png")]) == 2
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "not found" in out[0]["error"] and out[1]["method"] == "occlusion"
    assert main([*args[:-1], "dog", "--method", "saliency", str(tmp_path / "wide.png")]) == 2
    assert "unknown target class 'dog'" in capsys.readouterr().err
    assert main([*args, "--method", "gradcam", "--cmap", "no-such-map", str(tmp_path / "wide.png")]) == 2
    assert "unknown colormap" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fast maps first


class CountingBright(Bright):
    """Bright, counting the images it is given (a batch of n counts n)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        return super().forward(x)


class CountingStrided(CountingBright):
    """CountingBright whose Grad-CAM layer has a stride of 4 (an 8x8 map at 32 px), as real backbones' layers do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, kernel_size=4, stride=4, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1 / 48)


@pytest.mark.parametrize(
    "method, options",
    [(m, {}) for m in METHODS] + [("smoothgrad", {"smoothgrad_base": "ig"}), ("gradcam", {"shift_average": False})],
)
def test_cost_is_the_images_the_model_processes(method, options):
    """`cost` orders the Explain page's maps; it is exactly the images the model sees besides the prediction."""
    from classifier.explain.core import cost_order

    model = CountingStrided() if method == "gradcam" else CountingBright()
    attribute(model, grey(), method, data_config=IDENTITY_DC, n_steps=8, **options)
    base = options.get("smoothgrad_base", "saliency")
    chosen = Options(n_steps=8, internal_batch_size=16, nt_samples=8, occlusion_window=None, perturbations_per_eval=16,
                     reduce="abs", layer=None, seed=0, smoothgrad_base=base,
                     shift_average=options.get("shift_average", True))  # fmt: skip
    assert METHODS[method].cost(chosen, (SIZE, SIZE)) == model.images - 1  # 1: the prediction
    assert cost_order([method], (SIZE, SIZE), n_steps=8, **options) == [method]


def test_shift_averaged_gradcam_resolves_finer_than_one_pass():
    """A bright 2x2 spot on grey under a stride-4 layer (an 8x8 map): one Grad-CAM pass can only peak at the centre
    of the cell holding the spot; the mean over the four quarter-cell shifts lands nearer the spot, and never
    further away."""
    from classifier.explain.scoring import peak

    model = CountingStrided().eval()
    plain_err, shifted_err = [], []
    for top, left in [(5, 9), (10, 13), (17, 2), (22, 25), (13, 18), (26, 6), (2, 29), (9, 21)]:
        arr = np.full((SIZE, SIZE, 3), GREY, np.uint8)
        arr[top : top + 2, left : left + 2] = 255
        img = Image.fromarray(arr)
        centre = np.array([top + 0.5, left + 0.5])
        maps = [attribute(model, img, "gradcam", 1, data_config=IDENTITY_DC, shift_average=s) for s in (False, True)]
        assert maps[0].extra["layer_map_size"] == (8, 8) and maps[1].extra["shift_px"] == 1
        plain, shifted = (float(np.hypot(*(np.array(peak(m.map)) - centre))) for m in maps)
        assert shifted <= plain + 1e-9, (top, left, plain, shifted)
        plain_err.append(plain)
        shifted_err.append(shifted)
    assert np.mean(shifted_err) < 0.75 * np.mean(plain_err), (plain_err, shifted_err)


def test_cost_order_is_fast_to_slow_as_measured():
    """The order measured at 224 px (docs/benchmarks.md); settings move a method (SmoothGrad over integrated
    gradients costs its samples times the steps); equal costs keep the caller's order."""
    from classifier.explain.core import cost_order

    assert cost_order(list(METHODS), (224, 224)) == [
        "saliency", "guided_gradcam", "gradcam", "smoothgrad", "gradient_shap", "ig", "occlusion"]  # fmt: skip
    assert cost_order(["ig", "occlusion", "gradcam", "saliency"], (224, 224), shift_average=False) == [
        "gradcam", "saliency", "ig", "occlusion"]  # fmt: skip
    assert cost_order(["smoothgrad", "ig"], (224, 224), smoothgrad_base="ig")[0] == "ig"
    assert cost_order(["ig", "occlusion"], (224, 224), n_steps=512)[0] == "occlusion"


def test_colour_scale_runs_the_colour_map_from_none_to_strongest():
    import matplotlib

    from classifier.explain import colour_scale

    strip = np.asarray(colour_scale("viridis", width=100, height=6))
    assert strip.shape == (6, 100, 3) and (strip == strip[:1]).all()  # every row the same
    cmap = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(strip[0, 0], np.rint(np.array(cmap(0.0)[:3]) * 255), atol=1)
    np.testing.assert_allclose(strip[0, -1], np.rint(np.array(cmap(1.0)[:3]) * 255), atol=1)
    # The overlay at full opacity paints a map's strongest pixel with the strip's right end.
    amap = np.zeros((SIZE, SIZE), np.float32)
    amap[:4, :4] = 1.0
    painted = np.asarray(overlay(grey(), amap, cmap="viridis", alpha=1.0))
    np.testing.assert_allclose(painted[0, 0], strip[0, -1], atol=1)
    np.testing.assert_allclose(painted[-1, -1], strip[0, 0], atol=1)
    with pytest.raises(ValueError, match="unknown colormap"):
        colour_scale("nope")
