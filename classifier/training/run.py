"""A training run: fit a `TrainConfig` into a new run dir (or continue one), with the standard callbacks.

    >>> from classifier.training import TrainConfig, fit
    >>> cfg = TrainConfig(data="demo", backbone="resnet18", weights="none", epochs=2)
    >>> result = fit(cfg, "runs/r1")  # doctest: +SKIP

Every `checkpoint_every_steps` steps and at every epoch end the whole training state goes to `last.safetensors`
(`classifier.training.checkpoint`); `fit(..., resume=True)` continues from it and ends with the same steps,
learning rates and weights as an uninterrupted run (bit for bit on a CPU with `num_workers=0`; with loader workers
the batches are the same but augmentation draws may differ). An out-of-memory error in a training step frees what
the step held, halves the batch size and retries the same samples (`OutOfMemoryBackoff`).

With `nproc` set, the run trains in that many processes with DistributedDataParallel
(`classifier.training.distributed`): called outside torchrun, `fit` launches them (`python -m classifier train`
through torchrun) and reads the result from the run dir; inside a rank it joins the process group and trains its
share, rank 0 writing every file.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from classifier import rundir
from classifier.data.dataset import DatasetIndex, check_trainable, load_dataset
from classifier.data.loader import draft_size
from classifier.device import Precision, pick_device, seed_everything
from classifier.errors import RunError
from classifier.models import build_model, resolve_data_config
from classifier.models.factory import model_from_run_config, set_trainable_mode
from classifier.task import MULTI
from classifier.training.callbacks import (
    CancelCallback,
    EarlyStopping,
    HeadWarmup,
    HistoryWriter,
    MixupCutmix,
    OutOfMemoryBackoff,
    RunFiles,
    SaveBest,
    Schedule,
    Throughput,
    schedule_spec,
)
from classifier.training.checkpoint import Checkpointer, Resume
from classifier.training.config import TrainConfig
from classifier.training.distributed import Ranks, RankSync, env_rank, in_rank, join
from classifier.training.events import Callback, FitState
from classifier.training.learner import Learner
from classifier.training.plan import (
    Deadline,
    HeadProbe,
    Plan,
    apply_plan,
    budget_seconds,
    choose_plan,
    measure_throughput,
    saved_plan_config,
)
from classifier.training.precision import choose as choose_precision
from classifier.training.resume import ResumeState, can_resume, load_resume
from classifier.training.setup import SplitData, TrainingSetup, split_data

CONFIG_FORMAT = 1
RUNTIME_FIELDS = ("device", "num_workers", "compile")  # settings a resumed run may change
AUTO_BATCH_MAX = 512  # the batch-size finder's ceiling (also at most a quarter of the training images)


@dataclass
class FitResult:
    status: str  # completed | cancelled | failed
    run_dir: Path
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    error: str | None = None
    plan: dict[str, Any] | None = None  # what the time budget chose and why (config.json's `plan`), with `summary`


def fit(
    config: TrainConfig | None,
    out_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    *,
    index: DatasetIndex | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = False,
) -> FitResult:
    """Train `config` into the new run dir `out_dir`; returns how it ended and the validation metrics.

    `resume=True` continues the run in `out_dir` from its checkpoint (`last.safetensors`) with the same epoch,
    position in the epoch, step, optimizer, learning-rate schedule, RNG states, history and best score, and
    finishes exactly as an uninterrupted run would. `config` may then be None (it is read from the run's
    config.json); if given it must match (device and workers may differ). A run that stopped before its first
    checkpoint starts over in place.
    """
    started = time.time()
    out_dir = Path(out_dir)
    saved, ckpt = open_resume(config, out_dir) if resume else (None, None)
    cfg = _run_config(config, saved, out_dir)
    if cfg.nproc is not None and not in_rank():
        if callbacks or should_cancel is not None or index is not None:
            raise RunError(
                "a DDP run (nproc) reports through its run dir: fit takes no callbacks, should_cancel or index "
                "then; use the job system (python -m classifier jobs) to watch and cancel it"
            )
        return _launch(cfg, out_dir, resume)
    if index is None:
        # A resumed run continues on the dataset version it started on, even if a newer one was saved since.
        version = (
            cfg.data_version if saved is None or cfg.data_version is not None else saved["dataset"].get("version", 0)
        )
        index = load_dataset(cfg.data, version)
    check_trainable(index)
    ranks = join(cfg.nproc, pick_device(cfg.device))
    try:
        # A new run in one process: a time budget may choose what the user left unset in `config` (a DDP run
        # trains as configured: its ranks would each measure, and could choose differently).
        raw = config if saved is None and ranks is None and config is not None else None
        return _fit(cfg, out_dir, callbacks, index, should_cancel, resume, saved, ckpt, ranks, raw, started)
    finally:
        if ranks is not None:
            ranks.close()


def _fit(
    cfg: TrainConfig,
    out_dir: Path,
    callbacks: Sequence[Callback],
    index: DatasetIndex,
    should_cancel: Callable[[], bool] | None,
    resume: bool,
    saved: dict[str, Any] | None,
    ckpt: ResumeState | None,
    ranks: Ranks | None,
    raw: TrainConfig | None,
    started: float,
) -> FitResult:
    """fit's body in this process (one process, or one rank of a DDP run: rank 0 alone writes files)."""
    main = ranks is None or ranks.main
    if resume:
        out_dir.mkdir(parents=True, exist_ok=True)
    elif main:
        rundir.prepare_new(out_dir)
    seed_everything(cfg.seed)
    data = split_data(index, cfg)
    run_config, setup, plan = _start(cfg, data, out_dir, saved, ckpt, ranks, raw)
    cfg = setup.cfg
    state = FitState(cfg, out_dir, setup.model, cfg.epochs, 0, len(data.train), len(data.val),
                     batch_size=cfg.batch_size, ranks=ranks)  # fmt: skip
    state.plan = plan
    state.schedule = schedule_spec(cfg.scheduler, cfg.lr, cfg.epochs, len(data.train), cfg.batch_size * state.world,
                                   cfg.warmup_epochs)  # fmt: skip
    state.steps_per_epoch = state.schedule["steps_per_epoch"]
    files = RunFiles(data, run_config, setup.runtime if ckpt is None else None)
    checkpointer = Checkpointer(ckpt)
    if ranks is not None:
        steer = [RankSync(ranks, should_cancel, checkpointer.due)]
    else:
        steer = [OutOfMemoryBackoff(), *([CancelCallback(should_cancel)] if should_cancel else [])]
    probe = HeadProbe(setup, plan["head_epochs"]) if plan and plan["head_epochs"] and ckpt is None else None
    cbs = [
        *callbacks,
        *shared_callbacks(cfg, setup),
        Schedule(),
        Throughput(images=not setup.use_features),
        SaveBest(write=main),
        checkpointer,
        *([Resume(ckpt)] if ckpt is not None else []),
        *([files, HistoryWriter()] if main else []),
        *([EarlyStopping(cfg.early_stopping)] if cfg.early_stopping else []),
        *steer,
        *([Deadline(plan["budget_s"], started)] if plan else []),
        *([probe] if probe else []),
    ]
    learner = Learner(setup, state, cbs)
    if probe is not None:
        probe.notify = lambda: learner.emit("on_phase")  # the probe's setup phases reach the progress callbacks
    learner.fit()
    return FitResult(
        state.status, out_dir, files.metrics, state.history, state.best_epoch, state.seconds(), state.error, plan
    )


