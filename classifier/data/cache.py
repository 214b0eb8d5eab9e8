"""Decode once: a cache of decoded, resized uint8 images per dataset and image size.

    >>> cache = open_cache(paths, key="/data/flowers", side=256)  # doctest: +SKIP
    >>> cache.mode, cache.tensor(0).shape  # doctest: +SKIP
    ('memory', torch.Size([3, 256, 256]))

Each image is decoded (JPEG in draft mode, at the smallest DCT scale still at least `side`), resized so its
shorter side is `side` with the backbone's interpolation, exactly as the evaluation transform's resize does,
and centre-cropped to a `side` x `side` square. `side` is the evaluation resize size (input size / crop_pct,
e.g. 256 for a 224 px input), so the evaluation centre crop is a crop of the cached square and random-resized
crops still have pixels beyond the input size to work with; the cost is that the edges of a non-square photo
outside that central square are never seen in training.

The cache lives in `workspace/cache/<key hash>-<side>.u8` (all images, `(n, 3, side, side)` uint8, C order)
beside `<key hash>-<side>.json` (the cached files with their size and modification time, and their slot). A
file whose size or mtime changed, or a new file, is decoded again; the rest is copied from the previous cache
file, and the new pair replaces the old one (temp file + `os.replace`, so a concurrent reader keeps the
complete file it opened). The images then stay in memory when they fit the budget
(`CLASSIFIER_CACHE_MEMORY_MB`, default 2048 MB) or are read through a read-only memory map otherwise.

On a shared server the files are capped in total (`CLASSIFIER_CACHE_MAX_MB`, default 8192 MB): every open marks its
pair as used (the `.json`'s modification time), and after a new file is written the pairs used longest ago are
deleted until the rest fit. A process still reading a deleted file keeps its open map (Linux frees it on close);
its next open decodes again.

Several processes can build one cache together (`group`: the ranks of a DDP run): rank 0 lays out the new file,
every rank decodes its share of the missing images straight into it (disjoint slots of one shared memory map), and
rank 0 puts it in place once all are done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from classifier.data.images import load_image
from classifier.errors import ImageError
from classifier.workspace import cache_dir

BUDGET_ENV = "CLASSIFIER_CACHE_MEMORY_MB"
DEFAULT_BUDGET_MB = 2048
MAX_ENV = "CLASSIFIER_CACHE_MAX_MB"
DEFAULT_MAX_MB = 8192
FORMAT = 1


class CacheGroup(Protocol):
    """Processes that build one cache together (`classifier.training.distributed.Ranks` is one)."""

    rank: int
    world: int

    def barrier(self) -> None: ...
    def broadcast(self, obj: Any) -> Any: ...


def memory_budget() -> int:
    """Bytes of decoded images `auto` keeps in memory (`CLASSIFIER_CACHE_MEMORY_MB`, default 2048 MB)."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return DEFAULT_BUDGET_MB * 2**20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a number of megabytes, not {raw!r}") from None
    return int(max(0.0, mb) * 2**20)


def max_cache_bytes() -> int:
    """The decoded-image cache's cap on disk (`CLASSIFIER_CACHE_MAX_MB`, default 8192 MB)."""
    raw = os.environ.get(MAX_ENV)
    try:
        mb = DEFAULT_MAX_MB if raw is None else float(raw)
    except ValueError:
        raise ValueError(f"{MAX_ENV} must be a number of megabytes, not {raw!r}") from None
    return int(max(0.0, mb) * 2**20)


def evict(max_bytes: int | None = None, keep: Path | None = None) -> list[Path]:
    """Delete the cache pairs used longest ago until the `.u8` files total at most `max_bytes` (default
    `max_cache_bytes()`); `keep` (the file just opened) is never deleted. Returns the data files removed."""
    limit = max_cache_bytes() if max_bytes is None else max_bytes
    pairs = []
    for data in cache_dir().glob("*.u8"):
        try:
            size = data.stat().st_size
        except OSError:
            continue  # removed meanwhile
        try:
            used = data.with_suffix(".json").stat().st_mtime
        except OSError:
            used = 0.0  # no index: unusable, first to go
        pairs.append((used, size, data))
    total = sum(size for _, size, _ in pairs)
    removed = []
    for _, size, data in sorted(pairs, key=lambda p: p[0]):
        if total <= limit:
            break
        if keep is not None and data.resolve() == keep.resolve():
            continue
        for f in (data.with_suffix(".json"), data):  # index first: a reader never finds an index without its data
            f.unlink(missing_ok=True)
        total -= size
        removed.append(data)
    return removed


def _touch(index_file: Path) -> None:
    try:
        os.utime(index_file)  # last used: what `evict` orders by
    except OSError:
        pass


def cache_side(data_config: dict[str, Any]) -> int | None:
    """The cached square's side for `data_config` (timm's eval resize size), or None when the eval transform
    does not resize-then-centre-crop (crop modes `squash` and `border`), which the cache cannot reproduce."""
    if data_config.get("crop_mode", "center") not in (None, "center"):
        return None
    size = int(data_config["input_size"][-1])
    return int(math.floor(size / float(data_config.get("crop_pct") or 1.0)))


