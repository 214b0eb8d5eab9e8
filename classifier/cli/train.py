"""`train`: fine-tune a backbone on a dataset and write a run dir (or continue one with --resume)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier.cli.config_flags import add_config_flags, add_settings, config_from_args
from classifier.errors import ClassifierError

NAME = "train"


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


def run(a: argparse.Namespace) -> int:
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
            config = Path(a.config_json) if a.config_json else config_from_args(a)
        result = run_job(a.run_id, config, a.out, callbacks, resume=a.resume is not None)
        if result is None:
            print(json.dumps({"status": "cancelled", "run_dir": a.out}))
            return 0
    elif a.resume is not None:
        result = fit(None, a.resume, callbacks, resume=True)
    else:
        if a.config_json is not None:
            from classifier.jobs import load_config_json

            cfg = load_config_json(a.config_json, resolve=False)
        else:
            cfg = config_from_args(a)
            try:
                cfg.resolved()  # bad settings fail here; fit resolves after a time budget chose what is unset
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
                **({"plan": result.plan["summary"]} if result.plan else {}),
            }
        )
    )
    return 0