def _launch(cfg: TrainConfig, out_dir: Path, resume: bool) -> FitResult:
    """Train `cfg` in `cfg.nproc` DDP processes (`python -m classifier train` through torchrun); the result comes
    from the run dir they wrote."""
    from classifier.io import atomic_write_json
    from classifier.training.distributed import launch

    with tempfile.TemporaryDirectory(prefix="classifier-ddp-") as tmp:
        request = atomic_write_json(Path(tmp) / "config.json", cfg.to_dict())
        args = ["--resume", str(out_dir)] if resume else ["--config-json", str(request), "--out", str(out_dir)]
        launch(cfg.nproc, ["train", *args, "--quiet"])
    return result_from_run_dir(out_dir)


def result_from_run_dir(out_dir: Path) -> FitResult:
    """How a run that trained in other processes ended, read from its files (metrics.json, history.csv)."""
    metrics = rundir.read_metrics(out_dir)
    table = rundir.read_history(out_dir)
    history = table.to_dict("records") if table is not None else []
    status = metrics.get("status", "completed") if metrics else "cancelled"  # no metrics: stopped before an epoch
    seconds = float(metrics.get("train_seconds", 0.0)) if metrics else 0.0
    best = int(metrics.get("best_epoch", 0)) if metrics else 0
    return FitResult(status, out_dir, metrics, history, best, seconds)


