"""Command line: `python -m classifier {train,evaluate,predict,explain,summary,demo-data,backbones} ...`.

Thin by design: it parses arguments, calls the package and prints. A user error (bad dataset, unknown
backbone, bad weights file, existing run dir) prints one line `error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.errors import ClassifierError

if TYPE_CHECKING:
    from classifier.training import TrainConfig

EXIT_USER_ERROR = 2


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a backbone on a dataset and write a run dir",
        description="Train a classifier. Example: python -m classifier train --data demo "
        "--backbone efficientnet_lite0 --mode linear --out runs/demo",
    )
    _add_settings(p)
    g = p.add_argument_group("output and runtime")
    g.add_argument("--out", default=None, help="new run dir to write (must not exist or be empty)")
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted or cancelled run from its last checkpoint (RUN_DIR/last.safetensors) with "
        "the run's own settings; the data/model/optimisation flags are ignored",
    )
    g.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=None,
        metavar="N",
        help="write the resume checkpoint every N steps as well as at every epoch end (0 = epoch ends only; "
        "default: after every 2 minutes of training)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: chosen for the machine)"
    )
    _add_speed(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument(
        "--config-json",
        default=None,
        metavar="PATH",
        help="a JSON TrainConfig dict to train with; the data/model/optimisation flags above are then ignored",
    )
    g.add_argument(
        "--run-id",
        default=None,
        metavar="ID",
        help="a run queued by classifier.jobs: wait for the device, then report to the run store",
    )


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The data, model and optimisation flags of a TrainConfig (train, lr-find and search share them)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=None,
        help='dataset folder, .zip or CSV (path,label); "demo" for the built-in set (required without --config-json)',
    )
    g.add_argument(
        "--val-split", type=float, default=0.2, help="validation fraction per class when the data has no val/"
    )
    g.add_argument("--test-split", type=float, default=0.0, help="optional test fraction per class")
    g.add_argument("--img-size", type=int, default=None, help="input size in pixels (default: the backbone's)")
    g.add_argument(
        "--augment",
        default=None,
        choices=["none", "light", "standard", "strong"],
        help="augmentation preset (default: none for linear, using cached features; light for finetune)",
    )
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    g.add_argument("--grayscale", action="store_true", help="train on grayscale versions of the images")
    g.add_argument(
        "--imbalance",
        default="none",
        choices=["none", "weights", "sampler"],
        help="class-weighted loss or balanced sampling for imbalanced data",
    )
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="efficientnet_lite0", help="curated name or any timm model (see `backbones`)")
    g.add_argument(
        "--weights",
        default=None,
        help="bundled | hub | none | PATH.safetensors (default: bundled for efficientnet_lite0, else hub)",
    )
    g.add_argument(
        "--mode",
        default="finetune",
        choices=["linear", "finetune"],
        help="linear: frozen backbone, train the head; finetune: train everything",
    )
    g.add_argument("--head-warmup-epochs", type=int, default=0, help="finetune: head-only epochs first")
    g.add_argument("--drop-rate", type=float, default=0.2, help="dropout before the head")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default 20 (linear) or 8 (finetune)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3 linear, 5e-4 finetune)")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    g.add_argument("--scheduler", default="cosine", choices=["cosine", "onecycle", "constant"])
    g.add_argument("--warmup-epochs", type=float, default=0.5)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--label-smoothing", type=float, default=None, help="default 0 (linear) or 0.1 (finetune)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--early-stopping", type=int, default=0, help="patience in epochs (0 = off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    p = sub.add_parser("evaluate", help="print a run's metrics as JSON")
    p.add_argument("--run", required=True, help="run dir (or a saved ensemble dir)")
    p.add_argument("--data", default=None, help="dataset to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="val", choices=["val", "test", "all"])
    p.add_argument("--device", default="auto")

    p = sub.add_parser("predict", help="predict images or folders with a run; one JSON object per line")
    p.add_argument("--run", required=True, help="run dir (or a saved ensemble dir)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "auto"],
        help="forward pass in PyTorch, in ONNX Runtime on the CPU (exported once, cached), or whichever measures "
        "faster here (auto)",
    )

    from classifier.explain.methods import BASELINES, METHODS, methods_using  # the registry; imports no torch

    p = sub.add_parser(
        "explain",
        help="attribution maps (Grad-CAM, integrated gradients, ...) for images; writes .npy maps and .png overlays",
    )
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument(
        "--method",
        required=True,
        choices=list(METHODS),
    )
    p.add_argument("--target", default=None, help="class name or index to explain (default: the predicted class)")
    p.add_argument("--out-dir", required=True, help="folder for <stem>.npy (raw map) and <stem>.png (overlay)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    takers = methods_using("baseline")
    p.add_argument(
        "--baseline",
        default=None,
        choices=list(BASELINES),
        help=f"reference image for {', '.join(m.name for m in takers)} "
        f"(default: {', '.join(f'{m.default_baseline} for {m.name}' for m in takers)})",
    )
    p.add_argument("--n-steps", type=int, default=32, help="integrated gradients: path steps")
    p.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlay")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("summary", help="check a dataset: classes, counts, sizes, skipped files, duplicates")
    p.add_argument("--data", required=True)
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("demo-data", help="write the built-in demo dataset (and object masks)")
    p.add_argument("--out", default=None, help="folder to write (default: the workspace demo dataset the app uses)")
    p.add_argument("--masks-out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=60, help="images per class")

    p = sub.add_parser(
        "export",
        help="export a run to ONNX or TorchScript, checked against PyTorch on its validation images",
        description="Export a run and check it: top-1 agreement and largest probability difference against the "
        "PyTorch model on the run's validation images, and images/s of both. Prints the result as JSON; exit code 1 "
        "when the check flags the export (the file is still written). Example: python -m classifier export "
        "--run runs/demo --format onnx --out demo-onnx.zip",
    )
    p.add_argument("--run", required=True, help="run dir")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    p.add_argument(
        "--out",
        required=True,
        help="PATH.zip: the bundle (model, config.json, MODEL_CARD.md, predict script); "
        "PATH.onnx or PATH.pt: the model file alone",
    )
    p.add_argument("--quantize", default=None, choices=["int8"], help="ONNX only: dynamic int8 quantization")
    p.add_argument("--max-images", type=int, default=64, help="validation images to check the export on")

    _add_lr_find(sub)
    _add_search(sub)
    _add_results(sub)
    p = sub.add_parser("backbones", help="list backbones")
    p.add_argument("--all", action="store_true", help="also list every timm model name")
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from classifier.training import ProgressPrinter, fit

    if a.resume is not None:
        if a.out is not None and Path(a.out).resolve() != Path(a.resume).resolve():
            raise ClassifierError("--resume continues the run in RUN_DIR; leave out --out (or give the same dir)")
        a.out = a.resume
    elif a.out is None:
        raise ClassifierError("give --out (a new run dir), or --resume RUN_DIR to continue a run")
    if a.config_json is None and a.data is None and a.resume is None:
        raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json")
    callbacks = [] if a.quiet else [ProgressPrinter(sys.stderr)]
    if a.run_id is not None:
        from classifier.jobs import run_job

        # run_job loads and checks the config itself, so that even a bad config ends as "failed" in the store.
        if a.resume is not None:
            config = Path(a.config_json) if a.config_json else None
        else:
            config = Path(a.config_json) if a.config_json else _train_config(a)
        result = run_job(a.run_id, config, a.out, callbacks, resume=a.resume is not None)
        if result is None:
            print(json.dumps({"status": "cancelled", "run_dir": a.out}))
            return 0
    elif a.resume is not None:
        result = fit(None, a.resume, callbacks, resume=True)
    else:
        if a.config_json is not None:
            from classifier.jobs import load_config_json

            cfg = load_config_json(a.config_json)
        else:
            try:
                cfg = _train_config(a).resolved()
            except ValueError as e:
                raise ClassifierError(str(e)) from e
        result = fit(cfg, a.out, callbacks)
    if result.status == "failed":
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    m = result.metrics or {}
    keys = ["accuracy", "macro_f1", "roc_auc_macro", "ece", "n_val", "best_epoch"]
    print(
        json.dumps(
            {
                "status": result.status,
                "run_dir": str(result.run_dir),
                "seconds": round(result.seconds, 1),
                **{k: m.get(k) for k in keys},
            }
        )
    )
    return 0


def _train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the train flags describe (not yet resolved)."""
    from classifier.training import TrainConfig

    return TrainConfig(
        data=a.data,
        val_split=a.val_split,
        test_split=a.test_split,
        img_size=a.img_size,
        augment=a.augment,
        mixup=a.mixup,
        cutmix=a.cutmix,
        grayscale=a.grayscale,
        imbalance=a.imbalance,
        backbone=a.backbone,
        weights=a.weights,
        mode=a.mode,
        head_warmup_epochs=a.head_warmup_epochs,
        drop_rate=a.drop_rate,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        optimizer=a.optimizer,
        scheduler=a.scheduler,
        warmup_epochs=a.warmup_epochs,
        weight_decay=a.weight_decay,
        label_smoothing=a.label_smoothing,
        grad_clip=a.grad_clip,
        early_stopping=a.early_stopping,
        seed=a.seed,
        device=a.device,
        amp=not a.no_amp,
        num_workers=a.workers,
        checkpoint_every_steps=a.checkpoint_every_steps,
        cache=getattr(a, "cache", "auto"),
        compile=getattr(a, "compile", False),
        auto_batch_size=getattr(a, "auto_batch_size", False),
    )


