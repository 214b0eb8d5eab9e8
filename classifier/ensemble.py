"""Ensembles: average the class probabilities of several runs trained on the same classes.

Each member predicts through its own evaluation transform (input size, mean/std, crop), so runs with different
backbones and image sizes combine. A saved ensemble is a folder with `ensemble.json` (members, class names,
dataset root), `metrics.json` and `val_predictions.csv` in the same format as a run's, so the Evaluate page
and `classifier.rundir.read_val_predictions` treat it like a run; nothing in it is a model of its own.

Multi-label runs combine the same way (each label's sigmoid probabilities averaged; every member must be multi-label
with the same labels); the ensemble predicts a label at 0.5, whatever thresholds its members tuned.

    >>> metrics = build_ensemble(["runs/a", "runs/b"], "ensembles/ab")  # doctest: +SKIP
    >>> ens = load_ensemble("ensembles/ab")  # doctest: +SKIP
    >>> ens.predict_images([image])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from classifier import rundir
from classifier.data.images import load_image
from classifier.errors import ClassifierError, ImageError, RunError
from classifier.metrics import compute_metrics, mean_average_precision
from classifier.predict import LoadedRun, expand_inputs, format_prediction, load_run, predict_images, predict_items
from classifier.task import DEFAULT_THRESHOLD, MULTI

if TYPE_CHECKING:
    from classifier.access import User

FORMAT_VERSION = 1


def ensembles_dir() -> Path:
    """`workspace/ensembles`: where the app saves ensembles."""
    from classifier.workspace import workspace_dir

    path = workspace_dir() / "ensembles"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_same_classes(runs: Sequence[LoadedRun]) -> list[str]:
    """The members' shared class names; RunError naming the first run whose classes (or their order) differ."""
    if len(runs) < 2:
        raise RunError(f"an ensemble needs at least two runs, got {len(runs)}")
    first = runs[0].class_names
    for run in runs[1:]:
        names = run.class_names
        if run.task != runs[0].task:
            raise RunError(
                f"run {run.run_dir} ({run.task}) cannot join an ensemble with {runs[0].run_dir} ({runs[0].task}): "
                "an ensemble's runs all answer the same kind of question"
            )
        if names == first:
            continue
        if sorted(names) == sorted(first):
            why = f"the same classes in another order ({', '.join(names)} vs {', '.join(first)})"
        else:
            extra, lacking = sorted(set(names) - set(first)), sorted(set(first) - set(names))
            why = "; ".join(
                part
                for part in (
                    f"it has {', '.join(extra)} which {runs[0].run_dir.name} lacks" if extra else "",
                    f"it lacks {', '.join(lacking)}" if lacking else "",
                )
                if part
            )
        raise RunError(f"run {run.run_dir} cannot join an ensemble with {runs[0].run_dir}: {why}")
    return list(first)


