"""The time budget: measure how fast this machine trains the model, then choose the mode, epochs and image size
that fit `time_budget` minutes, and keep to it.

    >>> tp = measure_throughput(model, 224, precision, n_classes=5, sample_paths=paths)  # doctest: +SKIP
    >>> plan = choose_plan(cfg, budget_s=720, n_train=2936, n_val=734, tp=tp, pretrained=True)  # doctest: +SKIP
    >>> plan.mode, plan.epochs, plan.img_size, plan.reasons  # doctest: +SKIP

Only what the user left unset is chosen (`mode`, `epochs`, `img_size` at None); the rest of the config is kept.
`fit` plans before resolving the config (so `TrainConfig.resolved()` stays a pure function of the config), records
the plan with its measurements and reasons in config.json (`plan`), and adds `Deadline`, which ends the run on time
with its best epoch kept.

Why these choices, on the 2-core CPU this project is measured on (docs/benchmarks.md): a linear probe of a
pretrained backbone costs one frozen forward pass per image and already reaches most of the accuracy; a full
fine-tune step costs about 2.2x a float32 forward pass per image and needs several epochs to pay, a step that
trains only the last stages ("partial") about 1.5x (EfficientNet-Lite0 at 224 px: 1.02 s, 0.69 s and 0.46 s per
image, measured at load 7). A fine-tune of pretrained weights (partial or full) starts from the head of a linear
probe on frozen features and keeps that probe as its best epoch until an epoch beats it, so it never ends below the
probe (and a full fine-tune of multi-label demo scenes, 8 epochs, reached mAP 0.958 that way against 0.948 from a
random head: bench/multilabel.py). So the planner
prefers a full fine-tune of at least `MIN_FULL_EPOCHS` epochs at the model's own size, then a partial fine-tune of
at least `MIN_PARTIAL_EPOCHS` epochs (largest size first, down to `MIN_SIDE`), then the linear probe alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier import rundir
from classifier.device import Precision
from classifier.models import set_trainable_mode
from classifier.training.callbacks import Schedule, schedule_spec, val_score
from classifier.training.config import TrainConfig
from classifier.training.events import Callback, CancelFit, FitState, StopFit
from classifier.training.learner import Learner
from classifier.training.setup import TrainingSetup

DEFAULT_CPU_BUDGET_MINUTES = 12.0
PLANNED_FIELDS = ("mode", "epochs", "img_size")  # what a plan may choose, each only when the user left it unset
MIN_SIDE = 160  # smaller inputs lose more accuracy than the epochs they buy (pretrained at 224-260 px)
SIDE_STEP = 32
# Up to 16 full epochs where the budget has room: on the multi-label demo scenes (322 training images, quiet 2-core
# CPU) 16 epochs after the head's probe reached mAP 0.979 in 4.8 min against 0.958 for 8 (bench/multilabel.py).
MIN_FULL_EPOCHS, MAX_FULL_EPOCHS = 5, 16
MIN_PARTIAL_EPOCHS, MAX_PARTIAL_EPOCHS = 2, 6
HEAD_EPOCHS = 20  # epochs of the head on frozen features before a fine-tune (seconds on a CPU)
SAFETY = 0.85  # plan to use this share of the time left: estimates from a few steps run a little optimistic
START_SECONDS = 8.0  # process start and imports, before fit measures anything
PROBE_BATCH = 8


@dataclass
class Throughput:
    """Measured seconds per image at `side` px: a forward pass without gradients in the precision of validation
    (`forward`) and of the training images' frozen features (`features`; bf16 where the CPU has it), a training
    step of a partial and of a full fine-tune, and decoding one image into the cache."""

    side: int
    forward: float
    partial: float
    full: float
    decode: float
    amp: str | None
    seconds: float  # what measuring took
    features: float | None = None  # None: as `forward`

    def scaled(self, side: int) -> float:
        """Cost factor of `side` px against the measured side: convolutions scale with the pixel count."""
        return (side / self.side) ** 2


@dataclass
class Plan:
    """What the budget chose, the estimate it rests on and why, as config.json's `plan` records it."""

    budget_s: float
    mode: str
    epochs: int
    img_size: int
    head_epochs: int  # epochs of the head on frozen features before a fine-tune of pretrained weights, else 0
    estimate_s: float
    fits: bool
    chosen: list[str]  # the fields the plan chose (the others were the user's)
    reasons: list[str] = field(default_factory=list)
    throughput: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        what = {"linear": "linear probe", "partial": "fine-tune of the last blocks", "finetune": "full fine-tune"}[
            self.mode
        ] + (" after a linear probe of the head" if self.head_epochs else "")
        epochs = "" if self.mode == "linear" else f", {self.epochs} epochs"
        return (f"plan for {self.budget_s / 60:.1f} min: {what}{epochs} at {self.img_size} px, estimated "
                f"{self.estimate_s / 60:.1f} min")  # fmt: skip