def cmd_evaluate(a: argparse.Namespace) -> int:
    from classifier.ensemble import evaluate_ensemble
    from classifier.evaluate import evaluate_run
    from classifier.rundir import is_ensemble_dir

    evaluate = evaluate_ensemble if is_ensemble_dir(a.run) else evaluate_run
    print(json.dumps(evaluate(a.run, a.data, a.split, a.device), indent=2))
    return 0


def _print_results(results: list[dict]) -> int:
    """One JSON line per input; exit 2 when any of them carries an error."""
    for r in results:
        print(json.dumps(r))
    return EXIT_USER_ERROR if any("error" in r for r in results) else 0


def cmd_predict(a: argparse.Namespace) -> int:
    from classifier.ensemble import load_ensemble
    from classifier.predict import load_run, predict_paths
    from classifier.rundir import is_ensemble_dir

    if is_ensemble_dir(a.run):  # a saved ensemble: the members' averaged probabilities
        results = load_ensemble(a.run, device=a.device).predict_paths(a.inputs, top_k=a.top_k)
    else:
        device = "cpu" if a.backend == "onnx" and a.device == "auto" else a.device
        results = predict_paths(load_run(a.run, device=device, backend=a.backend), a.inputs, top_k=a.top_k)
    return _print_results(results)