def shared_callbacks(cfg: TrainConfig, setup: TrainingSetup) -> list[Callback]:
    """Callbacks that are part of the recipe, so the LR finder uses them too: mixup/cutmix, head warm-up."""
    out: list[Callback] = []
    if cfg.mixup or cfg.cutmix:
        out.append(MixupCutmix(cfg.mixup, cfg.cutmix, cfg.label_smoothing, len(setup.data.classes),
                               multi_label=setup.task == MULTI))  # fmt: skip
    if cfg.mode in ("finetune", "partial") and cfg.head_warmup_epochs and not setup.use_features:
        out.append(HeadWarmup(cfg.head_warmup_epochs, lambda on: set_trainable_mode(setup.model, cfg.mode, on)))
    return out


def _run_config(config: TrainConfig | None, saved: dict[str, Any] | None, out_dir: Path) -> TrainConfig:
    if config is None:
        if saved is None:
            raise RunError("fit needs a TrainConfig (or resume=True with an existing run dir)")
        config = TrainConfig.from_dict(saved["train"])
    if saved is not None and saved.get("plan"):
        config = saved_plan_config(config, saved["train"])  # the plan made when the run started, not a new one
    cfg = config.resolved()
    if saved is not None:
        _check_same_config(cfg, saved, out_dir)
    return cfg


def _start(
    cfg: TrainConfig,
    data: SplitData,
    out_dir: Path,
    saved: dict[str, Any] | None,
    ckpt: ResumeState | None,
    ranks: Ranks | None = None,
    raw: TrainConfig | None = None,
) -> tuple[dict[str, Any], TrainingSetup, dict[str, Any] | None]:
    """The model and the run's config.json and split.csv: new (planned first when a time budget applies to the
    unresolved `raw` config), or (resuming) rebuilt from the checkpoint and checked against the data."""
    plan = None
    if ckpt is None:
        built = build_model(
            cfg.backbone, len(data.classes), cfg.weights, drop_rate=cfg.drop_rate, img_size=cfg.img_size
        )
        model, data_config = built.model, built.data_config
        if raw is not None:
            cfg, data_config, plan = _plan(raw, cfg, data, built)
        elif saved is not None:
            plan = saved.get("plan")  # starting over in place: the plan made when the run was started
        run_config = {
            "format_version": CONFIG_FORMAT,
            "backbone": built.info.name,
            "timm_name": built.timm_name,
            "weights": built.weights,
            "num_classes": len(data.classes),
            "class_names": data.classes,
            "task": data.task,
            "data_config": data_config,
            "grayscale": cfg.grayscale,
            "dataset": {
                "root": str(data.index.root),
                "source": data.index.source,
                "layout": data.index.layout,
                "version": data.index.version,
            },
            "train": cfg.to_dict(),
            "device": None,
            "versions": _versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"plan": plan} if plan else {}),
        }
    else:
        # The weights come from the checkpoint: rebuild the architecture without downloading anything.
        if not rundir.same_split(out_dir, data.split_rows(), data.task):
            raise RunError(
                f"the dataset {cfg.data} changed since run {out_dir} started (its train/val split differs from "
                "split.csv); cannot resume. Start a new run."
            )
        run_config = saved
        plan = saved.get("plan")
        model = model_from_run_config(run_config, ckpt.model, source=str(rundir.resume_path(out_dir)))
        data_config = run_config["data_config"]
    saved_runtime = run_config.get("runtime") if ckpt is not None else None  # resumed: the precision it chose
    setup = TrainingSetup(cfg, data, model, data_config, ranks, saved_runtime)
    main = ranks is None or ranks.main
    if ckpt is None and main:
        run_config["device"] = str(setup.device)
        rundir.write_config(out_dir, run_config)
        rundir.write_split(out_dir, data.split_rows(), data.task)
    if cfg.auto_batch_size and setup.device.type == "cuda" and not setup.use_features:
        _auto_batch_size(cfg, setup, run_config, out_dir, saved, ranks)
    return run_config, setup, plan


