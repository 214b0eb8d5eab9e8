"""The one training config: every hyperparameter with its default and, in its field metadata, its help, choices,
unit, group, label, bounds and mode-dependent default, saved into each run's config.json.

The CLI flags (`classifier.cli.config_flags`), the Train page's widgets (`ui.config_form`) and the checks in
`TrainConfig.resolved()` all read that metadata, so a new hyperparameter is one field here:

    my_setting: float = _field(0.1, "what it does, in the user's terms", "optimisation", label="My setting")

Metadata keys (`META_KEYS`): `help` and `group` always; `label` (the Train page's label); `choices` (a tuple, or a
dict from each choice to a short description); `unit` (pixels, epochs, images, steps, fraction, ...); `min`/`max`
(the range the Train page offers; not checked by `resolved()`, so the CLI accepts what training accepts);
`format` (the page's number format); `auto` (what a `None` default becomes); `flag` (the CLI flag's name when it
is not the field name); `required` (a run cannot start without it).

This module imports no torch: the CLI builds its parser from it.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields
from functools import cache
from types import MappingProxyType
from typing import Any, get_type_hints

from classifier.data.presets import AUGMENT_PRESETS

GROUPS = {  # group -> what its fields are about, in the order the CLI and the docs list them
    "data": "the dataset, its split and what the images look like to the model",
    "model": "the backbone, its starting weights and what trains",
    "optimisation": "how long and how it learns",
    "runtime": "how it runs: seed, device, precision, data loading; not what it learns",
    "output": "what a run writes while it trains (for commands that write a run dir)",
}
META_KEYS = frozenset({"help", "group", "label", "choices", "unit", "min", "max", "format", "auto", "flag", "required"})


def _field(default: Any, help_text: str, group: str, **meta: Any) -> Any:
    """A dataclass field carrying its metadata; unknown keys and groups fail at import, not silently later."""
    unknown = set(meta) - META_KEYS
    if unknown or group not in GROUPS:
        raise TypeError(f"TrainConfig field metadata: unknown keys {sorted(unknown)} or group {group!r}")
    return field(default=default, metadata=MappingProxyType({"help": help_text, "group": group, **meta}))


@dataclass
class TrainConfig:
    # data
    data: str = _field(
        "",
        "the dataset: a folder of class folders (or with train/ and val/), a .zip of one, a CSV of path,label rows, "
        'or "demo" for the built-in shapes (unless a folder called demo is in the working directory)',
        "data",
        label="Dataset",
        required=True,
    )
    data_version: int | None = _field(
        None, "dataset version to train on: its relabels and exclusions (saved on the Data page's Issues tab or with "
        "`python -m classifier versions`); 0 = the files as they are", "data", label="Dataset version", min=0,
        auto="the latest version",
    )  # fmt: skip
    val_split: float = _field(
        0.2, "share of each class held out for validation when the data has no val/ folder", "data",
        label="Validation fraction", unit="fraction",
    )  # fmt: skip
    test_split: float = _field(
        0.0, "share of each class held out as a test set; 0 = none", "data", label="Test fraction", unit="fraction"
    )
    img_size: int | None = _field(
        None, "square input side", "data", label="Image size", unit="pixels", min=16, max=1024,
        auto="the backbone's default",
    )  # fmt: skip
    augment: str | None = _field(
        None, "augmentation preset (previewed on the Data page)", "data", label="Augmentation", choices=AUGMENT_PRESETS,
        auto="none for linear, so that a linear probe computes the frozen backbone's features once; light for partial "
        "and finetune",
    )  # fmt: skip
    mixup: float = _field(0.0, "mixup alpha: blend pairs of images and their labels; 0 = off", "data", label="Mixup")
    cutmix: float = _field(
        0.0, "cutmix alpha: paste a patch of one image into another, labels mixed by area; 0 = off", "data",
        label="CutMix",
    )  # fmt: skip
    grayscale: bool = _field(
        False, "train on grayscale versions of the images (replicated to 3 channels)", "data", label="Grayscale"
    )
    imbalance: str = _field(
        "none", "how to treat classes of very different sizes", "data", label="Imbalance",
        choices={"none": "every image counts the same", "weights": "class-weighted loss",
                 "sampler": "balanced sampling, so batches hold the classes equally often"},
    )  # fmt: skip
    # model
    backbone: str = _field(
        "efficientnet_lite0", "a curated name or any timm model (`python -m classifier backbones` lists them)",
        "model", label="Backbone",
    )  # fmt: skip
    weights: str | None = _field(
        None, "starting weights: bundled | hub | none | PATH.safetensors; hub weights need internet unless cached, "
        "none trains from random initialisation", "model", label="Weights",
        auto="bundled for efficientnet_lite0, none for simple_cnn, else hub",
    )  # fmt: skip
    mode: str | None = _field(
        None, "what trains", "model", label="Mode",
        choices={"linear": "linear probe (frozen backbone, only the head trains; fast)",
                 "partial": "fine-tune the last blocks (the last two stages and the head; the rest stays frozen)",
                 "finetune": "fine-tune everything (backbone and head)"},
        auto="finetune; on a CPU with epochs and image size also unset, the time budget chooses",
    )  # fmt: skip
    head_warmup_epochs: int = _field(
        0, "finetune/partial: train only the head for this many epochs first", "model", label="Head warm-up",
        unit="epochs",
    )  # fmt: skip
    drop_rate: float = _field(0.2, "dropout before the head", "model", label="Dropout", unit="probability")
    # optimisation
    epochs: int | None = _field(
        None, "passes over the training data", "optimisation", label="Epochs", unit="epochs", min=1, max=500,
        auto="20 for linear, 8 for partial and finetune",
    )  # fmt: skip
    batch_size: int = _field(
        32, "images per optimizer step", "optimisation", label="Batch size", unit="images", min=1, max=1024
    )
    lr: float | None = _field(
        None, "peak learning rate, reached after warm-up; try the LR finder", "optimisation", label="Learning rate",
        min=1e-6, max=1.0, format="%.6f", auto="3e-3 for linear, 5e-4 for partial and finetune",
    )  # fmt: skip
    optimizer: str = _field(
        "adamw", "the optimizer", "optimisation", label="Optimizer",
        choices={"adamw": "AdamW", "sgd": "SGD with Nesterov momentum 0.9"},
    )  # fmt: skip
    scheduler: str = _field(
        "cosine", "learning-rate schedule after warm-up", "optimisation", label="Schedule",
        choices=("cosine", "onecycle", "constant"),
    )  # fmt: skip
    warmup_epochs: float = _field(
        0.5, "linear warm-up from lr/10 to the peak learning rate", "optimisation", label="Warm-up", unit="epochs"
    )
    weight_decay: float = _field(
        0.05, "weight decay", "optimisation", label="Weight decay", min=0.0, max=1.0, format="%.3f"
    )
    label_smoothing: float | None = _field(
        None, "share of each target spread over the other classes; 0 = hard targets", "optimisation",
        label="Label smoothing", min=0.0, max=0.5, format="%.2f",
        auto="0 for linear, which keeps it calibrated; 0.1 for partial and finetune",
    )  # fmt: skip
    multilabel_loss: str = _field(
        "bce", "multi-label datasets: the loss on each label's sigmoid", "optimisation", label="Multi-label loss",
        choices={"bce": "binary cross-entropy per label (label smoothing moves targets towards 0.5)",
                 "asl": "asymmetric loss (timm's AsymmetricLossMultiLabel): easy negatives count less, for many "
                 "labels with few positives each"},
    )  # fmt: skip
    pos_weight: str = _field(
        "none", "multi-label datasets: weight of each label's positive images in the loss", "optimisation",
        label="Positive weight", choices={"none": "every image counts the same",
                                          "auto": "negatives / positives per label, so rare labels count as much"},
    )  # fmt: skip
    grad_clip: float = _field(1.0, "largest global gradient norm; 0 = off", "optimisation", label="Gradient clipping")
    time_budget: float | None = _field(
        None, "finish within this many minutes: a short throughput probe picks the mode, epochs and image size you "
        "left unset to fit, and the run stops on time keeping its best epoch; 0 = no budget", "optimisation",
        label="Finish within", unit="minutes", min=0.0, max=10000.0, format="%.1f",
        auto="12 on a CPU when mode, epochs and image size are all unset; none on CUDA",
    )  # fmt: skip
    early_stopping: int = _field(
        0, "stop after this many epochs without validation improvement; 0 = off", "optimisation",
        label="Early stopping", unit="epochs", min=0, max=100,
    )  # fmt: skip
    # runtime
    seed: int = _field(0, "random seed: same seed, same run", "runtime", label="Seed", min=0, max=2**31 - 1)
    device: str = _field(
        "auto", "where to train", "runtime", label="Device",
        choices={"auto": "CUDA, then Apple MPS, then the CPU", "cpu": "the CPU", "cuda": "an NVIDIA GPU",
                 "mps": "Apple silicon"},
    )  # fmt: skip
    amp: bool = _field(
        True, "mixed precision: bf16 autocast on CUDA (fp16 where bf16 is not supported); on CPUs with AVX-512 BF16 "
        "or AMX where it measures faster for the model; off: float32 everywhere", "runtime", label="Mixed precision",
    )  # fmt: skip
    num_workers: int | None = _field(
        None, "DataLoader worker processes", "runtime", label="Loader workers", flag="workers",
        auto="chosen for the machine",
    )  # fmt: skip
    cache: str = _field(
        "auto", "decoded-image cache (classifier.data.cache)", "runtime", label="Image cache",
        choices={"auto": "in memory when it fits CLASSIFIER_CACHE_MEMORY_MB (default 2048), else a memory-mapped "
                 "file in workspace/cache", "memory": "always in memory", "disk": "always the memory-mapped file",
                 "off": "decode every image every epoch"},
    )  # fmt: skip
    compile: bool = _field(
        False, "torch.compile the model (pays off only on long GPU runs: compiling takes a while)", "runtime",
        label="Compile",
    )  # fmt: skip
    auto_batch_size: bool = _field(
        False, "CUDA: the largest batch size from the batch size upwards (at most 512) whose training step fits in "
        "memory", "runtime", label="Automatic batch size",
    )  # fmt: skip
    nproc: int | None = _field(
        None, "processes training together with DistributedDataParallel, launched through torchrun (one GPU each "
        "on CUDA, gloo on the CPU); each takes batch size images per step, so a step trains on nproc x batch size "
        "images", "runtime", label="Processes / GPUs", unit="processes", min=1, max=64,
        auto="one process, without DDP",
    )  # fmt: skip
    # output
    checkpoint_every_steps: int | None = _field(
        None, "write the resume checkpoint (last.safetensors) every this many optimizer steps as well as at every "
        "epoch end; 0 = epoch ends only", "output", label="Checkpoint every", unit="steps", min=0,
        auto="after every 2 minutes of training",
    )  # fmt: skip
    tune_thresholds: bool = _field(
        False, "multi-label datasets: per label, the probability threshold that maximises its F1 on validation "
        "(metrics.json shows it beside 0.5; predict uses it); off = 0.5 for every label", "output",
        label="Tune thresholds",
    )  # fmt: skip

    def resolved(self) -> TrainConfig:
        """A copy with mode-dependent defaults filled in, after validating every choice (from the field metadata)."""
        for f in config_fields():
            choices = field_choices(f)
            value = getattr(self, f.name)
            if choices is not None and value not in choices and not (value is None and f.default is None):
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, not {value!r}")
        out = TrainConfig(**asdict(self))
        if out.mode is None:
            out.mode = "finetune"  # a time budget chooses in fit, before resolving (classifier.training.plan)
        if out.augment is None:
            # Without augmentation a linear probe computes backbone features once: seconds instead of minutes.
            out.augment = "none" if out.mode == "linear" else "light"
        if out.label_smoothing is None:
            out.label_smoothing = 0.0 if out.mode == "linear" else 0.1
        if out.epochs is None:
            out.epochs = 20 if out.mode == "linear" else 8
        if out.lr is None:
            out.lr = 3e-3 if out.mode == "linear" else 5e-4
        if out.epochs < 1 or out.batch_size < 1 or out.lr <= 0:
            raise ValueError("epochs and batch size must be at least 1 and the learning rate positive")
        if out.nproc is not None and out.nproc < 1:
            raise ValueError("nproc must be at least 1 (or left out for one process without DDP)")
        if out.time_budget is not None and out.time_budget < 0:
            raise ValueError("time_budget must be a number of minutes, or 0 for no budget")
        if out.checkpoint_every_steps is not None and out.checkpoint_every_steps < 0:
            raise ValueError("checkpoint_every_steps must be 0 (epoch ends only) or a positive number of steps")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def config_fields(*groups: str) -> tuple[Field, ...]:
    """TrainConfig's fields in declaration order, only those of `groups` when given: iterate these, not names."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown TrainConfig field groups {sorted(unknown)}; groups are {', '.join(GROUPS)}")
    return tuple(f for f in fields(TrainConfig) if not groups or f.metadata["group"] in groups)


