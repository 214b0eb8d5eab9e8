"""The run folder: every file name in it, and every reader and writer of those files. No other module spells a
run file's name.

    run dir/                      (also a saved ensemble's folder, which has ensemble.json instead of config.json)
      config.json                 everything needed to rebuild the model and its evaluation transform
      model.safetensors           weights of the best epoch
      metrics.json                validation metrics of the best epoch (written when the run ends)
      history.csv                 one row per finished epoch (rewritten after each)
      split.csv                   path,label,split of every image used, relative to the dataset root
                                  (a multi-label run: path,labels,split, labels as in a dataset CSV)
      val_predictions.csv         path,label,pred,prob,p_<class>... of the validation images
                                  (a multi-label run: path,labels,pred,p_<label>..., pred = labels at the thresholds)
      last.safetensors            the resume checkpoint (classifier.training.resume), deleted when the run completes
      progress.json               a remote run's status and progress (classifier.jobs.remote), read by its executor

Every write is atomic (`classifier.io`), the resume checkpoint included (its tensors and state are packed by
`classifier.training.resume`); readers raise `RunError` naming the file when it is missing or unreadable. A
multi-label run (config.json `task`, `classifier.task`) keeps its labels in one cell per image, separated as
`classifier.task.label_separator` says for its label names, and its thresholds in metrics.json (`thresholds`).
`read_*` functions that return None mean "not written yet", which is normal for a run still training.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classifier.errors import RunError
from classifier.io import atomic_save_safetensors, atomic_write_json, atomic_write_text, csv_text, spreadsheet_safe
from classifier.task import DEFAULT_THRESHOLD, MULTI, join_labels, label_separator, split_labels, task_of

if TYPE_CHECKING:
    import pandas as pd
    import torch

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.csv"
SPLIT = "split.csv"
VAL_PREDICTIONS = "val_predictions.csv"
RESUME = "last.safetensors"
ENSEMBLE = "ensemble.json"
PROGRESS = "progress.json"
DOWNLOAD_FILES = (CONFIG, WEIGHTS, METRICS, HISTORY, SPLIT, VAL_PREDICTIONS)  # what a run's zip holds
HISTORY_COLUMNS = (
    "epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_sec",
    "batch_size",
)  # fmt: skip
CHECKPOINT_HOOK_ENV = "CLASSIFIER_TEST_CHECKPOINT_HOOK"
REQUIRED_CONFIG_KEYS = ("timm_name", "num_classes", "class_names", "data_config", "train")


def path(run_dir: str | Path, name: str) -> Path:
    """The path of run file `name` (one of the constants above) in `run_dir`."""
    return Path(run_dir) / name


def weights_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / WEIGHTS


def resume_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESUME


# --- JSON files ------------------------------------------------------------------------------------------------------


def _read_json(file: Path, missing_ok: bool) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RunError(f"{file.parent} has no {file.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"cannot read {file}: {e}") from e


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json, checked for the keys inference needs."""
    file = Path(run_dir) / CONFIG
    if not file.is_file():
        raise RunError(f"{run_dir} is not a run dir: {CONFIG} is missing")
    config = _read_json(file, missing_ok=False)
    if not isinstance(config, dict):
        raise RunError(f"{file} is not a JSON object")
    for key in REQUIRED_CONFIG_KEYS:
        if key not in config:
            raise RunError(f"{file} lacks {key!r}; it was not written by this tool or is from an incompatible version")
    return config


