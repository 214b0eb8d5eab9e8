"""`search`: a hyperparameter search (grid, random or TPE via Optuna) whose trials are queued training runs."""

from __future__ import annotations

import argparse
import json
import sys

from classifier.cli.config_flags import add_runtime, add_settings, config_from_args, settings_config
from classifier.errors import ClassifierError

NAME = "search"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        NAME,
        help="hyperparameter search (grid, random or TPE via Optuna); each trial is a queued training run",
        description="Search over learning rate, batch size, weight decay, augmentation, backbone, epochs (and a few "
        "more TrainConfig fields). The data/model/optimisation flags give the base settings; the space overrides "
        "them per trial. Waits until every trial has finished, prints the ranked trials (stderr) and JSON (stdout). "
        "Example: python -m classifier search --data demo --backbone resnet18 --weights none --mode linear "
        "--img-size 64 --sampler tpe --trials 8 --search-lr 1e-4 1e-1 --search-batch-size 16 32",
    )
    add_settings(p)
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
    g.add_argument(
        "--metric",
        default="accuracy",
        choices=["accuracy", "macro_f1", "roc_auc_macro", "map", "val_loss"],
        help="what the search maximises (val_loss: minimises); map: multi-label mean average precision",
    )
    g.add_argument("--name", default=None, help="a display name for the search")
    g.add_argument("--parallel", type=int, default=1, help="trials submitted at once (they queue per device)")
    g.add_argument("--no-prune", action="store_true", help="do not stop bad trials early (median pruner)")
    g.add_argument("--id", default=None, help="continue the saved search with this id (the other flags are ignored)")
    add_runtime(g)


def run(a: argparse.Namespace) -> int:
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
            base = settings_config(a)
        elif a.data is None:
            raise ClassifierError("give --data (a dataset folder, .zip, CSV or demo) or --config-json, or --id")
        else:
            base = config_from_args(a)
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