def _plan(raw: TrainConfig, cfg: TrainConfig, data: SplitData, built) -> tuple[TrainConfig, dict, dict | None]:
    """Apply the time budget, if one applies to `raw`: measure, choose, and return the planned (resolved) config,
    its data config (the planned image size) and the plan as recorded; else `cfg` unchanged and no plan."""
    device = pick_device(cfg.device)
    budget = budget_seconds(raw, device, built.weights != "none")
    if budget is None:
        return cfg, built.data_config, None
    side = int(built.data_config["input_size"][-1])
    default = Precision.for_device(device, cfg.amp)  # measured for this model once (cached: the run reuses it)
    precision, _ = choose_precision(built.model, default, (3, side, side), len(data.classes), training=True)
    precision.prepare(built.model)
    tp = measure_throughput(built.model, side, precision, len(data.classes), [p for p, _ in data.train[:6]],
                            draft_size(built.data_config))  # fmt: skip
    plan: Plan = choose_plan(raw, budget, len(data.train), len(data.val), tp, built.weights != "none")
    planned = apply_plan(raw, plan).resolved()
    seed_everything(planned.seed)  # measuring drew random numbers; the run starts from the seed as any other
    data_config = resolve_data_config(built.model, img_size=planned.img_size, bundled=built.weights == "bundled")
    return planned, data_config, {**plan.to_dict(), "summary": plan.summary()}


def _auto_batch_size(
    cfg: TrainConfig, setup: TrainingSetup, run_config: dict, out_dir: Path, saved, ranks: Ranks | None = None
) -> None:
    """CUDA: the largest batch size (<= the configured one x 2^k) whose training step fits in memory (in DDP the
    smallest any rank found, so all take the same steps)."""
    if saved is not None:
        cfg.batch_size = int(saved["train"]["batch_size"])  # the size found when the run started
    else:
        from classifier.training.batch_size import find_batch_size, probe_step

        shape = tuple(int(v) for v in setup.data_config["input_size"])
        top = max(1, min(AUTO_BATCH_MAX, len(setup.data.train) // 4))
        step = probe_step(setup.model, shape, len(setup.data.classes), setup.device, setup.precision)
        found = find_batch_size(step, cfg.batch_size, top, device=setup.device)
        cfg.batch_size = min(ranks.gather(found)) if ranks is not None else found
        run_config["train"] = cfg.to_dict()
        if ranks is None or ranks.main:
            rundir.write_config(out_dir, run_config)
    setup.runtime["batch_size_found"] = cfg.batch_size


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def open_resume(config: TrainConfig | None, out_dir: Path) -> tuple[dict[str, Any] | None, ResumeState | None]:
    """The run's saved config.json and checkpoint, either None when the run never got that far."""
    if not rundir.path(out_dir, rundir.CONFIG).is_file():
        if config is None:
            raise RunError(f"nothing to resume in {out_dir}: it has no {rundir.CONFIG} (is it a run dir?)")
        return None, None  # stopped before writing anything: start over in place
    saved = rundir.read_config(out_dir)
    if env_rank() == 0:  # in a DDP run rank 0 alone touches the run dir
        rundir.remove_partial_writes(out_dir)
    path = rundir.resume_path(out_dir)
    if path.is_file():
        return saved, load_resume(path)
    if not can_resume(out_dir):
        raise RunError(
            f"run {out_dir} has no resume checkpoint ({rundir.RESUME}): it completed, or it ended before this "
            "version wrote checkpoints. Nothing was changed; start a new run."
        )
    return saved, None  # stopped before its first checkpoint: start over in place


def _check_same_config(cfg: TrainConfig, saved: dict[str, Any], out_dir: Path) -> None:
    theirs = TrainConfig.from_dict(saved["train"]).resolved().to_dict()
    ours = cfg.to_dict()
    skip = RUNTIME_FIELDS + (("batch_size",) if cfg.auto_batch_size else ())  # the finder's pick is saved
    diff = [k for k in ours if k not in skip and ours[k] != theirs.get(k)]
    if diff:
        raise RunError(
            f"run {out_dir} was trained with other settings ({', '.join(diff)}); resume it with its own settings "
            "(python -m classifier train --resume RUN_DIR) or start a new run"
        )