def budget_seconds(cfg: TrainConfig, device: torch.device, pretrained: bool) -> float | None:
    """The run's time budget in seconds, or None: the user's `time_budget` (0 = none), else on a CPU the default
    budget when mode, epochs and image size are all unset and the backbone starts from pretrained weights. On CUDA
    the defaults stay a full fine-tune."""
    if cfg.time_budget is not None:
        return cfg.time_budget * 60 if cfg.time_budget > 0 else None
    unset = cfg.mode is None and cfg.epochs is None and cfg.img_size is None
    if device.type == "cpu" and unset and pretrained:
        return DEFAULT_CPU_BUDGET_MINUTES * 60
    return None


def measure_throughput(
    model: nn.Module,
    side: int,
    precision: Precision,
    n_classes: int,
    sample_paths: Sequence[Path] = (),
    draft: int | None = None,
) -> Throughput:
    """Time a few forward passes and training steps of `model` at `side` px on random inputs (batch
    `PROBE_BATCH`, after one warm-up each), and decoding a few of `sample_paths`. The model's weights and
    trainable flags are put back as they were; its batch-norm statistics are restored too."""
    t_start = time.perf_counter()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x = precision.layout(torch.randn(PROBE_BATCH, 3, side, side, device=precision.device))
    y = torch.randint(0, n_classes, (PROBE_BATCH,), device=precision.device)

    def forward(training: bool) -> None:
        model.eval()
        with torch.no_grad(), precision.autocast(training):  # validation runs in float32 on a CPU
            model(x)

    def train_step(mode: str) -> None:
        params = set_trainable_mode(model, mode)
        model.train()
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        for p in params:
            p.grad = None

    per_image = {}
    for name, fn in (("forward", lambda: forward(False)), ("features", lambda: forward(True)),
                     ("partial", lambda: train_step("partial")), ("full", lambda: train_step("finetune"))):  # fmt: skip
        fn()  # warm-up: the first call pays for kernel selection and allocation
        t = time.perf_counter()
        fn()
        fn()
        per_image[name] = (time.perf_counter() - t) / (2 * PROBE_BATCH)
    model.load_state_dict(state)
    for p, flag in zip(model.parameters(), flags):
        p.requires_grad_(flag)
    model.zero_grad(set_to_none=True)
    return Throughput(side, per_image["forward"], per_image["partial"], per_image["full"],
                      _decode_seconds(sample_paths, draft), precision.amp_name, time.perf_counter() - t_start,
                      per_image["features"])  # fmt: skip


def _decode_seconds(paths: Sequence[Path], draft: int | None) -> float:
    """Seconds to decode one image (median-free mean of a few; 0 without samples)."""
    from classifier.data.images import load_image
    from classifier.errors import ClassifierError

    took, n = 0.0, 0
    for p in list(paths)[:6]:
        t = time.perf_counter()
        try:
            load_image(p, draft_size=(draft, draft) if draft else None)
        except ClassifierError:
            continue
        took += time.perf_counter() - t
        n += 1
    return took / n if n else 0.0


def _sides(native: int, fixed: int | None) -> list[int]:
    """Image sizes to consider, largest first: the user's, else the native size and smaller steps to `MIN_SIDE`."""
    if fixed is not None:
        return [fixed]
    out = [native]
    side = (native - 1) // SIDE_STEP * SIDE_STEP
    while side >= MIN_SIDE:
        out.append(side)
        side -= SIDE_STEP
    return out


def estimate_seconds(
    mode: str, epochs: int, side: int, n_train: int, n_val: int, tp: Throughput, probe_first: bool = True
) -> float:
    """Seconds of training for one choice (setup and measuring are counted separately, in `choose_plan`); a
    fine-tune with `probe_first` starts with the features pass of the head's linear probe."""
    r = tp.scaled(side)
    features = (n_train * (tp.features or tp.forward) + n_val * tp.forward) * r
    if mode == "linear":
        return features
    val = n_val * tp.forward * r
    step = tp.partial if mode == "partial" else tp.full
    return (features if probe_first else 0.0) + epochs * (n_train * step * r + val)