def cmd_explain(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from classifier.explain import explain_paths
    from classifier.predict import load_run

    if not 0.0 <= a.alpha <= 1.0:
        raise ClassifierError(f"--alpha must be between 0 and 1, got {a.alpha}")
    run = load_run(a.run, device=a.device)
    bar = tqdm(total=0, unit="img", desc=a.method, file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        results = explain_paths(
            run,
            a.inputs,
            a.method,
            a.target,
            out_dir=a.out_dir,
            cmap=a.cmap,
            alpha=a.alpha,
            baseline=a.baseline,
            n_steps=a.n_steps,
            progress=progress,
        )
    except ValueError as e:  # a bad colour map or option
        raise ClassifierError(str(e)) from None
    finally:
        bar.close()
    return _print_results(results)


def cmd_summary(a: argparse.Namespace) -> int:
    from classifier.data.dataset import check_trainable, index_dataset
    from classifier.data.demo import ensure_demo_dataset
    from classifier.data.splits import assign_splits

    data = str(ensure_demo_dataset(a.seed)) if a.data == "demo" else a.data
    index = index_dataset(data)
    problem = None
    try:
        check_trainable(index)
        splits = assign_splits(index, a.val_split, 0.0, a.seed)
    except ClassifierError as e:
        problem, splits = str(e), None
    s = index.summary(splits)
    s["trainable"] = problem is None
    s["problem"] = problem
    if a.json:
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
    return 0 if problem is None else EXIT_USER_ERROR


def format_summary(s: dict) -> str:
    lines = [f"dataset {s['root']} ({s['layout']}): {s['n_images']} images, {len(s['classes'])} classes"]
    splits = list(s["counts"])
    lines.append("  " + "class".ljust(24) + "".join(sp.rjust(8) for sp in splits))
    for c in s["classes"]:
        lines.append("  " + c[:23].ljust(24) + "".join(str(s["counts"][sp].get(c, 0)).rjust(8) for sp in splits))
    sz = s["image_size"]
    lines.append(f"  image sizes: {sz['min_width']}-{sz['max_width']} x {sz['min_height']}-{sz['max_height']} px")
    if s["skipped"]:
        lines.append(f"  skipped {len(s['skipped'])} files:")
        lines += [f"    {k['path']}: {k['reason']}" for k in s["skipped"]]
    if s["duplicates"]:
        lines.append(f"  {len(s['duplicates'])} groups of identical images:")
        lines += ["    " + " = ".join(g) for g in s["duplicates"][:20]]
    if s["leakage"]:
        lines.append(f"  warning: {len(s['leakage'])} validation/test images also appear in train (leakage):")
        lines += [f"    {a} = {b}" for a, b in s["leakage"][:20]]
    lines += [f"  warning: {w}" for w in s["warnings"]]
    if s.get("problem"):
        lines.append(f"  cannot train: {s['problem']}")
    return "\n".join(lines)


def cmd_demo_data(a: argparse.Namespace) -> int:
    from classifier.data.demo import make_demo_dataset

    if a.out is None:
        from classifier.data.demo import ensure_demo_dataset

        print(f"demo dataset ready in {ensure_demo_dataset(a.seed)}")
        return 0
    out = make_demo_dataset(a.out, n_per_class=a.per_class, seed=a.seed, masks_out=a.masks_out)
    print(f"wrote demo dataset to {out}" + (f" and masks to {a.masks_out}" if a.masks_out else ""))
    return 0


def cmd_backbones(a: argparse.Namespace) -> int:
    from classifier.models import list_backbones

    for b in list_backbones(all_timm=a.all):
        params = f"{b.params_m:6.1f}M" if b.params_m == b.params_m else "      ?"
        offline = "offline weights" if b.bundled_weights else ""
        print(f"{b.name:28s} {params}  {b.description}  {offline}".rstrip())
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from classifier.export import export_run

    if a.max_images < 1:
        raise ClassifierError(f"--max-images must be at least 1, got {a.max_images}")
    report = export_run(a.run, a.format, a.out, quantize=a.quantize, max_images=a.max_images)
    print(json.dumps(report.to_dict(), indent=2))
    for reason in report.reasons:
        print(f"warning: {reason}", file=sys.stderr)
    return 1 if report.reasons else 0  # flagged: the file is written, but say so in the exit code


def _add_speed(g: argparse._ArgumentGroup) -> None:
    """--cache, --compile and --auto-batch-size (see classifier.data.cache and classifier.training.batch_size)."""
    g.add_argument(
        "--cache",
        default="auto",
        choices=["auto", "memory", "disk", "off"],
        help="decoded-image cache: in memory when it fits CLASSIFIER_CACHE_MEMORY_MB (default 2048), else a "
        "memory-mapped file in workspace/cache (auto); always memory; always disk; off = decode every epoch",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    g.add_argument(
        "--auto-batch-size",
        action="store_true",
        help="CUDA: the largest batch size from --batch-size upwards (<= 512) whose training step fits in memory",
    )


def _add_runtime(g: argparse._ArgumentGroup) -> None:
    """Seed, device, AMP, workers, --config-json and --quiet (for commands that train without a run dir)."""
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    _add_speed(g)
    g.add_argument(
        "--config-json", default=None, metavar="PATH", help="a JSON TrainConfig dict; the flags above are then ignored"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_lr_find(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: loss against an exponentially rising learning rate, with a suggestion",
        description="Train a copy of the model a run with these settings would use for a few dozen steps while the "
        "learning rate rises exponentially; print the curve and the suggested learning rate as JSON. Example: "
        "python -m classifier lr-find --data demo --backbone resnet18 --mode linear --plot lr.html",
    )
    _add_settings(p)
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate")
    g.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (it stops earlier on divergence)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default 60, or 30 on small data)")
    g.add_argument("--plot", default=None, metavar="FILE", help="write the plot: FILE.html or FILE.png")
    _add_runtime(g)
    p.set_defaults(checkpoint_every_steps=None)


def cmd_lr_find(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from classifier.figures import lr_find_figure
    from classifier.training.lr_find import lr_find

    cfg = _settings_config(a)
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if a.quiet:
            return
        if phase not in bars:
            for b in bars.values():
                b.close()
            bars[phase] = tqdm(total=total, desc=phase, file=sys.stderr, leave=False)
        bars[phase].n = done
        bars[phase].refresh()

    try:
        result = lr_find(cfg, start_lr=a.start_lr, end_lr=a.end_lr, steps=a.steps, progress=progress)
    finally:
        for b in bars.values():
            b.close()
    out = result.to_dict()
    if a.plot:
        out["plot"] = _write_figure(lr_find_figure(result), a.plot)
    print(json.dumps(out))
    return 0


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="hyperparameter search (grid, random or TPE via Optuna); each trial is a queued training run",
        description="Search over learning rate, batch size, weight decay, augmentation, backbone, epochs (and a few "
        "more TrainConfig fields). The data/model/optimisation flags give the base settings; the space overrides "
        "them per trial. Waits until every trial has finished, prints the ranked trials (stderr) and JSON (stdout). "
        "Example: python -m classifier search --data demo --backbone resnet18 --weights none --mode linear "
        "--img-size 64 --sampler tpe --trials 8 --search-lr 1e-4 1e-1 --search-batch-size 16 32",
    )
    _add_settings(p)
    g = p.add_argument_group("search")
    g.add_argument("--sampler", default="tpe", choices=["grid", "random", "tpe"])
    g.add_argument("--trials", type=int, default=None, help="number of trials (grid: default and at most the product)")
    g.add_argument(
        "--space",
        default=None,
        metavar="FILE_OR_JSON",
        help='JSON space: {"lr": {"low": 1e-4, "high": 0.1, "log": true}, "backbone": ["resnet18", "simple_cnn"]}',
    )
    g.add_argument("--search-lr", nargs=2, type=float, metavar=("LOW", "HIGH"), help="log-uniform lr range")
    g.add_argument("--search-weight-decay", nargs=2, type=float, metavar=("LOW", "HIGH"), help="weight decay range")
    g.add_argument("--search-batch-size", nargs="+", type=int, metavar="N", help="batch size choices")
    g.add_argument("--search-epochs", nargs="+", type=int, metavar="N", help="epochs choices")
    g.add_argument("--search-augment", nargs="+", metavar="PRESET", help="augmentation preset choices")
    g.add_argument("--search-backbone", nargs="+", metavar="NAME", help="backbone choices")
    g.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1", "roc_auc_macro", "val_loss"])
    g.add_argument("--name", default=None, help="a display name for the search")
    g.add_argument("--parallel", type=int, default=1, help="trials submitted at once (they queue per device)")
    g.add_argument("--no-prune", action="store_true", help="do not stop bad trials early (median pruner)")
    g.add_argument("--id", default=None, help="continue the saved search with this id (the other flags are ignored)")
    _add_runtime(g)
    p.set_defaults(checkpoint_every_steps=None)


def cmd_search(a: argparse.Namespace) -> int:
    import time

    from classifier.search import create_search, format_table, ranked_trials, run_search

    if a.id is None:
        raw: dict = {}
        if a.space:
            from classifier.search import parse_space

            raw = parse_space(a.space, a.sampler)
        inline = {
            "lr": {"low": a.search_lr[0], "high": a.search_lr[1], "log": True} if a.search_lr else None,
            "weight_decay": {"low": a.search_weight_decay[0], "high": a.search_weight_decay[1], "log": False}
            if a.search_weight_decay
            else None,
            "batch_size": a.search_batch_size,
            "epochs": a.search_epochs,
            "augment": a.search_augment,
            "backbone": a.search_backbone,
        }
        raw.update({k: v for k, v in inline.items() if v is not None})
        if not raw:
            raise ClassifierError("give a search space: --space FILE_OR_JSON and/or --search-lr, --search-epochs ...")
        if a.config_json is not None:
            base = _settings_config(a)
        elif a.data is None:
            raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json, or --id")
        else:
            base = _train_config(a)
        spec = create_search(base, raw, sampler=a.sampler, n_trials=a.trials, metric=a.metric, name=a.name,
                             parallel=a.parallel, seed=a.seed, prune=not a.no_prune)  # fmt: skip
        print(f"search {spec['id']}: {spec['n_trials']} trials", file=sys.stderr)
    else:
        spec = {"id": a.id}
    t0, seen = time.time(), {}

    def on_update(s: dict) -> None:
        if a.quiet:
            return
        for t in s["trials"]:
            if seen.get(t["number"]) == t["state"]:
                continue
            seen[t["number"]] = t["state"]
            done = sum(x["state"] not in ("queued", "running") for x in s["trials"])
            eta = (time.time() - t0) / done * (s["n_trials"] - done) / s["parallel"] if done else None
            value = f" {s['metric']} {t['value']:.4f}" if t.get("value") is not None else ""
            print(f"trial {t['number']}/{s['n_trials']} {t['state']}{value} (run {t['run_id']})"
                  + (f"  ETA {eta / 60:.1f} min" if eta is not None else ""), file=sys.stderr)  # fmt: skip

    spec = run_search(spec["id"], on_update=on_update)
    if not a.quiet:
        print(format_table(spec), file=sys.stderr)
    print(json.dumps({"id": spec["id"], "status": spec["status"], "metric": spec["metric"],
                      "best": spec.get("best"), "trials": ranked_trials(spec)}))  # fmt: skip
    return 0 if spec["status"] == "completed" else 1


def _settings_config(a: argparse.Namespace) -> TrainConfig:
    """The resolved TrainConfig of --config-json or of the settings flags (user errors as ClassifierError)."""
    if a.config_json is not None:
        from classifier.jobs import load_config_json

        return load_config_json(a.config_json)
    if a.data is None:
        raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json")
    try:
        return _train_config(a).resolved()
    except ValueError as e:
        raise ClassifierError(str(e)) from e


def _write_figure(fig, path: str) -> str:
    """Write a Plotly figure as HTML (self-contained) or, for .png/.svg/.pdf, as an image."""
    out = Path(path)
    if out.suffix.lower() in (".html", ".htm"):
        fig.write_html(out, include_plotlyjs=True)
    elif out.suffix.lower() in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp"):
        try:
            fig.write_image(out)
        except (ImportError, ValueError, RuntimeError) as e:
            raise ClassifierError(f"cannot write {out} as an image ({e}); write an .html plot instead") from e
    else:
        raise ClassifierError(f"--plot {path}: use a .html or .png file name")
    return str(out)


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs (also while they train): differing settings, per-class F1, which run wins each class",
        description="Compare two or more runs as stored so far and print JSON: the settings that differ, per-class "
        "F1 side by side, and the best run for each class (ties named). Example: python -m classifier compare "
        "--runs runs/a runs/b",
    )
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="two or more run dirs")

    p = sub.add_parser(
        "ensemble",
        help="average the probabilities of runs trained on the same classes; save it and print its metrics",
        description="Combine runs (same class names in the same order, same validation images) by averaging their "
        "probabilities, each through its own evaluation transform. Writes OUT/ensemble.json, metrics.json and "
        "val_predictions.csv and prints the metrics as JSON. Example: python -m classifier ensemble --runs runs/a "
        "runs/b --out ensembles/ab",
    )
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="two or more run dirs")
    p.add_argument("--out", required=True, help="new folder for the ensemble")
    p.add_argument("--name", default=None, help="a display name (default: the run ids joined by +)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "report",
        help="write a one-page self-contained HTML report of a run (settings, metrics, figures)",
        description="Example: python -m classifier report --run runs/a --out a-report.html",
    )
    p.add_argument("--run", required=True, help="run (or ensemble) dir")
    p.add_argument("--out", required=True, help="the .html file to write")


