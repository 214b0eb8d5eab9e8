"""What a learner trains, built once from a `TrainConfig`: the split data, the model on its device, the data path
(decoded-image cache or files), the frozen-feature shortcut, the optimizer and the loss. `fit` and the LR finder
both build it here, so a range test uses exactly what a run with the same settings would.

    >>> data = split_data(load_dataset("demo"), cfg)  # doctest: +SKIP
    >>> setup = TrainingSetup(cfg, data, model, data_config)  # doctest: +SKIP
    >>> setup.prepare(emit, validate=True)  # decode cache, features, optimizer  # doctest: +SKIP
    >>> train_loader, val_loader = setup.loaders(cfg.batch_size)  # doctest: +SKIP

A linear probe without augmentation (`use_features`) runs the frozen backbone once over every image and trains
the head on the stored features, which takes seconds on a CPU.

The task (`classifier.task`) decides the targets, the loss and the validation figures, here and nowhere else in
training: single-label targets are class indices, trained with (class-weighted, label-smoothed) cross-entropy and
validated by accuracy; multi-label targets are 0/1 vectors, trained with binary cross-entropy on each label's
sigmoid (optionally `pos_weight` = negatives / positives per label) or timm's asymmetric loss, validated by mean
average precision (the best epoch's score) and exact-match accuracy at threshold 0.5.

In a DDP run (`ranks`, see `classifier.training.distributed`) the model is on this rank's device and wrapped in
DistributedDataParallel, the sampler yields this rank's slice of each global batch, decoding and features are shared
out between the ranks, and validation scores this rank's slice (`gather_val` puts the slices back together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from classifier.data.cache import CachedImages, cache_side, open_cache
from classifier.data.dataset import DatasetIndex
from classifier.data.features import cached_features, feature_identity
from classifier.data.loader import ImageListDataset, draft_size
from classifier.data.splits import assign_splits
from classifier.data.transforms import TensorPipeline, eval_transform, train_transform
from classifier.device import Precision, configure_threads, default_workers, loader_kwargs, pick_device
from classifier.errors import ClassifierError
from classifier.metrics import mean_average_precision
from classifier.models import extract_features, freeze_bn_stats, set_trainable, set_trainable_mode
from classifier.task import MULTI, SINGLE, join_labels, label_separator
from classifier.training import precision
from classifier.training.config import TrainConfig
from classifier.training.distributed import Ranks
from classifier.training.resume import EpochSampler

Items = list[tuple[Path, Any]]  # (image path, target): a class index, or a float32 0/1 vector per label (multi-label)


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

    @property
    def task(self) -> str:
        return self.index.task

    def split_rows(self) -> list[tuple[str, str, str]]:
        """(path relative to the dataset root, class name, split) per image: split.csv's rows (a multi-label
        image's labels in one cell, `classifier.task.label_separator`)."""
        names = self.index.classes
        sep = label_separator(names) if self.task == MULTI else ""
        return [
            (s.path, join_labels([names[c] for c in self.index.label_indices(s)], sep) if sep else names[s.label], sp)
            for s, sp in zip(self.index.samples, self.splits)
        ]


def targets(index: DatasetIndex) -> list[Any]:
    """Each sample's training target: its class index, or (multi-label) a float32 0/1 vector over the labels."""
    if index.task != MULTI:
        return [s.label for s in index.samples]
    eye = np.eye(len(index.classes), dtype=np.float32)
    return [eye[list(s.labels or ())].sum(axis=0) for s in index.samples]


def split_data(index: DatasetIndex, cfg: TrainConfig) -> SplitData:
    splits = assign_splits(index, cfg.val_split, cfg.test_split, cfg.seed)
    ys = targets(index)

    def items(split: str) -> Items:
        return [(index.root / s.path, y) for s, y, sp in zip(index.samples, ys, splits) if sp == split]

    return SplitData(index, splits, items("train"), items("val"), items("test"))


def check_task_options(cfg: TrainConfig, task: str) -> None:
    """ClassifierError when a setting does not apply to the dataset's task (said before anything trains)."""
    if task == MULTI:
        if cfg.imbalance != "none":
            raise ClassifierError(
                f"imbalance {cfg.imbalance!r} is for single-label datasets; for rare labels of a multi-label dataset "
                "use --pos-weight auto (or the asymmetric loss, --multilabel-loss asl)"
            )
        return
    changed = [n for n, v in (("multilabel_loss", cfg.multilabel_loss != "bce"), ("pos_weight", cfg.pos_weight !=
               "none"), ("tune_thresholds", cfg.tune_thresholds)) if v]  # fmt: skip
    if changed:
        raise ClassifierError(
            f"{', '.join(changed)} applies to multi-label datasets (a labels column or one 0/1 column per label); "
            f"{cfg.data} has one class per image"
        )


