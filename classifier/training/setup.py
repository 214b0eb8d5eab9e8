"""What a learner trains, built once from a `TrainConfig`: the split data, the model on its device, the data path
(decoded-image cache or files), the frozen-feature shortcut, the optimizer and the loss. `fit` and the LR finder
both build it here, so a range test uses exactly what a run with the same settings would.

    >>> data = split_data(load_dataset("demo"), cfg)  # doctest: +SKIP
    >>> setup = TrainingSetup(cfg, data, model, data_config)  # doctest: +SKIP
    >>> setup.prepare(emit, validate=True)  # decode cache, features, optimizer  # doctest: +SKIP
    >>> train_loader, val_loader = setup.loaders(cfg.batch_size)  # doctest: +SKIP

A linear probe without augmentation (`use_features`) runs the frozen backbone once over every image and trains
the head on the stored features, which takes seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from classifier.data.cache import CachedImages, cache_side, open_cache
from classifier.data.dataset import DatasetIndex
from classifier.data.loader import ImageListDataset, draft_size
from classifier.data.splits import assign_splits
from classifier.data.transforms import TensorPipeline, eval_transform, train_transform
from classifier.device import Precision, configure_threads, default_workers, loader_kwargs, pick_device
from classifier.models import extract_features, freeze_bn_stats, set_trainable, set_trainable_mode
from classifier.training.config import TrainConfig
from classifier.training.resume import EpochSampler

Items = list[tuple[Path, int]]


@dataclass
class SplitData:
    """A dataset index with its seeded split: (image path, class index) per split."""

    index: DatasetIndex
    splits: list[str]
    train: Items
    val: Items
    test: Items

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    def split_rows(self) -> list[tuple[str, str, str]]:
        """(path relative to the dataset root, class name, split) per image: split.csv's rows."""
        names = self.index.classes
        return [(s.path, names[s.label], sp) for s, sp in zip(self.index.samples, self.splits)]


def split_data(index: DatasetIndex, cfg: TrainConfig) -> SplitData:
    splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)

    def items(split: str) -> Items:
        return [(index.root / s.path, s.label) for s, sp in zip(index.samples, splits) if sp == split]

    return SplitData(index, splits, items("train"), items("val"), items("test"))


def uses_features(cfg: TrainConfig) -> bool:
    """A linear probe without augmentation or mixing sees each image the same way every epoch: compute once."""
    return cfg.mode == "linear" and cfg.augment == "none" and not (cfg.mixup or cfg.cutmix)


