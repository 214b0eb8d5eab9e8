"""The one training config: every hyperparameter with its unit and default, saved into each run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("linear", "finetune")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "onecycle", "constant")
IMBALANCE = ("none", "weights", "sampler")
DEVICES = ("auto", "cpu", "cuda", "mps")
CACHES = ("auto", "memory", "disk", "off")


@dataclass
class TrainConfig:
    # data
    data: str = ""  # folder, .zip, CSV, or "demo"
    val_split: float = 0.2  # fraction per class held out when the data has no val/ folder
    test_split: float = 0.0  # optional held-out test fraction per class
    img_size: int | None = None  # square input side in pixels; None = the backbone's default
    augment: str | None = None  # none | light | standard | strong; None = none for linear, light for finetune
    mixup: float = 0.0  # mixup alpha; 0 = off
    cutmix: float = 0.0  # cutmix alpha; 0 = off
    grayscale: bool = False  # convert images to grayscale (replicated to 3 channels)
    imbalance: str = "none"  # none | weights (class-weighted loss) | sampler (balanced sampling)
    # model
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # bundled | hub | none | path.safetensors; None = the backbone's default
    mode: str = "finetune"  # linear: backbone frozen, only the head trains; finetune: everything trains
    head_warmup_epochs: int = 0  # finetune: train only the head for this many epochs first
    drop_rate: float = 0.2  # dropout before the head
    # optimisation
    epochs: int | None = None  # None = 20 for linear, 8 for finetune
    batch_size: int = 32
    lr: float | None = None  # peak learning rate; None = 3e-3 for linear, 5e-4 for finetune
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, nesterov)
    scheduler: str = "cosine"  # cosine | onecycle | constant, each after warm-up
    warmup_epochs: float = 0.5  # linear warm-up from lr/10, in epochs
    weight_decay: float = 0.05
    label_smoothing: float | None = None  # None = 0 for linear (keeps it calibrated), 0.1 for finetune
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    early_stopping: int = 0  # stop after this many epochs without validation improvement; 0 = off
    # runtime
    seed: int = 0
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    amp: bool = True  # mixed precision on CUDA (bf16 where supported)
    num_workers: int | None = None  # DataLoader workers; None = chosen for the machine
    # decoded-image cache (classifier.data.cache): auto = in memory when it fits the budget, else a memory-mapped
    # file in workspace/cache; memory; disk; off = decode every image every epoch
    cache: str = "auto"
    compile: bool = False  # torch.compile the model (pays off only for long runs: compiling takes a while)
    auto_batch_size: bool = False  # CUDA: largest batch size (<= batch_size) whose training step fits in memory
    # resume checkpoint (last.safetensors) at every epoch end and every N optimizer steps; 0 = epoch ends only;
    # None = after every 2 minutes of training
    checkpoint_every_steps: int | None = None

    def resolved(self) -> TrainConfig:
        """A copy with mode-dependent defaults filled in, after validating every choice."""
        for name, value, choices in [
            ("mode", self.mode, MODES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("scheduler", self.scheduler, SCHEDULERS),
            ("imbalance", self.imbalance, IMBALANCE),
            ("device", self.device, DEVICES),
            ("cache", self.cache, CACHES),
        ]:
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        from classifier.data.transforms import AUGMENT_PRESETS

        if self.augment is not None and self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, not {self.augment!r}")
        out = TrainConfig(**asdict(self))
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
        if out.checkpoint_every_steps is not None and out.checkpoint_every_steps < 0:
            raise ValueError("checkpoint_every_steps must be 0 (epoch ends only) or a positive number of steps")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