def _candidates(cfg: TrainConfig, native: int, pretrained: bool) -> list[tuple[str, int, int]]:
    """(mode, epochs, side) in order of preference; only the user's values where they set them."""
    modes = [cfg.mode] if cfg.mode is not None else (["finetune", "partial", "linear"] if pretrained else ["finetune"])
    out = []
    for mode in modes:
        if mode == "linear":
            epochs = [cfg.epochs or TrainConfig(mode="linear").resolved().epochs]
            sides = [cfg.img_size or native]
        else:
            low, high = (MIN_FULL_EPOCHS, MAX_FULL_EPOCHS) if mode == "finetune" else (MIN_PARTIAL_EPOCHS,
                                                                                      MAX_PARTIAL_EPOCHS)  # fmt: skip
            epochs = [cfg.epochs] if cfg.epochs is not None else list(range(high, low - 1, -1))
            # A full fine-tune only at the model's own size; shrinking is for the cheaper partial one.
            sides = _sides(native, cfg.img_size)[: 1 if mode == "finetune" and cfg.mode is None else None]
        out += [(mode, e, s) for s in sides for e in epochs]
    return out


def choose_plan(cfg: TrainConfig, budget_s: float, n_train: int, n_val: int, tp: Throughput, pretrained: bool) -> Plan:
    """The first candidate in order of preference (see the module docstring) whose estimate fits the time left;
    when none fits, the cheapest one (the deadline then ends it on time). Pure: tests give it a `Throughput`."""
    setup_s = START_SECONDS + tp.seconds + (n_train + n_val) * tp.decode
    avail = max(0.0, budget_s - setup_s) * SAFETY
    reasons = [
        f"measured at {tp.side} px ({tp.amp or 'float32'}): forward {1 / tp.forward:.1f} images/s (validation), "
        f"{1 / (tp.features or tp.forward):.1f} images/s (training features), partial "
        f"fine-tune step {1 / tp.partial:.1f} images/s, full fine-tune step {1 / tp.full:.1f} images/s; decoding "
        f"{tp.decode * 1000:.0f} ms per image",
        f"{n_train} training and {n_val} validation images; {budget_s / 60:.1f} min budget, {setup_s:.0f} s for "
        f"start, measuring and decoding, {SAFETY:.0%} of the rest planned: {avail / 60:.1f} min",
    ]
    candidates = _candidates(cfg, tp.side, pretrained)
    chosen, rejected = None, {}
    for mode, epochs, side in candidates:
        est = estimate_seconds(mode, epochs, side, n_train, n_val, tp, pretrained)
        if est <= avail:
            chosen = (mode, epochs, side, est)
            break
        rejected[(mode, side)] = (epochs, est)  # the last (fewest epochs) per mode and size is the one to report
    reasons += [f"{_label(m)} at {s} px" + ("" if m == "linear" else f", even {e} epochs,")
                + f" would take {est / 60:.1f} min" for (m, s), (e, est) in rejected.items()]  # fmt: skip
    fits = chosen is not None
    if chosen is None:
        mode, epochs, side = min(candidates, key=lambda c: estimate_seconds(*c, n_train, n_val, tp, pretrained))
        chosen = (mode, epochs, side, estimate_seconds(mode, epochs, side, n_train, n_val, tp, pretrained))
        reasons.append("nothing fits: the cheapest choice runs and the deadline stops it on time")
    mode, epochs, side, est = chosen
    reasons.append(f"chosen: {_label(mode)}" + ("" if mode == "linear" else f", {epochs} epochs")
                   + f" at {side} px, estimated {est / 60:.1f} min")  # fmt: skip
    picked = [f for f in PLANNED_FIELDS if getattr(cfg, f) is None]
    return Plan(
        budget_s,
        mode,
        epochs,
        side,
        HEAD_EPOCHS if mode != "linear" and pretrained else 0,
        round(setup_s + est, 1),
        fits,
        picked,
        reasons,
        {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(tp).items()},
    )


def _label(mode: str) -> str:
    return {"linear": "linear probe", "partial": "partial fine-tune", "finetune": "full fine-tune"}[mode]


def apply_plan(cfg: TrainConfig, plan: Plan) -> TrainConfig:
    """`cfg` with the planned mode, epochs and image size where the user left them unset."""
    chosen = {"mode": plan.mode, "epochs": plan.epochs, "img_size": plan.img_size}
    return replace(cfg, **{k: v for k, v in chosen.items() if getattr(cfg, k) is None})


def saved_plan_config(cfg: TrainConfig, saved_train: dict[str, Any]) -> TrainConfig:
    """Resuming a planned run: its planned fields as recorded, where `cfg` leaves them unset (no new measuring)."""
    return replace(cfg, **{k: saved_train.get(k) for k in PLANNED_FIELDS if getattr(cfg, k) is None})


