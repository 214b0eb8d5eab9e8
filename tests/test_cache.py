"""The decoded-image cache (classifier.data.cache), the tensor augmentation pipeline and the loader settings.

Runs train `simple_cnn` at 32 px on generated images on the CPU, where training is deterministic, so
"identical" means bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from classifier import device as device_settings
from classifier.data import cache as cache_mod
from classifier.data.cache import CachedImages, cache_side, memory_budget, open_cache
from classifier.data.transforms import AUGMENT_PRESETS, TensorPipeline, eval_transform
from classifier.training import TrainConfig, fit

SETTINGS = dict(backbone="simple_cnn", weights="none", img_size=32, batch_size=8, lr=3e-3, num_workers=0,
                device="cpu", seed=0, epochs=2)  # fmt: skip
DATA_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
               "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from classifier.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("cache") / "data", n_per_class=8, size=40, seed=5)


def _runtime(run: Path) -> dict:
    """What the run recorded about its data path and settings (config.json "runtime")."""
    return json.loads((run / "config.json").read_text())["runtime"]


def _photos(folder: Path, n: int = 6) -> list[Path]:
    """Non-square JPEG and PNG files of varied sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = 48 + 7 * i, 40 + 11 * (i % 3)
        p = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def test_second_open_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path, monkeypatch):
    paths = _photos(tmp_path / "imgs")
    first = open_cache(paths, key=str(tmp_path / "imgs"), side=36, interpolation="bicubic")
    assert (first.mode, first.decoded, first.reused, tuple(first.array.shape)) == ("memory", 6, 0, (6, 3, 36, 36))
    assert first.file.is_file() and first.file.parent.name == "cache"
    decoded = []
    real = cache_mod.load_image
    monkeypatch.setattr(cache_mod, "load_image", lambda p, **kw: decoded.append(p) or real(p, **kw))
    second = open_cache(paths, key=str(tmp_path / "imgs"), side=36, interpolation="bicubic")
    assert (second.decoded, second.reused, decoded) == (0, 6, [])
    assert np.array_equal(first.array, second.array)

    # Rewrite one image with other pixels (and a later mtime): only that one is decoded again.
    Image.new("RGB", (60, 44), (250, 10, 10)).save(paths[2])
    st = paths[2].stat()
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = open_cache(paths, key=str(tmp_path / "imgs"), side=36, interpolation="bicubic")
    assert (third.decoded, third.reused, decoded) == (1, 5, [paths[2]])
    assert third.tensor(2)[0].float().mean() > 240 and third.tensor(2)[1].float().mean() < 20
    for i in (0, 1, 3, 4, 5):
        assert torch.equal(third.tensor(i), first.tensor(i))
    # Another image size is another cache file.
    other = open_cache(paths, key=str(tmp_path / "imgs"), side=40, interpolation="bicubic")
    assert other.decoded == 6 and other.file != first.file


def test_cached_square_is_the_eval_resize_and_eval_crop_matches_timm(tmp_path):
    paths = _photos(tmp_path / "imgs")
    side = cache_side(DATA_CONFIG)
    assert side == 36  # floor(32 / 0.875), timm's eval resize size
    cache = open_cache(paths, key=str(tmp_path), side=side, interpolation="bicubic")
    ours = TensorPipeline(DATA_CONFIG, "none", train=False)(cache.batch(range(len(paths))))
    ref = torch.stack([eval_transform(DATA_CONFIG)(Image.open(p).convert("RGB")) for p in paths])
    assert ours.shape == ref.shape == (6, 3, 32, 32) and ours.dtype == torch.float32
    # The same resized pixels; a centre crop of the centred square may sit one pixel off timm's direct crop.
    assert (ours - ref).abs().mean() < 0.05
    assert cache_side({**DATA_CONFIG, "crop_mode": "squash"}) is None


@pytest.mark.parametrize("augment", list(AUGMENT_PRESETS))
@pytest.mark.parametrize("grayscale", [False, True])
def test_tensor_augmentation_shapes_and_dtypes(augment, grayscale):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 36, 36), dtype=torch.uint8)
    y = TensorPipeline(DATA_CONFIG, augment, grayscale=grayscale, train=True)(x)
    assert y.shape == (5, 3, 32, 32) and y.dtype == torch.float32 and torch.isfinite(y).all()
    if grayscale:
        assert torch.allclose((y[:, 0] * 0.229 + 0.485), (y[:, 1] * 0.224 + 0.456), atol=1e-5) or augment == "strong"
    if augment != "none":  # every image draws its own crop: two images that were equal no longer are
        same = torch.full((2, 3, 36, 36), 128, dtype=torch.uint8)
        same[:, :, :18] = 0
        out = TensorPipeline(DATA_CONFIG, augment, train=True)(same)
        assert not torch.equal(out[0], out[1])
    with pytest.raises(ValueError, match="uint8"):
        TensorPipeline(DATA_CONFIG, augment)(x.float())


def test_fit_decodes_each_image_once_and_a_second_run_decodes_none(data, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.load_image
    monkeypatch.setattr(cache_mod, "load_image", lambda p, **kw: calls.append(p) or real(p, **kw))
    first = fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "a")
    n = 40 - 0  # 5 classes x 8 images, train and val
    assert first.status == "completed" and len(calls) == len(set(calls)) == n
    runtime = json.loads((tmp_path / "a" / "config.json").read_text())["runtime"]
    assert (runtime["cache"], runtime["decoded"], runtime["num_workers"]) == ("memory", n, 0)
    assert all(0 <= row["data_share"] < 1 for row in first.history)
    calls.clear()
    second = fit(TrainConfig(data=str(data), **SETTINGS), tmp_path / "b")
    assert calls == [] and _runtime(tmp_path / "b")["reused"] == n
    assert first.history[-1]["train_loss"] == second.history[-1]["train_loss"]


