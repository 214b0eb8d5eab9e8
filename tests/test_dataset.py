"""Dataset sources (folder, split folders, zip, CSV), the summary, splits and transforms."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.data.dataset import check_trainable, index_dataset
from classifier.data.splits import assign_splits
from classifier.data.transforms import AUGMENT_PRESETS, eval_transform, train_transform
from classifier.errors import DatasetError


def _img(path: Path, color=(200, 30, 30), size=(24, 20), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _class_folders(root: Path, spec: dict[str, int]) -> Path:
    for c, n in spec.items():
        for i in range(n):
            _img(root / c / f"{c}{i}.png", color=(i * 20 % 255, len(c) * 30 % 255, 90))
    return root


def test_class_folders_with_bad_files_listed(tmp_path):
    root = _class_folders(tmp_path / "ds", {"cats": 5, "dogs": 4})
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    (root / "cats" / ".DS_Store").write_bytes(b"junk")
    index = index_dataset(root)
    assert index.classes == ["cats", "dogs"] and index.layout == "class-folders"
    assert Counter(index.classes[s.label] for s in index.samples) == {"cats": 5, "dogs": 4}
    assert [(k.path, bool(k.reason)) for k in index.skipped] == [("dogs/broken.jpg", True)]
    summary = index.summary()
    assert summary["counts"]["all"] == {"cats": 5, "dogs": 4}
    assert summary["image_size"]["min_width"] == 24


def test_split_folders_used_as_given_and_leakage_flagged(tmp_path):
    root = tmp_path / "ds"
    for k, (split, n) in enumerate([("train", 4), ("val", 2), ("test", 2)]):
        for c in ["a", "b"]:
            for i in range(n):
                _img(root / split / c / f"{split}{i}.png", color=(10 * i + 60 * k, 50, 90 if c == "a" else 20))
    # an exact copy of a training image inside val: leakage
    (root / "val" / "a" / "copy.png").write_bytes((root / "train" / "a" / "train0.png").read_bytes())
    index = index_dataset(root)
    assert index.layout == "split-folders" and index.has_splits
    splits = assign_splits(index, 0.3, seed=0)
    assert Counter(splits) == {"train": 8, "val": 5, "test": 4}
    assert index.leakage(splits) == [("train/a/train0.png", "val/a/copy.png")]
    assert ["train/a/train0.png", "val/a/copy.png"] in index.summary(splits)["duplicates"]


def test_zip_with_wrapping_folder(tmp_path):
    src = _class_folders(tmp_path / "src", {"x": 3, "y": 3})
    zpath = tmp_path / "upload.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(src.rglob("*.png")):
            zf.write(f, f"my_dataset/{f.relative_to(src).as_posix()}")
        zf.writestr("__MACOSX/my_dataset/._x", b"junk")
    index = index_dataset(zpath, extract_to=tmp_path / "extracted")
    assert index.classes == ["x", "y"] and len(index.samples) == 6
    assert index.root == (tmp_path / "extracted" / "my_dataset").resolve()


def test_csv_source_and_bad_csv(tmp_path):
    root = tmp_path / "csvds"
    for i in range(4):
        _img(root / "imgs" / f"{i}.png")
    (root / "labels.csv").write_text("path,label\nimgs/0.png,red\nimgs/1.png,red\nimgs/2.png,blue\nimgs/3.png,blue\n")
    index = index_dataset(root / "labels.csv")
    assert index.layout == "csv" and index.classes == ["blue", "red"]
    (root / "bad.csv").write_text("file,class\nimgs/0.png,red\n")
    with pytest.raises(DatasetError, match="path,label"):
        index_dataset(root / "bad.csv")
    (root / "escape.csv").write_text("path,label\n../outside.png,red\n")
    with pytest.raises(DatasetError, match="outside"):
        index_dataset(root / "escape.csv")


@pytest.mark.parametrize(
    "spec, message",
    [({}, "no usable images"), ({"only": 3}, "only one class"), ({"a": 3, "b": 1}, "only one image")],
)
def test_cannot_train_messages(tmp_path, spec, message):
    root = tmp_path / "ds"
    root.mkdir()
    _class_folders(root, spec)
    with pytest.raises(DatasetError, match=message):
        check_trainable(index_dataset(root))


def test_stratified_seeded_split(tmp_path):
    root = _class_folders(tmp_path / "ds", {"a": 10, "b": 2, "c": 5})
    index = index_dataset(root)
    s1 = assign_splits(index, 0.2, seed=3)
    assert s1 == assign_splits(index, 0.2, seed=3)
    assert s1 != assign_splits(index, 0.2, seed=4)
    val = Counter(index.classes[s.label] for s, sp in zip(index.samples, s1) if sp == "val")
    assert val == {"a": 2, "b": 1, "c": 1}  # every class gets at least one validation image
    s2 = assign_splits(index, 0.2, 0.2, seed=0)
    assert Counter(s2)["test"] == 2 + 1  # a: 2, c: 1, b too small for a test image
    with pytest.raises(DatasetError):
        assign_splits(index, 0.7, 0.5)


def test_transforms_follow_data_config():
    cfg = {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    white = Image.new("RGB", (50, 40), (255, 255, 255))
    x = eval_transform(cfg)(white)
    assert x.shape == (3, 32, 32) and np.allclose(x.numpy(), 1.0, atol=1e-4)  # (1 - 0.5) / 0.5
    g = eval_transform(cfg, grayscale=True)(Image.new("RGB", (32, 32), (255, 0, 0)))
    assert np.allclose(g[0].numpy(), g[1].numpy())
    for preset in AUGMENT_PRESETS:
        assert train_transform(cfg, preset)(white).shape == (3, 32, 32)
    with pytest.raises(ValueError):
        train_transform(cfg, "extreme")


def test_exif_rotated_image_indexed_upright(tmp_path):
    root = _class_folders(tmp_path / "ds", {"a": 2, "b": 2})
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    (root / "a" / "rotated.jpg").write_bytes(buf.getvalue())
    index = index_dataset(root)
    s = next(s for s in index.samples if s.path == "a/rotated.jpg")
    assert (s.width, s.height) == (20, 40)


def test_placeholder_gif_among_photos_is_skipped_with_reason(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    for c in ["ants", "bees"]:
        for i in range(5):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    ph = Image.new("P", (60, 60), 0)
    ph.putpalette([255, 255, 255, 120, 120, 120] + [0] * 762)
    ph.paste(1, (10, 25, 50, 35))
    ph.save(root / "ants" / "imageNotFound.gif")
    index = index_dataset(root)
    assert [s.path for s in index.skipped] == ["ants/imageNotFound.gif"]
    assert "placeholder" in index.skipped[0].reason
    # The same GIF in a dataset of drawings (mostly non-JPEG) is a normal image.
    for f in root.rglob("*.jpg"):
        Image.open(f).save(f.with_suffix(".png"))
        f.unlink()
    assert not index_dataset(root).skipped