class Deadline(Callback):
    """Ends the run by the budget: after an epoch when another one would not finish in time, and mid-epoch once
    time is up (the best epoch so far is kept; before the first validation the first epoch is allowed to end)."""

    order = 25  # after EarlyStopping

    def __init__(self, budget_s: float, started: float):
        self.budget_s, self.started = budget_s, started
        self.reason: str | None = None

    def _left(self, state: FitState) -> float:
        """Seconds left: the budget less this process's time since fit started and earlier processes' (resume)."""
        return self.budget_s - (time.time() - self.started) - state.seconds_before

    def on_epoch_end(self, state: FitState) -> None:
        last = state.history[-1]["seconds"] if state.history else 0.0
        left = self._left(state)
        if state.epoch < state.epochs and left < last:
            self.reason = f"time budget: {max(0.0, left):.0f} s left, an epoch takes {last:.0f} s"
            raise StopFit(self.reason)

    def on_batch_end(self, state: FitState) -> None:
        if self._left(state) <= 0 and state.best_val:
            self.reason = "time budget reached during an epoch; the best epoch so far is kept"
            raise StopFit(self.reason)


def head_probe_config(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """The linear probe that trains the head on frozen features before a fine-tune."""
    return replace(cfg, mode="linear", augment="none", mixup=0.0, cutmix=0.0, epochs=epochs, lr=None,
                   label_smoothing=None, head_warmup_epochs=0, compile=False).resolved()  # fmt: skip


class _BestHead(Callback):
    """The head probe's best epoch by `val_score` (as a run's best epoch is picked): its trainable weights (the
    head) kept in memory, so the fine-tune starts from the epoch a standalone linear probe would report, not from
    the last one (on hymenoptera: 0.961 against 0.948)."""

    def __init__(self) -> None:
        self.score: tuple[float, float] = (-math.inf, -math.inf)
        self.val: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def on_epoch_end(self, state: FitState) -> None:
        val = state.val
        score = val_score(val)
        if math.isfinite(val["loss"]) and score > self.score:
            self.score, self.val = score, val
            self.weights = {n: p.detach().clone() for n, p in state.model.named_parameters() if p.requires_grad}

    def restore(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, saved in self.weights.items():
                params[name].copy_(saved)


class HeadProbe(Callback):
    """Before a fine-tune: train the head on frozen features (a linear probe of `epochs` epochs on the same
    model, data and decoded cache), so the fine-tune starts from the probe's head, and keep the probe as the best
    epoch so far (epoch 0 in metrics.json). Its setup phases ("cache", "features") are reported through `notify`; a
    cancel during them cancels the run. New runs only."""

    order = -50  # after Resume (-100), before the learner prepares the fine-tune's optimizer

    def __init__(self, setup: TrainingSetup, epochs: int):
        self.setup, self.epochs = setup, epochs
        self.notify: Callable[[], None] = lambda: None
        self.val_acc: float | None = None

    def on_fit_start(self, state: FitState) -> None:
        if state.resumed_from is not None or state.step:
            return
        outer, setup = state, self.setup
        cfg = head_probe_config(setup.cfg, self.epochs)
        probe = TrainingSetup(cfg, setup.data, setup.model, setup.data_config)
        pstate = FitState(cfg, None, setup.model, cfg.epochs, 0, len(setup.data.train), len(setup.data.val),
                          batch_size=cfg.batch_size)  # fmt: skip
        pstate.schedule = schedule_spec(cfg.scheduler, cfg.lr, cfg.epochs, len(setup.data.train), cfg.batch_size,
                                        cfg.warmup_epochs)  # fmt: skip
        pstate.steps_per_epoch = pstate.schedule["steps_per_epoch"]

        class Forward(Callback):
            def on_phase(self, s: FitState) -> None:
                outer.phase, outer.phase_done, outer.phase_total = s.phase, s.phase_done, s.phase_total
                notify()

        notify = self.notify
        best = _BestHead()
        Learner(probe, pstate, [Schedule(), Forward(), best]).fit()
        if pstate.status == "cancelled":
            raise CancelFit()
        if pstate.status != "completed":
            raise RuntimeError(f"the linear probe of the head failed: {pstate.error}")
        best.restore(setup.model)
        val = best.val
        self.val_acc = val["acc"] if val else None
        if outer.plan is not None:
            outer.plan["head_probe_val_acc"] = self.val_acc
        if val and outer.out_dir is not None:
            # The probe is the run's best so far ("epoch 0"): a fine-tune epoch replaces it only by beating it, so
            # the plan never ends below the linear probe (on hymenoptera 2 partial epochs after a 0.954 probe
            # reached 0.941).
            outer.best_score, outer.best_epoch, outer.best_val = val_score(val), 0, val
            rundir.save_weights(outer.out_dir, self.setup.model.state_dict(), 0)
