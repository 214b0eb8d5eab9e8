"""Tests for classifier.data.demo: determinism, layout, masks that match the object, and a label in shape only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.data.demo import DEMO_CLASSES, demo_image, make_demo_dataset

N_PER_CLASS = 24
SIZE = 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One shared dataset (images, masks) for the read-only checks."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root / "images", n_per_class=N_PER_CLASS, size=SIZE, seed=3, masks_out=root / "masks")
    return root / "images", root / "masks"


def _load(demo: tuple[Path, Path]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(label, RGB array, boolean mask) for every sample, in a fixed order."""
    images, masks = demo
    out = []
    for label, cls in enumerate(DEMO_CLASSES):
        for i in range(N_PER_CLASS):
            name = Path(cls) / f"{cls}_{i:04d}.png"
            rgb = np.asarray(Image.open(images / name), dtype=np.float64)
            out.append((label, rgb, np.asarray(Image.open(masks / name)) > 0))
    return out


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Fit class centroids on even-indexed samples, score on odd ones (features standardised on the fit half)."""
    fit, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-9
    z = (x - mu) / sd
    centroids = np.stack([z[fit & (y == k)].mean(0) for k in np.unique(y)])
    pred = np.argmin(((z[test][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == y[test]).mean())


def _hull_area(mask: np.ndarray) -> float:
    """Convex hull area of the mask's pixel squares (monotone chain over each row's outer corners)."""
    pts = set()
    for y in np.flatnonzero(mask.any(1)):
        xs = np.flatnonzero(mask[y])
        for x in (xs[0] - 0.5, xs[-1] + 0.5):
            pts.update({(x, y - 0.5), (x, y + 0.5)})
    p = sorted(pts)

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        h: list[tuple[float, float]] = []
        for q in seq:
            while (
                len(h) >= 2
                and (h[-1][0] - h[-2][0]) * (q[1] - h[-2][1]) - (h[-1][1] - h[-2][1]) * (q[0] - h[-2][0]) <= 0
            ):
                h.pop()
            h.append(q)
        return h[:-1]

    hull = np.array(half(p) + half(p[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(area / circle around the centroid through the farthest pixel, area / convex hull) - both rotation-free."""
    ys, xs = np.nonzero(mask)
    r2 = ((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2).max() + 0.5
    return len(xs) / (np.pi * r2), len(xs) / _hull_area(mask)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    kw = {"n_per_class": 2, "size": 48}
    a = _tree_bytes(make_demo_dataset(tmp_path / "a", seed=7, masks_out=tmp_path / "am", **kw))
    b = _tree_bytes(make_demo_dataset(tmp_path / "b", seed=7, masks_out=tmp_path / "bm", **kw))
    c = _tree_bytes(make_demo_dataset(tmp_path / "c", seed=8, **kw))
    assert a == b
    assert _tree_bytes(tmp_path / "am") == _tree_bytes(tmp_path / "bm")
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_images_do_not_shift_when_count_or_classes_change(tmp_path: Path) -> None:
    small = _tree_bytes(make_demo_dataset(tmp_path / "s", n_per_class=2, size=48, classes=("star", "circle")))
    full = _tree_bytes(make_demo_dataset(tmp_path / "f", n_per_class=3, size=48))
    assert small and all(full[k] == v for k, v in small.items())


def test_layout_counts_and_formats(demo: tuple[Path, Path]) -> None:
    images, masks = demo
    assert sorted(p.name for p in images.iterdir()) == sorted(DEMO_CLASSES)
    for cls in DEMO_CLASSES:
        files = sorted((images / cls).iterdir())
        assert [p.name for p in files] == [f"{cls}_{i:04d}.png" for i in range(N_PER_CLASS)]
        for p in files:
            with Image.open(p) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (SIZE, SIZE))
            with Image.open(masks / cls / p.name) as m:
                assert (m.format, m.mode, m.size) == ("PNG", "L", (SIZE, SIZE))
                assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}