def cmd_compare(a: argparse.Namespace) -> int:
    from classifier.compare import compare_summary, load_runs

    print(json.dumps(compare_summary(load_runs(a.runs)), indent=2, default=str))
    return 0


def cmd_ensemble(a: argparse.Namespace) -> int:
    from classifier.ensemble import build_ensemble

    def progress(done: int, total: int, eta: float | None) -> None:
        left = f", about {eta:.0f} s left" if eta else ""
        print(f"evaluated {done}/{total} members{left}", file=sys.stderr)

    metrics = build_ensemble(a.runs, a.out, name=a.name, device=a.device, progress=progress)
    print(json.dumps({"ensemble_dir": a.out, **metrics}, indent=2))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from classifier.report import write_report

    if Path(a.out).suffix.lower() not in (".html", ".htm"):
        raise ClassifierError(f"--out {a.out}: the report is HTML; give a file name ending in .html")
    print(json.dumps({"report": str(write_report(a.run, a.out))}))
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "explain": cmd_explain,
    "summary": cmd_summary,
    "demo-data": cmd_demo_data,
    "backbones": cmd_backbones,
    "export": cmd_export,
    "lr-find": cmd_lr_find,
    "search": cmd_search,
    "compare": cmd_compare,
    "ensemble": cmd_ensemble,
    "report": cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ClassifierError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