def test_memory_map_under_a_tiny_budget_gives_identical_batches_and_run(data, tmp_path, monkeypatch):
    mem = fit(TrainConfig(data=str(data), cache="memory", **SETTINGS), tmp_path / "mem")
    monkeypatch.setenv("CLASSIFIER_CACHE_MEMORY_MB", "0.01")
    assert memory_budget() < 20_000
    disk = fit(TrainConfig(data=str(data), cache="auto", **SETTINGS), tmp_path / "disk")
    assert _runtime(tmp_path / "disk")["cache"] == "disk" and _runtime(tmp_path / "mem")["cache"] == "memory"
    assert [r["train_loss"] for r in mem.history] == [r["train_loss"] for r in disk.history]
    a, b = load_file(tmp_path / "mem" / "model.safetensors"), load_file(tmp_path / "disk" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    paths = sorted(p for p in Path(data).rglob("*.png"))[:10]
    on_disk = open_cache(paths, key="k", side=32, mode="auto")
    in_memory = open_cache(paths, key="k", side=32, mode="memory")
    assert (on_disk.mode, in_memory.mode) == ("disk", "memory")
    assert isinstance(on_disk.array, np.memmap)
    loader = torch.utils.data.DataLoader(CachedImages(on_disk, range(10), [0] * 10), batch_size=4)
    loader_mem = torch.utils.data.DataLoader(CachedImages(in_memory, range(10), [0] * 10), batch_size=4)
    for (x1, _), (x2, _) in zip(loader, loader_mem):
        assert x1.dtype == torch.uint8 and torch.equal(x1, x2)
    # A subset in another order, from the same file, read through the memory map.
    sub = open_cache(paths[::-2], key="k", side=32, mode="disk")
    assert sub.decoded == 0 and torch.equal(sub.tensor(0), in_memory.tensor(9))


def test_cache_off_decodes_every_epoch_and_workers_follow_the_machine(data, tmp_path, monkeypatch):
    from classifier.data import loader as loader_mod

    calls = []
    real = loader_mod.load_image
    monkeypatch.setattr(loader_mod, "load_image", lambda p, **kw: calls.append(p) or real(p, **kw))
    result = fit(TrainConfig(data=str(data), cache="off", **SETTINGS), tmp_path / "off")
    assert result.status == "completed" and _runtime(tmp_path / "off")["cache"] == "off"
    assert len(calls) == 2 * 40  # two epochs of 32 train images plus two validations of 8
    assert not (Path(os.environ["CLASSIFIER_WORKSPACE"]) / "cache").exists()

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_cuda in [(2, 0, 1), (8, 4, 7), (32, 4, 8)]:
        monkeypatch.setattr(device_settings, "usable_cpus", lambda c=cores: c)  # affinity and quota
        assert (device_settings.default_workers(cpu), device_settings.default_workers(cuda)) == (on_cpu, on_cuda)
    # Explicit workers decode into the cache; training batches then come from the main process.
    r = fit(TrainConfig(data=str(data), **{**SETTINGS, "num_workers": 1, "epochs": 1}), tmp_path / "w")
    assert r.status == "completed" and _runtime(tmp_path / "w")["num_workers"] == 0


def test_bad_cache_settings_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="cache must be one of"):
        TrainConfig(data="x", cache="ram").resolved()
    monkeypatch.setenv("CLASSIFIER_CACHE_MEMORY_MB", "lots")
    with pytest.raises(ValueError, match="CLASSIFIER_CACHE_MEMORY_MB"):
        memory_budget()


def test_cli_cache_flag_reaches_the_run(data, tmp_path):
    from classifier.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--data", str(data), "--backbone", "simple_cnn", "--weights", "none", "--img-size", "32",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--cache", "disk",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    runtime = _runtime(out)
    assert runtime["cache"] == "disk" and Path(runtime["cache_file"]).is_file()
    assert json.loads((out / "config.json").read_text())["train"]["cache"] == "disk"


def test_building_the_cache_reports_progress(data, tmp_path):
    from classifier.jobs.progress import describe as progress_text
    from classifier.training import Callback

    class Phases(Callback):
        seen: list = []

        def on_phase(self, s):
            self.seen.append((s.phase, s.phase_done, s.phase_total))

    cb = Phases()
    assert fit(TrainConfig(data=str(data), **{**SETTINGS, "epochs": 1}), tmp_path / "p", [cb]).status == "completed"
    cache_events = [e for e in cb.seen if e[0] == "cache"]
    assert cache_events and cache_events[-1][1] == cache_events[-1][2] == 40
    text = progress_text({"phase": "cache", "phase_done": 8, "phase_total": 40})
    assert text.startswith("Decoding images") and "8/40" in text


def test_a_file_gone_since_indexing_is_named(tmp_path):
    from classifier.errors import ImageError

    paths = _photos(tmp_path / "imgs", n=3)
    paths[1].unlink()
    with pytest.raises(ImageError, match=r"img1\.jpg: cannot be read"):
        open_cache(paths, key=str(tmp_path), side=36)