def write_config(run_dir: str | Path, config: dict[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / CONFIG, config)


def read_info(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json or a saved ensemble's ensemble.json (both hold `class_names` and `dataset.root`)."""
    run_dir = Path(run_dir)
    for name in (CONFIG, ENSEMBLE):
        info = _read_json(run_dir / name, missing_ok=True)
        if info is not None:
            return info
    raise RunError(f"{run_dir} is not a run or ensemble dir: it has no {CONFIG} or {ENSEMBLE}")


def read_info_if_any(run_dir: str | Path) -> dict[str, Any] | None:
    """Like `read_info`, but None when the folder has neither file yet (a queued run)."""
    run_dir = Path(run_dir)
    return _read_json(run_dir / CONFIG, missing_ok=True) or _read_json(run_dir / ENSEMBLE, missing_ok=True)


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """metrics.json, or None before the run has finished its evaluation."""
    return _read_json(Path(run_dir) / METRICS, missing_ok=True)


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / METRICS, metrics)


def read_thresholds(run_dir: str | Path, n_labels: int) -> list[float]:
    """A multi-label run's per-label thresholds from metrics.json (0.5 each before it exists or when absent)."""
    t = (read_metrics(run_dir) or {}).get("thresholds")
    if isinstance(t, list) and len(t) == n_labels and all(isinstance(v, (int, float)) for v in t):
        return [float(v) for v in t]
    return [DEFAULT_THRESHOLD] * n_labels


def write_progress(run_dir: str | Path, report: dict[str, Any]) -> Path:
    """progress.json: a remote run's status, progress, error and metrics summary (replaced atomically, so the
    executor polling it over shared storage never reads half a file). NaN and infinities (the loss before the
    first batch) are written as null, so any JSON reader can read it."""
    return atomic_write_json(Path(run_dir) / PROGRESS, _finite(report))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """progress.json, or None before the run has reported (or when it is unreadable: the next poll reads again)."""
    try:
        report = _read_json(Path(run_dir) / PROGRESS, missing_ok=True)
    except RunError:
        return None
    return report if isinstance(report, dict) else None


def read_ensemble_info(ensemble_dir: str | Path) -> dict[str, Any]:
    return _read_json(Path(ensemble_dir) / ENSEMBLE, missing_ok=False)


def write_ensemble_info(ensemble_dir: str | Path, info: dict[str, Any]) -> Path:
    return atomic_write_json(Path(ensemble_dir) / ENSEMBLE, info)


def is_ensemble_dir(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ENSEMBLE).is_file()


def has_weights(run_dir: str | Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file()


def has_results(run_dir: str | Path) -> bool:
    """Whether the run wrote weights or metrics (a run that has neither never finished an epoch)."""
    return any((Path(run_dir) / name).exists() for name in (WEIGHTS, METRICS))


# --- weights -------------------------------------------------------------------------------------------------------


def save_weights(run_dir: str | Path, state_dict: dict[str, torch.Tensor], epoch: int) -> Path:
    """model.safetensors: the best epoch's weights (plain safetensors, loadable without this package)."""
    meta = {"epoch": str(epoch), "format": "classifier-run"}
    return atomic_save_safetensors(Path(run_dir) / WEIGHTS, state_dict, metadata=meta)


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The run's weights, checked as safetensors (never unpickled)."""
    from classifier.models.weights import read_safetensors

    file = Path(run_dir) / WEIGHTS
    if not file.is_file():
        raise RunError(f"{run_dir} has no {WEIGHTS} yet (the run may still be in its first epoch or failed)")
    return read_safetensors(file)


def write_checkpoint(file: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any], fmt: str) -> Path:
    """A checkpoint file (normally `resume_path(run_dir)`): `tensors` as safetensors, `state` as JSON in its header
    next to `fmt`; one file written atomically, so a kill leaves the previous checkpoint or the new one.

    Fault injection for tests: `CLASSIFIER_TEST_CHECKPOINT_HOOK="before:N:SECONDS"` writes the first half of the
    checkpoint whose `state["generation"]` is N to its temp file and then sleeps (a kill then lands mid-write);
    `"after:N:SECONDS"` sleeps right after generation N is in place.
    """
    from safetensors.torch import save

    from classifier.io import atomic_write_via

    data = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"format": fmt, "state": json.dumps(state, allow_nan=False)},
    )
    generation = int(state.get("generation", 0))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if _hook("before", generation):
                f.write(data[: len(data) // 2])
                f.flush()
                _hook_sleep("before", generation)
            f.write(data[f.tell() :])

    out = atomic_write_via(file, write)
    if _hook("after", generation):
        _hook_sleep("after", generation)
    return out


def read_checkpoint(file: str | Path) -> tuple[str | None, Any, dict[str, torch.Tensor]]:
    """(format, state, tensors) of a checkpoint file; RunError naming it when it is not a readable one."""
    from safetensors import safe_open

    from classifier.errors import WeightsError
    from classifier.models.weights import read_safetensors

    file = Path(file)
    try:
        tensors = read_safetensors(file)  # header checks first: never trust a file just by its name
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        return header.get("format"), json.loads(header.get("state", "null")), tensors
    except (WeightsError, OSError, ValueError) as e:
        raise RunError(f"cannot read the resume checkpoint {file}: {e}") from e


def checkpoint_state(file: str | Path) -> Any:
    """A checkpoint's JSON state without loading its tensors; None when there is no readable one."""
    from safetensors import safe_open

    if not Path(file).is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("state", "null"))
    except Exception:  # noqa: BLE001 - any unreadable file simply has no state to offer
        return None


def _hook(where: str, generation: int) -> bool:
    parts = os.environ.get(CHECKPOINT_HOOK_ENV, "").split(":")
    return len(parts) == 3 and parts[0] == where and parts[1] == str(generation)


def _hook_sleep(where: str, generation: int) -> None:
    seconds = float(os.environ[CHECKPOINT_HOOK_ENV].split(":")[2])
    print(f"test hook: checkpoint {generation} paused {where} replace for {seconds:g} s", flush=True)
    time.sleep(seconds)


# --- CSV files -----------------------------------------------------------------------------------------------------


def _read_csv(file: Path) -> list[dict[str, str]]:
    try:
        with open(file, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunError(f"cannot read {file}: {e}") from e


def split_text(rows: Iterable[tuple[str, str, str]], task: str | None = None) -> str:
    """split.csv's text for (path relative to the dataset root, label, split) rows (`labels` for multi-label)."""
    return csv_text(("path", "labels" if task == MULTI else "label", "split"), rows)


def write_split(run_dir: str | Path, rows: Iterable[tuple[str, str, str]], task: str | None = None) -> Path:
    return atomic_write_text(Path(run_dir) / SPLIT, split_text(rows, task))


def same_split(run_dir: str | Path, rows: Iterable[tuple[str, str, str]], task: str | None = None) -> bool:
    """Whether the run's split.csv lists exactly these rows (a resumed run must see the same data)."""
    file = Path(run_dir) / SPLIT
    return file.is_file() and file.read_text(encoding="utf-8") == split_text(rows, task)


def read_split(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """split.csv rows ({"path", "label", "split"}), all or those of one split; [] when the run has none. A
    multi-label run's rows have "labels" (a list of label names) instead of "label"."""
    file = Path(run_dir) / SPLIT
    if not file.is_file():
        return []
    rows: list[dict[str, Any]] = _read_csv(file)
    if rows and "labels" in rows[0]:
        sep = label_separator(read_info(run_dir)["class_names"])
        rows = [{**r, "labels": split_labels(r["labels"], sep)} for r in rows]
    return rows if split is None else [r for r in rows if r.get("split") == split]


def split_counts(run_dir: str | Path) -> dict[str, dict[str, int]]:
    """{label: {split: images}} from split.csv ({} when the run has none); an image counts for each of its labels."""
    counts: dict[str, dict[str, int]] = {}
    for r in read_split(run_dir):
        for label in r["labels"] if "labels" in r else [r.get("label", "?")]:
            per = counts.setdefault(label, {})
            per[r.get("split", "?")] = per.get(r.get("split", "?"), 0) + 1
    return counts


def write_history(run_dir: str | Path, history: Sequence[dict[str, Any]]) -> Path:
    """history.csv: the known columns in a fixed order, and `val_map` after them for a multi-label run (extra keys
    such as `data_share` stay in the store)."""
    columns = HISTORY_COLUMNS + (("val_map",) if any("val_map" in r for r in history) else ())
    rows = [[_cell(r.get(c)) for c in columns] for r in history]
    return atomic_write_text(Path(run_dir) / HISTORY, csv_text(columns, rows))


def read_history(run_dir: str | Path) -> pd.DataFrame | None:
    """history.csv as a table, or None before the first epoch has finished."""
    import pandas as pd

    file = Path(run_dir) / HISTORY
    if not file.is_file():
        return None
    try:
        return pd.read_csv(file)
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {file}: {e}") from e


def _cell(v: Any) -> str:
    return "" if v is None else str(v)


def write_val_predictions(
    run_dir: str | Path,
    paths: Sequence[str],
    labels: Sequence[Any],
    probs: np.ndarray,
    class_names: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> Path:
    """val_predictions.csv: path (relative to the dataset root), label, pred, prob, then p_<class> per class. For a
    multi-label run (`labels` are 0/1 vectors): path, labels, pred (the labels at `thresholds`, default 0.5), then
    p_<label>."""
    names = list(class_names)
    probs_cols = [f"p_{c}" for c in names]
    if np.ndim(labels) == 2:
        sep = label_separator(names)
        t = np.full(len(names), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
        rows = [
            [p, join_labels([names[j] for j in np.flatnonzero(y)], sep),
             join_labels([names[j] for j in np.flatnonzero(row >= t)], sep), *(f"{v:.6f}" for v in row)]
            for p, y, row in zip(paths, labels, probs)
        ]  # fmt: skip
        header = ["path", "labels", "pred", *probs_cols]
        return atomic_write_text(Path(run_dir) / VAL_PREDICTIONS, csv_text(header, rows))
    rows = []
    for p, y, row in zip(paths, labels, probs):
        k = int(row.argmax())
        rows.append([p, names[y], names[k], f"{row[k]:.6f}", *(f"{v:.6f}" for v in row)])
    header = ["path", "label", "pred", "prob", *probs_cols]
    return atomic_write_text(Path(run_dir) / VAL_PREDICTIONS, csv_text(header, rows))


@dataclass
class ValPredictions:
    """A run's stored validation predictions (`val_predictions.csv`), what the Evaluate page computes from."""

    table: pd.DataFrame
    y_true: np.ndarray  # class indices, -1 for a label that is not among the class names; multi-label: 0/1 (n, C)
    probs: np.ndarray  # (n, C) float64
    class_names: list[str]
    root: str  # the dataset root the table's paths are relative to
    task: str = "single-label"
    thresholds: list[float] | None = None  # a multi-label run's per-label thresholds (metrics.json)


def read_val_predictions(run_dir: str | Path) -> ValPredictions:
    """Read val_predictions.csv of a run (or ensemble) dir; RunError when the run has none yet."""
    import pandas as pd

    run_dir = Path(run_dir)
    info = read_info(run_dir)
    file = run_dir / VAL_PREDICTIONS
    if not file.is_file():
        raise RunError(f"{run_dir} has no {VAL_PREDICTIONS} yet: the run has not finished its evaluation")
    names = [str(c) for c in info["class_names"]]
    multi = task_of(info) == MULTI
    key = "labels" if multi else "label"
    df = pd.read_csv(file, keep_default_na=False, dtype={key: str, "pred": str, "path": str})
    missing = [f"p_{c}" for c in names if f"p_{c}" not in df.columns] + ([key] if key not in df.columns else [])
    if missing:
        raise RunError(f"{file} lacks the columns {', '.join(missing)}")
    probs = df[[f"p_{c}" for c in names]].to_numpy(dtype=np.float64)
    if multi:
        sep, index = label_separator(names), {c: i for i, c in enumerate(names)}
        y_true = np.zeros((len(df), len(names)), dtype=np.int64)
        for i, cell in enumerate(df["labels"]):
            unknown = [n for n in split_labels(cell, sep) if n not in index]
            if unknown:
                raise RunError(f"{file}, row {i + 2}: labels {', '.join(unknown)} are not among the run's labels")
            y_true[i, [index[n] for n in split_labels(cell, sep)]] = 1
        thresholds = read_thresholds(run_dir, len(names))
        return ValPredictions(df, y_true, probs, names, str(info["dataset"]["root"]), MULTI, thresholds)
    y_true = df["label"].map({c: i for i, c in enumerate(names)}).fillna(-1).to_numpy(dtype=np.int64)
    return ValPredictions(df, y_true, probs, names, str(info["dataset"]["root"]))


# --- the folder as a whole -----------------------------------------------------------------------------------------


def prepare_new(run_dir: str | Path) -> Path:
    """Create a new run dir; a RunError (and nothing touched) when it exists and holds files (other than the
    progress file a remote run writes before training starts)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and any(p for p in run_dir.iterdir() if not p.name.startswith(".") and p.name != PROGRESS):
        raise RunError(f"run dir {run_dir} already exists and is not empty; choose a new --out (nothing was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def remove_partial_writes(run_dir: str | Path) -> None:
    """Delete temp files of atomic writes that a kill interrupted (`.<name>.<random>.tmp`)."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def run_zip(run_dir: str | Path, folder: str | None = None) -> bytes:
    """The run's files (model, config, metrics, history, split, predictions) as one zip under `folder/`; text cells of
    its CSV files that a spreadsheet would run as a formula start with an apostrophe there."""
    run_dir = Path(run_dir)
    folder = folder or run_dir.name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in DOWNLOAD_FILES:
            if not (run_dir / name).is_file():
                continue
            if name.endswith(".csv"):  # opened in a spreadsheet: a class or file name must not run as a formula
                rows = list(csv.reader(io.StringIO((run_dir / name).read_text(encoding="utf-8"))))
                safe = [[spreadsheet_safe(c) for c in row] for row in rows]
                zf.writestr(f"{folder}/{name}", csv_text(safe[0], safe[1:]) if safe else "")
            else:
                zf.write(run_dir / name, f"{folder}/{name}")
    return buf.getvalue()