def test_mask_area_is_sane(demo: tuple[Path, Path]) -> None:
    fractions = np.array([mask.mean() for _, _, mask in _load(demo)])
    assert fractions.min() > 0.02 and fractions.max() < 0.5


def test_object_contrasts_with_its_surroundings(demo: tuple[Path, Path]) -> None:
    contrasted = 0
    samples = _load(demo)
    for _, rgb, mask in samples:
        grown = mask.copy()
        for _ in range(3):  # 3-pixel dilation by 4-neighbour shifts
            g = np.pad(grown, 1)
            grown = g[1:-1, 1:-1] | g[:-2, 1:-1] | g[2:, 1:-1] | g[1:-1, :-2] | g[1:-1, 2:]
        ring = grown & ~mask
        contrasted += np.linalg.norm(rgb[mask].mean(0) - rgb[ring].mean(0)) > 40
    assert contrasted >= 0.9 * len(samples)


def test_colour_does_not_reveal_the_class(demo: tuple[Path, Path]) -> None:
    samples = _load(demo)
    y = np.array([label for label, _, _ in samples])
    whole = np.array([rgb.reshape(-1, 3).mean(0) for _, rgb, _ in samples])
    obj = np.array([rgb[mask].mean(0) for _, rgb, mask in samples])
    assert _nearest_centroid_accuracy(whole, y) < 0.45
    assert _nearest_centroid_accuracy(obj, y) < 0.45


def test_classes_differ_in_shape(demo: tuple[Path, Path]) -> None:
    samples = _load(demo)
    y = np.array([label for label, _, _ in samples])
    feats = np.array([_shape_features(mask) for _, _, mask in samples])
    fill, solidity = (np.array([feats[y == k, j].mean() for k in range(len(DEMO_CLASSES))]) for j in (0, 1))
    circle, square, triangle, star, cross = range(5)
    assert fill[circle] > 0.75 and fill[circle] == fill.max()
    # convex shapes fill their hull up to pixel staircases; the star and the cross leave big notches
    assert min(solidity[square], solidity[triangle], solidity[circle]) > 0.85
    assert solidity[star] == solidity.min() and solidity[cross] < solidity[square] - 0.15
    # two crude shape numbers already tell the classes apart - the label lives in the geometry
    assert _nearest_centroid_accuracy(feats, y) > 0.8


def test_demo_image_and_progress(tmp_path: Path) -> None:
    rgb, mask = demo_image("cross", np.random.default_rng(0), 40)
    assert (rgb.mode, rgb.size, mask.mode, mask.size) == ("RGB", (40, 40), "L", (40, 40))
    calls: list[tuple[int, int]] = []
    make_demo_dataset(
        tmp_path, n_per_class=2, size=32, classes=("square", "star"), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(i, 4) for i in range(1, 5)]
    with pytest.raises(ValueError):
        demo_image("hexagon", np.random.default_rng(0), 40)
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "x", classes=("hexagon",))


def test_the_word_demo_is_a_folder_of_that_name_when_there_is_one(tmp_path: Path, monkeypatch) -> None:
    """`--data demo` in a directory holding a folder called demo means that folder (a user's data, found while
    benchmarking), elsewhere the built-in dataset in the workspace."""
    from classifier.data.dataset import load_dataset
    from classifier.data.demo import means_demo, resolve_data

    monkeypatch.setenv("CLASSIFIER_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.chdir(tmp_path)
    assert means_demo("demo") and not means_demo("./demo") and not means_demo("demo2")
    make_demo_dataset(tmp_path / "demo", n_per_class=3, size=32, seed=1, classes=("circle", "star"))
    assert not means_demo("demo") and resolve_data("demo") == "demo"
    index = load_dataset("demo")
    assert index.root.resolve() == (tmp_path / "demo").resolve() and index.classes == ["circle", "star"]
