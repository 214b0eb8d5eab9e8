"""`train`: fine-tune a backbone on a dataset and write a run dir (or continue one with --resume).

With `--nproc N` the command re-launches itself with the same arguments through torchrun (N DDP processes; see
`classifier.training.distributed`); in each of those ranks it trains its share, rank 0 writing files and reporting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier.cli.config_flags import add_config_flags, add_settings, config_from_args
from classifier.errors import ClassifierError

NAME = "train"
SUMMARY_KEYS = ("accuracy", "macro_f1", "roc_auc_macro", "ece", "n_val", "best_epoch")
MULTILABEL_KEYS = ("task", "map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "n_val", "best_epoch")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="fine-tune a backbone on a dataset and write a run dir",
        description="Train a classifier. Example: python -m classifier train --data demo "
        "--backbone efficientnet_lite0 --mode linear --out runs/demo",
    )
    add_settings(p)
    g = p.add_argument_group("output and runtime")
    g.add_argument("--out", default=None, help="new run dir to write (must not exist or be empty)")
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted or cancelled run from its last checkpoint (RUN_DIR/last.safetensors) with "
        "the run's own settings; the data/model/optimisation flags are ignored",
    )
    add_config_flags(g, "output", "runtime")
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
    g.add_argument(
        "--report",
        default="store",
        choices=["store", "files"],
        help="with --run-id, where the run reports: the run store (local runs) or files in its run dir (remote runs, "
        "e.g. on Ray, which never write the store)",
    )
    g.add_argument("--attempt", default=None, help="with --report files: the remote job's id, written with each report")


def run(a: argparse.Namespace) -> int:
    from classifier.training.distributed import RankFailure, RankInterrupted, in_rank

    if a.resume is not None:
        if a.out is not None and Path(a.out).resolve() != Path(a.resume).resolve():
            raise ClassifierError("--resume continues the run in RUN_DIR; leave out --out (or give the same dir)")
        a.out = a.resume
    elif a.out is None:
        raise ClassifierError("give --out (a new run dir), or --resume RUN_DIR to continue a run")
    if a.config_json is None and a.data is None and a.resume is None:
        raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json")
    if in_rank():
        return _rank(a)
    try:
        return _train(a)
    except RankFailure as e:
        if e.user_error:
            raise
        print(f"error: training failed: {e}", file=sys.stderr)
        return 1
    except RankInterrupted as e:
        print(f"error: {e}; continue it with --resume {a.out}", file=sys.stderr)
        return 1


def _train(a: argparse.Namespace) -> int:
    from classifier.training import ProgressPrinter, fit
    from classifier.training.run import result_from_run_dir

    callbacks = [] if a.quiet else [ProgressPrinter(sys.stderr)]
    argv = getattr(a, "argv", None)
    if a.run_id is not None:
        # run_job loads and checks the config itself, so that even a bad config ends as "failed" in the store.
        if a.resume is not None:
            config = Path(a.config_json) if a.config_json else None
        else:
            config = Path(a.config_json) if a.config_json else config_from_args(a)
        if a.report == "files":
            from classifier.jobs.remote import run_remote_job

            result = run_remote_job(a.run_id, config, a.out, callbacks, resume=a.resume is not None,
                                    attempt=a.attempt, argv=argv)  # fmt: skip
        else:
            from classifier.jobs import run_job

            result = run_job(a.run_id, config, a.out, callbacks, resume=a.resume is not None, argv=argv)
        if result is None:
            print(json.dumps({"status": "cancelled", "run_dir": a.out}))
            return 0
    else:
        cfg = _config(a)
        if cfg is not None and cfg.nproc is not None:
            from classifier.training.distributed import launch

            launch(cfg.nproc, argv)  # the same arguments, in each of nproc processes
            result = result_from_run_dir(Path(a.out))
        else:
            result = fit(cfg, a.out, callbacks, resume=a.resume is not None)
    return _print_result(result)


def _config(a: argparse.Namespace):
    """The TrainConfig of the flags or --config-json, checked but as given (fit lets a time budget choose what is
    left unset); with --resume the run's own (None if it has none)."""
    from classifier.training import TrainConfig

    if a.resume is not None:
        from classifier import rundir

        if rundir.path(a.resume, rundir.CONFIG).is_file():
            return TrainConfig.from_dict(rundir.read_config(a.resume)["train"]).resolved()
        if a.config_json is None:
            return None  # fit explains that there is nothing to resume
    if a.config_json is not None:
        from classifier.jobs import load_config_json

        return load_config_json(a.config_json, resolve=False)
    cfg = config_from_args(a)
    try:
        cfg.resolved()  # bad settings fail here, before any process starts
    except ValueError as e:
        raise ClassifierError(str(e)) from e
    return cfg


def _print_result(result) -> int:
    if result.status == "failed":
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    m = result.metrics or {}
    keys = MULTILABEL_KEYS if m.get("task") == "multilabel" else SUMMARY_KEYS
    print(json.dumps({"status": result.status, "run_dir": str(result.run_dir), "seconds": round(result.seconds, 1),
                      **{k: m.get(k) for k in keys},
                      **({"plan": result.plan["summary"]} if result.plan else {})}))  # fmt: skip
    return 0


def _rank(a: argparse.Namespace) -> int:
    """One rank of a DDP run (started by torchrun with this command's arguments): train this rank's share. Rank 0
    shows progress and reports to the run store or the run dir; the launcher prints the result. A failure is left
    in torchrun's error file, so the launcher can name the rank and its error."""
    from classifier.training.distributed import USER_ERROR_EXIT, env_rank, prepare_rank, record_error

    prepare_rank()
    try:
        result = _rank_fit(a, env_rank())
    except ClassifierError as e:
        record_error(" ".join(str(e).split()))
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Exception as e:
        record_error(f"{type(e).__name__}: {' '.join(str(e).split())}")
        raise
    if result.status == "failed":
        record_error(result.error or "training failed")
        return 1
    return 0


def _rank_fit(a: argparse.Namespace, rank: int):
    from classifier.training import ProgressPrinter, fit

    callbacks = [ProgressPrinter(sys.stderr)] if rank == 0 and not a.quiet else []
    should_cancel = None
    if a.run_id is not None:
        from classifier.jobs import cancel_flag_path
        from classifier.jobs.remote import reporter

        should_cancel = cancel_flag_path(a.run_id).exists  # rank 0's answer is the one that counts
        if rank == 0:
            callbacks.append(reporter(a.run_id, a.out, a.report, a.attempt))
    return fit(_config(a), a.out, callbacks, should_cancel=should_cancel, resume=a.resume is not None)