class _Decode(Dataset):
    """Decode, resize (shorter side = `side`) and centre-crop one image to a (3, side, side) uint8 tensor."""

    def __init__(self, paths: Sequence[Path], side: int, interpolation: str):
        from torchvision.transforms import InterpolationMode

        self.paths = list(paths)
        self.side = side
        self.interp = {
            "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST,
        }.get(interpolation, InterpolationMode.BILINEAR)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.transforms import functional as F

        img = load_image(self.paths[i], draft_size=(self.side + 1, self.side + 1))
        img = F.center_crop(F.resize(img, self.side, interpolation=self.interp), [self.side, self.side])
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


class DecodedCache:
    """Decoded images, `(n, 3, side, side)` uint8, in the order of the paths it was opened with."""

    def __init__(self, array: np.ndarray, side: int, mode: str, file: Path, decoded: int, reused: int):
        self.array = array
        self.side = side
        self.mode = mode  # memory | disk
        self.file = file
        self.decoded = decoded  # images decoded when it was opened (0: every image came from the cache)
        self.reused = reused

    def __len__(self) -> int:
        return len(self.array)

    def tensor(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i]))

    def batch(self, idx: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(idx, dtype=np.int64)]))

    def describe(self) -> dict[str, Any]:
        return {
            "cache": self.mode,
            "cache_file": str(self.file),
            "cache_side": self.side,
            "cache_mb": round(self.array.nbytes / 2**20, 1),
            "decoded": self.decoded,
            "reused": self.reused,
        }


class CachedImages(Dataset):
    """`(uint8 tensor, label)` pairs from a `DecodedCache`; `slots[i]` is item i's position in the cache."""

    def __init__(self, cache: DecodedCache, slots: Sequence[int], labels: Sequence[int]):
        self.cache, self.slots, self.labels = cache, list(slots), list(labels)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.cache.tensor(self.slots[i]), self.labels[i]


def _stat(p: Path) -> list[int]:
    try:
        st = p.stat()
    except OSError as e:
        raise ImageError(str(p), f"cannot be read ({e.strerror or e}); was it moved or deleted after indexing?") from e
    return [int(st.st_size), int(st.st_mtime_ns)]


def open_cache(
    paths: Sequence[str | Path],
    *,
    key: str,
    side: int,
    interpolation: str = "bilinear",
    mode: str = "auto",
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    group: CacheGroup | None = None,
) -> DecodedCache:
    """The cache of `paths` (decoding only what is new or changed); `mode` is auto, memory or disk.

    `key` names the dataset (its root folder): images of one dataset share one cache file per side and
    interpolation. `progress(done, total)` is called while images are decoded. Raises `ImageError` for an
    unreadable image, like the uncached loader. With a `group` of several processes, each calls this with the same
    arguments and decodes a share (`progress` then estimates the whole from this process's share).
    """
    if mode not in ("auto", "memory", "disk"):
        raise ValueError(f"cache mode must be auto, memory or disk, not {mode!r}")
    paths = [Path(p) for p in paths]
    names = [os.path.abspath(p) for p in paths]
    stamps = [_stat(p) for p in paths]
    digest = hashlib.sha1(f"{FORMAT}\n{os.path.abspath(key)}\n{interpolation}".encode()).hexdigest()[:16]
    base = cache_dir() / f"{digest}-{side}"
    data_file, index_file = base.with_suffix(".u8"), base.with_suffix(".json")
    old_entries, old = _read_index(index_file, data_file, side)

    def valid(i: int) -> int | None:
        e = old_entries.get(names[i])
        return int(e[0]) if e is not None and list(e[1:]) == stamps[i] else None

    slots = [valid(i) for i in range(len(paths))]
    in_memory = mode == "memory" or (mode == "auto" and len(paths) * 3 * side * side <= memory_budget())
    if old is not None and all(s is not None for s in slots):
        _touch(index_file)
        # Everything is cached already: read it (a subset of the file's images, in the order asked for).
        if in_memory:
            array = np.ascontiguousarray(old[np.asarray(slots, dtype=np.int64)]) if paths else old[:0].copy()
            return DecodedCache(array, side, "memory", data_file, 0, len(paths))
        if slots == list(range(len(slots))):
            return DecodedCache(old, side, "disk", data_file, 0, len(paths))
        # A subset or another order on disk: keep the whole file mapped and index through the slots.
        return DecodedCache(_Remapped(old, slots), side, "disk", data_file, 0, len(paths))
    build = _Build(paths, names, stamps, slots, old, old_entries, side, interpolation)
    group = group if group is not None and group.world > 1 else None
    count, entries, decoded = build.write(data_file, base.name, num_workers, progress, group)
    if group is None or group.rank == 0:
        from classifier.io import atomic_write_json

        atomic_write_json(index_file, {"format": FORMAT, "side": side, "interpolation": interpolation,
                                       "key": str(key), "entries": entries})  # fmt: skip
        evict(keep=data_file)
    if group is not None:
        group.barrier()  # the file and its index are in place for every rank
    mapped = np.memmap(data_file, dtype=np.uint8, mode="r", shape=(count, 3, side, side))[: len(paths)]
    if in_memory:
        return DecodedCache(np.array(mapped), side, "memory", data_file, decoded, len(paths) - decoded)
    return DecodedCache(mapped, side, "disk", data_file, decoded, len(paths) - decoded)