def optimizer_for(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors): decaying them only hurts.
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability targets (mixup/cutmix mix the labels)."""
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class TrainingSetup:
    """The model, data path, optimizer and loss for one config; `prepare` does the work that takes time."""

    def __init__(self, cfg: TrainConfig, data: SplitData, model: nn.Module, data_config: dict[str, Any]):
        self.cfg, self.data, self.model, self.data_config = cfg, data, model, data_config
        self.device = pick_device(cfg.device)
        self.precision = Precision.for_device(self.device, cfg.amp)
        self.precision.prepare(model)
        self.workers = cfg.num_workers if cfg.num_workers is not None else default_workers(self.device)
        self.use_features = uses_features(cfg)
        side = cache_side(data_config)
        self.cache_mode = cfg.cache if side is not None else "off"
        self.cache_side = side
        train_labels = [y for _, y in data.train]
        self.sampler = EpochSampler(train_labels, cfg.seed, balanced=cfg.imbalance == "sampler")
        self.loader_gen = torch.Generator()  # the loader's own seed source, so it never draws from the global RNG
        self.runtime: dict[str, Any] = {
            "device": str(self.device),
            "amp": self.precision.amp_name,
            "channels_last": self.precision.channels_last,
            "compile": bool(cfg.compile),
            "threads": configure_threads(),
        }
        self._loss = nn.CrossEntropyLoss(weight=self._class_weights(train_labels), label_smoothing=cfg.label_smoothing)
        self.train_prep: Callable | None = None
        self.val_prep: Callable | None = None
        self.train_ds: Dataset | None = None
        self.val_ds: Dataset | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[nn.Parameter] = []
        self._data_kw: dict[str, Any] = {}

    def _class_weights(self, labels: list[int]) -> torch.Tensor | None:
        if self.cfg.imbalance != "weights":
            return None
        counts = np.bincount(labels, minlength=len(self.data.classes)).astype(float)
        w = counts.sum() / np.maximum(counts, 1) / len(counts)
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    def prepare(self, emit: Callable[[str, int, int], None], validate: bool = True) -> None:
        """Build the data path (decoding images into the cache), the features of a linear probe, the trainable
        parameters and the optimizer. `emit(phase, done, total)` reports progress of the slow parts."""
        items = self.data.train + (self.data.val if validate else [])
        cache = self._open_cache(items, emit) if self.cache_mode != "off" else None
        n_tr = len(self.data.train)
        train_labels = [y for _, y in self.data.train]
        val_labels = [y for _, y in self.data.val]
        draft = draft_size(self.data_config)
        ev_t = eval_transform(self.data_config, self.cfg.grayscale)
        if cache is not None:
            train_src: Dataset = CachedImages(cache, range(n_tr), train_labels)
            val_src: Dataset = CachedImages(cache, range(n_tr, n_tr + len(self.data.val)), val_labels)
            self.train_prep = TensorPipeline(self.data_config, self.cfg.augment, self.cfg.grayscale, train=True)
            self.val_prep = TensorPipeline(self.data_config, "none", self.cfg.grayscale, train=False)
            # Batches gathered from the decoded cache cost microseconds: worker processes would only add copies.
            self._data_kw = {"num_workers": 0, "pin_memory": self.device.type == "cuda"}
        else:
            augment = train_transform(self.data_config, self.cfg.augment, self.cfg.grayscale)
            train_src = ImageListDataset(self.data.train, augment, draft)
            val_src = ImageListDataset(self.data.val, ev_t, draft)
            self._data_kw = loader_kwargs(self.device, self.workers)
            self.runtime.update(cache="off", num_workers=self.workers)
        if self.use_features:
            self._prepare_head_only(cache, train_src, val_src, train_labels, val_labels, emit, validate)
        else:
            self.train_ds, self.val_ds = train_src, val_src
            self.params = list(self.model.parameters())
            set_trainable_mode(self.model, self.cfg.mode, self.cfg.head_warmup_epochs == 0)
            self._forward = torch.compile(self.model) if self.cfg.compile else self.model  # weights stay the model's
        self.optimizer = optimizer_for(self.cfg, self.params)

    def _open_cache(self, items: list[tuple[Path, int]], emit: Callable[[str, int, int], None]):
        emit("cache", 0, len(items))
        cache = open_cache(
            [p for p, _ in items],
            key=str(self.data.index.root),
            side=self.cache_side,
            interpolation=str(self.data_config.get("interpolation", "bilinear")),
            mode=self.cache_mode,
            num_workers=self.workers,
            progress=lambda done, total: emit("cache", done, total),
        )
        self.runtime.update(cache.describe())
        self.runtime["num_workers"] = 0
        return cache

    def _prepare_head_only(self, cache, train_src, val_src, train_labels, val_labels, emit, validate) -> None:
        """Linear probe: features of the frozen backbone once (the evaluation view of each image), then the head
        trains on them."""
        set_trainable(self.model, False)
        draft = draft_size(self.data_config)
        feat_src = (
            train_src
            if cache is not None
            else ImageListDataset(self.data.train, eval_transform(self.data_config, self.cfg.grayscale), draft)
        )
        train_x = self._features(feat_src, emit, training=True)
        self.train_ds = TensorDataset(train_x, torch.tensor(train_labels, dtype=torch.long))
        if validate:
            val_x = self._features(val_src, emit, training=False)
            self.val_ds = TensorDataset(val_x, torch.tensor(val_labels, dtype=torch.long))
        self.train_prep = self.val_prep = None
        self._data_kw = {}
        self._head = self.model.get_classifier()
        self._dropout = nn.Dropout(self.cfg.drop_rate)
        self.params = list(self._head.parameters())

    @torch.no_grad()
    def _features(self, dataset: Dataset, emit: Callable[[str, int, int], None], training: bool) -> torch.Tensor:
        """Pre-logit features of the frozen backbone over `dataset` (through the evaluation view), on the CPU; in
        the precision of a training step, or of an evaluation pass for validation features."""
        self.model.eval()
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, **self._data_kw)
        prep = self.val_prep
        done, out = 0, []
        emit("features", 0, len(dataset))
        for x, _ in loader:
            x = x.to(self.device, non_blocking=True)
            if prep is not None:
                x = prep(x)
            with self.precision.autocast(training):
                out.append(extract_features(self.model, self.precision.layout(x)).float().cpu())
            done += x.shape[0]
            emit("features", done, len(dataset))
        return torch.cat(out) if out else torch.empty(0)

    # --- what the learner calls every step ---------------------------------------------------------------------

    def loaders(self, batch_size: int) -> tuple[DataLoader, DataLoader | None]:
        """Train loader (the epoch sampler's order) and validation loader for `batch_size`."""
        train = DataLoader(self.train_ds, batch_size=batch_size, sampler=self.sampler, generator=self.loader_gen,
                           **self._data_kw)  # fmt: skip
        if self.val_ds is None:
            return train, None
        # Validation needs no gradients: larger batches (features are tiny, so larger still).
        val_bs = batch_size * (4 if self.use_features else 2)
        return train, DataLoader(self.val_ds, batch_size=val_bs, **self._data_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_features:
            return self._head(self._dropout(x))
        return self._forward(x)

    def set_mode(self, train: bool) -> None:
        """Train or eval mode for what trains; batch-norm statistics of a frozen backbone stay frozen."""
        if self.use_features:
            self._dropout.train(train)
            self._head.train(train)
            return
        self.model.train(train)
        if train:
            freeze_bn_stats(self.model)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class-weighted, label-smoothed cross-entropy; soft cross-entropy for mixed (probability) targets."""
        if target.is_floating_point() and target.ndim == 2:
            return soft_cross_entropy(logits, target)
        return self._loss(logits, target)

    def prep_train(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.train_prep is not None:
            x = self.train_prep(x)
        return self.precision.layout(x)

    def prep_val(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.val_prep is not None:
            x = self.val_prep(x)
        return self.precision.layout(x)