@dataclass
class Ensemble:
    """Member runs whose probabilities are averaged; `predict_images` is what the Predict page calls."""

    members: list[LoadedRun]
    name: str = "ensemble"
    ensemble_dir: Path | None = None
    class_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.class_names = check_same_classes(self.members)

    @property
    def task(self) -> str:
        return self.members[0].task

    @property
    def thresholds(self) -> list[float] | None:
        """0.5 per label for a multi-label ensemble (its members' tuned thresholds do not carry over to the mean)."""
        return [DEFAULT_THRESHOLD] * len(self.class_names) if self.task == MULTI else None

    def predict_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Mean of the members' class probabilities (n, C), each member through its own eval transform."""
        return np.mean([predict_images(run, images, batch_size) for run in self.members], axis=0)

    def predict_items(self, paths: Sequence[str | Path], batch_size: int = 32) -> np.ndarray:
        return np.mean([predict_items(run, paths, batch_size) for run in self.members], axis=0)

    def predict_paths(self, inputs: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[dict[str, Any]]:
        """Like `classifier.predict.predict_paths`: one dict per image in input order, `{"path", "error"}` for an
        image that cannot be read."""
        results: list[dict[str, Any]] = []
        pending: list[tuple[int, Image.Image]] = []
        for path in expand_inputs(inputs):
            results.append({"path": path})
            try:
                if not Path(path).is_file():
                    raise ImageError(path, "file not found")
                pending.append((len(results) - 1, load_image(path)))
            except ClassifierError as e:
                results[-1]["error"] = str(e)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            for (i, _), p in zip(chunk, self.predict_images([im for _, im in chunk], batch_size)):
                results[i] = format_prediction(results[i]["path"], p, self.class_names, top_k, self.thresholds)
        return results


def shared_val_items(runs: Sequence[LoadedRun]) -> list[tuple[Path, int]]:
    """The validation images every member was validated on, in the first member's order.

    RunError naming the run when a member's validation split holds other images (another dataset, split seed
    or validation fraction): the ensemble's metrics would not be comparable to the members'.
    """
    from classifier.evaluate import evaluation_items

    first = evaluation_items(runs[0], split="val")
    key = {(p.resolve(), y) for p, y in first}
    for run in runs[1:]:
        items = evaluation_items(run, split="val")
        other = {(p.resolve(), y) for p, y in items}
        if other != key:
            only_a, only_b = sorted(key - other), sorted(other - key)
            example = (only_b or only_a)[0][0]
            raise RunError(
                f"run {run.run_dir} was validated on other images than {runs[0].run_dir} "
                f"({len(only_a)} images only in the first, {len(only_b)} only in this one, e.g. {example}); "
                "ensemble runs trained on the same dataset with the same split settings"
            )
    return first


def evaluate_members(
    runs: Sequence[LoadedRun], progress: Callable[[int, int, float | None], None] | None = None
) -> tuple[list[tuple[Path, int]], list[np.ndarray]]:
    """(shared validation items, each member's probabilities on them). `progress(done, total, eta_s)` per member."""
    check_same_classes(runs)
    items = shared_val_items(runs)
    paths = [p for p, _ in items]
    out: list[np.ndarray] = []
    t0 = time.monotonic()
    for i, run in enumerate(runs):
        if progress is not None:
            eta = (time.monotonic() - t0) / i * (len(runs) - i) if i else None
            progress(i, len(runs), eta)
        out.append(predict_items(run, paths))
    if progress is not None:
        progress(len(runs), len(runs), 0.0)
    return items, out


def build_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    name: str | None = None,
    device: str = "cpu",
    progress: Callable[[int, int, float | None], None] | None = None,
    runs: Sequence[LoadedRun] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Evaluate the average of `run_dirs` on their shared validation images and save it in `out_dir` (new or
    empty). Returns the metrics (`classifier.metrics.compute_metrics` plus `members`). `runs` may pass the
    members already loaded (the app's cached models)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunError(f"{out_dir} already exists and is not empty; choose a new folder for the ensemble")
    if runs is None:
        if len(run_dirs) < 2:
            raise RunError(f"an ensemble needs at least two runs, got {len(run_dirs)}")
        resolved = [Path(d).resolve() for d in run_dirs]
        if len(set(resolved)) < len(resolved):
            raise RunError("the same run is listed twice; an ensemble needs different runs")
        runs = [load_run(d, device=device) for d in resolved]
    names = check_same_classes(runs)
    items, member_probs = evaluate_members(runs, progress)
    probs = np.mean(member_probs, axis=0)
    y = np.array([label for _, label in items])
    metrics = compute_metrics(y, probs, names)
    root = Path(runs[0].config["dataset"]["root"])
    members = [
        {"run_dir": str(r.run_dir.resolve()), "run_id": r.run_dir.name, "backbone": r.config.get("backbone")}
        for r in runs
    ]
    stored = [{**m, "run_dir": _relative_to(Path(m["run_dir"]), out_dir)} for m in members]
    metrics["members"] = [{**m, **_member_score(y, p)} for m, p in zip(members, member_probs)]
    info = {
        "format": "ensemble",
        "format_version": FORMAT_VERSION,
        "name": name or " + ".join(r.run_dir.name for r in runs),
        "combine": "mean of probabilities",
        "members": stored,  # run dirs relative to the ensemble dir: the workspace can move
        "class_names": names,
        "task": runs[0].task,
        "dataset": {"root": str(root)},
        "n_val": len(items),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "owner": owner,  # who built it (None: without sign-in); only they or an admin delete or publish it
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p).resolve().relative_to(root.resolve()).as_posix() for p, _ in items]
    rundir.write_val_predictions(out_dir, paths, [label for _, label in items], probs, names)
    rundir.write_metrics(out_dir, metrics)
    rundir.write_ensemble_info(out_dir, info)  # last: a folder with ensemble.json is complete
    return metrics


def _member_score(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """A member's own headline on the shared images: accuracy, or (multi-label) mean average precision."""
    if y.ndim == 2:
        return {"map": mean_average_precision(y, probs)}
    return {"accuracy": float((probs.argmax(1) == y).mean())}


def evaluate_ensemble(
    ensemble_dir: str | Path, data: str | Path | None = None, split: str = "val", device: str = "cpu"
) -> dict[str, Any]:
    """All metrics of a saved ensemble on `split` of its members' data (the first member's split) or of `data`,
    like `classifier.evaluate.evaluate_run` for a run."""
    from classifier.evaluate import evaluation_items

    ens = load_ensemble(ensemble_dir, device=device)
    items = evaluation_items(ens.members[0], data, split)
    probs = ens.predict_items([p for p, _ in items])
    metrics = compute_metrics(np.array([y for _, y in items]), probs, ens.class_names, thresholds=ens.thresholds)
    metrics["split"] = split
    metrics["members"] = [str(r.run_dir) for r in ens.members]
    return metrics


def read_ensemble(ensemble_dir: str | Path) -> dict[str, Any]:
    """`ensemble.json` checked: RunError naming the file when it is unreadable or a member dir is gone."""
    path = rundir.path(ensemble_dir, rundir.ENSEMBLE)
    if not path.is_file():
        raise RunError(f"{ensemble_dir} is not an ensemble: it has no {rundir.ENSEMBLE}")
    info = rundir.read_ensemble_info(ensemble_dir)
    if not isinstance(info, dict) or info.get("format") != "ensemble" or len(info.get("members") or []) < 2:
        raise RunError(f"{path} is not an ensemble description (format 'ensemble' with two or more members)")
    _resolve_members(Path(ensemble_dir), info)
    for m in info["members"]:
        if not rundir.has_weights(m["run_dir"]):
            raise RunError(f"{path}: member run {m['run_dir']} is missing or has no model (was it deleted?)")
    return info


def load_ensemble(ensemble_dir: str | Path, device: str = "cpu") -> Ensemble:
    """A saved ensemble with its members' models loaded."""
    info = read_ensemble(ensemble_dir)
    runs = [load_run(m["run_dir"], device=device) for m in info["members"]]
    return Ensemble(runs, name=info.get("name") or Path(ensemble_dir).name, ensemble_dir=Path(ensemble_dir))


def delete_ensemble(ensemble_dir: str | Path, user: User | None = None) -> None:
    """Remove a saved ensemble's folder (its ensemble.json, metrics and predictions); member runs are untouched.
    RunError when the folder is not a saved ensemble, so this never removes anything else; AccessError when `user`
    (None: the local user) neither built it nor is an admin."""
    import shutil

    from classifier.access import LOCAL_USER, check_owner

    d = Path(ensemble_dir)
    if not rundir.is_ensemble_dir(d):
        raise RunError(f"{d} is not a saved ensemble (no {rundir.ENSEMBLE}); nothing deleted")
    check_owner(user or LOCAL_USER, rundir.read_ensemble_info(d).get("owner"), "delete", f"ensemble {d.name}")
    shutil.rmtree(d)


def list_ensembles() -> list[tuple[Path, dict[str, Any]]]:
    """Saved ensembles in the workspace, newest first, as (dir, ensemble.json); unreadable ones are skipped."""
    out = []
    for d in ensembles_dir().iterdir():
        try:
            info = rundir.read_ensemble_info(d)
        except RunError:
            continue
        if isinstance(info, dict) and info.get("format") == "ensemble":
            _resolve_members(d, info)
            out.append((d, info))
    return sorted(out, key=lambda e: e[1].get("created_at") or "", reverse=True)


def _relative_to(run_dir: Path, ensemble_dir: Path) -> str:
    """`run_dir` relative to `ensemble_dir` (absolute when there is no relative path, e.g. another drive)."""
    try:
        return os.path.relpath(run_dir.resolve(), ensemble_dir.resolve())
    except ValueError:
        return str(run_dir.resolve())


def _resolve_members(ensemble_dir: Path, info: dict[str, Any]) -> None:
    """Member run dirs as absolute paths (stored relative to the ensemble dir; older files hold absolute ones)."""
    for m in info.get("members") or []:
        if isinstance(m, dict) and isinstance(m.get("run_dir"), str):
            m["run_dir"] = str((ensemble_dir / m["run_dir"]).resolve())