def frozen_features(
    cfg: TrainConfig,
    index: DatasetIndex,
    model: nn.Module,
    data_config: dict[str, Any],
    emit: Callable[[str, int, int], None],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Pre-logit features of every image of `index`, in its order, exactly as a linear probe with `cfg`'s backbone
    and preprocessing computes them and through the same caches, so a probe run reuses the data-quality scan's
    features and the scan a run's. Also the setup's `runtime` (device, cache and features computed/reused)."""
    items = [(index.root / s.path, y) for s, y in zip(index.samples, targets(index))]
    data = SplitData(index, ["train"] * len(items), items, [], [])
    probe = replace(cfg.resolved(), mode="linear", augment="none", mixup=0.0, cutmix=0.0)
    setup = TrainingSetup(probe, data, model, data_config)
    setup.prepare(emit, validate=False)
    return setup.train_ds.tensors[0], setup.runtime  # type: ignore[union-attr]


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


def positive_weights(train: np.ndarray) -> np.ndarray:
    """`pos_weight auto`: negatives / positives of each label among the training images, the weight
    `BCEWithLogitsLoss` gives a positive so a rare label's positives count as much as its negatives. A label on
    every training image has no negatives to balance: weight 1 (0 would silence its positives, leaving its
    probability at the untrained 0.5)."""
    pos = train.sum(axis=0)
    neg = len(train) - pos
    return np.where(neg > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on each label's sigmoid (mean over images and labels) or timm's asymmetric loss (sum over
    labels, mean over images), against 0/1 or mixed targets; label smoothing moves each target towards 0.5 by
    `smoothing / 2`, as timm's multi-label mixup does."""

    def __init__(self, kind: str, smoothing: float, pos_weight: torch.Tensor | None):
        super().__init__()
        self.kind, self.smoothing, self.pos_weight = kind, smoothing, pos_weight
        if kind == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            self.asl = AsymmetricLossMultiLabel(smoothing=smoothing, pos_weight=pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "asl":
            return self.asl(logits, target)
        y = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight)


class TrainingSetup:
    """The model, data path, optimizer and loss for one config; `prepare` does the work that takes time."""

    def __init__(
        self,
        cfg: TrainConfig,
        data: SplitData,
        model: nn.Module,
        data_config: dict[str, Any],
        ranks: Ranks | None = None,
        saved_runtime: dict[str, Any] | None = None,
    ):
        self.cfg, self.data, self.model, self.data_config, self.ranks = cfg, data, model, data_config, ranks
        self.task = data.task
        check_task_options(cfg, self.task)
        self.device = pick_device(cfg.device) if ranks is None else ranks.device(pick_device(cfg.device))
        self.use_features = uses_features(cfg)
        self.precision, probe = self._precision(saved_runtime)
        self.precision.prepare(model)
        self.workers = cfg.num_workers if cfg.num_workers is not None else default_workers(self.device)
        side = cache_side(data_config)
        self.cache_mode = cfg.cache if side is not None else "off"
        if self.cache_mode == "auto" and ranks is not None and ranks.world > 1:
            self.cache_mode = "disk"  # one memory-mapped file in the page cache, not a copy per rank
        self.cache_side = side
        train_labels = [y for _, y in data.train] if self.task == SINGLE else [0] * len(data.train)
        rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
        self.sampler = EpochSampler(train_labels, cfg.seed, balanced=cfg.imbalance == "sampler", rank=rank, world=world)
        self.loader_gen = torch.Generator()  # the loader's own seed source, so it never draws from the global RNG
        self.runtime: dict[str, Any] = {
            "device": str(self.device),
            "amp": self.precision.amp_name,
            "channels_last": self.precision.channels_last,
            "compile": bool(cfg.compile),
            "threads": configure_threads(),
            **({"precision_probe": probe} if probe else {}),
            **({"nproc": world, "backend": ranks.backend} if ranks is not None else {}),
        }
        self._loss = self._make_loss()
        self.train_prep: Callable | None = None
        self.val_prep: Callable | None = None
        self.train_ds: Dataset | None = None
        self.val_ds: Dataset | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[nn.Parameter] = []
        self._data_kw: dict[str, Any] = {}

    def _make_loss(self) -> nn.Module:
        """The task's training loss: class-weighted, label-smoothed cross-entropy, or `MultiLabelLoss`."""
        cfg = self.cfg
        if self.task == MULTI:
            weights = None
            if cfg.pos_weight == "auto":
                train = np.stack([y for _, y in self.data.train]) if self.data.train else np.zeros((0, 0))
                weights = torch.tensor(positive_weights(train), device=self.device)
            return MultiLabelLoss(cfg.multilabel_loss, cfg.label_smoothing, weights)
        return nn.CrossEntropyLoss(weight=self._class_weights([y for _, y in self.data.train]),
                                   label_smoothing=cfg.label_smoothing)  # fmt: skip

    def _precision(self, saved_runtime: dict[str, Any] | None) -> tuple[Precision, dict[str, Any] | None]:
        """The run's precision: as recorded when resuming; bf16 on a CPU only where it measures fastest for this
        model (`training.precision`; DDP ranks skip the measurement, which could differ between them)."""
        default = Precision.for_device(self.device, self.cfg.amp)
        if saved_runtime is not None:
            return precision.from_runtime(self.device, saved_runtime) or default, None
        if self.ranks is not None:
            return default, None
        size = tuple(int(v) for v in self.data_config["input_size"])
        return precision.choose(self.model, default, size, len(self.data.classes), training=not self.use_features)

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
            self.train_prep = TensorPipeline(
                self.data_config, self.cfg.augment, self.cfg.grayscale, train=True, multilabel=self.task == MULTI
            )
            self.val_prep = TensorPipeline(self.data_config, "none", self.cfg.grayscale, train=False)
            # Batches gathered from the decoded cache cost microseconds: worker processes would only add copies.
            self._data_kw = {"num_workers": 0, "pin_memory": self.device.type == "cuda"}
        else:
            augment = train_transform(self.data_config, self.cfg.augment, self.cfg.grayscale, self.task == MULTI)
            train_src = ImageListDataset(self.data.train, augment, draft)
            val_src = ImageListDataset(self.data.val, ev_t, draft)
            self._data_kw = loader_kwargs(self.device, self.workers)
            self.runtime.update(cache="off", num_workers=self.workers)
        if self.use_features:
            self._prepare_head_only(cache, train_src, val_src, train_labels, val_labels, emit, validate)
        else:
            self.train_ds, self.val_ds = train_src, val_src
            self.params = list(self.model.parameters())
            self._forward = self._wrap_model()
        self.optimizer = optimizer_for(self.cfg, self.params)

    def _wrap_model(self) -> nn.Module:
        """What trains: the model (compiled when asked; its weights stay the model's), in DDP for several ranks."""
        mode, warmup = self.cfg.mode, self.cfg.head_warmup_epochs > 0
        module: nn.Module = self.model
        if self.ranks is not None:
            # DDP syncs the parameters that train when it is built: with a head warm-up the backbone joins later.
            set_trainable_mode(self.model, mode)
            module = self.ranks.wrap(self.model, find_unused=warmup)
        set_trainable_mode(self.model, mode, train_backbone=not warmup)
        return torch.compile(module) if self.cfg.compile else module

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
            group=self.ranks,
        )
        self.runtime.update(cache.describe())
        self.runtime["num_workers"] = 0
        return cache

    def _prepare_head_only(self, cache, train_src, val_src, train_labels, val_labels, emit, validate) -> None:
        """Linear probe: features of the frozen backbone (the evaluation view of each image), read from the feature
        cache where an earlier run, LR finder or search trial computed them, then the head trains on them."""
        set_trainable(self.model, False)
        draft = draft_size(self.data_config)
        ev_t = eval_transform(self.data_config, self.cfg.grayscale)
        feat_src = train_src if cache is not None else ImageListDataset(self.data.train, ev_t, draft)
        source = "cache" if cache is not None else "files"
        parts = [(self.data.train, feat_src, True)] + ([(self.data.val, val_src, False)] if validate else [])
        total = sum(len(items) for items, _, _ in parts)
        done, computed, feats = 0, 0, []
        for items, src, training in parts:
            offset = done
            # Training features in a training step's precision (bf16 on CPUs that have it), validation in an
            # evaluation pass's; each precision is its own cache entry.
            identity = feature_identity(self.model, self.data_config, grayscale=self.cfg.grayscale,
                                        autocast=self.precision.active_name(training), source=source)  # fmt: skip

            def compute(indices: list[int], src=src, offset=offset, training=training) -> torch.Tensor:
                return self._features(Subset(src, indices), lambda n: emit("features", offset + n, total), training)

            result = cached_features([p for p, _ in items], identity, compute)
            feats.append(result.features)
            done += len(items)
            computed += result.computed
            emit("features", done, total)
        self.runtime["features"] = {"computed": computed, "reused": total - computed}
        self.train_ds = TensorDataset(feats[0], self._target_tensor(train_labels))
        if validate:
            self.val_ds = TensorDataset(feats[1], self._target_tensor(val_labels))
        self.train_prep = self.val_prep = None
        self._data_kw = {}
        self._head = self.model.get_classifier()
        self._dropout = nn.Dropout(self.cfg.drop_rate)
        self.params = list(self._head.parameters())
        if self.ranks is not None:
            self._head = self.ranks.wrap(self._head)

    def _target_tensor(self, ys: list[Any]) -> torch.Tensor:
        if self.task == MULTI:
            return torch.from_numpy(np.stack(ys)) if ys else torch.zeros((0, len(self.data.classes)))
        return torch.tensor(ys, dtype=torch.long)

    @torch.no_grad()
    def _features(self, dataset: Dataset, progress: Callable[[int], None], training: bool) -> torch.Tensor:
        """Pre-logit features of the frozen backbone over `dataset` (through the evaluation view), on the CPU, in the
        precision of a training step or of an evaluation pass; in a DDP run each rank computes a contiguous slice
        and every rank gets them all, in order."""
        self.model.eval()
        total, world = len(dataset), self.ranks.world if self.ranks is not None else 1
        part = Subset(dataset, self.ranks.share(total)) if self.ranks is not None else dataset
        # Its own generator: an iterator over a loader without one draws a seed from the global RNG, and a run must
        # train the same whether its features were computed now or read from the cache.
        loader = DataLoader(part, batch_size=self.cfg.batch_size, generator=torch.Generator(), **self._data_kw)
        done, out = 0, []
        for x, _ in loader:
            x = self.prep_val(x)
            with self.precision.autocast(training):
                out.append(extract_features(self.model, x).float().cpu())
            done += x.shape[0]
            progress(min(total, done * world))  # rank 0's share, as an estimate of the whole
        mine = torch.cat(out) if out else torch.empty(0)
        if self.ranks is None:
            return mine
        return torch.cat([t for t in self.ranks.gather(mine) if t.numel()])

    # --- what the learner calls every step ---------------------------------------------------------------------

    def loaders(self, batch_size: int) -> tuple[DataLoader, DataLoader | None]:
        """Train loader (the epoch sampler's order) and validation loader for `batch_size`."""
        self.sampler.per_rank = batch_size
        train = DataLoader(self.train_ds, batch_size=batch_size, sampler=self.sampler, generator=self.loader_gen,
                           **self._data_kw)  # fmt: skip
        if self.val_ds is None:
            return train, None
        # Validation needs no gradients: larger batches (features are tiny, so larger still).
        val_bs = batch_size * (4 if self.use_features else 2)
        val = self.val_ds if self.ranks is None else Subset(self.val_ds, self.ranks.share(len(self.val_ds)))
        return train, DataLoader(val, batch_size=val_bs, **self._data_kw)

    def gather_val(self, val: dict[str, Any]) -> dict[str, Any]:
        """One validation result from every rank's slice (in order): loss, accuracy and probabilities of the whole
        validation set, as one process scoring the same weights gets them. Unchanged without DDP."""
        if self.ranks is None:
            return val
        parts = self.ranks.gather((val["loss"] * len(val["probs"]), val["probs"]))
        probs = np.concatenate([p for _, p in parts if len(p)]) if any(len(p) for _, p in parts) else val["probs"]
        labels = np.array([y for _, y in self.data.val])
        return self.val_result(sum(s for s, _ in parts), probs, labels)

    # --- the task's figures: what the learner counts and validates -------------------------------------------------

    def hits(self, logits: torch.Tensor, y: torch.Tensor) -> int:
        """Images of the batch answered right: the top class, or (multi-label) every label at threshold 0.5."""
        if self.task == MULTI:
            return int(((logits > 0) == (y > 0.5)).all(dim=1).sum())
        return int((logits.argmax(1) == y).sum())

    def val_batch(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(summed validation loss, probabilities) of a batch: plain cross-entropy and softmax, or (multi-label) binary
        cross-entropy averaged over the labels and the sigmoid. Never the training loss's weights or smoothing, so
        validation losses compare across settings."""
        if self.task == MULTI:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1).sum()
            return float(loss), torch.sigmoid(logits)
        return float(nn.functional.cross_entropy(logits, y, reduction="sum")), torch.softmax(logits, 1)

    def val_result(self, loss_sum: float, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Validation's figures: loss, acc (exact-match share), the score the best epoch is chosen by (accuracy;
        multi-label: mean average precision, also kept as `map`) and the probabilities."""
        n = len(labels)
        out: dict[str, Any] = {"loss": loss_sum / max(1, n), "probs": probs}
        if self.task == MULTI:
            out["acc"] = float(((probs >= 0.5) == (labels > 0.5)).all(axis=1).mean()) if n else 0.0
            out["map"] = out["score"] = mean_average_precision(labels, probs) if n else 0.0
        else:
            out["acc"] = out["score"] = float((probs.argmax(1) == labels).mean()) if n else 0.0
        return out

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
        """Class-weighted, label-smoothed cross-entropy; soft cross-entropy for mixed (probability) targets; the
        multi-label loss for multi-label targets."""
        if self.task == MULTI:
            return self._loss(logits, target)
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