def _read_index(index_file: Path, data_file: Path, side: int) -> tuple[dict[str, list[int]], np.ndarray | None]:
    """The cache file's entries (path -> [slot, size, mtime_ns]) and its images mapped read-only; ({}, None) when
    it is missing, of another format or side, or its size does not match its index."""
    try:
        meta = json.loads(index_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("side") != side or not meta["entries"]:
            return {}, None
        entries = meta["entries"]
        if data_file.stat().st_size != len(entries) * 3 * side * side:
            return {}, None
        return entries, np.memmap(data_file, dtype=np.uint8, mode="r", shape=(len(entries), 3, side, side))
    except (OSError, ValueError, KeyError, TypeError):
        return {}, None


class _Build:
    """A new cache file: every image asked for (decoding the ones not cached) plus old images still valid that
    were not asked for, so another subset of the same dataset keeps its cached images."""

    def __init__(self, paths, names, stamps, slots, old, old_entries, side: int, interpolation: str):
        self.paths, self.names, self.stamps, self.slots, self.old = paths, names, stamps, slots, old
        self.side, self.interpolation = side, interpolation
        asked = set(names)
        keep = [(n, e) for n, e in old_entries.items() if n not in asked]
        self.keep = [(n, e) for n, e in keep if Path(n).is_file() and _stat(Path(n)) == list(e[1:])]

    def write(
        self, data_file: Path, prefix: str, num_workers: int, progress, group: CacheGroup | None = None
    ) -> tuple[int, dict, int]:
        """Write the file (temp file, then `os.replace`); returns (images in it, its index entries, decoded). In a
        `group`, rank 0 creates the temp file, each rank decodes its share into it, and rank 0 replaces."""
        n, side = len(self.paths), self.side
        count = n + len(self.keep)
        todo = [i for i, s in enumerate(self.slots) if s is None]
        rank, world = (group.rank, group.world) if group is not None else (0, 1)
        tmp = self._new_file(prefix, count) if rank == 0 else None
        if group is not None:
            tmp = Path(group.broadcast(str(tmp)))
        try:
            out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(max(1, count), 3, side, side))
            share = (lambda done, total: progress(min(len(todo), done * world), len(todo))) if progress else None
            self._decode_into(out, todo[rank::world], num_workers, share)
            out.flush()
            del out
            if group is not None:
                group.barrier()  # every share is in the file
            if rank == 0:
                with open(tmp, "r+b") as f:  # count == 0 still allocated one slot; trim to the exact size
                    f.truncate(count * 3 * side * side)
                os.replace(tmp, data_file)
        except BaseException:
            if rank == 0:
                tmp.unlink(missing_ok=True)
            raise
        entries = {name: [i, *self.stamps[i]] for i, name in enumerate(self.names)}
        entries.update({name: [n + j, *e[1:]] for j, (name, e) in enumerate(self.keep)})
        return count, entries, len(todo)

    def _new_file(self, prefix: str, count: int) -> Path:
        """A temp file of `count` slots holding the images already cached (old slots still valid, kept ones)."""
        n, side = len(self.paths), self.side
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir(), prefix=f".{prefix}-", suffix=".u8.tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(1, count), 3, side, side))
            for i, s in enumerate(self.slots):
                if s is not None:
                    out[i] = self.old[s]
            for j, (_, e) in enumerate(self.keep):
                out[n + j] = self.old[int(e[0])]
            out.flush()
            del out
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _decode_into(self, out: np.ndarray, todo: list[int], num_workers: int, progress) -> None:
        if not todo:
            return
        loader = DataLoader(
            _Decode([self.paths[i] for i in todo], self.side, self.interpolation),
            batch_size=8,
            num_workers=num_workers,
            generator=torch.Generator(),  # never draw from the global RNG: a run must not depend on the cache
        )
        done = 0
        for batch in loader:
            for k, img in enumerate(batch):
                out[todo[done + k]] = img.numpy()
            done += len(batch)
            if progress:
                progress(done, len(todo))


class _Remapped:
    """A read-only view of a memory map through a slot list (`view[i]` is `mapped[slots[i]]`)."""

    def __init__(self, mapped: np.ndarray, slots: Sequence[int]):
        self.mapped, self.slots = mapped, np.asarray(slots, dtype=np.int64)
        self.nbytes = len(self.slots) * int(np.prod(mapped.shape[1:]))

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i):
        return self.mapped[self.slots[i]]