def config_field(name: str) -> Field:
    """The TrainConfig field `name` (KeyError names the field when there is none)."""
    for f in fields(TrainConfig):
        if f.name == name:
            return f
    raise KeyError(f"TrainConfig has no field {name!r}")


def field_choices(f: Field) -> tuple[str, ...] | None:
    """The allowed values of a field with choices (a dict's keys), else None."""
    choices = f.metadata.get("choices")
    return None if choices is None else tuple(choices)


def choice_help(f: Field) -> str:
    """'a: what a does; b: ...' for a field whose choices carry descriptions, else ''."""
    choices = f.metadata.get("choices")
    return "; ".join(f"{k}: {v}" for k, v in choices.items()) if isinstance(choices, dict) else ""


@cache
def field_type(f: Field) -> type:
    """The value type of a field (int, float, str or bool), with the `| None` of an automatic default removed."""
    hint = get_type_hints(TrainConfig)[f.name]
    kinds = [t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)]
    return kinds[0]


@cache
def per_mode_fields() -> tuple[str, ...]:
    """The fields whose default (`None`) `resolved()` fills in differently for each mode."""
    by_mode = [TrainConfig(mode=m).resolved() for m in field_choices(config_field("mode")) or ()]
    return tuple(
        f.name
        for f in config_fields()
        if f.name != "mode" and f.default is None and len({getattr(c, f.name) for c in by_mode}) > 1
    )


def describe(f: Field, show_default: bool = False) -> str:
    """The field's help, its choices' descriptions, unit and automatic (or, with `show_default`, concrete) default:
    what the CLI's help and the Train page's tooltips say."""
    text = f.metadata["help"]
    if choice_help(f):
        text += f". {choice_help(f)}"
    notes = [f.metadata["unit"]] if "unit" in f.metadata else []
    if "auto" in f.metadata:
        notes.append(f"default: {f.metadata['auto']}")
    elif show_default and field_type(f) is not bool and f.default not in (None, ""):
        notes.append(f"default: {f.default}")
    return text + (f" ({'; '.join(notes)})" if notes else "")
